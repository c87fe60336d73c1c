//! Every operation of the OpenAPI document × every kind of caller: no key, a bad key, a
//! revoked key, another account's key, an admin's key and the owner's key, each with the
//! answer it must get. Another account must learn nothing: where it names the owner's
//! experiment (or key, or account) it gets exactly what it gets for one that does not
//! exist (status, headers and body), none of its answers carries the owner's ids or
//! names, and none of its writes changes anything.
//!
//! The owner's experiment is trained for real by a worker, so metrics, the curve,
//! checkpoints and /predict answer with real data to those who may see it. The other
//! account asks twice: before anyone has asked, and again after the owner and the admin
//! have (caches of keys, resolved checkpoints and models warm).
//!
//! The rows are checked against `openapi/openapi.json`: an operation without a row, or a
//! row without an operation, fails the test.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;
use trainyard::api::app;
use trainyard::api::auth::{AuthMode, RateLimits};
use trainyard::store::{Status, Store, StoreError};
use uuid::Uuid;

use common::service::{TestServer, oneshot_state, worker_config};

const OWNER: &str = "tenant-a";
const OTHER: &str = "tenant-b";
const ADMIN: &str = "root";
/// An account that does not exist, as long as the owner's name.
const NO_ACCOUNT: &str = "tenant-x";

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    NoKey,
    BadKey,
    RevokedKey,
    Other,
    Admin,
    Owner,
    /// The other account again, after the admin and the owner warmed every cache.
    OtherAgain,
}

const EVERYONE: [Who; 7] = [
    Who::NoKey,
    Who::BadKey,
    Who::RevokedKey,
    Who::Other,
    Who::Admin,
    Who::Owner,
    Who::OtherAgain,
];

impl Who {
    fn is_other(self) -> bool {
        matches!(self, Who::Other | Who::OtherAgain)
    }
}

/// What a row's request names: the owner's thing, or a stand-in that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Real,
    Unknown,
}

struct Fx {
    owner_key: String,
    other_key: String,
    admin_key: String,
    revoked_key: String,
    bad_key: String,
    owner_key_id: Uuid,
    other_key_id: Uuid,
    /// A key of the other account that the admin revokes.
    spare_key_id: Uuid,
    /// The owner's: trained, with checkpoints; never changed by anyone.
    trained: Uuid,
    /// The owner's, queued; never changed by anyone.
    kept_queued: Uuid,
    /// The owner's, queued: the admin and then the owner rename it.
    patchable: Uuid,
    /// The owner's, queued: the admin cancels one, the owner the other.
    cancel_for: [Uuid; 2],
    /// The owner's, ended: the admin deletes one, the owner the other.
    delete_for: [Uuid; 2],
    /// The other account's own experiment.
    other_own: Uuid,
    /// An id no experiment has.
    unknown: Uuid,
    png: Vec<u8>,
    /// The owner's uploaded dataset; never changed by anyone.
    dataset: Uuid,
    /// The owner's datasets: the admin deletes one, the owner the other.
    dataset_delete_for: [Uuid; 2],
    /// The other account's own dataset.
    other_dataset: Uuid,
    /// The owner's, queued: like `trained` but for its learning rate (an ablation's B).
    lr_variant: Uuid,
    /// The owner's grid sweep, queued; never changed by anyone.
    sweep: Uuid,
    /// The owner's sweeps: the admin cancels one, the owner the other.
    sweep_cancel_for: [Uuid; 2],
    /// The owner's sweeps, cancelled: the admin deletes one, the owner the other.
    sweep_delete_for: [Uuid; 2],
    /// The other account's own sweep.
    other_sweep: Uuid,
}

impl Fx {
    fn owners_experiments(&self) -> Vec<Uuid> {
        let mut ids = vec![
            self.trained,
            self.kept_queued,
            self.patchable,
            self.lr_variant,
        ];
        ids.extend(self.cancel_for);
        ids.extend(self.delete_for);
        ids
    }

    /// Everything of the owner's that the other account must never read.
    fn owners_secrets(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .owners_experiments()
            .iter()
            .map(Uuid::to_string)
            .collect();
        s.push(self.dataset.to_string());
        s.extend(self.dataset_delete_for.iter().map(Uuid::to_string));
        s.push(self.sweep.to_string());
        s.extend(self.sweep_cancel_for.iter().map(Uuid::to_string));
        s.extend(self.sweep_delete_for.iter().map(Uuid::to_string));
        s.push(self.owner_key_id.to_string());
        s.push(self.owner_key.clone());
        s.push(self.owner_key[..15].to_string()); // its listed prefix
        s.push(OWNER.to_string());
        s
    }

    fn key(&self, who: Who) -> Option<&str> {
        match who {
            Who::NoKey => None,
            Who::BadKey => Some(&self.bad_key),
            Who::RevokedKey => Some(&self.revoked_key),
            Who::Other | Who::OtherAgain => Some(&self.other_key),
            Who::Admin => Some(&self.admin_key),
            Who::Owner => Some(&self.owner_key),
        }
    }

    /// The owner's experiment a request names (the trained one unless the row says
    /// otherwise), or the unknown id.
    fn id(&self, s: Subject) -> Uuid {
        match s {
            Subject::Real => self.trained,
            Subject::Unknown => self.unknown,
        }
    }
}

/// A request, before the caller's key is added.
struct Req {
    method: &'static str,
    uri: String,
    content_type: Option<&'static str>,
    accept: Option<&'static str>,
    body: Vec<u8>,
    /// The owner's id or name the request names, and the stand-in that replaces it in
    /// the unknown twin's answer.
    subject: Option<(String, String)>,
}

impl Req {
    fn new(method: &'static str, uri: impl Into<String>) -> Req {
        Req {
            method,
            uri: uri.into(),
            content_type: None,
            accept: None,
            body: Vec::new(),
            subject: None,
        }
    }

    fn get(uri: impl Into<String>) -> Req {
        Req::new("GET", uri)
    }

    fn json(mut self, v: Value) -> Req {
        self.content_type = Some("application/json");
        self.body = v.to_string().into_bytes();
        self
    }

    fn body(mut self, content_type: &'static str, body: Vec<u8>) -> Req {
        self.content_type = Some(content_type);
        self.body = body;
        self
    }

    fn accept(mut self, a: &'static str) -> Req {
        self.accept = Some(a);
        self
    }

    /// Names `real` (of the owner's), or `unknown` in its twin.
    fn names(mut self, s: Subject, real: impl ToString, unknown: impl ToString) -> Req {
        if s == Subject::Real {
            self.subject = Some((real.to_string(), unknown.to_string()));
        }
        self
    }

