//! What the network needs from the service: every response and problem names its
//! request and the server's log lines carry that id, a client too slow with its headers
//! or its body is cut off, a request that takes too long gets a 504 problem, and CORS
//! answers configured origins only.
//!
//! The time limits are tested on a real `trainyard serve` (the header timeout lives in
//! its accept loop) with raw sockets, since no HTTP client sends a byte a second.

use crate::common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;
use trainyard::api::app;
use trainyard::api::net::NetConfig;

use common::procs::{Harness, Proc, Timing, submit};
use common::service::{oneshot_app, oneshot_json, oneshot_state};

/// `trainyard serve` with no workers, keys off and `flags`; its process and address
/// (`host:port`).
fn serve(h: &Harness, flags: &[&str]) -> (Proc, String) {
    let mut extra = vec!["--auth", "off"];
    extra.extend_from_slice(flags);
    let (p, base) = h.serve_with("serve", 0, "127.0.0.1:0", &extra);
    let addr = base.strip_prefix("http://").unwrap().to_string();
    (p, addr)
}

/// A request through `oneshot_app` with `x-request-id` values `ids`.
fn get_with_ids(uri: &str, ids: &[&str]) -> Request<Body> {
    let mut b = Request::get(uri);
    for id in ids {
        b = b.header("x-request-id", *id);
    }
    b.body(Body::empty()).unwrap()
}

#[sqlx::test]
async fn every_response_carries_a_request_id_and_a_problem_names_it(pool: PgPool) {
    let app = oneshot_app(pool).await;
    let mut ids = Vec::new();
    for uri in ["/healthz", "/no/such/route", "/experiments/not-an-id"] {
        let res = app.clone().oneshot(get_with_ids(uri, &[])).await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(id.parse::<uuid::Uuid>().is_ok(), "{uri}: {id}");
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        if status != StatusCode::OK {
            let problem: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                problem["instance"],
                format!("urn:trainyard:request:{id}"),
                "{uri}"
            );
        }
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids repeat: {ids:?}");
}

#[sqlx::test]
async fn a_safe_client_request_id_is_kept_and_any_other_replaced(pool: PgPool) {
    let app = oneshot_app(pool).await;
    let safe = "client-42.run_7";
    let res = app
        .clone()
        .oneshot(get_with_ids("/nope", &[safe]))
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], safe);
    let problem: Value =
        serde_json::from_slice(&axum::body::to_bytes(res.into_body(), 4096).await.unwrap())
            .unwrap();
    assert_eq!(problem["instance"], format!("urn:trainyard:request:{safe}"));

    let long = "a".repeat(65);
    for ids in [
        vec!["has space"],
        vec!["semi;colon"],
        vec![long.as_str()],
        vec!["a", "b"],
        vec![""],
    ] {
        let res = app
            .clone()
            .oneshot(get_with_ids("/healthz", &ids))
            .await
            .unwrap();
        let all: Vec<_> = res.headers().get_all("x-request-id").iter().collect();
        assert_eq!(all.len(), 1, "{ids:?}: {all:?}");
        let id = all[0].to_str().unwrap();
        assert!(id.parse::<uuid::Uuid>().is_ok(), "{ids:?} gave {id}");
    }
}

