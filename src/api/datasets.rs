//! `/datasets`: upload a dataset once, then train any spec on it (`"dataset": {"id"}`).
//!
//! An upload streams to temporary files as it arrives, so a large body never sits in
//! memory, and is refused past [`MAX_UPLOAD_BYTES`] while it streams (or at once, when
//! its `Content-Length` says so). Only then is it decoded ([`crate::data::upload`]), on a
//! blocking thread, one upload at a time: decoding holds the dataset's pixels, bounded by
//! [`MAX_DECODED_BYTES`], and a second one at once would only double that. Whatever goes
//! wrong (a bomb, a path that leaves the archive, a corrupt image) is a 4xx problem that
//! names the member at fault, and nothing is stored: the rows are written in one
//! transaction after the whole upload has decoded, and the temporary files go with the
//! request.
//!
//! What a body is comes from its media type: a zip or tar(.gz) of class folders as
//! `application/zip`, `application/x-tar`, `application/gzip` (or
//! `application/octet-stream`, sniffed); a CSV as `text/csv`; or `multipart/form-data`
//! whose parts say what they are by name (`file`, `train_images`, `train_labels`,
//! `test_images`, `test_labels`, `train`, `test`).

use std::path::PathBuf;
use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::auth::Caller;
use super::error::ApiError;
use super::{AppState, input};
use crate::data::upload::{self, Input, Limits, Options, UploadError};
use crate::store::datasets::{Dataset, NewDataset};

/// Largest upload, all its files together.
pub const MAX_UPLOAD_BYTES: u64 = 256 << 20;
/// Most pixel bytes a dataset may decode to (train and test together).
pub const MAX_DECODED_BYTES: usize = 512 << 20;
/// Images of each class in `samples.png`.
const SAMPLES_PER_CLASS: usize = 8;

/// One decode at a time (see the module's comment).
static DECODING: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(1));

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/datasets", post(create).get(list))
        .route("/datasets/{id}", get(show).delete(delete))
        .route("/datasets/{id}/samples.png", get(samples))
}

/// The limits every upload is held to.
pub fn limits() -> Limits {
    Limits {
        max_decoded_bytes: MAX_DECODED_BYTES,
        ..Limits::default()
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadParams {
    /// What to call it (1 to 200 characters; default: the uploaded file's name).
    #[param(min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Resize every image to this size, `HxW` or `N` (at most 256): needed when the
    /// images differ in size or are larger, and for a CSV whose rows are not square.
    #[param(pattern = "^[0-9]{1,3}(x[0-9]{1,3})?$")]
    size: Option<String>,
    /// 1 (grayscale) or 3 (RGB); default: 3 if any image is in colour, else 1.
    #[param(value_type = Option<u8>, minimum = 1, maximum = 3)]
    channels: Option<String>,
    /// Without a test split, hold out this fraction of each class (default 0.2).
    #[param(value_type = Option<f64>, minimum = 0, maximum = 1)]
    test_fraction: Option<String>,
    /// Seed of the hold-out and of a class-folder upload's sample order (default 0).
    #[param(value_type = Option<u64>, minimum = 0)]
    seed: Option<String>,
    /// Class names for an IDX or CSV upload, comma-separated, by label.
    class_names: Option<String>,
}

/// What an upload answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Uploaded {
    #[serde(flatten)]
    dataset: Dataset,
    /// Whether its tensors were new (false: the same content was already stored, and is
    /// shared).
    new_content: bool,
}

/// The spooled parts of an upload.
#[derive(Default)]
struct Parts {
    dir: Option<tempfile::TempDir>,
    files: Vec<(String, PathBuf)>,
    bytes: u64,
    /// The first file name the client gave.
    file_name: Option<String>,
}

impl Parts {
    fn path(&self, role: &str) -> Option<&std::path::Path> {
        self.files
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, p)| p.as_path())
    }

    /// Writes one part to its own temporary file, counting against the upload's limit.
    async fn spool<S, E>(&mut self, role: &str, mut body: S) -> Result<(), ApiError>
    where
        S: Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if self.path(role).is_some() {
            return Err(ApiError::field(role, "given more than once"));
        }
        if self.dir.is_none() {
            self.dir = Some(tempfile::tempdir().map_err(internal)?);
        }
        let path = self.dir.as_ref().expect("made").path().join(role);
        let mut file = tokio::fs::File::create(&path).await.map_err(internal)?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::BadRequest(format!("{role}: the body broke off while it was read: {e}"))
            })?;
            self.bytes += chunk.len() as u64;
            if self.bytes > MAX_UPLOAD_BYTES {
                return Err(ApiError::TooLarge(MAX_UPLOAD_BYTES as usize));
            }
            file.write_all(&chunk).await.map_err(internal)?;
        }
        file.flush().await.map_err(internal)?;
        self.files.push((role.to_string(), path));
        Ok(())
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

