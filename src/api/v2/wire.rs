//! The protocol's messages: the JSON of requests and responses, and the binary tensor
//! data extension that carries tensors as raw bytes after the JSON.
//!
//! A request body is its JSON header, and, when `Inference-Header-Content-Length: n` says
//! so, raw tensor bytes after the first `n` bytes: each input with a
//! `parameters.binary_data_size` takes that many bytes, in input order, little-endian,
//! row-major; a `BYTES` element is a 4-byte little-endian length and then its bytes.
//! Everything is checked against everything else here, before any model is looked up:
//! the shape against the data's length (or its JSON elements), each JSON element against
//! the datatype, the binary sizes against the body. What reaches [`Tensor`] is whole.
//!
//! The response is JSON, or, when the client asks for the output as binary
//! (`binary_data` on the output, else `binary_data_output` on the request), the JSON
//! header with the probabilities' little-endian `f32`s after it.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::api::predict::MAX_IMAGES;

/// The binary tensor data extension's header: the JSON's length in the body.
pub const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// The model's one input.
pub const INPUT: &str = "images";
/// The model's one output.
pub const OUTPUT: &str = "probabilities";

/// Parameters (`$parameters`): names to strings, numbers or booleans.
pub type Parameters = Map<String, Value>;

/// An inference request (`$inference_request`), as its JSON says.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferRequest {
    /// Returned in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// `binary_data_output` (bool): every output as binary data. `invert` (`auto`,
    /// `true` or `false`, or a bool): invert `UINT8` and `BYTES` images as `/predict`'s
    /// `invert` does (default: `auto` for `BYTES`, `false` for `UINT8`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// Exactly one: `images`.
    #[schema(min_items = 1, max_items = 1)]
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted (only `probabilities`); all of them when absent.
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor (`$request_input`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestInput {
    /// `images`.
    #[schema(value_type = InputName)]
    pub name: String,
    /// `[N, H, W]` or `[N, C, H, W]` for `UINT8`, `[N, C, H, W]` for `FP32`, `[N]` for
    /// `BYTES`; N is 1 to 64.
    #[schema(min_items = 1, max_items = 4)]
    pub shape: Vec<u64>,
    /// `UINT8`, `FP32` or `BYTES`.
    #[schema(value_type = Datatype)]
    pub datatype: String,
    /// `binary_data_size` (integer): the tensor's bytes follow the JSON header.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// The elements, nested or flat, row-major: integers 0-255 for `UINT8`, numbers for
    /// `FP32`, base64 strings of image files for `BYTES`. Absent when the tensor is binary.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Value>>)]
    pub data: Option<JsonData>,
}

/// The model's one input.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum InputName {
    #[schema(rename = "images")]
    Images,
}

/// The model's one output.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum OutputName {
    #[schema(rename = "probabilities")]
    Probabilities,
}

/// The datatypes `images` takes.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum Datatype {
    #[schema(rename = "UINT8")]
    Uint8,
    #[schema(rename = "FP32")]
    Fp32,
    #[schema(rename = "BYTES")]
    Bytes,
}

/// One output asked for (`$request_output`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestOutput {
    /// `probabilities`.
    #[schema(value_type = OutputName)]
    pub name: String,
    /// `binary_data` (bool): this output as binary data.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
}

/// An inference response (`$inference_response`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InferResponse {
    /// The experiment.
    pub model_name: String,
    /// The epoch whose checkpoint answered.
    pub model_version: String,
    /// The request's `id`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor (`$response_output`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResponseOutput {
    pub name: String,
    /// Always `FP32`.
    pub datatype: &'static str,
    /// `[N, classes]`.
    pub shape: Vec<usize>,
    /// `binary_data_size` when the data follows the JSON header as binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// Row-major probabilities, absent when binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f32>>,
}

/// A tensor's element type, of those `images` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Uint8,
    Fp32,
    Bytes,
}

