//! The Open Inference Protocol (`/v2/...`) end to end: a real server over a
//! `#[sqlx::test]` database, models trained by a real worker, requests over real sockets.
//! Every input form gives `/predict`'s probabilities for the same images; the metadata
//! lists the stored epochs as versions, and a version answers with its own checkpoint;
//! the binary tensor data extension reads and writes raw tensors; every bad request is
//! the protocol's `{"error": ...}` with its status; another account's model is unknown.
//!
//! `tritonclient_*` runs `tests/v2_tritonclient.py`, NVIDIA's `tritonclient[http]` from
//! PyPI, against a real server: `#[ignore]`d, since it needs that Python
//! (`TRAINYARD_TRITON_PYTHON`; `tests/run.sh` makes a venv for it).

use crate::common;

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

use common::service::{TestServer, oneshot_state, worker_config};

/// torch-cnn on a small slice: a few seconds an epoch. Every epoch's checkpoint is kept,
/// so each is a version.
fn tiny(epochs: u32) -> Value {
    json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 600, "test_limit": 100},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 50,
        "epochs": epochs,
        "keep_all_checkpoints": true,
        "device": "cpu"
    })
}

/// A server with a worker, and an experiment it has trained.
async fn trained(pool: PgPool, epochs: u32) -> (TestServer, String) {
    let s = TestServer::start(pool, &[worker_config("w")]).await;
    let (status, exp) = s.submit(&tiny(epochs)).await;
    assert_eq!(status, 201, "{exp}");
    let id = exp["id"].as_str().unwrap().to_string();
    s.wait_status(&id, "succeeded", 180).await;
    (s, id)
}

/// MNIST test image `i`: its raw pixels.
fn pixels(i: usize) -> Vec<u8> {
    common::mnist().test.image(i).to_vec()
}

fn png(i: usize) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(28, 28, pixels(i))
        .unwrap()
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// `/predict`'s probabilities for image `i` (one PNG a request), at `checkpoint`.
async fn predict(s: &TestServer, id: &str, i: usize, checkpoint: Option<&str>) -> Vec<f32> {
    let mut url = s.url(&format!("/predict?experiment={id}"));
    if let Some(c) = checkpoint {
        url.push_str(&format!("&checkpoint={c}"));
    }
    let r = s
        .client
        .post(url)
        .header("content-type", "image/png")
        .body(png(i))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    floats(&v["predictions"][0]["probabilities"])
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Equal to float rounding: a batch's matrix products may sum in another order than a
/// single image's.
fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (a, b) in got.iter().zip(want) {
        assert!((a - b).abs() <= 1e-6, "{got:?} vs {want:?}");
    }
}

/// The response: status, content type and bytes.
struct Answer {
    status: u16,
    content_type: String,
    header_length: Option<usize>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The protocol's error: a JSON object with one string, `error`.
    fn error(&self, status: u16) -> String {
        let v = self.json();
        assert_eq!(self.status, status, "{v}");
        assert_eq!(self.content_type, "application/json", "{v}");
        let obj = v.as_object().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(obj.len(), 1, "{v}");
        obj["error"].as_str().unwrap().to_string()
    }

