//! The web app: a small HTML shell, CSS, ES modules and the vendored uPlot, all embedded
//! in the binary. Every view URL answers the same shell; its module router picks the view
//! from the path, so each view can be linked and reloaded.
//!
//! Assets are served with `Cache-Control: no-cache` and an `ETag` (a hash of the bytes,
//! computed once), so a browser revalidates and gets a 304 while nothing changed. Every
//! response of this router carries a strict Content-Security-Policy: no inline script or
//! style, nothing from another origin.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use tower_http::set_header::SetResponseHeaderLayer;

use super::error::ApiError;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    frame-ancestors 'none'; form-action 'self'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// One embedded file: its path under `/assets/`, bytes and media type.
struct Asset {
    path: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
}

macro_rules! asset {
    ($path:literal, $ct:expr) => {
        Asset {
            path: $path,
            bytes: include_bytes!(concat!("assets/", $path)),
            content_type: $ct,
        }
    };
}

/// Every file the app serves; `index.html` is the shell behind each view URL.
static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("favicon.svg", SVG),
    asset!("css/app.css", CSS),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/session.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/chart.js", JS),
    asset!("js/selection.js", JS),
    asset!("js/specpos.js", JS),
    asset!("js/summary.js", JS),
    asset!("js/mnist.js", JS),
    asset!("js/bands.js", JS),
    asset!("js/views/experiments.js", JS),
    asset!("js/views/experiment.js", JS),
    asset!("js/views/new.js", JS),
    asset!("js/views/compare.js", JS),
    asset!("js/views/predict.js", JS),
    asset!("js/views/sweeps.js", JS),
    asset!("js/views/sweep.js", JS),
    asset!("js/views/sign-in.js", JS),
    asset!("vendor/uPlot.iife.min.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
];

/// Each asset's strong ETag, in the order of `ASSETS`.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.bytes);
            HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..12]))).expect("hex")
        })
        .collect()
});

/// The web app's routes: the view URLs and `/assets/*`.
pub fn router() -> Router<super::AppState> {
    routes()
}

/// The routes for any state (they read none), so tests can drive them without a database.
fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(shell))
        .route("/ui/new", get(shell))
        .route("/ui/compare", get(shell))
        .route("/ui/predict", get(shell))
        .route("/ui/sweeps", get(shell))
        .route("/ui/sweeps/{id}", get(shell))
        .route("/ui/sign-in", get(shell))
        .route("/ui/experiments/{id}", get(shell))
        .route("/assets/{*path}", get(asset))
        .layer(header_layer(header::CONTENT_SECURITY_POLICY, CSP))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::REFERRER_POLICY, "same-origin"))
}

fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

async fn shell(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

async fn asset(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Path(path)) = path else {
        return ApiError::NotFound("asset").into_response();
    };
    // The shell has its view URLs; under /assets it is not a file of its own.
    match ASSETS
        .iter()
        .position(|a| a.path == path && a.path != "index.html")
    {
        Some(i) => serve(i, &headers),
        None => ApiError::NotFound("asset").into_response(),
    }
}

/// The asset at `i`, or a 304 when the client's `If-None-Match` names its ETag.
fn serve(i: usize, headers: &HeaderMap) -> Response {
    let a = &ASSETS[i];
    let etag = ETAGS[i].clone();
    let cache = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if matches_etag(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        )],
        a.bytes,
    )
        .into_response()
}

/// Whether `If-None-Match` (a list, weak tags compared weakly, or `*`) names `etag`.
fn matches_etag(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(want) = etag.to_str().ok() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(uri: &str, etag: Option<&str>) -> Response {
        let mut req = Request::get(uri);
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        routes::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn assert_security_headers(res: &Response) {
        let h = res.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "same-origin");
    }

    #[tokio::test]
    async fn every_view_url_answers_the_shell() {
        for uri in [
            "/",
            "/ui/new?from=x",
            "/ui/compare?ids=a,b",
            "/ui/predict",
            "/ui/sign-in?next=%2Fui%2Fnew",
            "/ui/experiments/0190a3b2-0000-7000-8000-000000000000",
        ] {
            let res = get(uri, None).await;
            assert_eq!(res.status(), StatusCode::OK, "{uri}");
            assert_security_headers(&res);
            assert_eq!(res.headers()[header::CONTENT_TYPE], HTML);
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-cache");
            let body = to_bytes(res.into_body(), usize::MAX).await.unwrap();
            assert_eq!(&body[..], ASSETS[0].bytes);
        }
    }

    #[tokio::test]
    async fn assets_have_their_type_and_revalidate_by_etag() {
        let res = get("/assets/js/app.js", None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_security_headers(&res);
        assert_eq!(res.headers()[header::CONTENT_TYPE], JS);
        let etag = res.headers()[header::ETAG].to_str().unwrap().to_string();
        let again = get("/assets/js/app.js", Some(&format!("\"x\", W/{etag}"))).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag.as_str());
        assert_security_headers(&again);
        let css = get("/assets/css/app.css", Some(&etag)).await;
        assert_eq!(
            css.status(),
            StatusCode::OK,
            "another file's tag does not match"
        );
        assert_eq!(css.headers()[header::CONTENT_TYPE], CSS);
    }

    #[tokio::test]
    async fn an_unknown_asset_is_a_404_problem() {
        for uri in [
            "/assets/nope.js",
            "/assets/index.html",
            "/assets/js/../index.html",
        ] {
            let res = get(uri, None).await;
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{uri}");
            assert_security_headers(&res);
            assert_eq!(
                res.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
        }
    }

    /// The policy allows no inline script or style: the shell must have none, and every
    /// file it or a module names must be embedded.
    #[test]
    fn no_inline_code_and_every_reference_is_embedded() {
        let html = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        assert!(!html.contains("style="), "inline style attribute");
        assert!(!html.contains("<style"), "inline <style>");
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            assert!(tag.contains("src="), "inline script: {tag}");
        }
        for a in ASSETS
            .iter()
            .filter(|a| a.content_type == JS || a.path.ends_with(".html"))
        {
            let text = std::str::from_utf8(a.bytes).unwrap();
            assert!(!text.contains("innerHTML") || a.path.starts_with("vendor/"));
            // Relative imports (`from './dom.js'`, `import('./views/new.js')`).
            let dir = a.path.rsplit_once('/').map_or("", |(d, _)| d);
            for (i, _) in text.match_indices("'./").chain(text.match_indices("'../")) {
                let rest = &text[i + 1..];
                let rel = &rest[..rest.find('\'').unwrap()];
                if !rel.ends_with(".js") {
                    continue;
                }
                let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
                for seg in rel.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                let path = parts.join("/");
                assert!(
                    ASSETS.iter().any(|a| a.path == path),
                    "{} imports {rel} ({path}), which is not embedded",
                    a.path
                );
            }
            for (i, _) in text.match_indices("/assets/") {
                let rest = &text[i + "/assets/".len()..];
                let end = rest.find(['"', '\'', '`', ')']).unwrap();
                let path = &rest[..end];
                assert!(
                    ASSETS.iter().any(|a| a.path == path),
                    "{} names /assets/{path}, which is not embedded",
                    a.path
                );
            }
        }
    }
}