const ARCHIVE_TYPES: [&str; 8] = [
    "application/zip",
    "application/x-zip-compressed",
    "application/x-tar",
    "application/gzip",
    "application/x-gzip",
    "application/x-gtar",
    "application/x-compressed-tar",
    "application/octet-stream",
];
const PART_ROLES: [&str; 7] = [
    "file",
    "train_images",
    "train_labels",
    "test_images",
    "test_labels",
    "train",
    "test",
];

/// Reads the body into temporary files, by role.
async fn receive(req: Request<Body>, state: &AppState) -> Result<Parts, ApiError> {
    let (ct, mime) = input::media_type(req.headers());
    input::refuse_declared_over(req.headers(), MAX_UPLOAD_BYTES)?;
    let mut parts = Parts::default();
    if mime == "multipart/form-data" {
        let mut mp = Multipart::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
            let role = field.name().unwrap_or("").to_string();
            if !PART_ROLES.contains(&role.as_str()) {
                return Err(ApiError::field(
                    if role.is_empty() { "part" } else { &role },
                    format!(
                        "unknown part: name each part one of {}",
                        PART_ROLES.join(", ")
                    ),
                ));
            }
            if parts.file_name.is_none() {
                parts.file_name = field.file_name().map(str::to_string);
            }
            // A CSV sent as `file` is the training CSV.
            let is_csv = role == "file"
                && (field.content_type() == Some("text/csv")
                    || field
                        .file_name()
                        .is_some_and(|n| n.to_ascii_lowercase().ends_with(".csv")));
            let role = if is_csv { "train".to_string() } else { role };
            parts.spool(&role, field).await?;
        }
    } else if ARCHIVE_TYPES.contains(&mime.as_str()) || mime == "text/csv" {
        let role = if mime == "text/csv" { "train" } else { "file" };
        parts
            .spool(role, req.into_body().into_data_stream())
            .await?;
    } else {
        return Err(ApiError::UnsupportedMedia(format!(
            "send a zip or tar(.gz) of class folders ({}), a CSV (text/csv), or \
             multipart/form-data with parts named {} (got {:?})",
            ARCHIVE_TYPES[..3].join(", "),
            PART_ROLES.join(", "),
            if ct.is_empty() {
                "no Content-Type"
            } else {
                &ct
            }
        )));
    }
    if parts.files.is_empty() {
        return Err(ApiError::field("file", "the upload has no file"));
    }
    Ok(parts)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(MAX_UPLOAD_BYTES as usize)
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// The decoder's options from the query.
fn options(p: &UploadParams) -> Result<Options, ApiError> {
    let size = match p.size.as_deref() {
        None => None,
        Some(s) => Some(parse_size(s).ok_or_else(|| {
            ApiError::field("size", "must be HxW or N, each side 1 to 256 (e.g. 28x28)")
        })?),
    };
    let channels = match p.channels.as_deref() {
        None | Some("auto") => None,
        Some("1") => Some(1),
        Some("3") => Some(3),
        Some(_) => return Err(ApiError::field("channels", "must be 1, 3 or auto")),
    };
    let test_fraction = match p.test_fraction.as_deref() {
        None => 0.2,
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|f| *f > 0.0 && *f < 1.0)
            .ok_or_else(|| ApiError::field("test_fraction", "must be strictly between 0 and 1"))?,
    };
    let seed = input::int_param("seed", p.seed.as_deref())?.unwrap_or(0u64);
    let class_names = p.class_names.as_deref().map(|s| {
        s.split(',')
            .map(|n| n.trim().to_string())
            .collect::<Vec<_>>()
    });
    if let Some(names) = &class_names
        && names.iter().any(|n| n.is_empty() || n.len() > 100)
    {
        return Err(ApiError::field(
            "class_names",
            "each name must be 1 to 100 characters",
        ));
    }
    Ok(Options {
        size,
        channels,
        test_fraction,
        seed,
        class_names,
        limits: limits(),
    })
}

