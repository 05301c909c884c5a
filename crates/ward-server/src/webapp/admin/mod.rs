//! The administrator screens under `/app/admin`: user accounts, enrolled
//! devices (revoke, wipe, the lost-device report), the audit log viewer,
//! the accounting of disclosures of a patient and security alerts.
//!
//! Only a security administrator whose session token carries the `admin`
//! scope gets in. The authorization server grants that scope to users with
//! the `security_admin` role only (the web app requests it at every
//! sign-in and it is dropped for everyone else), and every route here
//! checks the verified token again, so a clinician gets 403 whether or not
//! the link is shown. Devices and the audit log go through the same admin
//! and audit routes as any client, in-process with the user's token, so
//! their checks and audit records apply. User accounts have no HTTP API;
//! those screens call the identity store directly after the same check and
//! write an audit record for every change.
//!
//! Patient ids never reach a URL: the disclosure and audit searches are
//! POSTed forms. Device ids and user names do appear in URLs and forms;
//! they are not patient data.
//!
//! Every change (disable, enable, second-factor reset, revoke, wipe) goes
//! through a confirmation page whose form carries a one-time nonce, stored
//! server-side and consumed when the change is applied, so a double click,
//! a reload or a replayed form applies nothing a second time.
//!
//! NOTE: the `auditor` role may read the audit log through the API, but
//! these screens, the audit viewer included, admit only `security_admin`.

mod audit;
mod devices;
mod users;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ward_audit::record::{Action, Subtype};

use super::call::Reply;
use super::html::{AppPage, error_page, escape};
use super::signin::{self, Active, PeerAddr};
use crate::AppState;
use crate::audit::Actor;
use crate::auth::{Principal, authenticate};

/// The role that administers users, devices and the audit log.
const ADMIN_ROLE: &str = "security_admin";
/// The scope an administrator's token must carry.
const ADMIN_SCOPE: &str = "admin";
/// One-time confirmation nonces, by nonce.
const NS_CONFIRM: &str = "webapp.admin_confirm";
/// How long a confirmation page stays valid.
const CONFIRM_TTL_SECS: i64 = 10 * 60;

/// Builds the routes of the admin screens.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/app/admin", get(home))
        .route("/app/admin/", get(home))
        .route("/app/admin/users", get(users::list))
        .route("/app/admin/users/confirm", post(users::confirm))
        .route("/app/admin/users/apply", post(users::apply))
        .route("/app/admin/users/new-factor", get(users::new_factor))
        .route("/app/admin/devices", get(devices::list))
        .route("/app/admin/devices/{id}", get(devices::show))
        .route("/app/admin/devices/{id}/confirm", post(devices::confirm))
        .route("/app/admin/devices/{id}/apply", post(devices::apply))
        .route("/app/admin/devices/{id}/report", get(devices::report))
        .route("/app/admin/audit", get(audit::viewer).post(audit::search))
        .route(
            "/app/admin/disclosures",
            get(audit::disclosures_form).post(audit::disclosures),
        )
        .route("/app/admin/alerts", get(audit::alerts))
}

/// Returns whether `principal` is a security administrator holding the
/// `admin` scope.
fn is_admin(principal: &Principal) -> bool {
    principal.role.as_deref() == Some(ADMIN_ROLE)
        && principal.scopes.raw.iter().any(|s| s == ADMIN_SCOPE)
}

/// Verifies `token` as the FHIR routes do (signature, issuer, audience,
/// expiry) and returns its caller.
fn principal_of(state: &AppState, token: &str) -> Option<Principal> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).ok()?,
    );
    authenticate(&headers, &state.verifier).ok()
}

/// Returns whether a session's access token is a security administrator's
/// with the `admin` scope. The bar uses it to show the admin link; the
/// admin routes check liveness as well.
pub fn is_admin_token(state: &AppState, token: &str) -> bool {
    principal_of(state, token).is_some_and(|principal| is_admin(&principal))
}

/// A signed-in administrator, checked for an admin page.
pub struct AdminSession {
    /// The web app session.
    pub active: Active,
    /// The verified caller of the session's token.
    pub principal: Principal,
    /// The browser's address, for the audit records.
    pub peer: Option<SocketAddr>,
}

impl AdminSession {
    /// Returns the session's access token.
    pub fn token(&self) -> &str {
        self.active.token()
    }

    /// Returns the session's CSRF token.
    pub fn csrf(&self) -> &str {
        &self.active.session.csrf
    }

    /// Builds a signed-in admin page with the admin section links.
    pub fn page(&self, status: StatusCode, title: &'static str, body: &str) -> Response {
        AppPage::new(status, title, format!("{}{body}", section_nav(title)))
            .signed_in(self.active.bar())
            .into_response()
    }

    /// Returns the administrator as the actor of audit records.
    pub fn actor(&self) -> Actor {
        Actor::from_principal(&self.principal, self.peer.map(|p| p.ip()))
    }
}

