//! The static files of the web app, compiled into the binary: the
//! stylesheet, the small script, the icon, the web manifest and the
//! service worker. None of them carries PHI, so they may be cached.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

const STYLESHEET: &str = include_str!("assets/app.css");
const SCRIPT: &str = include_str!("assets/app.js");
const ICON: &str = include_str!("assets/icon.svg");
const MANIFEST: &str = include_str!("assets/manifest.webmanifest");
const SERVICE_WORKER: &str = include_str!("assets/sw.js");
const ENROLL_SCRIPT: &str = include_str!("assets/enroll.js");
const DEVICE_KEY_SCRIPT: &str = include_str!("assets/dpop.js");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The application-wide middleware sets no-store on every response; these
    // files carry no PHI, but keeping that default costs only a refetch.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Serves `/app/static/app.css`.
pub async fn stylesheet() -> Response {
    asset(STYLESHEET, "text/css; charset=utf-8")
}

/// Serves `/app/static/app.js`.
pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// Serves `/app/static/enroll.js`, the browser device enrollment.
pub async fn enroll_script() -> Response {
    asset(ENROLL_SCRIPT, "text/javascript; charset=utf-8")
}

/// Serves `/app/static/dpop.js`, the device key store and DPoP proofs that
/// the enrollment page and the service worker share.
pub async fn device_key_script() -> Response {
    asset(DEVICE_KEY_SCRIPT, "text/javascript; charset=utf-8")
}

/// Serves `/app/static/icon.svg`.
pub async fn icon() -> Response {
    asset(ICON, "image/svg+xml")
}

/// Serves the web manifest.
pub async fn manifest() -> Response {
    asset(MANIFEST, "application/manifest+json")
}

/// Serves the service worker with the allowed scope `/app`, so that it also
/// handles requests for `/app` itself (the patient list), not only `/app/...`.
pub async fn service_worker() -> Response {
    let mut response = asset(SERVICE_WORKER, "text/javascript; charset=utf-8");
    response
        .headers_mut()
        .insert("service-worker-allowed", HeaderValue::from_static("/app"));
    response
}