impl DataType {
    fn parse(s: &str) -> Option<DataType> {
        match s {
            "UINT8" => Some(DataType::Uint8),
            "FP32" => Some(DataType::Fp32),
            "BYTES" => Some(DataType::Bytes),
            _ => None,
        }
    }
}

/// A tensor's elements, of its datatype.
#[derive(Debug)]
pub enum Elements {
    U8(Vec<u8>),
    F32(Vec<f32>),
    /// Each element's bytes (image files).
    Bytes(Vec<Bytes>),
}

/// The `images` input: a shape whose first dimension (the batch) is 1 to
/// [`MAX_IMAGES`], and as many elements of its datatype as the shape holds.
#[derive(Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Elements,
}

impl Tensor {
    /// Images in the batch.
    pub fn images(&self) -> usize {
        self.shape[0]
    }
}

/// A checked request: its one input, and how to answer.
#[derive(Debug)]
pub struct Request {
    pub id: Option<String>,
    pub parameters: Parameters,
    pub input: Tensor,
    /// The output as binary data.
    pub binary_output: bool,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Reads and checks a request body (with its headers, for the binary extension).
pub fn read(headers: &HeaderMap, body: Bytes) -> Result<Request, ApiError> {
    let (json, mut binary) = match headers.get(&HEADER_LENGTH) {
        Some(v) => {
            let n = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| bad("Inference-Header-Content-Length must be a byte count"))?;
            if n > body.len() {
                return Err(bad(format!(
                    "Inference-Header-Content-Length is {n}, but the body has {} bytes",
                    body.len()
                )));
            }
            (body.slice(..n), body.slice(n..))
        }
        None => (body, Bytes::new()),
    };
    let req: InferRequest = serde_json::from_slice(&json)
        .map_err(|e| bad(format!("the request is not an inference request: {e}")))?;
    let input = match req.inputs.as_slice() {
        [one] if one.name == INPUT => one,
        [one] => {
            return Err(bad(format!(
                "unknown input {:?}: the model's one input is `{INPUT}`",
                one.name
            )));
        }
        other => {
            return Err(bad(format!(
                "the model takes one input, `{INPUT}`; the request has {}",
                other.len()
            )));
        }
    };
    let tensor = read_tensor(input, &mut binary)?;
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the inputs' (binary_data_size says how many each input has)",
            binary.len()
        )));
    }
    let parameters = req.parameters.unwrap_or_default();
    let all_binary = flag(
        &parameters,
        "binary_data_output",
        "the request's parameters",
    )?;
    let mut binary_output = all_binary.unwrap_or(false);
    for out in req.outputs.iter().flatten() {
        if out.name != OUTPUT {
            return Err(bad(format!(
                "unknown output {:?}: the model's one output is `{OUTPUT}`",
                out.name
            )));
        }
        let params = out.parameters.clone().unwrap_or_default();
        if params.contains_key("classification") {
            return Err(bad(
                "the classification extension is not supported: ask for `probabilities`",
            ));
        }
        if let Some(b) = flag(&params, "binary_data", "the output's parameters")? {
            binary_output = b;
        }
    }
    Ok(Request {
        id: req.id,
        parameters,
        input: tensor,
        binary_output,
    })
}

/// A boolean parameter, if given.
fn flag(params: &Parameters, name: &str, whose: &str) -> Result<Option<bool>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(bad(format!(
            "{name} in {whose} must be a boolean, not {other}"
        ))),
    }
}