    /// Names the owner's experiment `id`, or the unknown id in its twin.
    fn names_experiment(self, fx: &Fx, s: Subject, id: Uuid) -> Req {
        self.names(s, id, fx.unknown)
    }
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send(app: &axum::Router, key: Option<&str>, req: &Req) -> Answer {
    use tower::ServiceExt;
    let mut b = Request::builder().method(req.method).uri(&req.uri);
    if let Some(k) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    if let Some(ct) = req.content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    if let Some(a) = req.accept {
        b = b.header(header::ACCEPT, a);
    }
    let res = app
        .clone()
        .oneshot(b.body(Body::from(req.body.clone())).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let mut headers = res.headers().clone();
    // Each answer names its own request (`x-request-id`, a problem's `instance`): that
    // says nothing about the experiment, so it is set aside before answers are compared.
    let request_id = headers
        .remove("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body = tokio::time::timeout(
        Duration::from_secs(30),
        axum::body::to_bytes(res.into_body(), usize::MAX),
    )
    .await
    .unwrap_or_else(|_| panic!("{} {}: no end to the body in 30s", req.method, req.uri))
    .unwrap()
    .to_vec();
    let body = match (request_id, String::from_utf8(body)) {
        (Some(id), Ok(text)) => text.replace(&id, "REQUEST-ID").into_bytes(),
        (_, Ok(text)) => text.into_bytes(),
        (_, Err(e)) => e.into_bytes(),
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// The answer a caller must get (for the callers with a key that names someone; no key,
/// a bad key and a revoked key get a 401 on every operation that is not public).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Status(u16),
    Unauthorized,
    Forbidden,
    NotFound,
}

type Check = fn(&Fx, Who, &Answer) -> Result<(), String>;

struct Row {
    method: &'static str,
    path: &'static str,
    /// Told apart from another row of the same operation.
    variant: &'static str,
    /// Needs no key.
    public: bool,
    request: fn(&Fx, Who, Subject) -> Req,
    expect: fn(Who) -> Expect,
    /// More about a 2xx answer.
    check: Check,
}

fn ok(_: &Fx, _: Who, _: &Answer) -> Result<(), String> {
    Ok(())
}

/// Admins and the owner see it; the other account as if it did not exist.
fn owners(who: Who) -> Expect {
    if who.is_other() {
        Expect::NotFound
    } else {
        Expect::Status(200)
    }
}

/// Any key that names someone.
fn anyone(_: Who) -> Expect {
    Expect::Status(200)
}

/// Admins only.
fn admins(who: Who) -> Expect {
    if who == Who::Admin {
        Expect::Status(200)
    } else {
        Expect::Forbidden
    }
}

fn has_type(a: &Answer, prefix: &str) -> Result<(), String> {
    if a.content_type().starts_with(prefix) && !a.body.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "expected a non-empty {prefix}, got {:?} of {} bytes",
            a.content_type(),
            a.body.len()
        ))
    }
}

fn is_trained(fx: &Fx, _: Who, a: &Answer) -> Result<(), String> {
    let e = a.json();
    if e["id"] == fx.trained.to_string() && e["account"] == OWNER && e["status"] == "succeeded" {
        Ok(())
    } else {
        Err(format!("not the trained experiment: {e}"))
    }
}

/// The caller's own account, whoever asks.
fn own_account_name(who: Who) -> &'static str {
    match who {
        Who::Admin => ADMIN,
        Who::Owner => OWNER,
        _ => OTHER,
    }
}

fn uuid_list(v: &Value, field: &str) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x[field].as_str().map(str::to_string))
        .collect()
}

/// Reads an SSE body down to its event names.
fn sse_events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("event:"))
        .map(|e| e.trim().to_string())
        .collect()
}

