//! Client registration by administrators: `POST /admin/clients`.
//!
//! The caller presents a bearer token with the scope `admin`, either from
//! `ward token --scope admin` or issued to a user with the role
//! `security_admin`. The body is JSON with the fields of `ward client add`:
//! `id`, `redirect_uris`, `confidential`, `jwks`, `scope` and `name`.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use super::identity::{self, IdentityError, NewClient};
use super::token::admin_principal;
use super::{blocking, json_response, server_of};
use crate::AppState;

/// Largest registration body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({ "error": code, "error_description": description }),
    )
}

/// `POST /admin/clients`: registers a client and returns its registration,
/// with the client secret (shown once) for a confidential client.
pub async fn create_client(State(state): State<AppState>, request: Request) -> Response {
    let server = match server_of(&state) {
        Ok(server) => server,
        Err(response) => return *response,
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "the body is too large",
        );
    };
    blocking(move || {
        if admin_principal(&server, &parts.headers).is_none() {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "registering clients needs a live token with the 'admin' scope",
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"ward\", scope=\"admin\""),
            );
            return response;
        }
        let new: NewClient = match serde_json::from_slice(&bytes) {
            Ok(new) => new,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client_metadata",
                    &format!("the body is not a valid registration: {e}"),
                );
            }
        };
        match identity::register_client(server.store.as_ref(), &new) {
            Ok((record, secret)) => {
                let mut body = json!({
                    "client_id": record.client.client_id,
                    "client_name": record.name,
                    "redirect_uris": record.client.redirect_uris,
                    "token_endpoint_auth_method": record.client.auth_method,
                    "scope": record.client.allowed_scope,
                });
                if let Some(secret) = secret {
                    body["client_secret"] = Value::String(secret.to_string());
                }
                json_response(StatusCode::CREATED, &body)
            }
            Err(IdentityError::Exists(_)) => error(
                StatusCode::CONFLICT,
                "invalid_client_metadata",
                "a client with this id already exists",
            ),
            Err(IdentityError::Invalid(reason)) => {
                error(StatusCode::BAD_REQUEST, "invalid_client_metadata", &reason)
            }
            Err(e) => {
                tracing::error!(error = %e, "registering a client failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the client could not be registered",
                )
                .into_response()
            }
        }
    })
    .await
}
