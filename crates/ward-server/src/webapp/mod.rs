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
//! Referrals, e-prescriptions and the Messages screen are in [`exchange`].
//!
//! The chart ([`chart`]) shows trends ([`trend`]) and record history
//! ([`history`]). Notes, problems and allergies are written in
//! [`document`], and photos from the camera in [`photo`].
//!
//! An idle session locks until the user's PIN or passkey unlocks it
//! ([`lock`]). A browser enrolled as a device binds its session to a key
//! it cannot export ([`enroll`]).
//!
//! TODO: the consent page still asks the user to allow the app's own
//! scopes at every sign-in; a first-party client could skip it.

mod admin;
mod assets;
mod call;
mod chart;
mod document;
mod enroll;
mod exchange;
mod history;
mod html;
mod lock;
mod pages;
mod photo;
pub(crate) mod session;
mod signin;
mod trend;
pub mod vitals;

use axum::Router;
use axum::routing::{get, post};

pub use admin::{unknown_page, wrong_method_page};

use crate::AppState;

/// The `client_id` of the built-in web app client.
pub const WEB_CLIENT_ID: &str = "ward-web";
/// The scopes the web app requests: the clinician's own access to the
/// patients of their care team, an `online_access` refresh token that
/// lives no longer than the sign-in session, and `admin`, which the
/// authorization server grants only to users with the `security_admin`
/// role and drops for everyone else.
pub const WEB_SCOPE: &str = "openid fhirUser online_access user/*.cruds admin";
/// The path of the OAuth redirect URI, under the server origin.
pub const CALLBACK_PATH: &str = "/app/callback";

/// Builds the routes of the web app. Every route passes through
/// [`enroll::mark_request`], which passes the request's method and path to
/// the page handlers for the device proof check.
pub fn router() -> Router<AppState> {
    routes().layer(axum::middleware::from_fn(enroll::mark_request))
}

fn routes() -> Router<AppState> {
    Router::new()
        .route("/app", get(pages::patients))
        .route("/app/", get(pages::patients))
        .route(
            "/app/search",
            get(pages::search_results).post(pages::search),
        )
        .route("/app/p/{handle}", get(chart::chart))
        .route(
            "/app/p/{handle}/note",
            get(document::new_record_form::<document::NoteForm>)
                .post(document::save_new_record::<document::NoteForm>),
        )
        .route(
            "/app/p/{handle}/problem",
            get(document::new_record_form::<document::ProblemForm>)
                .post(document::save_new_record::<document::ProblemForm>),
        )
        .route(
            "/app/p/{handle}/problems/{id}",
            get(document::status_form).post(document::save_status),
        )
        .route(
            "/app/p/{handle}/allergy",
            get(document::new_record_form::<document::AllergyForm>)
                .post(document::save_new_record::<document::AllergyForm>),
        )
        .route(
            "/app/p/{handle}/photo",
            get(photo::form).post(photo::upload),
        )
        .route("/app/p/{handle}/documents/{id}", get(document::view))
        .route(
            "/app/p/{handle}/documents/{id}/edit",
            get(document::edit_note_form).post(document::save_note_edit),
        )
        .route(
            "/app/p/{handle}/documents/{id}/photo/{index}",
            get(photo::content),
        )
        .route("/app/p/{handle}/history/{type}/{id}", get(history::history))
        .route(
            "/app/p/{handle}/vitals",
            get(pages::vitals_form).post(pages::save_vitals),
        )
        .merge(admin::router())
        .route(
            "/app/p/{handle}/refer",
            get(exchange::referral_form).post(exchange::send_referral),
        )
        .route(
            "/app/p/{handle}/prescribe",
            get(exchange::prescription_form).post(exchange::send_prescription),
        )
        .route("/app/messages", get(exchange::messages))
        .route("/app/signin", get(signin::start))
        .route(CALLBACK_PATH, get(signin::callback))
        .route("/app/signout", post(signin::sign_out))
        .route("/app/timeout", get(signin::timeout))
        .route("/app/signed-out", get(signin::signed_out))
        .route("/app/lock", get(lock::lock_get).post(lock::lock_post))
        .route("/app/unlock", post(lock::unlock))
        .route("/app/unlock/passkey/start", post(lock::passkey_start))
        .route("/app/unlock/passkey/finish", post(lock::passkey_finish))
        .route("/app/alive", post(lock::alive))
        .route("/app/pin", post(lock::set_pin))
        .route("/app/security", get(enroll::security))
        .route("/app/device", post(enroll::enroll))
        .route("/app/static/enroll.js", get(assets::enroll_script))
        .route("/app/static/dpop.js", get(assets::device_key_script))
        .route("/app/static/app.css", get(assets::stylesheet))
        .route("/app/static/app.js", get(assets::script))
        .route("/app/static/icon.svg", get(assets::icon))
        .route("/app/manifest.webmanifest", get(assets::manifest))
        .route("/app/sw.js", get(assets::service_worker))
}
