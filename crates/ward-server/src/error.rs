//! The error every handler returns: an HTTP status with an OperationOutcome
//! body. Texts for 5xx statuses are generic; the detail is logged once.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use ward_fhir::{IssueType, OperationOutcome, OutcomeIssue};
use ward_store::StoreError;

use crate::fhir::response::FHIR_JSON;

/// A failed FHIR interaction.
#[derive(Debug, Clone)]
pub struct FhirError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub outcome: OperationOutcome,
    /// A `WWW-Authenticate` challenge, for 401 and 403.
    pub challenge: Option<String>,
    /// A `DPoP-Nonce` header value, sent with a `use_dpop_nonce` challenge.
    pub dpop_nonce: Option<String>,
}

impl FhirError {
    /// An error with one issue.
    pub fn new(status: StatusCode, code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            status,
            outcome: OperationOutcome::error(code, diagnostics),
            challenge: None,
            dpop_nonce: None,
        }
    }

    /// An error from a full outcome.
    pub fn with_outcome(status: StatusCode, outcome: OperationOutcome) -> Self {
        Self {
            status,
            outcome,
            challenge: None,
            dpop_nonce: None,
        }
    }

    /// 400 with an element path.
    pub fn invalid_at(code: IssueType, diagnostics: impl Into<String>, path: &str) -> Self {
        Self::with_outcome(
            StatusCode::BAD_REQUEST,
            OperationOutcome::single(OutcomeIssue::error(code, diagnostics).at(path)),
        )
    }

    /// 400 Bad Request.
    pub fn bad_request(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, IssueType::Invalid, diagnostics)
    }

    /// 404 Not Found.
    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueType::NotFound, diagnostics)
    }

    /// 412 Precondition Failed.
    pub fn precondition(diagnostics: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            IssueType::Conflict,
            diagnostics,
        )
    }

    /// 500, with a generic text; the cause is logged here once.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            "internal server error; the cause was logged on the server",
        )
    }

    /// 401 with a Bearer challenge (RFC 6750).
    pub fn unauthorized(error: &str, description: &str) -> Self {
        let mut err = Self::new(StatusCode::UNAUTHORIZED, IssueType::Login, description);
        err.challenge = Some(format!(
            "Bearer realm=\"ward\", error=\"{error}\", error_description=\"{description}\""
        ));
        if error.is_empty() {
            err.challenge = Some("Bearer realm=\"ward\"".into());
        }
        err
    }

    /// 401 with a DPoP challenge (RFC 9449 section 7.1) naming the accepted
    /// proof algorithms.
    pub fn dpop_unauthorized(error: &str, description: &str) -> Self {
        let mut err = Self::new(StatusCode::UNAUTHORIZED, IssueType::Login, description);
        let algs = ward_auth::dpop::SUPPORTED_ALGORITHMS.join(" ");
        err.challenge = Some(format!(
            "DPoP algs=\"{algs}\", error=\"{error}\", error_description=\"{description}\""
        ));
        err
    }

    /// 403 with an `insufficient_scope` challenge.
    pub fn forbidden(description: &str) -> Self {
        let mut err = Self::new(StatusCode::FORBIDDEN, IssueType::Forbidden, description);
        err.challenge = Some(format!(
            "Bearer realm=\"ward\", error=\"insufficient_scope\", error_description=\"{description}\""
        ));
        err
    }
}

impl From<StoreError> for FhirError {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::NotFound { resource_type, id } => {
                FhirError::not_found(format!("{resource_type}/{id} is not known"))
            }
            StoreError::Gone {
                resource_type, id, ..
            } => FhirError::new(
                StatusCode::GONE,
                IssueType::Deleted,
                format!("{resource_type}/{id} has been deleted"),
            ),
            StoreError::VersionConflict { .. } => FhirError::new(
                StatusCode::PRECONDITION_FAILED,
                IssueType::Conflict,
                format!("{err}; read the resource again and retry with its current version"),
            ),
            StoreError::AlreadyExists { .. } => {
                FhirError::new(StatusCode::CONFLICT, IssueType::Duplicate, err.to_string())
            }
            StoreError::SnapshotExpired(_) => {
                FhirError::new(StatusCode::GONE, IssueType::NotFound, err.to_string())
            }
            StoreError::TooCostly(_) => FhirError::new(
                StatusCode::BAD_REQUEST,
                IssueType::TooCostly,
                err.to_string(),
            ),
            _ => FhirError::internal(&err),
        }
    }
}

impl From<OperationOutcome> for FhirError {
    /// A request the server could not parse or understand: 400.
    fn from(outcome: OperationOutcome) -> Self {
        FhirError::with_outcome(StatusCode::BAD_REQUEST, outcome)
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.outcome.to_json()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if let Some(challenge) = self.challenge
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(nonce) = self.dpop_nonce
            && let Ok(value) = HeaderValue::from_str(&nonce)
        {
            headers.insert("dpop-nonce", value);
        }
        response
    }
}

/// The result of a handler.
pub type FhirResult<T> = Result<T, FhirError>;
