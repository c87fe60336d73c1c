//! Accounts sharing one service: keys and sessions, fair claiming, quotas, rate limits,
//! and who did what in the event log.

use crate::common;

use axum::body::Body;
use axum::http::{Request, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use trainyard::api::app;
use trainyard::api::auth::{AuthMode, RateLimits};
use trainyard::store::accounts::QuotasPatch;
use trainyard::store::{Scope, Store};
use uuid::Uuid;

use common::service::{oneshot_json, oneshot_state};

/// A small spec: about 1.2e8 training FLOPs.
fn spec() -> Value {
    json!({"preset": "torch-cnn", "epochs": 1, "dataset": {"train_limit": 64, "test_limit": 64}})
}

async fn app_with(pool: PgPool, limits: RateLimits) -> axum::Router {
    app(oneshot_state(pool).await.with_auth(AuthMode::On, limits))
}

fn unlimited() -> RateLimits {
    RateLimits {
        experiments_per_minute: 0,
        predict_per_second: 0,
    }
}

fn post(uri: &str, key: &str, body: &Value) -> Request<Body> {
    Request::post(uri)
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(uri: &str, key: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

/// Queues `n` experiments for `account` straight in the store.
async fn queue(store: &Store, account: Uuid, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let (e, _) = store
            .create_experiment(trainyard::store::NewExperiment {
                account_id: account,
                spec: json!({}),
                train_flops: 1.0,
                priority: 0,
                idempotency_key: None,
                request_hash: vec![],
                labels: Default::default(),
                dataset_id: None,
                data: json!(null),
            })
            .await
            .unwrap();
        ids.push(e.id);
    }
    ids
}

async fn account_id(store: &Store, name: &str) -> Uuid {
    store.create_key(name, false).await.unwrap();
    store.account(name).await.unwrap().id
}

#[sqlx::test]
async fn one_accounts_long_queue_does_not_starve_another(pool: PgPool) {
    let store = Store::from_pool(pool);
    let a = account_id(&store, "a").await;
    let b = account_id(&store, "b").await;
    let a_ids = queue(&store, a, 50).await;
    let first = store.claim("w1", 30.0, false).await.unwrap().unwrap();
    assert_eq!(first.id, a_ids[0]);
    assert_eq!(first.account, "a");
    // B queues one after all of A's: it starts next, A having one running already.
    let b_ids = queue(&store, b, 1).await;
    let next = store.claim("w2", 30.0, false).await.unwrap().unwrap();
    assert_eq!(next.id, b_ids[0], "B's experiment starts next");
    // Then both have one running, and A's queue goes on in order.
    let third = store.claim("w3", 30.0, false).await.unwrap().unwrap();
    assert_eq!(third.id, a_ids[1]);
}

#[sqlx::test]
async fn priority_orders_within_a_turn_and_age_breaks_ties(pool: PgPool) {
    let store = Store::from_pool(pool);
    let a = account_id(&store, "a").await;
    let b = account_id(&store, "b").await;
    let old_b = queue(&store, b, 1).await[0];
    let (urgent_a, _) = store
        .create_experiment(trainyard::store::NewExperiment {
            account_id: a,
            spec: json!({}),
            train_flops: 1.0,
            priority: 5,
            idempotency_key: None,
            request_hash: vec![],
            labels: Default::default(),
            dataset_id: None,
            data: json!(null),
        })
        .await
        .unwrap();
    // Neither runs anything: the higher priority goes first, though it is younger.
    assert_eq!(
        store.claim("w", 30.0, false).await.unwrap().unwrap().id,
        urgent_a.id
    );
    assert_eq!(
        store.claim("w", 30.0, false).await.unwrap().unwrap().id,
        old_b
    );
}

#[sqlx::test]
async fn the_running_quota_keeps_the_rest_waiting_in_the_queue(pool: PgPool) {
    let store = Store::from_pool(pool);
    let a = account_id(&store, "a").await;
    store
        .set_quotas(
            "a",
            QuotasPatch {
                max_running: Some(Some(1)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ids = queue(&store, a, 2).await;
    let c = store.claim("w", 30.0, false).await.unwrap().unwrap();
    assert_eq!(c.id, ids[0]);
    assert!(
        store.claim("w", 30.0, false).await.unwrap().is_none(),
        "the second waits while the first runs"
    );
    store
        .finish(c.id, c.attempt, &trainyard::store::queue::Ending::Succeeded)
        .await
        .unwrap();
    assert_eq!(
        store.claim("w", 30.0, false).await.unwrap().unwrap().id,
        ids[1]
    );
}

#[sqlx::test]
async fn the_queued_quota_refuses_with_429_naming_it(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    let key = store.create_key("a", false).await.unwrap().key;
    store
        .set_quotas(
            "a",
            QuotasPatch {
                max_queued: Some(Some(2)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let app = app_with(pool, unlimited()).await;
    for _ in 0..2 {
        let (s, _, _) = oneshot_json(&app, post("/experiments", &key, &spec())).await;
        assert_eq!(s, 201);
    }
    let (s, ct, body) = oneshot_json(&app, post("/experiments", &key, &spec())).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["quota"], "max_queued");
    assert!(body["detail"].as_str().unwrap().contains("max_queued is 2"));
    assert_eq!(
        store.account("a").await.unwrap().queued,
        2,
        "nothing more was queued"
    );
}

#[sqlx::test]
async fn the_flops_quota_refuses_with_429_and_says_when_it_fits(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    let key = store.create_key("a", false).await.unwrap().key;
    let app = app_with(pool, unlimited()).await;
    let (s, _, first) = oneshot_json(&app, post("/experiments", &key, &spec())).await;
    assert_eq!(s, 201);
    let flops = store.account("a").await.unwrap().flops_last_day;
    assert!(
        flops > 1e7,
        "the spec's training FLOPs are counted: {flops}"
    );
    // Room for one such experiment a day, and one was submitted.
    store
        .set_quotas(
            "a",
            QuotasPatch {
                max_flops_per_day: Some(Some(flops * 1.5)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let res = {
        use tower::ServiceExt;
        app.clone()
            .oneshot(post("/experiments", &key, &spec()))
            .await
            .unwrap()
    };
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (86_000..=86_400).contains(&wait),
        "it fits when the first leaves the 24-hour window: {wait}"
    );
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["quota"], "max_flops_per_day");
    // An experiment cancelled before it started does not count.
    let id = first["id"].as_str().unwrap();
    let (s, _, _) = oneshot_json(
        &app,
        post(&format!("/experiments/{id}/cancel"), &key, &json!({})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = oneshot_json(&app, post("/experiments", &key, &spec())).await;
    assert_eq!(s, 201);
    // One larger than the whole quota can never fit: no Retry-After.
    store
        .set_quotas(
            "a",
            QuotasPatch {
                max_flops_per_day: Some(Some(flops / 2.0)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let res = {
        use tower::ServiceExt;
        app.clone()
            .oneshot(post("/experiments", &key, &spec()))
            .await
            .unwrap()
    };
    assert_eq!(res.status(), 429);
    assert!(res.headers().get(header::RETRY_AFTER).is_none());
}

#[sqlx::test]
async fn a_keys_rate_limit_answers_429_with_retry_after(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    let key = store.create_key("a", false).await.unwrap().key;
    let other = store.create_key("b", false).await.unwrap().key;
    let app = app_with(
        pool,
        RateLimits {
            experiments_per_minute: 2,
            predict_per_second: 1,
        },
    )
    .await;
    for _ in 0..2 {
        let (s, _, _) = oneshot_json(&app, post("/experiments", &key, &spec())).await;
        assert_eq!(s, 201);
    }
    let res = {
        use tower::ServiceExt;
        app.clone()
            .oneshot(post("/experiments", &key, &spec()))
            .await
            .unwrap()
    };
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    // Another key has its own bucket.
    let (s, _, _) = oneshot_json(&app, post("/experiments", &other, &spec())).await;
    assert_eq!(s, 201);
    // /predict has its own, checked before anything else about the request.
    let predict = || {
        Request::post(format!("/predict?experiment={}", Uuid::now_v7()))
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header(header::CONTENT_TYPE, "image/png")
            .body(Body::from("x"))
            .unwrap()
    };
    let (s, _, _) = oneshot_json(&app, predict()).await;
    assert_ne!(s, 429);
    let (s, _, body) = oneshot_json(&app, predict()).await;
    assert_eq!(s, 429, "{body}");
}

#[sqlx::test]
async fn keys_are_checked_and_refusals_say_how_to_authenticate(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    let made = store.create_key("a", false).await.unwrap();
    assert!(made.key.starts_with("ty_") && made.key.len() == 67);
    let app = app_with(pool.clone(), unlimited()).await;
    let (s, _, _) = oneshot_json(&app, get("/experiments", &made.key)).await;
    assert_eq!(s, 200);
    let stored: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT hash FROM api_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|(h,)| h.len() == 32 && h != made.key.as_bytes()),
        "only a hash is stored"
    );
    let flipped = {
        let mut k = made.key.clone().into_bytes();
        let last = k.len() - 1;
        k[last] = if k[last] == b'0' { b'1' } else { b'0' };
        String::from_utf8(k).unwrap()
    };
    for req in [
        Request::get("/experiments").body(Body::empty()).unwrap(),
        get("/experiments", &flipped),
        get("/experiments", "not-a-key"),
        Request::get("/experiments")
            .header(header::AUTHORIZATION, format!("Basic {}", made.key))
            .body(Body::empty())
            .unwrap(),
    ] {
        let res = {
            use tower::ServiceExt;
            app.clone().oneshot(req).await.unwrap()
        };
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"trainyard\""
        );
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
    // A key in the URL is never read.
    let (s, _, _) = oneshot_json(
        &app,
        Request::get(format!("/experiments?key={}", made.key))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    // Public routes need none.
    for uri in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/",
        "/assets/js/app.js",
    ] {
        let (s, _, _) = oneshot_json(&app, Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(s, 200, "{uri}");
    }
}

#[sqlx::test]
async fn a_revoked_key_and_its_sessions_stop_working_at_once(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    let admin = store.create_key("root", true).await.unwrap().key;
    let user = store.create_key("a", false).await.unwrap();
    let app = app_with(pool, unlimited()).await;
    // Sign in with the key: an HttpOnly, SameSite=Strict cookie.
    let res = {
        use tower::ServiceExt;
        app.clone()
            .oneshot(
                Request::post("/session")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(json!({"key": user.key}).to_string()))
                    .unwrap(),
            )
            .await
            .unwrap()
    };
    assert_eq!(res.status(), 200);
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |uri: &str| {
        Request::get(uri)
            .header(header::COOKIE, pair.clone())
            .body(Body::empty())
            .unwrap()
    };
    let (s, _, who) = oneshot_json(&app, with_cookie("/session")).await;
    assert_eq!((s, who["account"].as_str()), (200, Some("a")));
    let (s, _, _) = oneshot_json(&app, get("/experiments", &user.key)).await;
    assert_eq!(s, 200);
    // Revoked by an admin over HTTP.
    let res = {
        use tower::ServiceExt;
        app.clone()
            .oneshot(
                Request::delete(format!("/keys/{}", user.info.id))
                    .header(header::AUTHORIZATION, format!("Bearer {admin}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
    };
    assert_eq!(res.status(), 200);
    let (s, _, _) = oneshot_json(&app, get("/experiments", &user.key)).await;
    assert_eq!(s, 401, "the revoked key");
    let (s, _, _) = oneshot_json(&app, with_cookie("/experiments")).await;
    assert_eq!(s, 401, "the revoked key's session");
}

#[sqlx::test]
async fn signing_out_ends_the_session(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    let user = store.create_key("a", false).await.unwrap();
    let app = app_with(pool, unlimited()).await;
    let res = {
        use tower::ServiceExt;
        app.clone()
            .oneshot(
                Request::post("/session")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(json!({"key": user.key}).to_string()))
                    .unwrap(),
            )
            .await
            .unwrap()
    };
    let cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
    let pair = cookie.split(';').next().unwrap().to_string();
    let req = |m: &str| {
        Request::builder()
            .method(m)
            .uri("/session")
            .header(header::COOKIE, pair.clone())
            .body(Body::empty())
            .unwrap()
    };
    let (s, _, _) = oneshot_json(&app, req("GET")).await;
    assert_eq!(s, 200);
    let res = {
        use tower::ServiceExt;
        app.clone().oneshot(req("DELETE")).await.unwrap()
    };
    assert_eq!(res.status(), 204);
    assert!(
        res.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (s, _, _) = oneshot_json(&app, req("GET")).await;
    assert_eq!(s, 401);
    // A wrong key does not sign in.
    let (s, _, _) = oneshot_json(
        &app,
        Request::post("/session")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"key": "ty_0"}).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
}

#[sqlx::test]
async fn the_event_log_names_who_created_cancelled_and_deleted(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    let user = store.create_key("a", false).await.unwrap().key;
    let admin = store.create_key("root", true).await.unwrap().key;
    let app = app_with(pool.clone(), unlimited()).await;
    let (_, _, e) = oneshot_json(&app, post("/experiments", &user, &spec())).await;
    let id = e["id"].as_str().unwrap().to_string();
    assert_eq!(e["account"], "a");
    let (s, _, _) = oneshot_json(
        &app,
        post(&format!("/experiments/{id}/cancel"), &admin, &json!({})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = oneshot_json(
        &app,
        Request::delete(format!("/experiments/{id}"))
            .header(header::AUTHORIZATION, format!("Bearer {user}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 204);
    let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT ev.kind, ev.data->>'status', a.name FROM experiment_events ev
         JOIN accounts a ON a.id = ev.account_id
         WHERE ev.experiment_id = $1::uuid ORDER BY ev.id",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![("deleted".to_string(), None, "a".to_string())],
        "deleting keeps only the deletion, naming who"
    );
    // Before deletion, creation and cancel were recorded with their accounts.
    let (_, _, e) = oneshot_json(&app, post("/experiments", &user, &spec())).await;
    let id2 = e["id"].as_str().unwrap();
    oneshot_json(
        &app,
        post(&format!("/experiments/{id2}/cancel"), &admin, &json!({})),
    )
    .await;
    let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT ev.kind, ev.data->>'status', a.name FROM experiment_events ev
         JOIN accounts a ON a.id = ev.account_id
         WHERE ev.experiment_id = $1::uuid ORDER BY ev.id",
    )
    .bind(id2)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "status".to_string(),
                Some("queued".to_string()),
                "a".to_string()
            ),
            (
                "status".to_string(),
                Some("cancelled".to_string()),
                "root".to_string()
            ),
        ]
    );
    // An admin's list shows both accounts' experiments; the user's only its own.
    let other = store.create_key("b", false).await.unwrap().key;
    oneshot_json(&app, post("/experiments", &other, &spec())).await;
    let (_, _, mine) = oneshot_json(&app, get("/experiments", &user)).await;
    let (_, _, all) = oneshot_json(&app, get("/experiments", &admin)).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        store
            .experiment_in(Scope::All, id2.parse().unwrap())
            .await
            .unwrap()
            .account,
        "a"
    );
}

#[sqlx::test]
async fn the_first_start_makes_one_admin_key_and_later_starts_none(pool: PgPool) {
    let store = Store::from_pool(pool);
    let first = store.first_admin_key("admin").await.unwrap();
    let key = first.expect("no admin key existed: one is made");
    assert!(key.info.admin);
    assert_eq!(key.info.account, "admin");
    assert!(store.first_admin_key("admin").await.unwrap().is_none());
    assert_eq!(store.keys(None).await.unwrap().len(), 1);
}

#[sqlx::test]
async fn admin_bodies_must_be_objects_and_whole_numbers_may_have_a_point(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    let admin = store.create_key("root", true).await.unwrap().key;
    let user = store.create_key("a", false).await.unwrap().key;
    store
        .set_quotas(
            "a",
            QuotasPatch {
                max_queued: Some(Some(5)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let app = app_with(pool, unlimited()).await;
    let patch = |body: &str| {
        Request::patch("/accounts/a")
            .header(header::AUTHORIZATION, format!("Bearer {admin}"))
            .header(header::CONTENT_TYPE, "application/merge-patch+json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    // serde would read an array by position: max_queued and max_running set to null.
    let (s, _, body) = oneshot_json(&app, patch("[null, null]")).await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(store.account("a").await.unwrap().quotas.max_queued, Some(5));
    // JSON Schema's integers include 2.0.
    let (s, _, body) = oneshot_json(&app, patch(r#"{"max_running": 2.0}"#)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["quotas"]["max_running"], 2);
    for (wrong, field) in [
        (r#"{"max_running": 2.5}"#, "max_running"),
        (r#"{"max_queued": 3e10}"#, "max_queued"),
        (r#"{"max_queued": "3"}"#, "max_queued"),
    ] {
        let (s, _, body) = oneshot_json(&app, patch(wrong)).await;
        assert_eq!(s, 422, "{wrong}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }
    let (s, _, body) = oneshot_json(&app, post("/keys", &admin, &json!(["b", true]))).await;
    assert_eq!(s, 422, "{body}");
    assert!(store.keys(Some("b")).await.unwrap().is_empty());
    let (s, _, body) = oneshot_json(
        &app,
        Request::post("/session")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!([user]).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422, "{body}");
}