    /// The one output's probabilities, by image, from JSON or binary data.
    fn probabilities(&self) -> Vec<Vec<f32>> {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        let (head, data): (Value, Option<Vec<f32>>) = match self.header_length {
            Some(n) => {
                assert_eq!(self.content_type, "application/octet-stream");
                let head = serde_json::from_slice(&self.body[..n]).unwrap();
                let data = self.body[n..]
                    .chunks(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                (head, Some(data))
            }
            None => (self.json(), None),
        };
        let out = &head["outputs"][0];
        assert_eq!(head["outputs"].as_array().unwrap().len(), 1, "{head}");
        assert_eq!(out["name"], "probabilities");
        assert_eq!(out["datatype"], "FP32");
        let (n, c) = (
            out["shape"][0].as_u64().unwrap() as usize,
            out["shape"][1].as_u64().unwrap() as usize,
        );
        let data = match data {
            Some(d) => {
                assert_eq!(out["parameters"]["binary_data_size"], json!(d.len() * 4));
                assert!(out.get("data").is_none(), "{head}");
                d
            }
            None => floats(&out["data"]),
        };
        assert_eq!(data.len(), n * c, "{head}");
        data.chunks(c).map(<[f32]>::to_vec).collect()
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let content_type = header("content-type").unwrap_or_default();
    let header_length = header("inference-header-content-length").map(|v| v.parse().unwrap());
    let body = r.bytes().await.unwrap().to_vec();
    Answer {
        status,
        content_type,
        header_length,
        body,
    }
}

async fn get(s: &TestServer, path: &str) -> Answer {
    send(s.client.get(s.url(path))).await
}

async fn infer_json(s: &TestServer, path: &str, body: &Value) -> Answer {
    send(
        s.client
            .post(s.url(path))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

/// The JSON header, then `binary`, with the extension's header.
async fn infer_binary(s: &TestServer, path: &str, header: &Value, binary: &[u8]) -> Answer {
    let head = header.to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(binary);
    send(
        s.client
            .post(s.url(path))
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", head.len())
            .body(body),
    )
    .await
}

/// A JSON request of one input.
fn request(datatype: &str, shape: &[usize], data: Value) -> Value {
    json!({"inputs": [{"name": "images", "datatype": datatype, "shape": shape, "data": data}]})
}

/// Images `0..n` as one UINT8 request's data, row by row.
fn uint8_data(n: usize) -> Value {
    json!((0..n).map(pixels).collect::<Vec<_>>())
}

/// The experiment's preprocessing of raw 28x28 pixels (its spec's resize, with PIL's
/// bilinear filter, and normalisation), as training applied it.
fn preprocess(spec: &Value, px: &[u8]) -> Vec<f32> {
    let spec = trainyard::spec::from_value(spec.clone()).unwrap();
    let pre = trainyard::data::prepare::Preprocess::new(&spec.dataset, 1, 28, 28);
    let mut x = Vec::new();
    pre.extend(px, &mut x);
    x
}

#[sqlx::test]
async fn every_input_form_gives_predicts_probabilities_for_the_same_images(pool: PgPool) {
    let (s, id) = trained(pool, 1).await;
    let n = 6;
    let mut want = Vec::new();
    for i in 0..n {
        want.push(predict(&s, &id, i, None).await);
    }
    let infer = format!("/v2/models/{id}/infer");

    // UINT8 as JSON: raw pixels, preprocessed by the server as /predict's images are.
    let mut req = request("UINT8", &[n, 28, 28], uint8_data(n));
    req["id"] = json!("req-1");
    let a = infer_json(&s, &infer, &req).await;
    assert_eq!(a.content_type, "application/json");
    let head = a.json();
    assert_eq!(head["model_name"], id.as_str());
    assert_eq!(head["model_version"], "1");
    assert_eq!(head["id"], "req-1");
    let uint8 = a.probabilities();
    assert_eq!(uint8.len(), n);
    for (got, want) in uint8.iter().zip(&want) {
        assert_close(got, want);
    }
    // [N, 1, 28, 28] is the same tensor.
    let a = infer_json(
        &s,
        &infer,
        &request("UINT8", &[n, 1, 28, 28], uint8_data(n)),
    )
    .await;
    assert_eq!(a.probabilities(), uint8);

    // FP32: the same images preprocessed by the client go to the model as they are.
    let spec = s.get_json(&format!("/experiments/{id}")).await.1["spec"].clone();
    let x: Vec<f32> = (0..n).flat_map(|i| preprocess(&spec, &pixels(i))).collect();
    // The preset resizes to 8x8: that is the model's input.
    assert_eq!(x.len(), n * 64);
    let a = infer_json(&s, &infer, &request("FP32", &[n, 1, 8, 8], json!(x))).await;
    for (got, want) in a.probabilities().iter().zip(&uint8) {
        assert_close(got, want);
    }
    let fp32_binary: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({"inputs": [{"name": "images", "datatype": "FP32", "shape": [n, 1, 8, 8],
        "parameters": {"binary_data_size": fp32_binary.len()}}]});
    let a = infer_binary(&s, &infer, &header, &fp32_binary).await;
    assert_eq!(a.header_length, None, "JSON out unless asked");
    for (got, want) in a.probabilities().iter().zip(&uint8) {
        assert_close(got, want);
    }

    // BYTES: PNG files, binary (each a 4-byte length, then the file) and as base64 in JSON.
    let files: Vec<Vec<u8>> = (0..n).map(png).collect();
    let mut bytes = Vec::new();
    for f in &files {
        bytes.extend_from_slice(&(f.len() as u32).to_le_bytes());
        bytes.extend_from_slice(f);
    }
    let header = json!({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [n],
        "parameters": {"binary_data_size": bytes.len()}}]});
    let a = infer_binary(&s, &infer, &header, &bytes).await;
    for (got, want) in a.probabilities().iter().zip(&want) {
        assert_close(got, want);
    }
    let b64: Vec<String> = files
        .iter()
        .map(|f| base64::engine::general_purpose::STANDARD.encode(f))
        .collect();
    let a = infer_json(&s, &infer, &request("BYTES", &[n], json!(b64))).await;
    for (got, want) in a.probabilities().iter().zip(&want) {
        assert_close(got, want);
    }

    // UINT8 binary in, binary out: the output's binary_data, or the request's
    // binary_data_output; the same floats either way.
    let raw: Vec<u8> = (0..n).flat_map(pixels).collect();
    let input = json!({"name": "images", "datatype": "UINT8", "shape": [n, 28, 28],
        "parameters": {"binary_data_size": raw.len()}});
    for header in [
        json!({"inputs": [input], "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]}),
        json!({"inputs": [input], "parameters": {"binary_data_output": true}}),
    ] {
        let a = infer_binary(&s, &infer, &header, &raw).await;
        assert!(a.header_length.is_some(), "binary out");
        assert_eq!(a.probabilities(), uint8);
    }
    // JSON in, binary out.
    let mut req = request("UINT8", &[n, 28, 28], uint8_data(n));
    req["parameters"] = json!({"binary_data_output": true});
    let a = infer_json(&s, &infer, &req).await;
    assert!(a.header_length.is_some());
    assert_eq!(a.probabilities(), uint8);

    // A light-background image: BYTES inverts it as /predict does (auto); UINT8 takes
    // the tensor as it is unless asked.
    let light: Vec<u8> = pixels(0).iter().map(|p| 255 - p).collect();
    let mut light_png = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(28, 28, light.clone())
        .unwrap()
        .write_to(&mut light_png, image::ImageFormat::Png)
        .unwrap();
    let light_b64 = base64::engine::general_purpose::STANDARD.encode(light_png.get_ref());
    let a = infer_json(&s, &infer, &request("BYTES", &[1], json!([light_b64]))).await;
    assert_close(&a.probabilities()[0], &want[0]);
    let mut req = request("UINT8", &[1, 28, 28], json!([light]));
    let as_is = infer_json(&s, &infer, &req).await.probabilities();
    assert!(as_is[0] != uint8[0]);
    req["parameters"] = json!({"invert": "auto"});
    let a = infer_json(&s, &infer, &req).await;
    assert_close(&a.probabilities()[0], &want[0]);
    s.stop().await;
}

#[sqlx::test]
async fn metadata_lists_the_stored_epochs_and_a_version_answers_with_its_checkpoint(pool: PgPool) {
    let (s, id) = trained(pool, 2).await;

    let a = get(&s, "/v2/health/live").await;
    assert_eq!((a.status, a.json()), (200, json!({"live": true})));
    let a = get(&s, "/v2/health/ready").await;
    assert_eq!((a.status, a.json()), (200, json!({"ready": true})));
    let a = get(&s, "/v2").await;
    assert_eq!(a.json()["extensions"], json!(["binary_tensor_data"]));
    assert_eq!(a.json()["name"], "trainyard");

    let meta = json!({
        "name": id,
        "versions": ["1", "2"],
        "platform": "trainyard_candle",
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    });
    for path in [
        format!("/v2/models/{id}"),
        format!("/v2/models/{id}/versions/1"),
        format!("/v2/models/{id}/versions/2"),
    ] {
        let a = get(&s, &path).await;
        assert_eq!((a.status, a.json()), (200, meta.clone()), "{path}");
        let ready = get(&s, &format!("{path}/ready")).await;
        assert_eq!(
            (ready.status, ready.json()),
            (200, json!({"name": id, "ready": true})),
            "{path}"
        );
    }

    // Each version is its epoch's checkpoint: /predict's at that checkpoint; none is the
    // served one (best), as /predict without `checkpoint`.
    let n = 4;
    let req = request("UINT8", &[n, 28, 28], uint8_data(n));
    let served = s.get_json(&format!("/experiments/{id}")).await.1;
    let best = served["best_epoch"].as_i64().unwrap();
    let mut answers = Vec::new();
    for version in [1, 2] {
        let a = infer_json(
            &s,
            &format!("/v2/models/{id}/versions/{version}/infer"),
            &req,
        )
        .await;
        assert_eq!(a.json()["model_version"], version.to_string());
        let got = a.probabilities();
        for (i, row) in got.iter().enumerate() {
            let want = predict(&s, &id, i, Some(&version.to_string())).await;
            assert_close(row, &want);
        }
        answers.push(got);
    }
    assert_ne!(answers[0], answers[1], "two epochs, two sets of weights");
    let a = infer_json(&s, &format!("/v2/models/{id}/infer"), &req).await;
    assert_eq!(a.json()["model_version"], best.to_string());
    assert_eq!(a.probabilities(), answers[best as usize - 1]);

    // A version that is no stored epoch is unknown.
    for v in ["3", "0", "best", "-1", "1.0"] {
        let a = get(&s, &format!("/v2/models/{id}/versions/{v}")).await;
        a.error(404);
        let a = infer_json(&s, &format!("/v2/models/{id}/versions/{v}/infer"), &req).await;
        a.error(404);
    }
    s.stop().await;
}

#[sqlx::test]
async fn a_bad_request_gets_the_protocols_error_with_its_status(pool: PgPool) {
    // Trained by a worker that then stops: what is submitted after it stays queued.
    let s = TestServer::start(pool, &[]).await;
    let (_, exp) = s.submit(&tiny(1)).await;
    let id = exp["id"].as_str().unwrap().to_string();
    let (stop, rx) = watch::channel(false);
    let worker = TestServer::spawn_worker(&s.store, worker_config("w"), rx).await;
    s.wait_status(&id, "succeeded", 180).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .unwrap()
        .unwrap();
    let (_, queued) = s.submit(&tiny(1)).await;
    let queued = queued["id"].as_str().unwrap().to_string();

    let infer = format!("/v2/models/{id}/infer");
    let px = uint8_data(1);
    let cases: Vec<(Value, &str)> = vec![
        (
            request("INT32", &[1, 28, 28], px.clone()),
            "datatype \"INT32\"",
        ),
        (
            request("UINT8", &[1, 28, 27], px.clone()),
            "holds 756 elements",
        ),
        (
            request("UINT8", &[1, 28, 27], json!(vec![0; 756])),
            "[N, 28, 28] or [N, 1, 28, 28]",
        ),
        (
            request("UINT8", &[1, 3, 28, 28], json!(vec![0; 3 * 784])),
            "[N, 28, 28]",
        ),
        (
            request("UINT8", &[2, 28, 28], px.clone()),
            "holds 1568 elements",
        ),
        (request("UINT8", &[0, 28, 28], json!([])), "1 to 64 images"),
        (
            request("UINT8", &[65, 28, 28], json!(vec![0; 65 * 784])),
            "1 to 64 images",
        ),
        (
            request("FP32", &[1, 1, 28, 28], json!(vec![0.5; 783])),
            "holds 784 elements",
        ),
        (
            request("FP32", &[1, 1, 28, 28], json!(vec![0.5; 784])),
            "[N, 1, 8, 8] (preprocessed)",
        ),
        (
            request("FP32", &[1, 28, 28], json!(vec![0.5; 784])),
            "[N, C, H, W]",
        ),
        (
            request(
                "BYTES",
                &[1],
                json!([base64::engine::general_purpose::STANDARD.encode(b"GIF89a")]),
            ),
            "not a PNG, JPEG or PGM",
        ),
        (
            request(
                "BYTES",
                &[1],
                json!([
                    base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\n broken")
                ]),
            ),
            "images[0]",
        ),
        (
            json!({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 28, 28], "data": px}]}),
            "unknown input",
        ),
        (json!({"inputs": []}), "one input"),
        (json!({"input": []}), "not an inference request"),
        (json!([1, 2]), "not an inference request"),
    ];
    for (body, want) in cases {
        let a = infer_json(&s, &infer, &body).await;
        let e = a.error(400);
        assert!(e.contains(want), "{body}: {e:?} does not say {want:?}");
    }
    let a = send(
        s.client
            .post(s.url(&infer))
            .header("content-type", "application/json")
            .body("{\"inputs\": ["),
    )
    .await;
    assert!(a.error(400).contains("not an inference request"));
    // The binary extension's lengths.
    let raw: Vec<u8> = pixels(0);
    let header = json!({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28],
        "parameters": {"binary_data_size": 784}}]});
    assert!(
        infer_binary(&s, &infer, &header, &raw[..700])
            .await
            .error(400)
            .contains("binary_data_size is 784")
    );
    let mut more = raw.clone();
    more.push(0);
    assert!(
        infer_binary(&s, &infer, &header, &more)
            .await
            .error(400)
            .contains("1 bytes of binary data follow")
    );
    let a = send(
        s.client
            .post(s.url(&infer))
            .header("inference-header-content-length", "99999")
            .body("{}"),
    )
    .await;
    assert!(a.error(400).contains("the body has 2 bytes"));
    // Too large, declared or not (in process: a client still sending when the answer
    // comes may see its connection reset instead), and compressed.
    let app = trainyard::api::app(oneshot_state(s.store.pool().clone()).await);
    let too_large = vec![b' '; trainyard::api::predict::MAX_BODY_BYTES + 1];
    for declared in [true, false] {
        let body = if declared {
            axum::body::Body::from(too_large.clone())
        } else {
            let chunks = too_large
                .chunks(64 * 1024)
                .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                .collect::<Vec<_>>();
            axum::body::Body::from_stream(futures::stream::iter(chunks))
        };
        let mut req = axum::http::Request::post(&infer);
        if declared {
            req = req.header("content-length", too_large.len());
        }
        let req = req.body(body).unwrap();
        let (status, ct, v) = common::service::oneshot_json(&app, req).await;
        assert_eq!((status, ct.as_str()), (413, "application/json"), "{v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let a = send(
        s.client
            .post(s.url(&infer))
            .header("content-encoding", "gzip")
            .body("x"),
    )
    .await;
    assert!(a.error(415).contains("Content-Encoding"));

    // Unknown models: a malformed id, an id nobody has; a model with no checkpoint yet.
    let good = request("UINT8", &[1, 28, 28], uint8_data(1));
    let unknown = uuid::Uuid::now_v7();
    for m in ["nope".to_string(), unknown.to_string()] {
        infer_json(&s, &format!("/v2/models/{m}/infer"), &good)
            .await
            .error(404);
        get(&s, &format!("/v2/models/{m}")).await.error(404);
        get(&s, &format!("/v2/models/{m}/ready")).await.error(404);
    }
    let e = infer_json(&s, &format!("/v2/models/{queued}/infer"), &good)
        .await
        .error(409);
    assert!(e.contains("no checkpoint yet"), "{e}");
    get(&s, &format!("/v2/models/{queued}/ready"))
        .await
        .error(409);
    get(&s, &format!("/v2/models/{queued}")).await.error(409);
    // And after all that, the model answers.
    assert_eq!(infer_json(&s, &infer, &good).await.probabilities().len(), 1);
    s.stop().await;
}