/// Loads the signed-in session and checks that it belongs to a security
/// administrator with the `admin` scope and a live token. Anyone else gets
/// 403, recorded in the audit log as a denied use of a restricted function.
///
/// # Errors
///
/// The response to send instead: a redirect to sign-in or the 403 page.
pub async fn require_admin(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<AdminSession, Response> {
    let active = signin::require(state, peer, headers).await?;
    let Some(principal) = principal_of(state, active.token()) else {
        return Err(super::html::see_other("/app/signin", &[]));
    };
    if crate::oauth::check_principal(state, &principal)
        .await
        .is_err()
    {
        return Err(error_page(
            StatusCode::UNAUTHORIZED,
            "Your sign-in is no longer valid. Sign out and sign in again.",
        ));
    }
    if !is_admin(&principal) {
        let reason = "the admin screens need the security_admin role and the admin scope";
        let actor = Actor::from_principal(&principal, peer.map(|p| p.ip()));
        let record = state.engine.auditor.denial(
            &actor,
            Subtype::UseOfRestrictedFunction,
            Action::Execute,
            reason,
            None,
            &[],
        );
        if state.engine.auditor.commit(record).await.is_err() {
            tracing::error!(target: "ward::webapp", "recording a denied admin page failed");
        }
        tracing::warn!(target: "ward::webapp", role = principal.role.as_deref().unwrap_or("none"), "a non-administrator opened an admin page");
        return Err(AppPage::new(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "<h1>Not allowed</h1><p class=\"error\" role=\"alert\">The administration \
             screens are only for security administrators.</p>\
             <p><a class=\"button wide\" href=\"/app\">Back to the start page</a></p>"
                .to_owned(),
        )
        .signed_in(active.bar())
        .into_response());
    }
    Ok(AdminSession {
        active,
        principal,
        peer,
    })
}

/// A pending confirmation: the administrator who may apply it, the target and the action.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct Pending {
    admin: String,
    target: String,
    action: String,
}

/// Microseconds since the Unix epoch, the unit of record expiry.
fn now_micros() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// Issues the one-time nonce a confirmation form carries to its apply
/// route, bound to the administrator, the target (a user name or device
/// id) and the action.
///
/// # Errors
///
/// An error page when the store fails.
pub async fn issue_confirmation(
    state: &AppState,
    admin: &AdminSession,
    target: &str,
    action: &str,
) -> Result<String, Response> {
    let failed = || {
        error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The confirmation could not be prepared. Try again.",
        )
    };
    let nonce = ward_auth::oauth::generate_token()
        .map_err(|_| failed())?
        .to_string();
    let pending = Pending {
        admin: admin.principal.subject.clone(),
        target: target.to_owned(),
        action: action.to_owned(),
    };
    let bytes = serde_json::to_vec(&pending).map_err(|_| failed())?;
    let store = state.engine.store.clone();
    let key = nonce.clone();
    let expires = now_micros().saturating_add(CONFIRM_TTL_SECS * 1_000_000);
    match signin::blocking(move || store.kv_insert_new(NS_CONFIRM, &key, &bytes, Some(expires)))
        .await
    {
        Ok(Ok(true)) => Ok(nonce),
        _ => Err(failed()),
    }
}

/// Consumes a confirmation nonce. Exactly one request can consume it, and
/// it must have been issued to this administrator for this target and action.
///
/// # Errors
///
/// A 409 page when the nonce was used before, expired or does not match,
/// naming where to start again; nothing is changed then.
pub async fn consume_confirmation(
    state: &AppState,
    admin: &AdminSession,
    nonce: &str,
    target: &str,
    action: &str,
    back: &str,
) -> Result<(), Response> {
    let store = state.engine.store.clone();
    let key = nonce.to_owned();
    let taken = if nonce.is_empty() || nonce.len() > 128 {
        None
    } else {
        match signin::blocking(move || store.kv_take(NS_CONFIRM, &key)).await {
            Ok(Ok(taken)) => taken,
            _ => None,
        }
    };
    let expected = Pending {
        admin: admin.principal.subject.clone(),
        target: target.to_owned(),
        action: action.to_owned(),
    };
    let matches = taken
        .and_then(|bytes| serde_json::from_slice::<Pending>(&bytes).ok())
        .is_some_and(|pending| pending == expected);
    if matches {
        return Ok(());
    }
    tracing::warn!(target: "ward::webapp", action, "a used, expired or foreign admin confirmation was submitted");
    Err(admin.page(
        StatusCode::CONFLICT,
        "Already done",
        &format!(
            "<h1>Nothing was changed</h1><p class=\"error\" role=\"alert\">This confirmation \
             was already used or has expired, so it was not applied again. Check the current \
             state and start again there if a change is still needed.</p>\
             <p><a class=\"button wide\" href=\"{}\">Check the current state</a></p>",
            escape(back)
        ),
    ))
}

/// Builds the HTML 404 page of the app, for unknown paths under `/app`.
pub fn unknown_page() -> Response {
    AppPage::new(
        StatusCode::NOT_FOUND,
        "Not found",
        "<h1>Page not found</h1><p class=\"error\" role=\"alert\">There is no page at this \
         address. It may have been mistyped or moved.</p>\
         <p><a class=\"button wide\" href=\"/app\">Go to the start page</a></p>"
            .to_owned(),
    )
    .into_response()
}

