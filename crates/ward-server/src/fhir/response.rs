//! Building FHIR responses: content type, ETag, Last-Modified, Location, and
//! the `Prefer: return=` choice; and reading the request headers that shape
//! them.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;
use ward_fhir::{OperationOutcome, OutcomeIssue};
use ward_store::ResourceVersion;

use crate::error::FhirError;

/// The FHIR JSON media type with its charset.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// What `Prefer: return=` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    /// `return=minimal`: no body.
    Minimal,
    /// `return=representation` (the default): the resource.
    #[default]
    Representation,
    /// `return=OperationOutcome`: an outcome.
    OperationOutcome,
}

/// The parsed `Prefer` header.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefer {
    /// `return=`.
    pub return_preference: ReturnPreference,
    /// `handling=strict`.
    pub strict: bool,
}

impl Prefer {
    /// Reads the `Prefer` header(s).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut prefer = Prefer::default();
        for value in headers.get_all("prefer") {
            let Ok(value) = value.to_str() else { continue };
            for part in value.split([',', ';']) {
                let part = part.trim();
                match part
                    .split_once('=')
                    .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
                {
                    Some(("return", "minimal")) => {
                        prefer.return_preference = ReturnPreference::Minimal;
                    }
                    Some(("return", "representation")) => {
                        prefer.return_preference = ReturnPreference::Representation;
                    }
                    Some(("return", "OperationOutcome")) => {
                        prefer.return_preference = ReturnPreference::OperationOutcome;
                    }
                    Some(("handling", "strict")) => prefer.strict = true,
                    Some(("handling", "lenient")) => prefer.strict = false,
                    _ => {}
                }
            }
        }
        prefer
    }
}

/// Parses a weak or strong ETag such as `W/"3"` into a version number.
pub fn parse_etag(value: &str) -> Option<u64> {
    let value = value.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    value.trim_matches('"').parse().ok()
}

/// Reads `If-Match`, rejecting a malformed one with 400.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, FhirError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(parse_etag)
        .map(Some)
        .ok_or_else(|| FhirError::bad_request("If-Match must be a version ETag such as W/\"3\""))
}

/// True when a conditional read may answer 304 Not Modified (RFC 9110
/// §13.1.2 and §13.1.3): `If-None-Match` lists the current version or is
/// `*`, or, without `If-None-Match`, `If-Modified-Since` is not older than
/// the version.
pub fn not_modified(headers: &HeaderMap, version: &ResourceVersion) -> bool {
    let mut tags = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .peekable();
    if tags.peek().is_some() {
        return tags.any(|tag| tag == "*" || parse_etag(tag) == Some(version.version));
    }
    let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
    else {
        return false;
    };
    // HTTP dates have whole seconds.
    version.last_updated.div_euclid(1_000_000) <= since
}

/// Parses an RFC 9110 IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into
/// seconds since the Unix epoch.
fn parse_http_date(text: &str) -> Option<i64> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(text.trim(), &format).ok()?;
    Some(at.assume_utc().unix_timestamp())
}

/// Formats an RFC 9110 HTTP-date from microseconds since the Unix epoch.
pub fn http_date(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(secs) else {
        return String::new();
    };
    let weekday = match at.weekday() {
        time::Weekday::Monday => "Mon",
        time::Weekday::Tuesday => "Tue",
        time::Weekday::Wednesday => "Wed",
        time::Weekday::Thursday => "Thu",
        time::Weekday::Friday => "Fri",
        time::Weekday::Saturday => "Sat",
        time::Weekday::Sunday => "Sun",
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][usize::from(u8::from(at.month())) - 1];
    format!(
        "{weekday}, {:02} {month} {:04} {:02}:{:02}:{:02} GMT",
        at.day(),
        at.year(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// A JSON response with the FHIR content type.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// Sets ETag and Last-Modified for a version.
pub fn version_headers(headers: &mut HeaderMap, version: &ResourceVersion) {
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", version.version)) {
        headers.insert(header::ETAG, etag);
    }
    if let Ok(date) = HeaderValue::from_str(&http_date(version.last_updated)) {
        headers.insert(header::LAST_MODIFIED, date);
    }
}

/// The response to a read or vread.
pub fn resource_response(version: &ResourceVersion, resource: &Value) -> Response {
    let mut response = json_response(StatusCode::OK, resource);
    version_headers(response.headers_mut(), version);
    response
}

/// The response to a create or update, honouring `Prefer: return=`.
pub fn write_response(
    status: StatusCode,
    version: &ResourceVersion,
    base: &str,
    prefer: ReturnPreference,
    message: &str,
) -> Response {
    let mut response = match (prefer, &version.resource) {
        (ReturnPreference::Minimal, _) | (_, None) => status.into_response(),
        (ReturnPreference::Representation, Some(resource)) => json_response(status, resource),
        (ReturnPreference::OperationOutcome, _) => json_response(
            status,
            &OperationOutcome::single(OutcomeIssue::information(message)).to_json(),
        ),
    };
    version_headers(response.headers_mut(), version);
    let location = format!(
        "{base}/{}/{}/_history/{}",
        version.resource_type, version.id, version.version
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_forms_parse() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("W/\"x\""), None);
    }

    #[test]
    fn http_date_matches_rfc_9110() {
        // 1994-11-06T08:49:37Z is the example date of RFC 9110.
        assert_eq!(
            http_date(784_111_777_000_000),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    #[test]
    fn http_date_round_trips() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn prefer_parses_return_and_handling() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "prefer",
            HeaderValue::from_static("return=minimal, handling=strict"),
        );
        let prefer = Prefer::from_headers(&headers);
        assert_eq!(prefer.return_preference, ReturnPreference::Minimal);
        assert!(prefer.strict);
    }
}