#[sqlx::test]
async fn another_accounts_model_is_unknown_exactly_as_an_unknown_one(pool: PgPool) {
    use axum::body::Body;
    use axum::http::{Request, header};
    use tower::ServiceExt;
    use trainyard::api::auth::{AuthMode, RateLimits};
    use trainyard::store::{Status, Store};

    let store = Store::from_pool(pool.clone());
    let owner = store.create_key("owner", false).await.unwrap().key;
    let other = store.create_key("other", false).await.unwrap().key;
    let app = trainyard::api::app(oneshot_state(pool).await.with_auth(
        AuthMode::On,
        RateLimits {
            experiments_per_minute: 0,
            predict_per_second: 0,
        },
    ));
    let call = |method: &str, uri: String, key: Option<&str>, body: Value| {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let req = b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(if body.is_null() {
                String::new()
            } else {
                body.to_string()
            }))
            .unwrap();
        let app = app.clone();
        async move {
            let res = app.oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                headers,
                serde_json::from_slice::<Value>(&bytes).unwrap(),
            )
        }
    };
    let (status, _, exp) = call("POST", "/experiments".into(), Some(&owner), tiny(1)).await;
    assert_eq!(status, 201, "{exp}");
    let id: uuid::Uuid = exp["id"].as_str().unwrap().parse().unwrap();
    let (stop, rx) = watch::channel(false);
    let worker = TestServer::spawn_worker(&store, worker_config("w"), rx).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while store.experiment(id).await.unwrap().status != Status::Succeeded {
        assert!(tokio::time::Instant::now() < deadline, "not trained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;

    let body = request("UINT8", &[1, 28, 28], uint8_data(1));
    let unknown = uuid::Uuid::now_v7();
    let ops = |m: uuid::Uuid| {
        vec![
            ("GET", format!("/v2/models/{m}"), Value::Null),
            ("GET", format!("/v2/models/{m}/versions/1"), Value::Null),
            ("GET", format!("/v2/models/{m}/ready"), Value::Null),
            (
                "GET",
                format!("/v2/models/{m}/versions/1/ready"),
                Value::Null,
            ),
            ("POST", format!("/v2/models/{m}/infer"), body.clone()),
            (
                "POST",
                format!("/v2/models/{m}/versions/1/infer"),
                body.clone(),
            ),
        ]
    };
    // Twice: before and after the owner's requests warm the caches.
    for round in 0..2 {
        for ((method, path, b), (_, unknown_path, _)) in ops(id).into_iter().zip(ops(unknown)) {
            let (status, mut h, v) = call(method, path.clone(), Some(&other), b.clone()).await;
            let (u_status, mut u_h, u_v) =
                call(method, unknown_path, Some(&other), b.clone()).await;
            for h in [&mut h, &mut u_h] {
                h.remove("x-request-id");
            }
            assert_eq!(status, 404, "round {round}: {path}: {v}");
            assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
            assert!(v["error"].is_string(), "{v}");
            assert_eq!(
                (status, &h, &v),
                (u_status, &u_h, &u_v),
                "round {round}: {path}"
            );
            let (status, _, v) = call(method, path.clone(), Some(&owner), b).await;
            assert_eq!(status, 200, "{path}: {v}");
        }
    }
    // No key: the protocol's 401, with the challenge.
    let (status, h, v) = call("POST", format!("/v2/models/{id}/infer"), None, body.clone()).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer realm=\"trainyard\"");
    assert!(v["error"].is_string(), "{v}");
    // The health and server metadata routes need none.
    for path in ["/v2", "/v2/health/live", "/v2/health/ready"] {
        let (status, _, v) = call("GET", path.into(), None, Value::Null).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
}

/// `tests/v2_tritonclient.py` with `TRAINYARD_TRITON_PYTHON` (a Python with
/// `tritonclient[http]`), against a real server on a socket and a trained model.
#[sqlx::test]
#[ignore = "needs TRAINYARD_TRITON_PYTHON (tests/run.sh makes a venv with tritonclient[http])"]
async fn tritonclient_http_reads_metadata_and_infers_as_predict_answers(pool: PgPool) {
    let python = std::env::var("TRAINYARD_TRITON_PYTHON").expect("TRAINYARD_TRITON_PYTHON");
    let (s, id) = trained(pool, 2).await;
    // The images, raw (N x 28 x 28 bytes) and as PNG files.
    let dir = tempfile::tempdir().unwrap();
    let n = 8;
    let raw: Vec<u8> = (0..n).flat_map(pixels).collect();
    std::fs::write(dir.path().join("images.u8"), &raw).unwrap();
    for i in 0..n {
        std::fs::write(dir.path().join(format!("{i}.png")), png(i)).unwrap();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/v2_tritonclient.py");
    let host = s.base.trim_start_matches("http://").to_string();
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .args(["--url", &host, "--model", &id, "--images"])
        .arg(dir.path())
        .args(["--count", &n.to_string()])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "tests/v2_tritonclient.py failed:\n{text}"
    );
    assert!(text.contains("tritonclient: all checks passed"), "{text}");
    s.stop().await;
}