/// The input's elements, from its JSON `data` or from the front of `binary`.
fn read_tensor(input: &RequestInput, binary: &mut Bytes) -> Result<Tensor, ApiError> {
    let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
        bad(format!(
            "datatype {:?} is not taken: `{INPUT}` is UINT8 (raw pixels), FP32 (preprocessed) or BYTES (image files)",
            input.datatype
        ))
    })?;
    let shape = input
        .shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| bad(format!("shape {:?} is too large", input.shape)))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let ranks: &[usize] = match datatype {
        DataType::Uint8 => &[3, 4],
        DataType::Fp32 => &[4],
        DataType::Bytes => &[1],
    };
    if !ranks.contains(&shape.len()) {
        let want = match datatype {
            DataType::Uint8 => "[N, H, W] or [N, C, H, W]",
            DataType::Fp32 => "[N, C, H, W]",
            DataType::Bytes => "[N]",
        };
        return Err(bad(format!(
            "{} `{INPUT}` has the shape {want}, not {shape:?}",
            input.datatype
        )));
    }
    let n = shape[0];
    if !(1..=MAX_IMAGES).contains(&n) {
        return Err(bad(format!(
            "a request holds 1 to {MAX_IMAGES} images; the shape {shape:?} says {n}"
        )));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let params = input.parameters.clone().unwrap_or_default();
    let size = match params.get("binary_data_size") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad(format!("binary_data_size must be a byte count, not {v}")))?,
        ),
    };
    let data = match (size, &input.data) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "the input has both JSON data and binary_data_size: send one",
            ));
        }
        (None, None) => {
            return Err(bad(
                "the input has no data: give `data`, or binary_data_size and the bytes after the JSON",
            ));
        }
        (Some(size), None) => {
            if size > binary.len() {
                return Err(bad(format!(
                    "binary_data_size is {size}, but {} bytes follow the JSON header",
                    binary.len()
                )));
            }
            from_binary(datatype, count, binary.split_to(size))?
        }
        (None, Some(json)) => from_json(datatype, count, json)?,
    };
    Ok(Tensor { shape, data })
}

fn length_mismatch(count: usize, what: &str, got: usize) -> ApiError {
    bad(format!(
        "the shape holds {count} elements, but the data has {got} {what}"
    ))
}

fn from_binary(datatype: DataType, count: usize, bytes: Bytes) -> Result<Elements, ApiError> {
    match datatype {
        DataType::Uint8 => {
            if bytes.len() != count {
                return Err(length_mismatch(count, "bytes (1 a UINT8)", bytes.len()));
            }
            Ok(Elements::U8(bytes.to_vec()))
        }
        DataType::Fp32 => {
            if Some(bytes.len()) != count.checked_mul(4) {
                return Err(length_mismatch(count, "bytes (4 an FP32)", bytes.len()));
            }
            let x: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            finite(&x)?;
            Ok(Elements::F32(x))
        }
        DataType::Bytes => {
            let mut rest = bytes;
            let mut out = Vec::with_capacity(count.min(MAX_IMAGES));
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err(bad("BYTES data ends inside an element's 4-byte length"));
                }
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len > rest.len() - 4 {
                    return Err(bad(format!(
                        "BYTES element {} says {len} bytes, but only {} remain",
                        out.len(),
                        rest.len() - 4
                    )));
                }
                if out.len() == count {
                    return Err(bad(format!(
                        "the shape holds {count} elements, but the BYTES data has more"
                    )));
                }
                let _ = rest.split_to(4);
                out.push(rest.split_to(len));
            }
            if out.len() != count {
                return Err(length_mismatch(count, "BYTES elements", out.len()));
            }
            Ok(Elements::Bytes(out))
        }
    }
}

fn from_json(datatype: DataType, count: usize, json: &JsonData) -> Result<Elements, ApiError> {
    let got = json.len();
    if got != count {
        return Err(length_mismatch(count, "elements", got));
    }
    match (datatype, json) {
        (DataType::Uint8, JsonData::Numbers(v)) => v
            .iter()
            .map(|&x| {
                if x.fract() == 0.0 && (0.0..=255.0).contains(&x) {
                    Ok(x as u8)
                } else {
                    Err(bad(format!("UINT8 elements are 0 to 255, not {x}")))
                }
            })
            .collect::<Result<Vec<u8>, _>>()
            .map(Elements::U8),
        (DataType::Fp32, JsonData::Numbers(v)) => {
            let x: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            finite(&x)?;
            Ok(Elements::F32(x))
        }
        (DataType::Bytes, JsonData::Strings(v)) => v
            .iter()
            .enumerate()
            .map(|(i, s)| {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map(Bytes::from)
                    .map_err(|e| {
                        bad(format!(
                            "BYTES element {i} is not base64 (in JSON, an image file is its base64): {e}"
                        ))
                    })
            })
            .collect::<Result<Vec<Bytes>, _>>()
            .map(Elements::Bytes),
        (DataType::Bytes, JsonData::Numbers(_)) => Err(bad(
            "BYTES elements in JSON are strings: each image file in base64",
        )),
        (_, JsonData::Strings(_)) => Err(bad(format!(
            "{} elements in JSON are numbers, not strings",
            if datatype == DataType::Uint8 {
                "UINT8"
            } else {
                "FP32"
            }
        ))),
    }
}