/// `HxW` or `N`, each side 1 to 256.
pub fn parse_size(s: &str) -> Option<(usize, usize)> {
    let (h, w) = s.split_once('x').unwrap_or((s, s));
    let side = |v: &str| v.parse::<usize>().ok().filter(|n| (1..=256).contains(n));
    Some((side(h)?, side(w)?))
}

/// The decoder's error as a problem: what went wrong, named by where.
fn upload_error(e: UploadError) -> ApiError {
    // Over a limit: 413, as a body over the upload size is.
    const OVER: [&str; 5] = [
        "zip-bomb",
        "too-large",
        "too-many-samples",
        "too-many-classes",
        "too-many-entries",
    ];
    // Reading our own temporary files failed: not the client's fault.
    if e.kind() == "io" {
        return ApiError::Internal(e.to_string());
    }
    ApiError::Upload {
        kind: e.kind(),
        at: e.at().unwrap_or("file").to_string(),
        detail: e.to_string(),
        over_limit: OVER.contains(&e.kind()),
    }
}

/// Upload a dataset.
#[utoipa::path(post, path = "/datasets", tag = "datasets", operation_id = "upload_dataset", params(UploadParams),
    request_body(description = "A zip or tar(.gz) of class folders (optionally under train/ and test/), a CSV (label, then pixels), or multipart/form-data with parts `file`, `train_images`, `train_labels`, `test_images`, `test_labels` (IDX, raw or gzip), `train`, `test` (CSV)",
        content(("application/zip"), ("application/x-tar"), ("application/gzip"), ("text/csv"), ("multipart/form-data"))),
    responses(
        (status = 201, body = Uploaded, headers(("Location" = String, description = "The dataset's URL"))),
        (status = 400, description = "Malformed or cut-off body", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over a limit (upload size, samples, classes, pixels, an archive member's size)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a dataset trainyard can read; `errors` names the file or member at fault", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    q: RawQuery,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let params: UploadParams = input::query(q)?;
    if let Some(n) = &params.name
        && !(1..=200).contains(&n.chars().count())
    {
        return Err(ApiError::field("name", "must be 1 to 200 characters"));
    }
    let opts = options(&params)?;
    let parts = receive(req, &state).await?;
    let name = params
        .name
        .clone()
        .or_else(|| parts.file_name.clone())
        .map(|n| n.chars().take(200).collect::<String>())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "upload".to_string());
    let upload_bytes = parts.bytes;
    let _turn = DECODING.acquire().await.map_err(internal)?;
    let decoded = tokio::task::spawn_blocking(move || {
        let input = input_of(&parts)?;
        // `parts` (and its temporary files) lives until the decode is done.
        let r = upload::decode(input, &opts).map_err(upload_error);
        drop(parts);
        r
    })
    .await
    .map_err(internal)??;
    let (train_counts, test_counts) = decoded.class_counts();
    let sha = decoded.sha256();
    let held_out = match decoded.test_split {
        upload::TestSplit::Uploaded => None,
        upload::TestSplit::HeldOut { fraction, seed } => Some((fraction, seed)),
    };
    let (dataset, new_content) = state
        .store
        .create_dataset(NewDataset {
            account_id: caller.account_id(),
            name: &name,
            sha256: &sha,
            format: decoded.format.as_str(),
            channels: decoded.train.channels,
            height: decoded.train.rows,
            width: decoded.train.cols,
            train_images: &decoded.train.images,
            train_labels: &decoded.train.labels,
            test_images: &decoded.test.images,
            test_labels: &decoded.test.labels,
            class_names: &decoded.class_names,
            train_counts: &train_counts,
            test_counts: &test_counts,
            held_out,
            upload_bytes,
            resized: decoded.resized,
        })
        .await?;
    tracing::info!(dataset = %dataset.id, sha256 = %sha, new_content, bytes = upload_bytes, "dataset stored");
    let location = format!("/datasets/{}", dataset.id);
    let mut res = (
        StatusCode::CREATED,
        Json(Uploaded {
            dataset,
            new_content,
        }),
    )
        .into_response();
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("ascii"),
    );
    Ok(res)
}

