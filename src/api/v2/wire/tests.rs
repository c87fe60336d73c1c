//! Reading requests (JSON, and the binary extension) and writing responses, without a
//! server: every mismatch of shape, datatype, data and sizes is a 400 naming it.

use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::*;

fn json_body(v: Value) -> (HeaderMap, Bytes) {
    (HeaderMap::new(), Bytes::from(v.to_string()))
}

/// The JSON header, then `binary`, with the extension's header.
fn binary_body(v: Value, binary: &[u8]) -> (HeaderMap, Bytes) {
    let header = v.to_string();
    let mut h = HeaderMap::new();
    h.insert(HEADER_LENGTH, header.len().into());
    let mut body = header.into_bytes();
    body.extend_from_slice(binary);
    (h, Bytes::from(body))
}

fn request(input: Value) -> Value {
    json!({"inputs": [input]})
}

fn read_ok((h, b): (HeaderMap, Bytes)) -> Request {
    read(&h, b).unwrap()
}

/// The 400's message.
fn read_err((h, b): (HeaderMap, Bytes)) -> String {
    match read(&h, b) {
        Err(ApiError::BadRequest(m)) => m,
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[test]
fn json_uint8_nested_or_flat_reads_the_same_pixels() {
    let flat = read_ok(json_body(request(json!({
        "name": "images", "shape": [1, 2, 2], "datatype": "UINT8", "data": [0, 1, 254, 255]
    }))));
    let nested = read_ok(json_body(request(json!({
        "name": "images", "shape": [1, 2, 2], "datatype": "UINT8", "data": [[[0, 1], [254, 255]]]
    }))));
    for r in [flat, nested] {
        assert_eq!(r.input.shape, vec![1, 2, 2]);
        assert!(matches!(&r.input.data, Elements::U8(v) if v == &[0, 1, 254, 255]));
        assert!(!r.binary_output);
    }
}

#[test]
fn binary_inputs_follow_the_json_header_in_their_datatypes() {
    let x = [0.5f32, -1.25, 3.0, 0.0];
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let r = read_ok(binary_body(
        json!({"id": "7", "inputs": [{"name": "images", "shape": [1, 1, 2, 2], "datatype": "FP32",
            "parameters": {"binary_data_size": 16}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]}),
        &bytes,
    ));
    assert_eq!(r.id.as_deref(), Some("7"));
    assert!(matches!(&r.input.data, Elements::F32(v) if v == &x));
    assert!(r.binary_output);

    // BYTES: each element a 4-byte little-endian length, then its bytes.
    let mut data = Vec::new();
    for e in [&b"abc"[..], b"", b"\x89PNG"] {
        data.extend_from_slice(&(e.len() as u32).to_le_bytes());
        data.extend_from_slice(e);
    }
    let r = read_ok(binary_body(
        request(json!({"name": "images", "shape": [3], "datatype": "BYTES",
            "parameters": {"binary_data_size": data.len()}})),
        &data,
    ));
    match &r.input.data {
        Elements::Bytes(v) => assert_eq!(v, &[&b"abc"[..], b"", b"\x89PNG"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn json_bytes_are_base64_image_files() {
    let r = read_ok(json_body(request(json!({
        "name": "images", "shape": [2], "datatype": "BYTES", "data": ["aGVsbG8=", ""]
    }))));
    match &r.input.data {
        Elements::Bytes(v) => assert_eq!(v, &[&b"hello"[..], b""]),
        other => panic!("{other:?}"),
    }
    let e = read_err(json_body(request(json!({
        "name": "images", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]
    }))));
    assert!(e.contains("base64"), "{e}");
}

#[test]
fn binary_data_output_asks_every_output_as_binary_unless_the_output_says_otherwise() {
    let input = json!({"name": "images", "shape": [1, 1, 1], "datatype": "UINT8", "data": [3]});
    let r = read_ok(json_body(
        json!({"parameters": {"binary_data_output": true}, "inputs": [input]}),
    ));
    assert!(r.binary_output);
    let r = read_ok(json_body(
        json!({"parameters": {"binary_data_output": true}, "inputs": [input],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": false}}]}),
    ));
    assert!(!r.binary_output);
}

#[test]
fn every_mismatch_is_a_bad_request_that_names_it() {
    let u8_input = |shape: Value, data: Value| {
        request(json!({"name": "images", "shape": shape, "datatype": "UINT8", "data": data}))
    };
    let cases: Vec<((HeaderMap, Bytes), &str)> = vec![
        (
            (HeaderMap::new(), Bytes::from_static(b"{not json")),
            "not an inference request",
        ),
        (json_body(json!({"inputs": []})), "one input"),
        (
            json_body(
                json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [""]}]}),
            ),
            "unknown input",
        ),
        (
            json_body(request(
                json!({"name": "images", "shape": [1, 1, 1], "datatype": "INT8", "data": [1]}),
            )),
            "datatype \"INT8\"",
        ),
        (
            json_body(u8_input(json!([2, 2]), json!([1, 2, 3, 4]))),
            "shape",
        ),
        (
            json_body(u8_input(json!([0, 2, 2]), json!([]))),
            "1 to 64 images",
        ),
        (
            json_body(u8_input(json!([65, 1, 1]), json!(vec![0; 65]))),
            "1 to 64 images",
        ),
        (
            json_body(u8_input(json!([1, 2, 2]), json!([1, 2, 3]))),
            "holds 4 elements",
        ),
        (
            json_body(u8_input(json!([1, 1, 1]), json!([256]))),
            "0 to 255",
        ),
        (
            json_body(u8_input(json!([1, 1, 1]), json!([1.5]))),
            "0 to 255",
        ),
        (
            json_body(u8_input(json!([1, 1, 1]), json!(["a"]))),
            "numbers, not strings",
        ),
        (
            json_body(u8_input(json!([1, 1, 2]), json!([1, "a"]))),
            "mixes",
        ),
        (
            json_body(u8_input(json!([1, 1, 1]), json!([true]))),
            "not an inference request",
        ),
        (
            json_body(u8_input(json!([1, 1, -1]), json!([1]))),
            "not an inference request",
        ),
        (
            json_body(u8_input(
                json!([1, 4294967296u64, 4294967296u64, 4294967296u64]),
                json!([1]),
            )),
            "too large",
        ),
        (
            json_body(request(
                json!({"name": "images", "shape": [1, 1, 1, 1], "datatype": "FP32", "data": [1e39]}),
            )),
            "finite",
        ),
        (
            json_body(request(
                json!({"name": "images", "shape": [1], "datatype": "BYTES", "data": [1]}),
            )),
            "strings",
        ),
        (
            json_body(request(
                json!({"name": "images", "shape": [1, 1, 1], "datatype": "UINT8"}),
            )),
            "no data",
        ),
        (
            json_body(request(
                json!({"name": "images", "shape": [1, 1, 1], "datatype": "UINT8", "data": [1],
            "parameters": {"binary_data_size": 1}}),
            )),
            "both",
        ),
        (
            json_body(
                json!({"inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "UINT8", "data": [1]}],
            "outputs": [{"name": "logits"}]}),
            ),
            "unknown output",
        ),
        (
            json_body(
                json!({"inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "UINT8", "data": [1]}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}),
            ),
            "classification",
        ),
        (
            json_body(
                json!({"inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "UINT8", "data": [1]}],
            "parameters": {"binary_data_output": "yes"}}),
            ),
            "must be a boolean",
        ),
        // The binary extension's sizes.
        (
            binary_body(
                request(
                    json!({"name": "images", "shape": [1, 2, 2], "datatype": "UINT8",
            "parameters": {"binary_data_size": 4}}),
                ),
                &[1, 2, 3],
            ),
            "binary_data_size is 4",
        ),
        (
            binary_body(
                request(
                    json!({"name": "images", "shape": [1, 2, 2], "datatype": "UINT8",
            "parameters": {"binary_data_size": 3}}),
                ),
                &[1, 2, 3],
            ),
            "holds 4 elements",
        ),
        (
            binary_body(
                request(
                    json!({"name": "images", "shape": [1, 1, 1], "datatype": "UINT8",
            "parameters": {"binary_data_size": 1}}),
                ),
                &[1, 2],
            ),
            "1 bytes of binary data follow",
        ),
        (
            binary_body(
                request(
                    json!({"name": "images", "shape": [1, 1, 1, 1], "datatype": "FP32",
            "parameters": {"binary_data_size": 4}}),
                ),
                &f32::NAN.to_le_bytes(),
            ),
            "finite",
        ),
        (
            binary_body(
                request(json!({"name": "images", "shape": [1], "datatype": "BYTES",
            "parameters": {"binary_data_size": 6}})),
                &[9, 0, 0, 0, 1, 2],
            ),
            "says 9 bytes",
        ),
        (
            binary_body(
                request(json!({"name": "images", "shape": [1], "datatype": "BYTES",
            "parameters": {"binary_data_size": 2}})),
                &[9, 0],
            ),
            "4-byte length",
        ),
        (
            binary_body(
                request(json!({"name": "images", "shape": [1], "datatype": "BYTES",
            "parameters": {"binary_data_size": 8}})),
                &[0, 0, 0, 0, 0, 0, 0, 0],
            ),
            "has more",
        ),
        (
            binary_body(
                request(json!({"name": "images", "shape": [1], "datatype": "BYTES",
            "parameters": {"binary_data_size": -1}})),
                &[],
            ),
            "byte count",
        ),
    ];
    for ((h, b), want) in cases {
        let text = String::from_utf8_lossy(&b).into_owned();
        let e = read_err((h, b));
        assert!(e.contains(want), "{text}: {e:?} does not say {want:?}");
    }
    // A header length past the body, or not a number.
    let mut h = HeaderMap::new();
    h.insert(HEADER_LENGTH, 100.into());
    assert!(read_err((h, Bytes::from_static(b"{}"))).contains("body has 2 bytes"));
    let mut h = HeaderMap::new();
    h.insert(HEADER_LENGTH, HeaderValue::from_static("-3"));
    assert!(read_err((h, Bytes::from_static(b"{}"))).contains("byte count"));
}

#[tokio::test]
async fn a_binary_response_is_the_json_header_then_little_endian_floats() {
    let probs = vec![vec![0.25f32, 0.75], vec![1.0, 0.0]];
    let res = respond("m".into(), 3, Some("x".into()), &probs, 2, true);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    let n: usize = res.headers()[&HEADER_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let head: Value = serde_json::from_slice(&body[..n]).unwrap();
    assert_eq!(
        head,
        json!({"model_name": "m", "model_version": "3", "id": "x", "outputs": [{
            "name": "probabilities", "datatype": "FP32", "shape": [2, 2],
            "parameters": {"binary_data_size": 16}}]})
    );
    let floats: Vec<f32> = body[n..]
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(floats, [0.25, 0.75, 1.0, 0.0]);

    let res = respond("m".into(), 3, None, &probs, 2, false);
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"model_name": "m", "model_version": "3", "outputs": [{
            "name": "probabilities", "datatype": "FP32", "shape": [2, 2],
            "data": [0.25, 0.75, 1.0, 0.0]}]})
    );
}