/// FP32 inputs are finite (JSON has no NaN, and a binary one would poison the answer).
fn finite(x: &[f32]) -> Result<(), ApiError> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(bad(format!(
            "FP32 element {i} is {}: inputs must be finite",
            x[i]
        ))),
    }
}

/// A tensor's JSON `data`, flattened: numbers or strings, nested arrays read row-major.
#[derive(Debug)]
pub enum JsonData {
    Numbers(Vec<f64>),
    Strings(Vec<String>),
}

impl JsonData {
    fn len(&self) -> usize {
        match self {
            JsonData::Numbers(v) => v.len(),
            JsonData::Strings(v) => v.len(),
        }
    }
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut acc = Flat::default();
        Elem(&mut acc).deserialize(d)?;
        Ok(if acc.strings.is_empty() {
            JsonData::Numbers(acc.numbers)
        } else {
            JsonData::Strings(acc.strings)
        })
    }
}

/// What [`Elem`] gathers: numbers or strings, never both.
#[derive(Default)]
struct Flat {
    numbers: Vec<f64>,
    strings: Vec<String>,
}

impl Flat {
    fn number<E: de::Error>(&mut self, v: f64) -> Result<(), E> {
        if !self.strings.is_empty() {
            return Err(E::custom("data mixes numbers and strings"));
        }
        self.numbers.push(v);
        Ok(())
    }

    fn string<E: de::Error>(&mut self, v: String) -> Result<(), E> {
        if !self.numbers.is_empty() {
            return Err(E::custom("data mixes numbers and strings"));
        }
        self.strings.push(v);
        Ok(())
    }
}

/// One element of `data`, or a nested array of them, appended to the [`Flat`]: the
/// elements go straight into one vector, however deep the nesting.
struct Elem<'a>(&'a mut Flat);

impl<'de> DeserializeSeed<'de> for Elem<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elem<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers or strings, in nested arrays or flat")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.number(v as f64)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.number(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.number(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.string(v.to_string())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.0.string(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Elem(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// The response to a request: JSON, or the JSON header and the probabilities as binary.
pub fn respond(
    model_name: String,
    epoch: i32,
    id: Option<String>,
    probs: &[Vec<f32>],
    classes: usize,
    binary: bool,
) -> Response {
    let flat: Vec<f32> = probs.iter().flatten().copied().collect();
    let shape = vec![probs.len(), classes];
    let mut out = ResponseOutput {
        name: OUTPUT.into(),
        datatype: "FP32",
        shape,
        parameters: None,
        data: None,
    };
    let mut res = InferResponse {
        model_name,
        model_version: epoch.to_string(),
        id,
        outputs: Vec::new(),
    };
    if !binary {
        out.data = Some(flat);
        res.outputs.push(out);
        return axum::Json(res).into_response();
    }
    let size = flat.len() * 4;
    let mut params = Parameters::new();
    params.insert("binary_data_size".into(), size.into());
    out.parameters = Some(params);
    res.outputs.push(out);
    let mut body = serde_json::to_vec(&res).expect("a response serializes");
    let header_len = body.len();
    body.reserve(size);
    for v in &flat {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(HEADER_LENGTH, HeaderValue::from(header_len));
    response
}

#[cfg(test)]
mod tests;
