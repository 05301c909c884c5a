//! The Ward HTTPS application: the axum router with its middleware, the
//! FHIR REST API, access-token checks, TLS and the data directory.
//!
//! A request passes TLS, then authentication (the `Ctx` extractor), then
//! the scope check in each handler, then the engine and the store.

pub mod access;
pub mod audit;
pub mod auth;
pub mod device;
pub mod error;
pub mod exchange;
pub mod fhir;
pub mod metrics;
pub mod oauth;
pub mod scopes;
pub mod setup;
pub mod tls;
pub mod webapp;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;

use crate::auth::TokenVerifier;
use crate::error::FhirError;
use crate::fhir::engine::Engine;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The FHIR engine.
    pub engine: Arc<Engine>,
    /// Verifies access tokens.
    pub verifier: Arc<TokenVerifier>,
    /// The CapabilityStatement, built once.
    pub capability: Arc<Value>,
    /// The OAuth 2.0 authorization server, when this application runs one.
    pub oauth: Option<Arc<oauth::OAuthServer>>,
    /// Device enrollment and the device CA, when this application enrolls
    /// devices.
    pub devices: Option<Arc<device::DeviceService>>,
    /// Message exchange with other organizations, when enabled.
    pub exchange: Option<Arc<exchange::ExchangeService>>,
}

impl AppState {
    /// Creates the state for an engine and a token verifier.
    pub fn new(engine: Arc<Engine>, verifier: Arc<TokenVerifier>) -> Self {
        let capability = fhir::capability::capability_statement(&engine.base, None);
        metrics::handle();
        Self {
            engine,
            verifier,
            capability: Arc::new(capability),
            oauth: None,
            devices: None,
            exchange: None,
        }
    }

    /// Adds message exchange with other organizations.
    pub fn with_exchange(mut self, exchange: Arc<exchange::ExchangeService>) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// Adds device enrollment and the device endpoints.
    pub fn with_devices(mut self, devices: Arc<device::DeviceService>) -> Self {
        self.devices = Some(devices);
        self
    }

    /// Adds the authorization server, whose endpoints the CapabilityStatement
    /// then advertises.
    pub fn with_oauth(mut self, server: Arc<oauth::OAuthServer>) -> Self {
        let security = server.capability_security();
        self.capability = Arc::new(fhir::capability::capability_statement(
            &self.engine.base,
            Some(security),
        ));
        self.oauth = Some(server);
        self
    }
}

/// Builds the application router.
pub fn app(state: AppState) -> Router {
    fhir::routes::router()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics_page))
        .merge(oauth::router())
        .merge(audit::routes::router())
        .merge(device::router())
        .merge(exchange::router())
        .merge(webapp::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn_with_state(state.clone(), access_log))
        .with_state(state)
}

/// Reports whether the store answers, for load balancers.
async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.engine.store.clone();
    let ready = tokio::task::spawn_blocking(move || store.kv_get("health", "ready").is_ok())
        .await
        .unwrap_or(false);
    if ready {
        (StatusCode::OK, "ready").into_response()
    } else {
        tracing::warn!("readiness check failed: the store did not answer");
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
    }
}

/// Renders the Prometheus metrics for a caller whose token carries the
/// `metrics` scope.
async fn metrics_page(
    State(state): State<AppState>,
    peer: audit::Peer,
    headers: http::HeaderMap,
) -> Response {
    let principal = match auth::authenticate(&headers, &state.verifier) {
        Ok(principal) => principal,
        Err(err) => return err.into_response(),
    };
    // A token that names an enrolled device passes only while the device
    // is active and compliant.
    if let Err(err) = device::gate::check(&state, &principal, peer.0).await {
        return err.into_response();
    }
    if !principal.scopes.raw.iter().any(|s| s == "metrics") {
        return FhirError::forbidden("reading metrics needs the 'metrics' scope").into_response();
    }
    let body = metrics::handle().map(|h| h.render()).unwrap_or_default();
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Returns whether `uri` is under the web app, whose errors are HTML pages.
fn in_web_app(uri: &http::Uri) -> bool {
    let path = uri.path();
    path == "/app" || path.starts_with("/app/")
}

async fn not_found(uri: http::Uri) -> Response {
    if in_web_app(&uri) {
        return webapp::unknown_page();
    }
    FhirError::not_found("no such endpoint; the FHIR API is under /fhir").into_response()
}

async fn method_not_allowed(uri: http::Uri) -> Response {
    if in_web_app(&uri) {
        return webapp::wrong_method_page();
    }
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ward_fhir::IssueType::NotSupported,
        "this method is not allowed on this URL",
    )
    .into_response()
}

/// Adds the headers every response carries: no caching of PHI, no MIME
/// sniffing, HTTPS only.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    response
}

/// Logs each request by route template (never the raw URI, whose query may
/// carry identifiers), with status and latency.
async fn access_log(State(_state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics::record_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    tracing::info!(
        target: "ward::http",
        %method,
        route,
        status = response.status().as_u16(),
        micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    response
}
