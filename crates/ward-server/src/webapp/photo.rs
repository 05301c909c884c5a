//! Photos taken with the device camera: the upload form, the multipart
//! upload, and the authenticated route that shows a stored photo.
//!
//! An upload is checked by its bytes, not by the name or type the browser
//! claims: only JPEG, PNG and HEIC are accepted, up to [`MAX_PHOTO_BYTES`].
//! It is stored through the FHIR routes with the user's token as a Binary
//! and a DocumentReference that points at it. The Binary's
//! `securityContext` names the patient, so the access policy treats it as
//! part of the patient's record. Like every resource, both are encrypted
//! at rest.
//!
//! The browser keeps no copy of the photo. The page has no script that
//! stores it, and the photo route responds with `Cache-Control: no-store`
//! to a signed-in session only, so no `data:` URL or cache copy exists.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::call::{self, Call};
use super::chart;
use super::document::{
    MAX_NOTE_BYTES, Problem, error_summary, invalid, now_instant, open_record, text_input,
};
use super::html::{AppPage, error_page, hidden, see_other};
use super::pages::{expired_form, fhir_failure, performer_of};
use super::signin::{Active, PeerAddr};
use crate::AppState;

/// The largest photo accepted, in bytes. The Binary carries it as base64
/// (a third more), which must stay within what the web app reads back
/// from the FHIR routes.
pub const MAX_PHOTO_BYTES: usize = 5 * 1024 * 1024;
/// Room for the other form fields and the multipart framing.
const MAX_FRAMING_BYTES: usize = 64 * 1024;

/// The image formats accepted, by their leading bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (the 8-byte PNG signature).
    Png,
    /// HEIC/HEIF (an ISO BMFF `ftyp` box with a HEIF brand).
    Heic,
}

impl ImageKind {
    /// Returns the MIME type stored with the Binary.
    pub fn mime(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
            ImageKind::Heic => "image/heic",
        }
    }

    /// Parses a stored MIME type.
    fn from_mime(mime: &str) -> Option<Self> {
        match mime {
            "image/jpeg" => Some(ImageKind::Jpeg),
            "image/png" => Some(ImageKind::Png),
            "image/heic" => Some(ImageKind::Heic),
            _ => None,
        }
    }
}

/// Recognizes a JPEG, PNG or HEIC image by its content.
pub fn sniff(bytes: &[u8]) -> Option<ImageKind> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(ImageKind::Jpeg);
    }
    if bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        return Some(ImageKind::Png);
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        const BRANDS: [&[u8; 4]; 7] = [
            b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1",
        ];
        let major = &bytes[8..12];
        if BRANDS.iter().any(|brand| major == brand.as_slice()) {
            return Some(ImageKind::Heic);
        }
    }
    None
}

/// The maximum number of parts in an upload: the CSRF token, the title
/// and the photo, with room to spare.
const MAX_PARTS: usize = 8;

/// One part of a `multipart/form-data` body.
#[derive(Debug)]
pub struct Part {
    /// The form field name.
    pub name: String,
    /// The file name, for file fields.
    pub filename: Option<String>,
    /// The content.
    pub body: bytes::Bytes,
}

/// Splits a `multipart/form-data` body (RFC 7578) sent with
/// `content_type` into its parts, with the `multer` parser.
///
/// # Errors
///
/// A message naming what is malformed.
pub async fn read_multipart(
    content_type: &str,
    body: bytes::Bytes,
) -> Result<Vec<Part>, &'static str> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| "the upload is not multipart/form-data")?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|_| "a part of the upload is malformed")?
    {
        if parts.len() == MAX_PARTS {
            return Err("the upload has too many parts");
        }
        let name = field.name().ok_or("a part has no name")?.to_owned();
        let filename = field.file_name().map(str::to_owned);
        let body = field.bytes().await.map_err(|_| "the upload was cut off")?;
        parts.push(Part {
            name,
            filename,
            body,
        });
    }
    if parts.is_empty() {
        return Err("the upload has no parts");
    }
    Ok(parts)
}

fn render_form(
    active: &Active,
    handle: &str,
    title: &str,
    errors: &[Problem],
    status: StatusCode,
) -> Response {
    let (attributes, message) = invalid(errors, "photo");
    let body = format!(
        "<h1>Add a photo</h1>{summary}\
         <form method=\"post\" action=\"/app/p/{handle}/photo\" enctype=\"multipart/form-data\">{csrf}\
         <label for=\"photo\">Photo<span class=\"hint\">Take a photo or choose one: JPEG, PNG or HEIC, at most 5 MB</span></label>{message}\
         <input id=\"photo\" name=\"photo\" type=\"file\" accept=\"image/jpeg,image/png,image/heic,image/*\" \
         capture=\"environment\" required{attributes}>{title}\
         <button type=\"submit\" class=\"wide\">Save photo</button></form>\
         <p><a href=\"/app/p/{handle}\">Cancel and return to the chart</a></p>",
        summary = error_summary(errors),
        csrf = hidden("csrf", &active.session.csrf),
        title = text_input(
            "title",
            "Title",
            "Optional, for example: Wound on the left heel",
            title,
            errors
        ),
    );
    AppPage::new(status, "Add a photo", body)
        .signed_in(active.bar())
        .into_response()
}