fn rows() -> Vec<Row> {
    vec![
        // --- experiments ---
        Row {
            method: "GET",
            path: "/experiments",
            variant: "",
            public: false,
            request: |_, _, _| Req::get("/experiments?limit=100"),
            expect: anyone,
            check: |fx, who, a| {
                let ids = uuid_list(&a.json()["items"], "id");
                let owners = fx.owners_experiments();
                let sees_owners = owners.iter().any(|id| ids.contains(&id.to_string()));
                let sees_other = ids.contains(&fx.other_own.to_string());
                match who {
                    Who::Admin if sees_owners && sees_other => Ok(()),
                    Who::Owner if sees_owners && !sees_other => Ok(()),
                    _ if who.is_other() && !sees_owners && sees_other => Ok(()),
                    _ => Err(format!(
                        "owner's listed: {sees_owners}, other's listed: {sees_other}"
                    )),
                }
            },
        },
        Row {
            method: "POST",
            path: "/experiments",
            variant: "",
            public: false,
            request: |_, _, _| Req::new("POST", "/experiments").json(tiny_spec()),
            expect: |_| Expect::Status(201),
            check: |_, who, a| {
                let e = a.json();
                if e["account"] == own_account_name(who) && e["status"] == "queued" {
                    Ok(())
                } else {
                    Err(format!("queued for the wrong account: {e}"))
                }
            },
        },
        Row {
            method: "GET",
            path: "/experiments/{id}",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/experiments/{}", fx.id(s))).names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: is_trained,
        },
        Row {
            method: "PATCH",
            path: "/experiments/{id}",
            variant: "",
            public: false,
            request: |fx, who, s| {
                // The admin and the owner rename one made for it; everyone else tries the
                // trained one.
                let id = match (who, s) {
                    (_, Subject::Unknown) => fx.unknown,
                    (Who::Admin | Who::Owner, _) => fx.patchable,
                    _ => fx.trained,
                };
                Req::new("PATCH", format!("/experiments/{id}"))
                    .body(
                        "application/merge-patch+json",
                        json!({"name": format!("renamed by {who:?}"), "tags": ["renamed"]})
                            .to_string()
                            .into_bytes(),
                    )
                    .names_experiment(fx, s, id)
            },
            expect: owners,
            check: |fx, who, a| {
                let e = a.json();
                if e["id"] == fx.patchable.to_string() && e["name"] == format!("renamed by {who:?}")
                {
                    Ok(())
                } else {
                    Err(format!("not renamed: {e}"))
                }
            },
        },
        Row {
            method: "DELETE",
            path: "/experiments/{id}",
            variant: "",
            public: false,
            request: |fx, who, s| {
                let id = match (who, s) {
                    (_, Subject::Unknown) => fx.unknown,
                    (Who::Admin, _) => fx.delete_for[0],
                    (Who::Owner, _) => fx.delete_for[1],
                    _ => fx.trained,
                };
                Req::new("DELETE", format!("/experiments/{id}")).names_experiment(fx, s, id)
            },
            expect: |who| match owners(who) {
                Expect::Status(_) => Expect::Status(204),
                e => e,
            },
            check: ok,
        },
        Row {
            method: "POST",
            path: "/experiments/{id}/cancel",
            variant: "",
            public: false,
            request: |fx, who, s| {
                let id = match (who, s) {
                    (_, Subject::Unknown) => fx.unknown,
                    (Who::Admin, _) => fx.cancel_for[0],
                    (Who::Owner, _) => fx.cancel_for[1],
                    _ => fx.kept_queued,
                };
                Req::new("POST", format!("/experiments/{id}/cancel")).names_experiment(fx, s, id)
            },
            expect: owners,
            check: |_, _, a| {
                if a.json()["status"] == "cancelled" {
                    Ok(())
                } else {
                    Err(format!("not cancelled: {}", a.json()))
                }
            },
        },
        Row {
            method: "GET",
            path: "/experiments/{id}/metrics",
            variant: "JSON",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/experiments/{}/metrics", fx.id(s)))
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: |_, _, a| match a.json().as_array().map(Vec::len) {
                Some(1) => Ok(()),
                _ => Err(format!("not one epoch: {}", a.text())),
            },
        },
        Row {
            method: "GET",
            path: "/experiments/{id}/metrics",
            variant: "CSV",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/experiments/{}/metrics", fx.id(s)))
                    .accept("text/csv")
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: |_, _, a| {
                has_type(a, "text/csv")?;
                if a.text().lines().count() == 2 {
                    Ok(())
                } else {
                    Err(format!("not a header and one epoch: {}", a.text()))
                }
            },
        },
        Row {
            method: "GET",
            path: "/experiments/{id}/curve",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/experiments/{}/curve", fx.id(s)))
                    .accept("text/event-stream")
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: |_, _, a| {
                has_type(a, "text/event-stream")?;
                let events = sse_events(&a.text());
                if events.contains(&"epoch".to_string()) && events.last().unwrap() == "end" {
                    Ok(())
                } else {
                    Err(format!("no epoch, or no end: {events:?}"))
                }
            },
        },
        Row {
            method: "GET",
            path: "/experiments/{id}/curve.svg",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/experiments/{}/curve.svg", fx.id(s)))
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: |_, _, a| has_type(a, "image/svg+xml"),
        },
        Row {
            method: "GET",
            path: "/experiments/{id}/curve.png",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/experiments/{}/curve.png", fx.id(s)))
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: |_, _, a| has_type(a, "image/png"),
        },
        Row {
            method: "GET",
            path: "/experiments/{id}/checkpoints",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/experiments/{}/checkpoints", fx.id(s)))
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: |_, _, a| match a.json().as_array().map(Vec::len) {
                Some(n) if n >= 1 => Ok(()),
                _ => Err(format!("no checkpoints: {}", a.text())),
            },
        },
        Row {
            method: "GET",
            path: "/experiments/{id}/checkpoints/{which}",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/experiments/{}/checkpoints/best", fx.id(s)))
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: |_, _, a| {
                has_type(a, "application/octet-stream")?;
                match a.headers.get("x-checkpoint-epoch") {
                    Some(e) if e == "1" => Ok(()),
                    e => Err(format!("X-Checkpoint-Epoch {e:?}")),
                }
            },
        },
        // --- comparisons: the other account names the owner's experiment beside its own ---
        Row {
            method: "GET",
            path: "/compare",
            variant: "",
            public: false,
            request: |fx, who, s| compare_request("/compare", fx, who, s),
            expect: owners,
            check: |_, _, a| match a.json()["experiments"].as_array().map(Vec::len) {
                Some(2) => Ok(()),
                _ => Err(format!("not two experiments: {}", a.text())),
            },
        },
        Row {
            method: "GET",
            path: "/compare.svg",
            variant: "",
            public: false,
            request: |fx, who, s| compare_request("/compare.svg", fx, who, s),
            expect: owners,
            check: |_, _, a| has_type(a, "image/svg+xml"),
        },
        Row {
            method: "GET",
            path: "/compare.png",
            variant: "",
            public: false,
            request: |fx, who, s| compare_request("/compare.png", fx, who, s),
            expect: owners,
            check: |_, _, a| has_type(a, "image/png"),
        },
        // --- predict ---
        Row {
            method: "POST",
            path: "/predict",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::new("POST", format!("/predict?experiment={}", fx.id(s)))
                    .body("image/png", fx.png.clone())
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: |fx, _, a| {
                let p = a.json();
                if p["experiment"] == fx.trained.to_string()
                    && p["predictions"].as_array().map(Vec::len) == Some(1)
                {
                    Ok(())
                } else {
                    Err(format!("not one prediction: {p}"))
                }
            },
        },
        // --- the Open Inference Protocol: /predict's models by another name ---
        Row {
            method: "GET",
            path: "/v2/models/{experiment}",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/v2/models/{}", fx.id(s))).names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: is_trained_model,
        },
        Row {
            method: "GET",
            path: "/v2/models/{experiment}/versions/{version}",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/v2/models/{}/versions/1", fx.id(s)))
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: is_trained_model,
        },
        Row {
            method: "GET",
            path: "/v2/models/{experiment}/ready",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/v2/models/{}/ready", fx.id(s)))
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: is_ready_model,
        },
        Row {
            method: "GET",
            path: "/v2/models/{experiment}/versions/{version}/ready",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::get(format!("/v2/models/{}/versions/1/ready", fx.id(s)))
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: is_ready_model,
        },
        Row {
            method: "POST",
            path: "/v2/models/{experiment}/infer",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::new("POST", format!("/v2/models/{}/infer", fx.id(s)))
                    .json(v2_request())
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: is_v2_answer,
        },
        Row {
            method: "POST",
            path: "/v2/models/{experiment}/versions/{version}/infer",
            variant: "",
            public: false,
            request: |fx, _, s| {
                Req::new("POST", format!("/v2/models/{}/versions/1/infer", fx.id(s)))
                    .json(v2_request())
                    .names_experiment(fx, s, fx.trained)
            },
            expect: owners,
            check: is_v2_answer,
        },
        Row {
            method: "GET",
            path: "/v2",
            variant: "",
            public: true,
            request: |_, _, _| Req::get("/v2"),
            expect: anyone,
            check: |_, _, a| {
                if a.json()["extensions"] == json!(["binary_tensor_data"]) {
                    Ok(())
                } else {
                    Err(format!("server metadata {}", a.text()))
                }
            },
        },
        Row {
            method: "GET",
            path: "/v2/health/live",
            variant: "",
            public: true,
            request: |_, _, _| Req::get("/v2/health/live"),
            expect: anyone,
            check: ok,
        },
        Row {
            method: "GET",
            path: "/v2/health/ready",
            variant: "",
            public: true,
            request: |_, _, _| Req::get("/v2/health/ready"),
            expect: anyone,
            check: ok,
        },
        // --- specs: anyone with a key ---
        Row {
            method: "GET",
            path: "/specs/presets",
            variant: "",
            public: false,
            request: |_, _, _| Req::get("/specs/presets"),
            expect: anyone,
            check: |_, _, a| has_type(a, "application/json"),
        },
        Row {
            method: "GET",
            path: "/specs/schema",
            variant: "",
            public: false,
            request: |_, _, _| Req::get("/specs/schema"),
            expect: anyone,
            check: |_, _, a| has_type(a, "application/schema+json"),
        },
        Row {
            method: "POST",
            path: "/specs/validate",
            variant: "",
            public: false,
            request: |_, _, _| Req::new("POST", "/specs/validate").json(tiny_spec()),
            expect: anyone,
            check: |_, _, a| has_type(a, "application/json"),
        },
        // --- stats: the caller's own account's, all for an admin ---
        Row {
            method: "GET",
            path: "/stats",
            variant: "",
            public: false,
            request: |_, _, _| Req::get("/stats"),
            expect: anyone,
            check: |_, who, a| {
                // Only the owner's experiment has succeeded.
                let succeeded = a.json()["experiments"]["succeeded"].as_i64();
                let want = if who.is_other() { 0 } else { 1 };
                if succeeded == Some(want) {
                    Ok(())
                } else {
                    Err(format!("succeeded {succeeded:?}, expected {want}"))
                }
            },
        },
        // --- keys and accounts ---
        Row {
            method: "GET",
            path: "/keys",
            variant: "",
            public: false,
            request: |_, _, _| Req::get("/keys"),
            expect: admins,
            check: |fx, _, a| {
                let ids = uuid_list(&a.json(), "id");
                let listed = ids.contains(&fx.owner_key_id.to_string())
                    && ids.contains(&fx.other_key_id.to_string());
                let secret_shown = [&fx.owner_key, &fx.other_key, &fx.admin_key]
                    .iter()
                    .any(|k| a.text().contains(k.as_str()));
                if listed && !secret_shown {
                    Ok(())
                } else {
                    Err(format!(
                        "listed both: {listed}, a secret shown: {secret_shown}"
                    ))
                }
            },
        },
        Row {
            method: "POST",
            path: "/keys",
            variant: "",
            public: false,
            request: |_, who, _| {
                // Anyone but an admin tries to make itself an admin key.
                let body = if who == Who::Admin {
                    json!({"account": "tenant-c"})
                } else {
                    json!({"account": OTHER, "admin": true})
                };
                Req::new("POST", "/keys").json(body)
            },
            expect: |who| match admins(who) {
                Expect::Status(_) => Expect::Status(201),
                e => e,
            },
            check: |_, _, a| {
                let k = a.json();
                if k["account"] == "tenant-c" && k["admin"] == false {
                    Ok(())
                } else {
                    Err(format!("not tenant-c's key: {k}"))
                }
            },
        },
        Row {
            method: "DELETE",
            path: "/keys/{id}",
            variant: "",
            public: false,
            request: |fx, who, s| {
                // The admin revokes a spare key; the other account tries the owner's key,
                // the owner the other account's.
                let (id, unknown) = match who {
                    Who::Admin => (fx.spare_key_id, fx.unknown),
                    Who::Owner => (fx.other_key_id, fx.unknown),
                    _ => (fx.owner_key_id, fx.unknown),
                };
                let target = if s == Subject::Real { id } else { unknown };
                Req::new("DELETE", format!("/keys/{target}")).names(s, id, unknown)
            },
            expect: admins,
            check: |fx, _, a| {
                let k = a.json();
                if k["id"] == fx.spare_key_id.to_string() && k["revoked_at"].is_string() {
                    Ok(())
                } else {
                    Err(format!("not the spare key, revoked: {k}"))
                }
            },
        },
        Row {
            method: "GET",
            path: "/accounts",
            variant: "",
            public: false,
            request: |_, _, _| Req::get("/accounts"),
            expect: admins,
            check: |_, _, a| {
                let names = uuid_list(&a.json(), "name");
                if names.iter().any(|n| n == OWNER) && names.iter().any(|n| n == OTHER) {
                    Ok(())
                } else {
                    Err(format!("accounts {names:?}"))
                }
            },
        },
        Row {
            method: "GET",
            path: "/accounts/{name}",
            variant: "",
            public: false,
            request: |_, _, s| {
                let name = if s == Subject::Real {
                    OWNER
                } else {
                    NO_ACCOUNT
                };
                Req::get(format!("/accounts/{name}")).names(s, OWNER, NO_ACCOUNT)
            },
            expect: owners,
            check: |_, _, a| {
                if a.json()["name"] == OWNER {
                    Ok(())
                } else {
                    Err(format!("not the owner's account: {}", a.text()))
                }
            },
        },
        Row {
            method: "PATCH",
            path: "/accounts/{name}",
            variant: "",
            public: false,
            request: |_, who, s| {
                // Anyone but an admin tries to stop the owner from queueing anything.
                let body = if who == Who::Admin {
                    json!({"max_flops_per_day": 1e18})
                } else {
                    json!({"max_queued": 0})
                };
                let name = if s == Subject::Real {
                    OWNER
                } else {
                    NO_ACCOUNT
                };
                Req::new("PATCH", format!("/accounts/{name}"))
                    .body(
                        "application/merge-patch+json",
                        body.to_string().into_bytes(),
                    )
                    .names(s, OWNER, NO_ACCOUNT)
            },
            expect: admins,
            check: |_, _, a| {
                let q = &a.json()["quotas"];
                if q["max_flops_per_day"] == 1e18 && q["max_queued"].is_null() {
                    Ok(())
                } else {
                    Err(format!("quotas {q}"))
                }
            },
        },
        Row {
            method: "GET",
            path: "/account",
            variant: "",
            public: false,
            request: |_, _, _| Req::get("/account"),
            expect: anyone,
            check: |_, who, a| {
                if a.json()["name"] == own_account_name(who) {
                    Ok(())
                } else {
                    Err(format!("not the caller's account: {}", a.text()))
                }
            },
        },
        // --- the web app's session ---
        Row {
            method: "GET",
            path: "/session",
            variant: "",
            public: false,
            request: |_, _, _| Req::get("/session"),
            expect: anyone,
            check: |_, who, a| {
                let s = a.json();
                if s["account"] == own_account_name(who) && s["admin"] == (who == Who::Admin) {
                    Ok(())
                } else {
                    Err(format!("not the caller: {s}"))
                }
            },
        },
        Row {
            method: "POST",
            path: "/session",
            variant: "the key in the body",
            public: true,
            request: |fx, who, _| {
                let body = match fx.key(who) {
                    Some(k) => json!({ "key": k }),
                    None => json!({}),
                };
                Req::new("POST", "/session").json(body)
            },
            expect: |who| match who {
                Who::NoKey => Expect::Status(422),
                Who::BadKey | Who::RevokedKey => Expect::Unauthorized,
                _ => Expect::Status(200),
            },
            check: |_, who, a| {
                let cookie = a
                    .headers
                    .get(header::SET_COOKIE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if a.status != 200 {
                    return Ok(());
                }
                if a.json()["account"] == own_account_name(who) && cookie.contains("HttpOnly") {
                    Ok(())
                } else {
                    Err(format!("{} with cookie {cookie:?}", a.text()))
                }
            },
        },
        Row {
            method: "DELETE",
            path: "/session",
            variant: "",
            public: true,
            request: |_, _, _| Req::new("DELETE", "/session"),
            expect: |_| Expect::Status(204),
            check: ok,
        },
        // --- probes ---
        Row {
            method: "GET",
            path: "/metrics",
            variant: "",
            public: true,
            request: |_, _, _| Req::get("/metrics"),
            expect: anyone,
            check: ok,
        },
        Row {
            method: "GET",
            path: "/healthz",
            variant: "",
            public: true,
            request: |_, _, _| Req::get("/healthz"),
            expect: anyone,
            check: ok,
        },
        Row {
            method: "GET",
            path: "/readyz",
            variant: "",
            public: true,
            request: |_, _, _| Req::get("/readyz"),
            expect: anyone,
            check: ok,
        },
        // --- datasets ---
        Row {
            method: "GET",
            path: "/datasets",
            variant: "",
            public: false,
            request: |_, _, _| Req::get("/datasets"),
            expect: anyone,
            check: |fx, who, a| {
                let ids = uuid_list(&a.json(), "id");
                let sees_owners = ids.contains(&fx.dataset.to_string());
                let sees_other = ids.contains(&fx.other_dataset.to_string());
                match who {
                    Who::Admin if sees_owners && sees_other => Ok(()),
                    Who::Owner if sees_owners && !sees_other => Ok(()),
                    _ if who.is_other() && !sees_owners && sees_other => Ok(()),
                    _ => Err(format!(
                        "owner's listed: {sees_owners}, other's listed: {sees_other}"
                    )),
                }
            },
        },
        Row {
            method: "POST",
            path: "/datasets",
            variant: "",
            public: false,
            request: |_, who, _| {
                Req::new("POST", format!("/datasets?name=by-{who:?}"))
                    .body("application/zip", dataset_zip())
            },
            expect: |_| Expect::Status(201),
            check: |_, who, a| {
                let d = a.json();
                let samples = d["train_samples"].as_i64().unwrap_or(0)
                    + d["test_samples"].as_i64().unwrap_or(0);
                if d["name"] == format!("by-{who:?}") && samples == 4 {
                    Ok(())
                } else {
                    Err(format!("not stored: {d}"))
                }
            },
        },
        Row {
            method: "GET",
            path: "/datasets/{id}",
            variant: "",
            public: false,
            request: |fx, _, s| {
                let id = if s == Subject::Real {
                    fx.dataset
                } else {
                    fx.unknown
                };
                Req::get(format!("/datasets/{id}")).names(s, fx.dataset, fx.unknown)
            },
            expect: owners,
            check: |fx, _, a| {
                let d = a.json();
                if d["id"] == fx.dataset.to_string() && d["class_names"] == json!(["a", "b"]) {
                    Ok(())
                } else {
                    Err(format!("not the owner's dataset: {d}"))
                }
            },
        },
        Row {
            method: "GET",
            path: "/datasets/{id}/samples.png",
            variant: "",
            public: false,
            request: |fx, _, s| {
                let id = if s == Subject::Real {
                    fx.dataset
                } else {
                    fx.unknown
                };
                Req::get(format!("/datasets/{id}/samples.png")).names(s, fx.dataset, fx.unknown)
            },
            expect: owners,
            check: |_, _, a| has_type(a, "image/png"),
        },
        Row {
            method: "DELETE",
            path: "/datasets/{id}",
            variant: "",
            public: false,
            request: |fx, who, s| {
                let id = match (who, s) {
                    (_, Subject::Unknown) => fx.unknown,
                    (Who::Admin, _) => fx.dataset_delete_for[0],
                    (Who::Owner, _) => fx.dataset_delete_for[1],
                    _ => fx.dataset,
                };
                Req::new("DELETE", format!("/datasets/{id}")).names(s, id, fx.unknown)
            },
            expect: |who| match owners(who) {
                Expect::Status(_) => Expect::Status(204),
                e => e,
            },
            check: ok,
        },
        // --- sweeps ---
        Row {
            method: "GET",
            path: "/sweeps",
            variant: "",
            public: false,
            request: |_, _, _| Req::get("/sweeps?limit=100"),
            expect: anyone,
            check: |fx, who, a| {
                let ids = uuid_list(&a.json()["items"], "id");
                let sees_owners = ids.contains(&fx.sweep.to_string());
                let sees_other = ids.contains(&fx.other_sweep.to_string());
                match who {
                    Who::Admin if sees_owners && sees_other => Ok(()),
                    Who::Owner if sees_owners && !sees_other => Ok(()),
                    _ if who.is_other() && !sees_owners && sees_other => Ok(()),
                    _ => Err(format!(
                        "owner's listed: {sees_owners}, other's listed: {sees_other}"
                    )),
                }
            },
        },
        Row {
            method: "POST",
            path: "/sweeps",
            variant: "",
            public: false,
            request: |_, _, _| Req::new("POST", "/sweeps").json(tiny_sweep()),
            expect: |_| Expect::Status(201),
            check: |_, _, a| {
                let s = a.json();
                if s["children"].as_array().map(Vec::len) == Some(2) && s["state"] == "queued" {
                    Ok(())
                } else {
                    Err(format!("not queued: {s}"))
                }
            },
        },
        Row {
            method: "POST",
            path: "/sweeps",
            variant: "an ablation of the owner's experiments",
            public: false,
            request: |fx, who, s| {
                let (from, to) = match (who, s) {
                    (_, Subject::Unknown) => (fx.unknown, fx.lr_variant),
                    _ => (fx.trained, fx.lr_variant),
                };
                // The other account names the owner's `from` (and its twin an unknown
                // one): both are "no experiment" at ablate.from, and `to` is never
                // looked up.
                Req::new("POST", "/sweeps")
                    .json(json!({"ablate": {"from": from, "to": to}}))
                    .names_experiment(fx, s, from)
            },
            expect: |who| {
                if who.is_other() {
                    Expect::Status(422)
                } else {
                    Expect::Status(201)
                }
            },
            check: |_, _, a| {
                let s = a.json();
                let paths: Vec<&str> = s["ablation"]["differences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d["path"].as_str())
                    .collect();
                if paths == ["optimizer.learning_rate"] {
                    Ok(())
                } else {
                    Err(format!("not the one difference: {s}"))
                }
            },
        },
        Row {
            method: "GET",
            path: "/sweeps/{id}",
            variant: "",
            public: false,
            request: |fx, _, s| {
                let id = if s == Subject::Real {
                    fx.sweep
                } else {
                    fx.unknown
                };
                Req::get(format!("/sweeps/{id}")).names(s, fx.sweep, fx.unknown)
            },
            expect: owners,
            check: |fx, _, a| {
                let s = a.json();
                if s["id"] == fx.sweep.to_string()
                    && s["ranking"].as_array().map(Vec::len) == Some(2)
                {
                    Ok(())
                } else {
                    Err(format!("not the owner's sweep: {s}"))
                }
            },
        },
        Row {
            method: "GET",
            path: "/sweeps/{id}/curve.svg",
            variant: "",
            public: false,
            request: |fx, _, s| {
                let id = if s == Subject::Real {
                    fx.sweep
                } else {
                    fx.unknown
                };
                Req::get(format!("/sweeps/{id}/curve.svg")).names(s, fx.sweep, fx.unknown)
            },
            expect: owners,
            check: |_, _, a| has_type(a, "image/svg+xml"),
        },
        Row {
            method: "GET",
            path: "/sweeps/{id}/curve.png",
            variant: "",
            public: false,
            request: |fx, _, s| {
                let id = if s == Subject::Real {
                    fx.sweep
                } else {
                    fx.unknown
                };
                Req::get(format!("/sweeps/{id}/curve.png?width=300&height=200"))
                    .names(s, fx.sweep, fx.unknown)
            },
            expect: owners,
            check: |_, _, a| has_type(a, "image/png"),
        },
        Row {
            method: "POST",
            path: "/sweeps/{id}/cancel",
            variant: "",
            public: false,
            request: |fx, who, s| {
                let id = match (who, s) {
                    (_, Subject::Unknown) => fx.unknown,
                    (Who::Admin, _) => fx.sweep_cancel_for[0],
                    (Who::Owner, _) => fx.sweep_cancel_for[1],
                    _ => fx.sweep,
                };
                Req::new("POST", format!("/sweeps/{id}/cancel")).names(s, id, fx.unknown)
            },
            expect: owners,
            check: |_, _, a| {
                let s = a.json();
                if s["counts"] == json!({"cancelled": 2}) && s["state"] == "finished" {
                    Ok(())
                } else {
                    Err(format!("not cancelled: {s}"))
                }
            },
        },
        Row {
            method: "DELETE",
            path: "/sweeps/{id}",
            variant: "",
            public: false,
            request: |fx, who, s| {
                let id = match (who, s) {
                    (_, Subject::Unknown) => fx.unknown,
                    (Who::Admin, _) => fx.sweep_delete_for[0],
                    (Who::Owner, _) => fx.sweep_delete_for[1],
                    _ => fx.sweep,
                };
                Req::new("DELETE", format!("/sweeps/{id}")).names(s, id, fx.unknown)
            },
            expect: |who| match owners(who) {
                Expect::Status(_) => Expect::Status(204),
                e => e,
            },
            check: ok,
        },
    ]
}

/// A grid of two tiny children.
fn tiny_sweep() -> Value {
    json!({"base": tiny_spec(), "grid": {"optimizer.learning_rate": [0.1, 0.01]}})
}

async fn sweep(app: &axum::Router, key: &str, cancel: bool) -> Uuid {
    let a = send(
        app,
        Some(key),
        &Req::new("POST", "/sweeps").json(tiny_sweep()),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let id: Uuid = a.json()["id"].as_str().unwrap().parse().unwrap();
    if cancel {
        let a = send(
            app,
            Some(key),
            &Req::new("POST", format!("/sweeps/{id}/cancel")),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    id
}

/// A v2 inference request of one MNIST test image's raw pixels.
fn v2_request() -> Value {
    let px = common::mnist().test.image(0).to_vec();
    json!({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], "data": px}]})
}

fn is_trained_model(fx: &Fx, _: Who, a: &Answer) -> Result<(), String> {
    let m = a.json();
    if m["name"] == fx.trained.to_string() && m["versions"] == json!(["1"]) {
        Ok(())
    } else {
        Err(format!("not the trained model's metadata: {m}"))
    }
}

fn is_ready_model(fx: &Fx, _: Who, a: &Answer) -> Result<(), String> {
    let m = a.json();
    if m["name"] == fx.trained.to_string() && m["ready"] == true {
        Ok(())
    } else {
        Err(format!("not the trained model, ready: {m}"))
    }
}

fn is_v2_answer(fx: &Fx, _: Who, a: &Answer) -> Result<(), String> {
    let r = a.json();
    if r["model_name"] == fx.trained.to_string()
        && r["model_version"] == "1"
        && r["outputs"][0]["shape"] == json!([1, 10])
    {
        Ok(())
    } else {
        Err(format!("not one image's probabilities: {r}"))
    }
}

/// The error document a row's operation answers with: the protocol's `{"error": "..."}`
/// on `/v2` routes, else an RFC 9457 problem.
fn is_error_document(row: &Row, a: &Answer) -> bool {
    if row.path.starts_with("/v2") {
        let v = a.json();
        a.content_type() == "application/json"
            && v.as_object().is_some_and(|o| o.len() == 1)
            && v["error"].is_string()
    } else {
        a.content_type() == "application/problem+json"
    }
}

/// `/compare`, `.svg` or `.png`: the admin and the owner compare two of the owner's
/// experiments; anyone else names the owner's trained one beside the other account's
/// own (and the unknown twin an unknown id beside it).
fn compare_request(path: &str, fx: &Fx, who: Who, s: Subject) -> Req {
    let second = match who {
        Who::Admin | Who::Owner => fx.kept_queued,
        _ => fx.other_own,
    };
    Req::get(format!("{path}?ids={},{second}", fx.id(s))).names_experiment(fx, s, fx.trained)
}

fn tiny_spec() -> Value {
    json!({"preset": "torch-cnn", "epochs": 1, "dataset": {"train_limit": 64, "test_limit": 64}})
}

/// A spec with a name and a tag.
fn labelled(name: &str) -> Value {
    let mut s = tiny_spec();
    s["name"] = json!(name);
    s["tags"] = json!(["tenancy"]);
    s
}

async fn submit(app: &axum::Router, key: &str, body: Value) -> Uuid {
    let a = send(app, Some(key), &Req::new("POST", "/experiments").json(body)).await;
    assert_eq!(a.status, 201, "{}", a.text());
    a.json()["id"].as_str().unwrap().parse().unwrap()
}

/// Two classes of two 2x2 gray PNGs each, zipped.
fn dataset_zip() -> Vec<u8> {
    let png = |v: u8| {
        let mut out = std::io::Cursor::new(Vec::new());
        image::GrayImage::from_raw(2, 2, vec![v; 4])
            .unwrap()
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    crate::datasets::zip_of(&[
        ("a/1.png".into(), png(10)),
        ("a/2.png".into(), png(20)),
        ("b/1.png".into(), png(200)),
        ("b/2.png".into(), png(210)),
    ])
}

async fn upload(app: &axum::Router, key: &str) -> Uuid {
    let req = Req::new("POST", "/datasets?name=fixture&test_fraction=0.5")
        .body("application/zip", dataset_zip());
    let a = send(app, Some(key), &req).await;
    assert_eq!(a.status, 201, "{}", a.text());
    a.json()["id"].as_str().unwrap().parse().unwrap()
}

fn png(i: usize) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(28, 28, common::mnist().test.image(i).to_vec())
        .unwrap()
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// The accounts, keys and experiments, and the app (keys required, no rate limits).
async fn setup(pool: PgPool) -> (axum::Router, Fx, Store) {
    let store = Store::from_pool(pool.clone());
    let owner = store.create_key(OWNER, false).await.unwrap();
    let revoked = store.create_key(OWNER, false).await.unwrap();
    let other = store.create_key(OTHER, false).await.unwrap();
    let spare = store.create_key(OTHER, false).await.unwrap();
    let admin = store.create_key(ADMIN, true).await.unwrap();
    store.revoke_key(revoked.info.id).await.unwrap();
    let app = app(oneshot_state(pool).await.with_auth(
        AuthMode::On,
        RateLimits {
            experiments_per_minute: 0,
            predict_per_second: 0,
        },
    ));

    // Trained by a real worker, which then stops: what is queued after it stays queued.
    let trained = submit(&app, &owner.key, labelled("seed")).await;
    let (stop, rx) = watch::channel(false);
    let worker = TestServer::spawn_worker(&store, worker_config("w"), rx).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let e = store.experiment(trained).await.unwrap();
        match e.status {
            Status::Succeeded => break,
            Status::Failed | Status::Cancelled => panic!("the seed ended {e:?}"),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not trained in 180s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops")
        .unwrap();

    let kept_queued = submit(&app, &owner.key, labelled("kept")).await;
    let patchable = submit(&app, &owner.key, labelled("patchable")).await;
    let mut cancel_for = [Uuid::nil(); 2];
    let mut delete_for = [Uuid::nil(); 2];
    for i in 0..2 {
        cancel_for[i] = submit(&app, &owner.key, labelled("to cancel")).await;
        delete_for[i] = submit(&app, &owner.key, labelled("to delete")).await;
        let a = send(
            &app,
            Some(&owner.key),
            &Req::new("POST", format!("/experiments/{}/cancel", delete_for[i])),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let other_own = submit(&app, &other.key, labelled("the other's")).await;
    let dataset = upload(&app, &owner.key).await;
    let dataset_delete_for = [
        upload(&app, &owner.key).await,
        upload(&app, &owner.key).await,
    ];
    let other_dataset = upload(&app, &other.key).await;
    let mut variant = labelled("lr variant");
    variant["optimizer"] = json!({"learning_rate": 0.1});
    let lr_variant = submit(&app, &owner.key, variant).await;
    let owners_sweep = sweep(&app, &owner.key, false).await;
    let sweep_cancel_for = [
        sweep(&app, &owner.key, false).await,
        sweep(&app, &owner.key, false).await,
    ];
    let sweep_delete_for = [
        sweep(&app, &owner.key, true).await,
        sweep(&app, &owner.key, true).await,
    ];
    let other_sweep = sweep(&app, &other.key, false).await;
    let fx = Fx {
        bad_key: format!("ty_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
        owner_key: owner.key,
        other_key: other.key,
        admin_key: admin.key,
        revoked_key: revoked.key,
        owner_key_id: owner.info.id,
        other_key_id: other.info.id,
        spare_key_id: spare.info.id,
        trained,
        kept_queued,
        patchable,
        cancel_for,
        delete_for,
        other_own,
        unknown: Uuid::now_v7(),
        png: png(0),
        dataset,
        dataset_delete_for,
        other_dataset,
        lr_variant,
        sweep: owners_sweep,
        sweep_cancel_for,
        sweep_delete_for,
        other_sweep,
    };
    (app, fx, store)
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The document's operations: `(METHOD, path)` → the operation.
fn documented() -> std::collections::BTreeMap<(String, String), Value> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut ops = std::collections::BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                ops.insert((method.to_uppercase(), path.clone()), op.clone());
            }
        }
    }
    ops
}

#[test]
fn the_matrix_has_a_row_for_every_documented_operation_and_no_other() {
    let ops = documented();
    let rows = rows();
    let covered: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let documented: BTreeSet<(String, String)> = ops.keys().cloned().collect();
    let missing: Vec<_> = documented.difference(&covered).collect();
    let stray: Vec<_> = covered.difference(&documented).collect();
    assert!(
        missing.is_empty() && stray.is_empty(),
        "operations without a row: {missing:?}; rows without an operation: {stray:?}"
    );
    for r in &rows {
        let public = ops[&(r.method.to_string(), r.path.to_string())]["security"] == json!([]);
        assert_eq!(
            r.public, public,
            "{} {}: public in the matrix, not in the document, or the reverse",
            r.method, r.path
        );
    }
}

/// A snapshot of an experiment as the store has it (every column the API shows).
async fn snapshot(store: &Store, id: Uuid) -> Value {
    serde_json::to_value(store.experiment(id).await.unwrap()).unwrap()
}

#[sqlx::test]
async fn every_operation_answers_every_caller_as_it_must_and_another_account_learns_nothing(
    pool: PgPool,
) {
    let (app, fx, store) = setup(pool).await;
    let ops = documented();
    let rows = rows();
    let trained_before = snapshot(&store, fx.trained).await;
    let kept_before = snapshot(&store, fx.kept_queued).await;
    let checkpoints_before = store.checkpoints(fx.trained).await.unwrap().len();
    assert!(checkpoints_before >= 1);

    let secrets = fx.owners_secrets();
    let mut failures: Vec<(Who, String)> = Vec::new();
    let mut bad_key_answers: Vec<Option<Answer>> = rows.iter().map(|_| None).collect();
    let (mut requests, mut twins) = (0, 0);
    for who in EVERYONE {
        for (i, row) in rows.iter().enumerate() {
            let req = (row.request)(&fx, who, Subject::Real);
            let a = send(&app, fx.key(who), &req).await;
            requests += 1;
            let expect = if !row.public && matches!(who, Who::NoKey | Who::BadKey | Who::RevokedKey)
            {
                Expect::Unauthorized
            } else {
                (row.expect)(who)
            };
            let mut wrong: Vec<String> = Vec::new();
            let op = &ops[&(row.method.to_string(), row.path.to_string())];
            if op["responses"].get(a.status.to_string()).is_none() {
                wrong.push(format!("{} is not in the document", a.status));
            }
            let problem = is_error_document(row, &a);
            match expect {
                Expect::Status(s) if a.status != s => {
                    wrong.push(format!("expected {s}, got {}: {}", a.status, a.text()))
                }
                Expect::Status(s) => {
                    if (200..300).contains(&s)
                        && let Err(e) = (row.check)(&fx, who, &a)
                    {
                        wrong.push(e);
                    }
                }
                Expect::Unauthorized => {
                    let challenge = a.headers.get(header::WWW_AUTHENTICATE);
                    if a.status != 401
                        || !problem
                        || challenge.is_none_or(|c| c != "Bearer realm=\"trainyard\"")
                    {
                        wrong.push(format!(
                            "expected a 401 problem with WWW-Authenticate, got {} {challenge:?}: {}",
                            a.status,
                            a.text()
                        ));
                    }
                }
                Expect::Forbidden if a.status != 403 || !problem => wrong.push(format!(
                    "expected a 403 problem, got {}: {}",
                    a.status,
                    a.text()
                )),
                Expect::NotFound if a.status != 404 || !problem => wrong.push(format!(
                    "expected a 404 problem, got {}: {}",
                    a.status,
                    a.text()
                )),
                Expect::Forbidden | Expect::NotFound => {}
            }
            // A revoked key is refused exactly as a key that never existed.
            if expect == Expect::Unauthorized {
                match who {
                    Who::BadKey => bad_key_answers[i] = Some(a),
                    Who::RevokedKey => {
                        let bad = bad_key_answers[i].as_ref().unwrap();
                        if (bad.status, &bad.headers, &bad.body) != (a.status, &a.headers, &a.body)
                        {
                            wrong.push(format!(
                                "the revoked key's answer {} differs from a bad key's {}",
                                a.text(),
                                bad.text()
                            ));
                        }
                    }
                    _ => {}
                }
            } else if who.is_other() {
                // Another account's answer carries nothing of the owner's but what it
                // sent itself...
                let (sent, stand_in) = req.subject.clone().unwrap_or_default();
                let mut seen = a.text();
                for (name, value) in &a.headers {
                    seen.push_str(&format!("\n{name}: {}", value.to_str().unwrap_or("")));
                }
                if !sent.is_empty() {
                    seen = seen.replace(&sent, "");
                }
                for s in &secrets {
                    if seen.contains(s.as_str()) {
                        wrong.push(format!("the answer carries the owner's {s}"));
                    }
                }
                // ...and is, byte for byte, its answer for something that does not exist.
                if req.subject.is_some() {
                    let twin = (row.request)(&fx, who, Subject::Unknown);
                    let t = send(&app, fx.key(who), &twin).await;
                    twins += 1;
                    let body = a.text().replace(&sent, &stand_in);
                    if (a.status, &a.headers, body.as_bytes())
                        != (t.status, &t.headers, &t.body[..])
                    {
                        wrong.push(format!(
                            "not answered as the unknown {stand_in}: {} {:?} {body} against {} {:?} {}",
                            a.status,
                            a.headers,
                            t.status,
                            t.headers,
                            t.text()
                        ));
                    }
                }
            }
            for w in wrong {
                let variant = if row.variant.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", row.variant)
                };
                failures.push((
                    who,
                    format!("{who:?}: {} {}{variant}: {w}", row.method, row.path),
                ));
            }
        }
    }

    // Nothing the other account (or a refused caller) tried changed anything.
    let mut after = |what: String, ok: bool| {
        if !ok {
            failures.push((Who::Other, format!("after the matrix: {what}")));
        }
    };
    let trained_after = snapshot(&store, fx.trained).await;
    after(
        format!("the trained experiment changed: {trained_before} -> {trained_after}"),
        trained_before == trained_after,
    );
    let kept_after = snapshot(&store, fx.kept_queued).await;
    after(
        format!("the queued experiment changed: {kept_before} -> {kept_after}"),
        kept_before == kept_after,
    );
    let checkpoints_after = store.checkpoints(fx.trained).await.unwrap().len();
    after(
        format!("checkpoints {checkpoints_before} -> {checkpoints_after}"),
        checkpoints_before == checkpoints_after,
    );
    let quotas = store.account(OWNER).await.unwrap().quotas;
    after(
        format!("the owner's max_queued is {:?}", quotas.max_queued),
        quotas.max_queued.is_none(),
    );
    let keys = store.keys(None).await.unwrap();
    let key = |id: Uuid| keys.iter().find(|k| k.id == id).unwrap();
    after(
        "the owner's key was revoked".into(),
        key(fx.owner_key_id).revoked_at.is_none(),
    );
    after(
        "the other account's key was revoked".into(),
        key(fx.other_key_id).revoked_at.is_none(),
    );
    after(
        "the other account has an admin key".into(),
        !keys.iter().any(|k| k.account == OTHER && k.admin),
    );
    // What the admin and the owner did, they did.
    let mut done = |what: String, ok: bool| {
        if !ok {
            failures.push((Who::Owner, format!("after the matrix: {what}")));
        }
    };
    done(
        format!("max_flops_per_day is {:?}", quotas.max_flops_per_day),
        quotas.max_flops_per_day == Some(1e18),
    );
    done(
        "the spare key is not revoked".into(),
        key(fx.spare_key_id).revoked_at.is_some(),
    );
    for id in fx.delete_for {
        done(
            format!("{id} was not deleted"),
            matches!(store.experiment(id).await, Err(StoreError::NotFound)),
        );
    }
    for id in fx.cancel_for {
        done(
            format!("{id} was not cancelled"),
            store.experiment(id).await.unwrap().status == Status::Cancelled,
        );
    }
    done(
        "the patchable one was not renamed by the owner last".into(),
        store
            .experiment(fx.patchable)
            .await
            .unwrap()
            .name
            .as_deref()
            == Some("renamed by Owner"),
    );

    // Any failure in the other account's columns counts as a leak.
    let leaks = failures.iter().filter(|(w, _)| w.is_other()).count();
    println!(
        "tenancy matrix: {} rows over {} operations x {} callers = {requests} requests \
         (+{twins} unknown-id twins); {leaks} leaks, {} other failures",
        rows.len(),
        ops.len(),
        EVERYONE.len(),
        failures.len() - leaks
    );
    assert!(
        failures.is_empty(),
        "{}",
        failures
            .iter()
            .map(|(_, f)| f.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