#[sqlx::test]
async fn the_servers_log_lines_of_a_request_carry_its_id_route_and_account(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (p, addr) = serve(&h, &[]);
    let id = "log-trace-1";
    let res = reqwest::Client::new()
        .get(format!(
            "http://{addr}/experiments/{}",
            uuid::Uuid::now_v7()
        ))
        .header("x-request-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["x-request-id"], id);

    let span_of = |l: &Value| -> Option<Value> {
        l["spans"]
            .as_array()?
            .iter()
            .find(|s| s["request_id"] == id)
            .cloned()
    };
    p.wait_log(|l| span_of(l).is_some(), Duration::from_secs(10));
    let lines: Vec<Value> = p
        .log_lines()
        .into_iter()
        .filter(|l| span_of(l).is_some())
        .collect();
    let done = lines
        .iter()
        .find(|l| l["fields"]["status"] == 404)
        .unwrap_or_else(|| panic!("no line with the response's status: {lines:?}"));
    let span = span_of(done).unwrap();
    assert_eq!(span["method"], "GET", "{span}");
    assert_eq!(span["path"], "/experiments/{id}", "{span}");
    assert_eq!(span["account"], "default", "{span}");
}

/// What a raw connection saw: when the server first answered or closed (from the first
/// byte sent), and what it sent before closing.
struct Seen {
    after: Duration,
    text: String,
}

/// Connects, sends `head` at once, then `drip` one byte a second (half a second apart from
/// the whole seconds), reading meanwhile; returns once the server has sent a whole
/// response or closed the connection. Panics if neither happens within `limit`.
async fn dribble(addr: &str, head: &[u8], drip: Option<u8>, limit: Duration) -> Seen {
    let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let start = Instant::now();
    if !head.is_empty() {
        w.write_all(head).await.unwrap();
    }
    let writer = tokio::spawn(async move {
        let Some(b) = drip else {
            // Send nothing, but keep the connection open.
            std::future::pending::<()>().await;
            return;
        };
        let mut tick = tokio::time::interval_at(
            Instant::now() + Duration::from_millis(500),
            Duration::from_secs(1),
        );
        loop {
            tick.tick().await;
            if w.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut first: Option<Duration> = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout_at(start + limit, r.read(&mut buf)).await {
            Err(_) => panic!(
                "no answer and still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0, // reset: closed
        };
        if n == 0 {
            break;
        }
        first.get_or_insert(start.elapsed());
        got.extend_from_slice(&buf[..n]);
        if complete(&got) {
            break;
        }
    }
    writer.abort();
    Seen {
        after: first.unwrap_or(start.elapsed()),
        text: String::from_utf8_lossy(&got).into_owned(),
    }
}

/// A whole response: its head and `Content-Length` bytes of body.
fn complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    len.is_some_and(|n| body.len() >= n)
}

/// A problem body's JSON, from a raw response.
fn body_json(text: &str) -> Value {
    serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap()
}

/// A header of a raw response (lower-case name).
fn raw_header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split_once("\r\n\r\n")?
        .0
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn assert_within(after: Duration, low: f64, high: f64, what: &str) {
    let s = after.as_secs_f64();
    assert!(
        (low..=high).contains(&s),
        "{what} after {s:.2} s, expected {low} to {high} s"
    );
}

#[sqlx::test]
async fn a_client_slow_with_its_headers_is_disconnected_after_the_header_timeout(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (_p, addr) = serve(&h, &["--header-timeout-secs", "2"]);

    // One that sends its request line, then a header one byte a second; one that sends
    // nothing at all.
    let (slow, silent) = tokio::join!(
        dribble(
            &addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
            Some(b'a'),
            Duration::from_secs(8)
        ),
        dribble(&addr, b"", None, Duration::from_secs(8)),
    );
    for (seen, who) in [(slow, "the slow client"), (silent, "the silent client")] {
        assert_eq!(seen.text, "", "{who} got an answer");
        assert_within(seen.after, 1.8, 3.5, &format!("{who} was disconnected"));
    }

    // A prompt client on a fresh connection is answered as usual.
    let seen = dribble(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        None,
        Duration::from_secs(5),
    )
    .await;
    assert!(seen.text.starts_with("HTTP/1.1 200"), "{}", seen.text);
}

#[sqlx::test]
async fn a_client_slow_with_its_body_gets_a_408_after_the_body_timeout(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (_p, addr) = serve(&h, &["--body-timeout-secs", "2"]);
    let seen = dribble(
        &addr,
        b"POST /experiments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{",
        Some(b' '),
        Duration::from_secs(8),
    )
    .await;
    assert_within(seen.after, 1.8, 3.5, "the answer came");
    assert!(seen.text.starts_with("HTTP/1.1 408"), "{}", seen.text);
    assert_eq!(
        raw_header(&seen.text, "content-type"),
        Some("application/problem+json")
    );
    assert_eq!(raw_header(&seen.text, "connection"), Some("close"));
    let problem = body_json(&seen.text);
    assert_eq!(problem["status"], 408);
    let id = raw_header(&seen.text, "x-request-id").unwrap();
    assert_eq!(problem["instance"], format!("urn:trainyard:request:{id}"));
}

#[sqlx::test]
async fn a_trickling_body_past_its_deadline_is_a_408_problem_whatever_the_route(pool: PgPool) {
    let state = oneshot_state(pool).await.with_net(NetConfig {
        body_timeout: Duration::from_millis(300),
        ..NetConfig::default()
    });
    let app = app(state);
    let predict = format!("/predict?experiment={}", uuid::Uuid::nil());
    for (uri, ct) in [
        ("/experiments", "application/json"),
        (predict.as_str(), "image/png"),
        ("/datasets", "application/zip"),
    ] {
        let trickle = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b" ")),
                (),
            ))
        });
        let req = Request::post(uri)
            .header("content-type", ct)
            .body(Body::from_stream(trickle))
            .unwrap();
        let started = Instant::now();
        let (status, ct, problem) = oneshot_json(&app, req).await;
        assert!(started.elapsed() < Duration::from_secs(3), "{uri}");
        assert_eq!(
            (status, ct.as_str()),
            (408, "application/problem+json"),
            "{uri}: {problem}"
        );
        assert!(
            problem["instance"]
                .as_str()
                .is_some_and(|i| i.starts_with("urn:trainyard:request:")),
            "{problem}"
        );
    }
}