/// Renders the photo form again with `message` beside the photo input.
fn reject_photo(
    active: &Active,
    handle: &str,
    title: &str,
    message: &str,
    status: StatusCode,
) -> Response {
    let errors = [Problem {
        field: "photo",
        message: message.to_owned(),
    }];
    render_form(active, handle, title, &errors, status)
}

/// `GET /app/p/{handle}/photo`: the photo form.
pub async fn form(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
) -> Response {
    match chart::open(&state, peer, &headers, &handle).await {
        Ok((active, _)) => render_form(&active, &handle, "", &[], StatusCode::OK),
        Err(response) => response,
    }
}

/// `POST /app/p/{handle}/photo`: checks the upload and stores it as a
/// Binary and a DocumentReference.
pub async fn upload(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    Path(handle): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let (active, patient_id) = match chart::open(&state, peer, &headers, &handle).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };

    let fail = |message: String, status: StatusCode| {
        tracing::info!(target: "ward::webapp", status = status.as_u16(), "a photo upload was rejected");
        reject_photo(&active, &handle, "", &message, status)
    };

    if !super::html::same_origin(&headers) {
        return super::html::error_page(
            StatusCode::FORBIDDEN,
            "This form was sent from another site. Open the app and submit it there.",
        );
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();

    let Ok(bytes) = axum::body::to_bytes(body, MAX_PHOTO_BYTES + MAX_FRAMING_BYTES).await else {
        return fail(
            "The photo is larger than 5 MB. Take it again at a lower resolution, or choose a smaller file."
                .to_owned(),
            StatusCode::PAYLOAD_TOO_LARGE,
        );
    };
    let fields = match read_multipart(&content_type, bytes).await {
        Ok(fields) => fields,
        Err(problem) => {
            tracing::warn!(target: "ward::webapp", problem, "a photo upload was malformed");
            return fail(
                "The upload could not be read. Choose the photo again and save.".to_owned(),
                StatusCode::BAD_REQUEST,
            );
        }
    };

    let text_field = |name: &str| {
        fields
            .iter()
            .find(|part| part.name == name && part.filename.is_none())
            .map(|part| String::from_utf8_lossy(&part.body).into_owned())
            .unwrap_or_default()
    };
    if !active.session.csrf_matches(&text_field("csrf")) {
        return expired_form();
    }

    let title = text_field("title");
    let title = title.trim();
    if title.chars().count() > 200 || title.len() > MAX_NOTE_BYTES {
        return render_form(
            &active,
            &handle,
            "",
            &[Problem {
                field: "title",
                message: "The title is too long; use at most 200 characters.".to_owned(),
            }],
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }

    let photo: &[u8] = fields
        .iter()
        .find(|part| part.name == "photo")
        .map(|part| &part.body[..])
        .unwrap_or_default();
    if photo.is_empty() {
        tracing::info!(target: "ward::webapp", "a photo upload had no file");
        return reject_photo(
            &active,
            &handle,
            title,
            "Take or choose a photo first.",
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    if photo.len() > MAX_PHOTO_BYTES {
        tracing::info!(target: "ward::webapp", size = photo.len(), "a photo upload was too large");
        return reject_photo(
            &active,
            &handle,
            title,
            "The photo is larger than 5 MB. Take it again at a lower resolution, or choose a smaller file.",
            StatusCode::PAYLOAD_TOO_LARGE,
        );
    }
    let Some(kind) = sniff(photo) else {
        tracing::info!(target: "ward::webapp", size = photo.len(), "a photo upload was not JPEG, PNG or HEIC");
        return reject_photo(
            &active,
            &handle,
            title,
            "This file is not a JPEG, PNG or HEIC photo. Choose a photo in one of these formats.",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        );
    };

    let token = active.token();
    let subject = format!("Patient/{patient_id}");
    let binary = json!({
        "resourceType": "Binary",
        "contentType": kind.mime(),
        "securityContext": {"reference": subject},
        "data": B64.encode(photo),
    });
    let reply = call::send(
        &state,
        peer,
        Call::post_json("/fhir/Binary", token, &binary),
    )
    .await;
    if reply.status == StatusCode::PAYLOAD_TOO_LARGE {
        tracing::warn!(target: "ward::webapp", size = photo.len(), "a photo exceeds the server's max_body_bytes");
        return reject_photo(
            &active,
            &handle,
            title,
            "The photo is larger than this server accepts (its max_body_bytes setting). Choose a smaller photo.",
            StatusCode::PAYLOAD_TOO_LARGE,
        );
    }
    let Some(binary_id) = reply
        .body
        .get("id")
        .and_then(Value::as_str)
        .filter(|_| reply.status.is_success())
        .map(str::to_owned)
    else {
        return fhir_failure(&reply);
    };

    let title = if title.is_empty() { "Photo" } else { title };
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, photo);
    let now = now_instant();
    let mut document = json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "72170-4", "display": "Photographic image"}]},
        "subject": {"reference": subject},
        "date": now,
        "description": title,
        "content": [{"attachment": {
            "contentType": kind.mime(),
            "url": format!("Binary/{binary_id}"),
            "size": photo.len(),
            "hash": B64.encode(hash.as_ref()),
            "title": title,
            "creation": now,
        }}],
    });

    if let Some(author) = performer_of(&state, token) {
        document["author"] = json!([{"reference": author}]);
    }
    let reply = call::send(
        &state,
        peer,
        Call::post_json("/fhir/DocumentReference", token, &document),
    )
    .await;
    if !reply.status.is_success() {
        // NOTE: the Binary stays without a DocumentReference; the user's
        // role may not delete it, and it is reachable only by its id.
        return fhir_failure(&reply);
    }
    see_other(&format!("/app/p/{handle}?saved=photo"), &[])
}

