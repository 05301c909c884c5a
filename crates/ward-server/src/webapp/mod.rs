//! The clinician's mobile web app under `/app`: server-rendered pages for
//! a phone screen, signed in through the authorization server like any
//! other client.
//!
//! The app is a built-in first-party OAuth client (`ward-web`) that uses
//! the authorization code flow with PKCE against this server's own
//! `/oauth/authorize`, so the password and TOTP pages, throttling and
//! sign-in audit are the ones every client gets. The tokens stay in a
//! server-side session record (see [`session`]); the browser holds only a
//! `__Host-` cookie. Every read and write goes through the FHIR routes
//! in-process with the user's access token, so the same authentication,
//! scope checks, access policy and audit apply as for any FHIR client.
//!
//! TODO: photo capture, the exchange and admin screens, enrolling the
//! browser as a DPoP-bound device and a PIN unlock are not built yet.
//!
//! TODO: the consent page still asks the user to allow the app's own
//! scopes at every sign-in; a first-party client could skip it.

mod assets;
mod call;
mod html;
mod pages;
mod session;
mod signin;
pub mod vitals;

use axum::Router;
use axum::routing::{get, post};

use crate::AppState;

/// The `client_id` of the built-in web app client.
pub const WEB_CLIENT_ID: &str = "ward-web";
/// The scopes the web app requests: the clinician's own access to the
/// patients of their care team, and an `online_access` refresh token that
/// lives no longer than the sign-in session.
pub const WEB_SCOPE: &str = "openid fhirUser online_access user/*.cruds";
/// The path of the OAuth redirect URI, under the server origin.
pub const CALLBACK_PATH: &str = "/app/callback";

/// Builds the routes of the web app.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/app", get(pages::patients))
        .route("/app/", get(pages::patients))
        .route("/app/search", post(pages::search))
        .route("/app/p/{handle}", get(pages::chart))
        .route(
            "/app/p/{handle}/vitals",
            get(pages::vitals_form).post(pages::save_vitals),
        )
        .route("/app/signin", get(signin::start))
        .route(CALLBACK_PATH, get(signin::callback))
        .route("/app/signout", post(signin::sign_out))
        .route("/app/timeout", get(signin::timeout))
        .route("/app/signed-out", get(signin::signed_out))
        .route("/app/static/app.css", get(assets::stylesheet))
        .route("/app/static/app.js", get(assets::script))
        .route("/app/static/icon.svg", get(assets::icon))
        .route("/app/manifest.webmanifest", get(assets::manifest))
        .route("/app/sw.js", get(assets::service_worker))
}