#[sqlx::test]
async fn a_request_past_the_request_timeout_gets_a_504_but_the_curve_stream_lives_on(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (_p, addr) = serve(
        &h,
        &["--request-timeout-secs", "1", "--body-timeout-secs", "30"],
    );
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    // No worker: the experiment stays queued and its curve stream stays open.
    let id = submit(
        &client,
        &base,
        &serde_json::json!({"preset": "torch-cnn", "device": "cpu"}),
    )
    .await;
    let curve = client
        .get(format!("{base}/experiments/{id}/curve"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(curve.status(), 200);
    let opened = Instant::now();

    // A body slow enough to be within its own limit, but not within the request's.
    let seen = dribble(
        &addr,
        b"POST /experiments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{",
        Some(b' '),
        Duration::from_secs(8),
    )
    .await;
    assert_within(seen.after, 0.8, 2.5, "the answer came");
    assert!(seen.text.starts_with("HTTP/1.1 504"), "{}", seen.text);
    assert_eq!(
        raw_header(&seen.text, "content-type"),
        Some("application/problem+json")
    );
    assert_eq!(body_json(&seen.text)["status"], 504);

    // The stream, opened before that request, is still open after twice the timeout.
    let mut stream = curve.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("event: status"),
        "{first:?}"
    );
    let until = opened + Duration::from_millis(2500);
    loop {
        match tokio::time::timeout_at(until, stream.next()).await {
            Err(_) => break,
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the curve stream ended: {other:?}"),
        }
    }
}

/// A CORS preflight for `POST /experiments` from `origin`.
async fn preflight(base: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{base}/experiments"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

#[sqlx::test]
async fn cors_answers_the_configured_origins_only(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (_p, addr) = serve(&h, &["--cors-origin", "http://a.example,http://b.example"]);
    let base = format!("http://{addr}");
    for origin in ["http://a.example", "http://b.example"] {
        let res = preflight(&base, origin).await;
        assert!(res.status().is_success(), "{origin}: {}", res.status());
        let hd = res.headers();
        assert_eq!(hd["access-control-allow-origin"], origin);
        assert!(hd.get("access-control-allow-credentials").is_none());
        let methods = hd["access-control-allow-methods"].to_str().unwrap();
        assert!(
            methods.contains("POST") && methods.contains("PATCH"),
            "{methods}"
        );
        let allowed = hd["access-control-allow-headers"].to_str().unwrap();
        for name in [
            "authorization",
            "content-type",
            "idempotency-key",
            "last-event-id",
        ] {
            assert!(allowed.contains(name), "{name} not in {allowed}");
        }
    }
    let simple = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .header("origin", "http://a.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        simple.headers()["access-control-allow-origin"],
        "http://a.example"
    );
    let exposed = simple.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    for name in [
        "location",
        "retry-after",
        "x-request-id",
        "idempotent-replayed",
        "x-checkpoint-epoch",
    ] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }

    let other = preflight(&base, "http://evil.example").await;
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[sqlx::test]
async fn without_cors_origins_no_response_has_cors_headers(pool: PgPool) {
    let app = app(oneshot_state(pool).await.with_net(NetConfig::default()));
    let req = Request::builder()
        .method("OPTIONS")
        .uri("/experiments")
        .header("origin", "http://a.example")
        .header("access-control-request-method", "POST")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let get = Request::get("/healthz")
        .header("origin", "http://a.example")
        .body(Body::empty())
        .unwrap();
    let res2 = app.oneshot(get).await.unwrap();
    for r in [&res, &res2] {
        let cors: Vec<_> = r
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{cors:?}");
    }
}