/// `GET /app/p/{handle}/documents/{id}/photo/{index}`: the photo of a
/// document's attachment, read as a Binary with the user's token and sent
/// with `Cache-Control: no-store`.
pub async fn content(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path((handle, id, index)): Path<(String, String, usize)>,
) -> Response {
    let (active, patient_id, document) =
        match open_record(&state, peer, &headers, &handle, "DocumentReference", &id).await {
            Ok(opened) => opened,
            Err(response) => return response,
        };
    let Some(binary_id) = document
        .pointer(&format!("/content/{index}/attachment/url"))
        .and_then(Value::as_str)
        .and_then(|url| url.strip_prefix("Binary/"))
        .filter(|id| chart::valid_id(id))
    else {
        return chart::record_not_found();
    };
    let reply = call::send(
        &state,
        peer,
        Call::get(&format!("/fhir/Binary/{binary_id}"), active.token()),
    )
    .await;
    if !reply.status.is_success() {
        return fhir_failure(&reply);
    }
    let binary = reply.body;
    let expected = format!("Patient/{patient_id}");
    if binary
        .pointer("/securityContext/reference")
        .and_then(Value::as_str)
        != Some(&expected)
    {
        return chart::record_not_found();
    }
    let kind = binary
        .get("contentType")
        .and_then(Value::as_str)
        .and_then(ImageKind::from_mime);
    let bytes = binary
        .get("data")
        .and_then(Value::as_str)
        .and_then(|data| B64.decode(data).ok());
    let (Some(kind), Some(bytes)) = (kind, bytes) else {
        tracing::warn!(target: "ward::webapp", binary = %binary_id, "a document's Binary is not a photo");
        return error_page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "This attachment is not a photo this app can show.",
        );
    };
    // The stored bytes must still match the stored content type.
    if sniff(&bytes) != Some(kind) {
        tracing::warn!(target: "ward::webapp", binary = %binary_id, "a Binary's bytes do not match its content type");
        return error_page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "This attachment is not a photo this app can show.",
        );
    }
    let mut response = (StatusCode::OK, Body::from(bytes)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind.mime()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("inline"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_content() {
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]),
            Some(ImageKind::Jpeg)
        );
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some(ImageKind::Png)
        );
        assert_eq!(
            sniff(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"),
            Some(ImageKind::Heic)
        );
        assert_eq!(sniff(b"\0\0\0\x18ftypisom\0\0\0\0"), None);
        assert_eq!(sniff(b"GIF89a......"), None);
        assert_eq!(sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"), None);
        assert_eq!(sniff(b""), None);
    }

    #[tokio::test]
    async fn multipart_parts_are_split() {
        let content_type = "multipart/form-data; boundary=XyZ";
        let body: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\ntok\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n--X\r\n\
--XyZ--\r\n";
        let parts = read_multipart(content_type, bytes::Bytes::from_static(body))
            .await
            .expect("parts");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "csrf");
        assert_eq!(&parts[0].body[..], b"tok");
        assert_eq!(parts[1].filename.as_deref(), Some("a.png"));
        assert_eq!(&parts[1].body[..], b"\x89PNG\r\n\x1a\n--X");
        let cut: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx";
        assert!(
            read_multipart(content_type, bytes::Bytes::from_static(cut))
                .await
                .is_err()
        );
        assert!(
            read_multipart(content_type, bytes::Bytes::from_static(b"nothing"))
                .await
                .is_err()
        );
        assert!(
            read_multipart(
                "application/x-www-form-urlencoded",
                bytes::Bytes::from_static(b"a=b")
            )
            .await
            .is_err()
        );
    }
}