/// Which decoder input the spooled parts make.
fn input_of(parts: &Parts) -> Result<Input<'_>, ApiError> {
    let has = |r: &str| parts.path(r).is_some();
    if let Some(file) = parts.path("file") {
        if parts.files.len() > 1 {
            return Err(ApiError::field(
                "file",
                "an archive comes alone: its train/ and test/ folders hold the splits",
            ));
        }
        return Ok(Input::Archive(file));
    }
    if has("train_images") || has("train_labels") || has("test_images") || has("test_labels") {
        let need = |r: &'static str| {
            parts
                .path(r)
                .ok_or_else(|| ApiError::field(r, "missing: an IDX upload needs images and labels"))
        };
        let (test_images, test_labels) = (parts.path("test_images"), parts.path("test_labels"));
        if test_images.is_some() != test_labels.is_some() {
            let missing = if test_images.is_none() {
                "test_images"
            } else {
                "test_labels"
            };
            return Err(ApiError::field(
                missing,
                "missing: a test split needs both images and labels",
            ));
        }
        return Ok(Input::Idx {
            train_images: need("train_images")?,
            train_labels: need("train_labels")?,
            test_images,
            test_labels,
        });
    }
    match parts.path("train") {
        Some(train) => Ok(Input::Csv {
            train,
            test: parts.path("test"),
        }),
        None => Err(ApiError::field(
            "train",
            "missing: a CSV upload needs `train`",
        )),
    }
}

fn dataset_id(p: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(id) = p.map_err(|_| ApiError::NotFound("dataset"))?;
    id.parse().map_err(|_| ApiError::NotFound("dataset"))
}

/// List datasets, newest first.
#[utoipa::path(get, path = "/datasets", tag = "datasets", operation_id = "list_datasets",
    responses((status = 200, body = Vec<Dataset>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Dataset>>, ApiError> {
    Ok(Json(state.store.datasets(caller.scope()).await?))
}

/// A dataset: its shape, classes, samples per split and class, and checksum.
#[utoipa::path(get, path = "/datasets/{id}", tag = "datasets", operation_id = "show_dataset",
    params(("id" = uuid::Uuid, Path, description = "Dataset id")),
    responses(
        (status = 200, body = Dataset),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Dataset>, ApiError> {
    let id = dataset_id(id)?;
    Ok(Json(state.store.dataset_in(caller.scope(), id).await?))
}

/// Delete a dataset (refused while a queued or running experiment uses it).
#[utoipa::path(delete, path = "/datasets/{id}", tag = "datasets", operation_id = "delete_dataset",
    params(("id" = uuid::Uuid, Path, description = "Dataset id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Queued or running experiments use it (named in `detail`)", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = dataset_id(id)?;
    state.store.delete_dataset(caller.scope(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A grid of a few training images of every class, a row per class.
#[utoipa::path(get, path = "/datasets/{id}/samples.png", tag = "datasets", operation_id = "dataset_samples",
    params(("id" = uuid::Uuid, Path, description = "Dataset id")),
    responses(
        (status = 200, content_type = "image/png", body = Vec<u8>),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn samples(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = dataset_id(id)?;
    let (d, images) = state
        .store
        .dataset_samples(caller.scope(), id, SAMPLES_PER_CLASS)
        .await?;
    let names: Vec<String> = serde_json::from_value(d.class_names.clone()).map_err(internal)?;
    let shape = (d.channels as usize, d.height as usize, d.width as usize);
    let png = tokio::task::spawn_blocking(move || {
        crate::plot::samples::png(&names, &images, shape, SAMPLES_PER_CLASS)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        png,
    )
        .into_response())
}
