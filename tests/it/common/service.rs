//! A real trainyard server on a loopback socket over a `#[sqlx::test]` database, plus an
//! SSE client that reads the stream as a browser would.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use trainyard::api::{AppState, app};
use trainyard::store::Store;
use trainyard::store::listen::Hub;
use trainyard::worker::{self, WorkerConfig};

pub struct TestServer {
    pub base: String,
    pub store: Store,
    pub client: reqwest::Client,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The app for `oneshot` requests, on `pool` (the test's own database), with its LISTEN
/// hub connected to the server's default database instead: the hub's connection lives as
/// long as the process, and on the test's own database it would keep `#[sqlx::test]`
/// from closing the pool and dropping the database.
pub async fn oneshot_app(pool: PgPool) -> axum::Router {
    app(oneshot_state(pool).await)
}

/// The state `oneshot_app` serves (keys off), to change before building the app.
pub async fn oneshot_state(pool: PgPool) -> AppState {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL, as #[sqlx::test] needs");
    let elsewhere = PgPool::connect(&url).await.unwrap();
    let hub = Hub::start(&elsewhere).await.unwrap();
    // The sender is leaked so the app never sees a shutdown.
    let (stop, rx) = watch::channel(false);
    std::mem::forget(stop);
    AppState::new(Store::from_pool(pool), hub, rx)
}

/// Sends `req` to `router`; returns the status, content type and JSON body (`Null` when
/// the body is not JSON).
pub async fn oneshot_json(
    router: &axum::Router,
    req: axum::http::Request<axum::body::Body>,
) -> (u16, String, Value) {
    use tower::ServiceExt;
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, ct, body)
}

pub fn worker_config(name: &str) -> WorkerConfig {
    WorkerConfig {
        workers: 1,
        lease_secs: 2.0,
        heartbeat_secs: 0.3,
        poll_secs: 0.5,
        device: Some(trainyard::spec::DeviceSpec::Cpu),
        data_dir: super::data_dir(),
        download: false,
        name: name.to_string(),
        // Tests run housekeeping themselves unless they ask for it.
        housekeeping_secs: 0.0,
        // Job processes run the binary the tests built (this test binary is not one).
        job_program: env!("CARGO_BIN_EXE_trainyard").into(),
        ..WorkerConfig::default()
    }
}

impl TestServer {
    /// The API with `workers` worker processes' worth of workers (each its own hub).
    pub async fn start(pool: PgPool, workers: &[WorkerConfig]) -> TestServer {
        let store = Store::from_pool(pool);
        let (shutdown, rx) = watch::channel(false);
        let hub = Hub::start(store.pool()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = app(AppState::new(store.clone(), hub, rx.clone()));
        // The accept loop `trainyard serve` runs, header timeout and graceful drain included.
        let mut tasks = vec![tokio::spawn(trainyard::server::http::serve(
            listener,
            router,
            trainyard::api::net::NetConfig::default().header_timeout,
            rx.clone(),
        ))];
        for cfg in workers {
            tasks.push(Self::spawn_worker(&store, cfg.clone(), rx.clone()).await);
        }
        TestServer {
            base,
            store,
            client: reqwest::Client::new(),
            shutdown,
            tasks,
        }
    }

    pub async fn spawn_worker(
        store: &Store,
        cfg: WorkerConfig,
        rx: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let hub = Hub::start(store.pool()).await.unwrap();
        let store = store.clone();
        tokio::spawn(async move { worker::run(store, hub, cfg, rx).await.unwrap() })
    }

    pub fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Submits a spec; returns the response status and body.
    pub async fn submit(&self, spec: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/experiments"))
            .json(spec)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// POSTs `body` as JSON to `path`; the status and the JSON answer (`Null` if none).
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        let url = self.url(&format!("/experiments/{id}/cancel"));
        self.client.post(url).send().await.unwrap()
    }

    /// Waits until the experiment has finished at least one epoch.
    pub async fn wait_first_epoch(&self, id: &str, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while self.get_json(&format!("/experiments/{id}")).await.1["epochs_done"] == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no epoch after {secs}s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the experiment reaches `status` (or panics after `secs`).
    pub async fn wait_status(&self, id: &str, status: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, e) = self.get_json(&format!("/experiments/{id}")).await;
            if e["status"] == status {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still {} after {secs}s: {e}",
                e["status"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The fields a problem document's `errors` name, in order.
pub fn problem_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str().map(str::to_string))
        .collect()
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// Takes the next complete block off `buf`: `None` when no block is complete yet,
/// `Some(None)` for a keep-alive comment, else the event.
pub fn next_event(buf: &mut String) -> Option<Option<SseEvent>> {
    let pos = buf.find("\n\n")?;
    let block: String = buf.drain(..pos + 2).collect();
    let (mut id, mut event, mut data) = (None, "message".to_string(), String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim());
        }
    }
    if data.is_empty() {
        return Some(None);
    }
    Some(Some(SseEvent {
        id,
        event,
        data: serde_json::from_str(&data).unwrap(),
    }))
}

/// Reads a curve until its `end` event (or `max` events, or `secs`).
pub async fn read_curve(
    client: &reqwest::Client,
    url: &str,
    last_event_id: Option<&str>,
    secs: u64,
) -> Vec<SseEvent> {
    let mut req = client.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        resp.headers()
    );
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no end event after {secs}s; got {events:?}"));
        let Some(chunk) = chunk else { return events };
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(ev) = next_event(&mut buf) {
            let Some(ev) = ev else { continue };
            let end = ev.event == "end";
            events.push(ev);
            if end {
                return events;
            }
        }
    }
}