/// Builds the HTML 405 page of the app, for a method a route under `/app`
/// does not take (such as a GET of an address only forms post to).
pub fn wrong_method_page() -> Response {
    AppPage::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Not available",
        "<h1>This page cannot be opened directly</h1><p class=\"error\" role=\"alert\">\
         This address only takes a form sent from another page. Go back and use the \
         page's buttons.</p>\
         <p><a class=\"button wide\" href=\"/app\">Go to the start page</a></p>"
            .to_owned(),
    )
    .into_response()
}

/// Builds the links between the admin screens and marks the current one.
fn section_nav(current: &str) -> String {
    let links = [
        ("/app/admin/users", "Users"),
        ("/app/admin/devices", "Devices"),
        ("/app/admin/audit", "Audit log"),
        ("/app/admin/disclosures", "Disclosures"),
        ("/app/admin/alerts", "Alerts"),
    ];
    let items: String = links
        .iter()
        .map(|(href, label)| {
            let here = match *label {
                "Devices" => current.starts_with("Device") || current == "Lost-device report",
                other => current.starts_with(other),
            };
            format!(
                "<li><a href=\"{href}\"{}>{label}</a></li>",
                if here { " aria-current=\"page\"" } else { "" }
            )
        })
        .collect();
    format!("<nav class=\"admin-nav\" aria-label=\"Administration\"><ul>{items}</ul></nav>")
}

/// Builds the page for a form whose CSRF token does not match the session's.
fn expired_form() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "This form has expired. Reload the page and try again.",
    )
}

/// Explains a failed in-process request to an admin route, with the
/// route's own message when it gave one.
fn api_failure(admin: &AdminSession, reply: &Reply, doing: &str) -> Response {
    let detail = reply
        .body
        .pointer("/issue/0/diagnostics")
        .or_else(|| reply.body.get("error_description"))
        .and_then(Value::as_str)
        .unwrap_or("");
    tracing::warn!(target: "ward::webapp", status = reply.status.as_u16(), doing, "an in-process admin request failed");
    let status = if reply.status.is_client_error() {
        reply.status
    } else {
        StatusCode::BAD_GATEWAY
    };
    let message = match (reply.status.as_u16(), detail.is_empty()) {
        (401, _) => "Your sign-in is no longer valid. Sign out and sign in again.".to_owned(),
        (_, false) => format!("The server could not {doing}: {detail}."),
        (_, true) => format!("The server could not {doing}. Try again."),
    };
    admin.page(
        status,
        "Problem",
        &format!(
            "<h1>Something went wrong</h1><p class=\"error\" role=\"alert\">{}</p>",
            escape(&message)
        ),
    )
}

/// Shows an RFC 3339 instant as `YYYY-MM-DD HH:MM UTC`, or `fallback`.
fn when(value: Option<&str>, fallback: &str) -> String {
    match value {
        Some(text) if text.is_char_boundary(16) && text.len() >= 16 => {
            let zoned = text.ends_with('Z') || text.ends_with("+00:00");
            let mut shown = text[..16].replace('T', " ");
            if zoned {
                shown.push_str(" UTC");
            }
            shown
        }
        Some(text) => text.to_owned(),
        None => fallback.to_owned(),
    }
}

/// `GET /app/admin`: the administration start page.
async fn home(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let cards = [
        (
            "/app/admin/users",
            "Users",
            "Accounts, roles, disable or enable, reset the second factor",
        ),
        (
            "/app/admin/devices",
            "Devices",
            "Enrolled phones and tablets, revoke and wipe, lost-device report",
        ),
        (
            "/app/admin/audit",
            "Audit log",
            "Recent events, filtered by user, patient, type, outcome and date",
        ),
        (
            "/app/admin/disclosures",
            "Disclosures",
            "Accounting of disclosures for one patient",
        ),
        (
            "/app/admin/alerts",
            "Alerts",
            "Security alerts raised by the server",
        ),
    ];
    let items: String = cards
        .iter()
        .map(|(href, name, meta)| {
            format!(
                "<li><a class=\"card\" href=\"{href}\"><span class=\"name\">{name}</span> \
                 <span class=\"meta\">{meta}</span></a></li>"
            )
        })
        .collect();
    AppPage::new(
        StatusCode::OK,
        "Administration",
        format!(
            "<h1>Administration</h1><ul class=\"cards\" aria-label=\"Admin screens\">{items}</ul>"
        ),
    )
    .signed_in(admin.active.bar())
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_shortened() {
        assert_eq!(
            when(Some("2026-03-01T10:05:59Z"), "-"),
            "2026-03-01 10:05 UTC"
        );
        assert_eq!(when(None, "never"), "never");
        assert_eq!(when(Some("2026"), "-"), "2026");
        assert_eq!(when(Some("2026-03-01T10:0é"), "-"), "2026-03-01T10:0é");
    }

    #[test]
    fn section_nav_marks_the_current_screen() {
        let nav = section_nav("Device");
        assert!(nav.contains("href=\"/app/admin/devices\" aria-current=\"page\""));
        assert_eq!(nav.matches("aria-current").count(), 1);
    }
}
