//! Sign-out of the web session that the sign-in pages open.
//!
//! `GET /oauth/logout` shows a button; `POST /oauth/logout` ends the
//! session, clears its cookie and records a logout AuditEvent. The session
//! cookie is `SameSite=Lax`, so a cross-site form post arrives without it and
//! cannot sign anyone out. A post whose `Origin` names another site is
//! rejected as well. Access and refresh tokens that applications hold are
//! not session state: applications revoke them at `/oauth/revoke`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use ward_auth::oauth::TokenDigest;

use super::html::{self, Page, SESSION_COOKIE};
use super::identity::{self, NS_SESSION, Session, digest_key};
use super::{OAuthServer, blocking, server_of};
use crate::AppState;
use crate::audit::{OwnedSecurityEvent, SecurityEventKind, record_security_event};

/// `GET /oauth/logout`: the sign-out button.
pub async fn logout_page(State(state): State<AppState>) -> Response {
    if let Err(response) = server_of(&state) {
        return *response;
    }
    Page::new(
        StatusCode::OK,
        "Sign out",
        "<form method=\"post\" action=\"/oauth/logout\">\
         <button type=\"submit\">Sign out</button></form>"
            .to_owned(),
    )
    .into_response()
}

/// `POST /oauth/logout`: ends the caller's web session.
pub async fn logout(State(state): State<AppState>, request: Request) -> Response {
    let server = match server_of(&state) {
        Ok(server) => server,
        Err(response) => return *response,
    };
    let network = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let headers = request.headers().clone();
    if !same_origin(&server, &headers) {
        return Page::error(
            StatusCode::FORBIDDEN,
            "Sign-out must be requested from this server's own pages.",
        )
        .into_response();
    }
    let mut response = blocking(move || end_session(&server, &headers)).await;
    if let Some(event) = response.extensions_mut().remove::<OwnedSecurityEvent>() {
        record_security_event(&state, event.as_event(network)).await;
    }
    response
}

/// Returns true unless the request sends an `Origin` other than this server's.
fn same_origin(server: &OAuthServer, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN).map(|value| value.to_str()) {
        None => true,
        Some(Ok(origin)) => origin == server.settings.origin,
        Some(Err(_)) => false,
    }
}

/// Deletes the session named by the cookie, if any, and returns a page
/// that clears the cookie. The logout event names the session's user.
fn end_session(server: &OAuthServer, headers: &HeaderMap) -> Response {
    let store = server.store.as_ref();
    let mut user_id = None;
    if let Some(token) = html::read_cookie(headers, SESSION_COOKIE) {
        let key = digest_key(&TokenDigest::of(&token));
        if let Ok(Some(session)) = identity::read::<Session>(store, NS_SESSION, &key) {
            if let Err(error) = store.kv_delete(NS_SESSION, &key) {
                tracing::error!(target: "ward::auth", %error, "deleting a web session failed");
                return Page::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The server could not end the session. Try again.",
                )
                .into_response();
            }
            tracing::info!(target: "ward::auth", user = %session.user_id, "signed out");
            user_id = Some(session.user_id);
        }
    }
    let page = Page::new(
        StatusCode::OK,
        "Signed out",
        "<p>You are signed out. Close this window, or return to the application to \
         sign in again.</p>"
            .to_owned(),
    )
    .cookie(html::cookie(SESSION_COOKIE, "", 0, "Lax"));
    let mut response = page.into_response();
    if user_id.is_some() {
        let mut event = OwnedSecurityEvent::new(SecurityEventKind::SignOut);
        event.user_id = user_id;
        response.extensions_mut().insert(event);
    }
    response
}
