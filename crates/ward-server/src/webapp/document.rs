//! Documenting in the chart: clinical notes (written and corrected),
//! problems (added, and their clinical status changed) and allergies, and
//! opening a document.
//!
//! A note is a DocumentReference with a `text/plain` attachment, the form
//! the mobile client writes. A correction is a PUT with `If-Match` on the
//! version the form was rendered from. When someone else changed the
//! record in between, the server returns 412. The form then comes back
//! with everything the user typed, the current version and a message
//! that explains the conflict.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::call::{self, Call};
use super::chart::{self, Names, belongs_to, concept_text, document_title, is_photo, valid_id};
use super::html::{AppPage, WebForm, error_page, escape, hidden, see_other};
use super::pages::{expired_form, fhir_failure, performer_of};
use super::signin::{Active, PeerAddr};
use crate::AppState;

/// Longest accepted note text, in bytes (as for the mobile client).
pub const MAX_NOTE_BYTES: usize = 64 * 1024;
/// Longest accepted title or short text field, in characters.
const MAX_SHORT: usize = 200;
/// The largest URL-encoded form these pages accept: a full note, encoded.
const NOTE_FORM_BYTES: usize = 4 * MAX_NOTE_BYTES;

/// An error shown next to a form field.
pub(super) struct Problem {
    pub field: &'static str,
    pub message: String,
}

/// Renders the list of errors above a form, each a link to its field.
pub(super) fn error_summary(errors: &[Problem]) -> String {
    error_summary_with_lead("Nothing was saved. Fix these:", errors)
}

/// Renders the list of errors above a form after the sentence `lead`.
pub(super) fn error_summary_with_lead(lead: &str, errors: &[Problem]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let items: String = errors
        .iter()
        .map(|e| {
            format!(
                "<li><a href=\"#{}\">{}</a></li>",
                e.field,
                escape(&e.message)
            )
        })
        .collect();
    format!("<div class=\"error\" role=\"alert\"><p>{lead}</p><ul>{items}</ul></div>")
}

/// Returns the attributes that mark `field` invalid and the message shown
/// above it, or two empty strings when `errors` has none for the field.
pub(super) fn invalid(errors: &[Problem], field: &str) -> (String, String) {
    match errors.iter().find(|e| e.field == field) {
        Some(error) => (
            format!(" aria-invalid=\"true\" aria-describedby=\"{field}-error\""),
            format!(
                "<span class=\"error\" id=\"{field}-error\">{}</span>",
                escape(&error.message)
            ),
        ),
        None => (String::new(), String::new()),
    }
}

/// Renders a labelled one-line text input.
pub(super) fn text_input(
    field: &'static str,
    label: &str,
    hint: &str,
    value: &str,
    errors: &[Problem],
) -> String {
    let (attributes, message) = invalid(errors, field);
    format!(
        "<label for=\"{field}\">{label}<span class=\"hint\">{hint}</span></label>{message}\
         <input id=\"{field}\" name=\"{field}\" autocomplete=\"off\" maxlength=\"{MAX_SHORT}\" \
         value=\"{value}\"{attributes}>",
        value = escape(value),
    )
}

/// Renders a labelled select. `options` are (value, text) pairs.
pub(super) fn select(
    field: &'static str,
    label: &str,
    options: &[(&str, &str)],
    chosen: &str,
    errors: &[Problem],
) -> String {
    let (attributes, message) = invalid(errors, field);
    let options: String = options
        .iter()
        .map(|(value, text)| {
            let selected = if *value == chosen { " selected" } else { "" };
            format!("<option value=\"{value}\"{selected}>{text}</option>")
        })
        .collect();
    format!(
        "<label for=\"{field}\">{label}</label>{message}\
         <select id=\"{field}\" name=\"{field}\"{attributes}>{options}</select>"
    )
}

/// Builds a PUT of `resource` to `uri` that only succeeds while the
/// resource is still at `version`.
pub(super) fn put_if_match<'a>(
    uri: &'a str,
    token: &'a str,
    resource: &Value,
    version: &str,
) -> Call<'a> {
    let mut extra = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        extra.insert(header::IF_MATCH, value);
    }
    Call {
        method: Method::PUT,
        uri,
        token: Some(token),
        body: Some((resource.to_string().into_bytes(), "application/fhir+json")),
        extra,
    }
}

/// True when a version from a form is a version number.
pub(super) fn valid_version(version: &str) -> bool {
    !version.is_empty() && version.len() <= 19 && version.bytes().all(|b| b.is_ascii_digit())
}

/// The version of a resource as the FHIR routes returned it.
pub(super) fn version_of(resource: &Value) -> String {
    resource
        .pointer("/meta/versionId")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// Returns the current time as an FHIR `instant`.
pub(super) fn now_instant() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Formats an FHIR instant to the minute (`2025-11-20 09:30 UTC`).
/// Other text is returned unchanged.
pub(super) fn when_text(instant: &str) -> String {
    match (instant.get(..10), instant.get(11..16)) {
        (Some(date), Some(time)) if instant.ends_with('Z') => format!("{date} {time} UTC"),
        _ => instant.to_owned(),
    }
}

/// Reads a resource of the patient, or returns an error page when it
/// cannot be read or belongs to another patient.
pub(super) async fn read_record(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    active: &Active,
    patient_id: &str,
    resource_type: &str,
    id: &str,
) -> Result<Value, Response> {
    if !valid_id(id) {
        return Err(chart::record_not_found());
    }
    let uri = format!("/fhir/{resource_type}/{id}");
    let reply = call::send(state, peer, Call::get(&uri, active.token())).await;
    if !reply.status.is_success() {
        return Err(fhir_failure(&reply));
    }
    if !belongs_to(&reply.body, patient_id) {
        return Err(chart::record_not_found());
    }
    Ok(reply.body)
}

/// Opens the chart of `handle` and reads its record `resource_type/id`,
/// or returns the error page to show.
pub(super) async fn open_record(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    handle: &str,
    resource_type: &str,
    id: &str,
) -> Result<(Active, String, Value), Response> {
    let (active, patient_id) = chart::open(state, peer, headers, handle).await?;
    let record = read_record(state, peer, &active, &patient_id, resource_type, id).await?;
    Ok((active, patient_id, record))
}

/// Opens the chart of `handle` for a submitted form and checks the form's
/// CSRF token, or returns the error page to show.
async fn open_for_form(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    handle: &str,
    csrf: &str,
) -> Result<(Active, String), Response> {
    let opened = chart::open(state, peer, headers, handle).await?;
    if !opened.0.session.csrf_matches(csrf) {
        return Err(expired_form());
    }
    Ok(opened)
}

/// Copies a resource read from the FHIR routes for a PUT: without `meta`,
/// which the server sets, and without the narrative `text`, which would no
/// longer match the changed content.
fn for_update(current: &Value) -> Value {
    let mut copy = current.clone();
    if let Some(object) = copy.as_object_mut() {
        object.remove("meta");
        object.remove("text");
    }
    copy
}

/// Builds the page shown when the FHIR routes reject a record.
fn rejected(reply: &call::Reply) -> Response {
    if reply.status == StatusCode::BAD_REQUEST || reply.status == StatusCode::UNPROCESSABLE_ENTITY {
        tracing::warn!(target: "ward::webapp", status = reply.status.as_u16(), "a record from a web form was rejected");
        return error_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The server did not accept this record. Go back, check the values and try again.",
        );
    }
    fhir_failure(reply)
}

/// Adds an error for `field` when `value` is longer than [`MAX_SHORT`]
/// characters. The field's name is the noun of the message.
fn check_text_length(errors: &mut Vec<Problem>, field: &'static str, value: &str) {
    if value.chars().count() > MAX_SHORT {
        errors.push(Problem {
            field,
            message: format!("The {field} is too long; use at most {MAX_SHORT} characters."),
        });
    }
}

/// Adds an error for `field` when `value` is blank or, trimmed, longer
/// than [`MAX_SHORT`] characters.
fn check_required_text(errors: &mut Vec<Problem>, field: &'static str, value: &str) {
    let value = value.trim();
    if value.is_empty() {
        errors.push(Problem {
            field,
            message: format!("Name the {field}."),
        });
    } else {
        check_text_length(errors, field, value);
    }
}

/// True when `value` is one of the option values of a select.
fn is_choice(options: &[(&str, &str)], value: &str) -> bool {
    options.iter().any(|(code, _)| *code == value)
}

/// A form that adds one record to a patient's chart: a note, a problem or
/// an allergy. The router serves each with [`new_record_form`] (GET) and
/// [`save_new_record`] (POST).
pub trait NewRecordForm: Default + serde::de::DeserializeOwned + Send + 'static {
    /// The FHIR resource type the form creates.
    const RESOURCE_TYPE: &'static str;
    /// The `saved` query value the chart shows after a save.
    const SAVED: &'static str;

    fn csrf(&self) -> &str;

    /// Checks every field and returns an error for each invalid one.
    fn check(&self) -> Vec<Problem>;

    /// Builds the new resource of the patient. `recorder` is the user's
    /// `fhirUser`, when the token has one.
    fn resource(&self, patient_id: &str, recorder: Option<&str>) -> Value;

    /// Renders the form filled with these values and `errors` beside
    /// their fields.
    fn render(
        &self,
        active: &Active,
        handle: &str,
        errors: &[Problem],
        status: StatusCode,
    ) -> Response;
}

/// `GET /app/p/{handle}/{note,problem,allergy}`: the empty form `F`.
pub async fn new_record_form<F: NewRecordForm>(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
) -> Response {
    match chart::open(&state, peer, &headers, &handle).await {
        Ok((active, _)) => F::default().render(&active, &handle, &[], StatusCode::OK),
        Err(response) => response,
    }
}

/// `POST /app/p/{handle}/{note,problem,allergy}`: checks the form `F`,
/// POSTs its resource with the user's token and returns to the chart with
/// `saved=` set. An invalid form comes back with 422 and the values the
/// user typed.
pub async fn save_new_record<F: NewRecordForm>(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(handle): Path<String>,
    WebForm(form): WebForm<F, NOTE_FORM_BYTES>,
) -> Response {
    let (active, patient_id) =
        match open_for_form(&state, peer, &headers, &handle, form.csrf()).await {
            Ok(opened) => opened,
            Err(response) => return response,
        };
    let errors = form.check();
    if !errors.is_empty() {
        return form.render(&active, &handle, &errors, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let token = active.token();
    let recorder = performer_of(&state, token);
    let resource = form.resource(&patient_id, recorder.as_deref());
    let uri = format!("/fhir/{}", F::RESOURCE_TYPE);
    let reply = call::send(&state, peer, Call::post_json(&uri, token, &resource)).await;
    if !reply.status.is_success() {
        return rejected(&reply);
    }
    see_other(&format!("/app/p/{handle}?saved={}", F::SAVED), &[])
}

// ---------------------------------------------------------------- notes

/// The note form.
#[derive(Deserialize, Default)]
pub struct NoteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    text: String,
    /// The version the form was rendered from, for a correction.
    #[serde(default)]
    version: String,
}

impl NewRecordForm for NoteForm {
    const RESOURCE_TYPE: &'static str = "DocumentReference";
    const SAVED: &'static str = "note";

    fn csrf(&self) -> &str {
        &self.csrf
    }

    fn check(&self) -> Vec<Problem> {
        let mut errors = Vec::new();
        check_text_length(&mut errors, "title", &self.title);
        if self.text.trim().is_empty() {
            errors.push(Problem {
                field: "text",
                message: "Write the note text.".to_owned(),
            });
        } else if self.text.len() > MAX_NOTE_BYTES {
            errors.push(Problem {
                field: "text",
                message: format!(
                    "The note is {} KB; a note may have at most 64 KB of text.",
                    self.text.len().div_ceil(1024)
                ),
            });
        }
        errors
    }

    fn resource(&self, patient_id: &str, author: Option<&str>) -> Value {
        note_document(patient_id, self, author)
    }

    fn render(
        &self,
        active: &Active,
        handle: &str,
        errors: &[Problem],
        status: StatusCode,
    ) -> Response {
        render_note(
            active,
            &NoteTarget::new_note(handle),
            self,
            errors,
            "",
            status,
        )
    }
}

impl NoteForm {
    fn title(&self) -> &str {
        let title = self.title.trim();
        if title.is_empty() {
            "Clinical note"
        } else {
            title
        }
    }

    /// Builds the attachment with the note text, with line ends as `\n`
    /// because browsers send a textarea's lines ended by CR LF.
    fn attachment(&self) -> Value {
        json!({
            "contentType": "text/plain; charset=utf-8",
            "data": B64.encode(self.text.replace("\r\n", "\n").as_bytes()),
            "title": self.title(),
        })
    }
}

/// Builds a new note as the mobile client does: a final, current
/// DocumentReference of LOINC type "Progress note".
fn note_document(patient_id: &str, form: &NoteForm, author: Option<&str>) -> Value {
    let mut document = json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "date": now_instant(),
        "description": form.title(),
        "content": [{"attachment": form.attachment()}],
    });
    if let Some(author) = author {
        document["author"] = json!([{"reference": author}]);
    }
    document
}

/// Returns the text of a note attachment.
pub(super) fn note_text(document: &Value) -> Option<String> {
    let attachment = document.pointer("/content/0/attachment")?;
    let content_type = attachment.get("contentType").and_then(Value::as_str)?;
    if !content_type.starts_with("text/plain") {
        return None;
    }
    let data = attachment.get("data").and_then(Value::as_str)?;
    let bytes = B64.decode(data).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The target of a note form: its action, its cancel link and its heading.
struct NoteTarget<'a> {
    action: String,
    back: String,
    heading: &'a str,
}

impl NoteTarget<'_> {
    fn new_note(handle: &str) -> Self {
        NoteTarget {
            action: format!("/app/p/{handle}/note"),
            back: format!("/app/p/{handle}"),
            heading: "Write a note",
        }
    }

    fn correction(handle: &str, id: &str) -> Self {
        NoteTarget {
            action: format!("/app/p/{handle}/documents/{id}/edit"),
            back: format!("/app/p/{handle}/documents/{id}"),
            heading: "Correct a note",
        }
    }
}

fn render_note(
    active: &Active,
    target: &NoteTarget<'_>,
    form: &NoteForm,
    errors: &[Problem],
    conflict: &str,
    status: StatusCode,
) -> Response {
    let (attributes, message) = invalid(errors, "text");
    let version = if form.version.is_empty() {
        String::new()
    } else {
        hidden("version", &form.version)
    };
    let body = format!(
        "<h1>{heading}</h1>{conflict}{summary}<form method=\"post\" action=\"{action}\" novalidate>{csrf}{version}\
         {title}<label for=\"text\">Note</label>{message}\
         <textarea id=\"text\" name=\"text\" rows=\"10\" spellcheck=\"true\"{attributes}>{text}</textarea>\
         <button type=\"submit\" class=\"wide\">Save note</button></form>\
         <p><a href=\"{back}\">Cancel and return</a></p>",
        heading = target.heading,
        action = target.action,
        back = target.back,
        summary = error_summary(errors),
        csrf = hidden("csrf", &active.session.csrf),
        title = text_input(
            "title",
            "Title",
            "For example: Ward round, Discharge summary",
            &form.title,
            errors
        ),
        text = escape(&form.text),
    );
    AppPage::new(status, "Clinical note", body)
        .signed_in(active.bar())
        .into_response()
}

/// `GET /app/p/{handle}/documents/{id}/edit`: the correction form of a
/// note, filled with its current text and version.
pub async fn edit_note_form(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path((handle, id)): Path<(String, String)>,
) -> Response {
    let (active, _, document) =
        match open_record(&state, peer, &headers, &handle, "DocumentReference", &id).await {
            Ok(opened) => opened,
            Err(response) => return response,
        };
    let Some(text) = note_text(&document) else {
        return error_page(
            StatusCode::CONFLICT,
            "Only text notes can be corrected here.",
        );
    };
    let form = NoteForm {
        csrf: String::new(),
        title: document
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        text,
        version: version_of(&document),
    };
    render_note(
        &active,
        &NoteTarget::correction(&handle, &id),
        &form,
        &[],
        "",
        StatusCode::OK,
    )
}

/// `POST /app/p/{handle}/documents/{id}/edit`: saves a corrected note with
/// `If-Match` on the version the form was rendered from.
pub async fn save_note_edit(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path((handle, id)): Path<(String, String)>,
    WebForm(mut form): WebForm<NoteForm, NOTE_FORM_BYTES>,
) -> Response {
    let (active, patient_id) =
        match open_for_form(&state, peer, &headers, &handle, &form.csrf).await {
            Ok(opened) => opened,
            Err(response) => return response,
        };
    let target = NoteTarget::correction(&handle, &id);
    let mut errors = form.check();
    if !valid_version(&form.version) {
        errors.push(Problem {
            field: "text",
            message:
                "The form does not say which version it corrects. Reload the note and try again."
                    .to_owned(),
        });
    }
    if !errors.is_empty() {
        return render_note(
            &active,
            &target,
            &form,
            &errors,
            "",
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let current =
        match read_record(&state, peer, &active, &patient_id, "DocumentReference", &id).await {
            Ok(document) => document,
            Err(response) => return response,
        };
    if note_text(&current).is_none() {
        return error_page(
            StatusCode::CONFLICT,
            "Only text notes can be corrected here.",
        );
    }
    let token = active.token();
    let mut amended = for_update(&current);
    amended["description"] = json!(form.title());
    amended["date"] = json!(now_instant());
    amended["content"] = json!([{"attachment": form.attachment()}]);
    // The user who corrects a note becomes one of its authors.
    if let Some(editor) = performer_of(&state, token) {
        let reference = json!({"reference": editor});
        match amended.get_mut("author").and_then(Value::as_array_mut) {
            Some(authors) => {
                if !authors.contains(&reference) {
                    authors.push(reference);
                }
            }
            None => amended["author"] = json!([reference]),
        }
    }
    let uri = format!("/fhir/DocumentReference/{id}");
    let reply = call::send(
        &state,
        peer,
        put_if_match(&uri, token, &amended, &form.version),
    )
    .await;
    if reply.status == StatusCode::PRECONDITION_FAILED {
        tracing::info!(target: "ward::webapp", resource_type = "DocumentReference", id = %id, base_version = %form.version, "a note correction conflicted with a newer version");
        let latest =
            match read_record(&state, peer, &active, &patient_id, "DocumentReference", &id).await {
                Ok(document) => document,
                Err(response) => return response,
            };
        let latest_version = version_of(&latest);
        let conflict = format!(
            "<div class=\"error conflict\" role=\"alert\"><p>This note was changed by someone else \
             since you opened it. Nothing was saved. Your text is kept below; the current version \
             ({version}) reads:</p><div class=\"note-text\">{text}</div>\
             <p>Save again to replace it with your text.</p></div>",
            version = escape(&latest_version),
            text = escape(&note_text(&latest).unwrap_or_default()),
        );
        form.version = latest_version;
        return render_note(
            &active,
            &target,
            &form,
            &[],
            &conflict,
            StatusCode::CONFLICT,
        );
    }
    if !reply.status.is_success() {
        return rejected(&reply);
    }
    see_other(&format!("/app/p/{handle}/documents/{id}?saved=1"), &[])
}

/// The query of the document page.
#[derive(Deserialize)]
pub struct DocumentQuery {
    saved: Option<String>,
}

/// `GET /app/p/{handle}/documents/{id}`: a document: a note's text, or a
/// photo through the authenticated photo route.
pub async fn view(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path((handle, id)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<DocumentQuery>,
) -> Response {
    let (active, _, document) =
        match open_record(&state, peer, &headers, &handle, "DocumentReference", &id).await {
            Ok(opened) => opened,
            Err(response) => return response,
        };
    let mut names = Names::new(&state, peer, active.token());
    let mut authors = Vec::new();
    for author in document
        .get("author")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        authors.push(names.of(author).await);
    }
    let title = document_title(&document);
    let mut content = String::new();
    let attachments = document
        .get("content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (index, item) in attachments.iter().enumerate() {
        let attachment = item.get("attachment").unwrap_or(&Value::Null);
        let content_type = attachment
            .get("contentType")
            .and_then(Value::as_str)
            .unwrap_or("");
        if content_type.starts_with("text/plain") {
            let text = attachment
                .get("data")
                .and_then(Value::as_str)
                .and_then(|data| B64.decode(data).ok())
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            content.push_str(&format!("<div class=\"note-text\">{}</div>", escape(&text)));
        } else if content_type.starts_with("image/") && attachment.get("url").is_some() {
            let heic = if content_type == "image/heic" {
                "<p class=\"hint\">HEIC photos show only in browsers that support them.</p>"
            } else {
                ""
            };
            content.push_str(&format!(
                "<figure><img class=\"photo\" src=\"/app/p/{handle}/documents/{id}/photo/{index}\" \
                 alt=\"{alt}\">{heic}</figure>",
                alt = escape(&format!("Photo: {title}")),
            ));
        } else {
            content.push_str(&format!(
                "<p class=\"empty\">This attachment ({}) cannot be shown here.</p>",
                escape(if content_type.is_empty() {
                    "unknown type"
                } else {
                    content_type
                })
            ));
        }
    }
    let edit = if note_text(&document).is_some() {
        format!(
            "<a class=\"button\" href=\"/app/p/{handle}/documents/{id}/edit\">Correct this note</a>"
        )
    } else {
        String::new()
    };
    let notice = if query.saved.is_some() {
        "<p class=\"notice\" role=\"status\">Note saved.</p>"
    } else {
        ""
    };
    let body = format!(
        "{notice}<h1>{title}</h1><dl><dt>Kind</dt><dd>{kind}</dd><dt>Date</dt><dd>{date}</dd>\
         <dt>Author</dt><dd>{authors}</dd><dt>Status</dt><dd>{status}</dd></dl>{content}\
         <nav class=\"actions\" aria-label=\"This document\">{edit}\
         <a class=\"button\" href=\"/app/p/{handle}/history/DocumentReference/{id}\">History</a></nav>\
         <p><a href=\"/app/p/{handle}\">Back to the chart</a></p>",
        title = escape(&title),
        kind = if is_photo(&document) {
            "Photo".to_owned()
        } else {
            escape(&concept_text(document.get("type")))
        },
        date = escape(&when_text(
            document
                .get("date")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
        )),
        authors = if authors.is_empty() {
            "not recorded".to_owned()
        } else {
            escape(&authors.join(", "))
        },
        status = escape(
            document
                .get("docStatus")
                .or_else(|| document.get("status"))
                .and_then(Value::as_str)
                .unwrap_or("unknown")
        ),
    );
    AppPage::new(StatusCode::OK, "Document", body)
        .signed_in(active.bar())
        .into_response()
}

// ------------------------------------------------------------- problems

const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const PROBLEM_STATUSES: &[(&str, &str)] = &[
    ("active", "Active"),
    ("recurrence", "Recurrence"),
    ("relapse", "Relapse"),
    ("inactive", "Inactive"),
    ("remission", "Remission"),
    ("resolved", "Resolved"),
];

/// The new-problem form.
#[derive(Deserialize, Default)]
pub struct ProblemForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    problem: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    onset: String,
    #[serde(default)]
    comment: String,
}

/// Checks a `YYYY-MM-DD` date that may not lie in the future.
fn check_past_date(text: &str) -> Result<(), &'static str> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text, &format)
        .map_err(|_| "Enter the date as YYYY-MM-DD, such as 2021-04-30.")?;
    if date > time::OffsetDateTime::now_utc().date() {
        return Err("The date is in the future.");
    }
    Ok(())
}

impl NewRecordForm for ProblemForm {
    const RESOURCE_TYPE: &'static str = "Condition";
    const SAVED: &'static str = "problem";

    fn csrf(&self) -> &str {
        &self.csrf
    }

    fn check(&self) -> Vec<Problem> {
        let mut errors = Vec::new();
        check_required_text(&mut errors, "problem", &self.problem);
        if !is_choice(PROBLEM_STATUSES, &self.status) {
            errors.push(Problem {
                field: "status",
                message: "Choose the clinical status.".to_owned(),
            });
        }
        if !self.onset.trim().is_empty()
            && let Err(message) = check_past_date(self.onset.trim())
        {
            errors.push(Problem {
                field: "onset",
                message: message.to_owned(),
            });
        }
        if self.comment.chars().count() > 2000 {
            errors.push(Problem {
                field: "comment",
                message: "The comment is too long; use at most 2000 characters.".to_owned(),
            });
        }
        errors
    }

    /// Builds the Condition: a confirmed problem-list item of the patient.
    fn resource(&self, patient_id: &str, recorder: Option<&str>) -> Value {
        let mut condition = json!({
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": self.status}]},
            "verificationStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                "code": "confirmed"}]},
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                "code": "problem-list-item", "display": "Problem List Item"}]}],
            "code": {"text": self.problem.trim()},
            "subject": {"reference": format!("Patient/{patient_id}")},
            "recordedDate": now_instant(),
        });
        if !self.onset.trim().is_empty() {
            condition["onsetDateTime"] = json!(self.onset.trim());
        }
        if let Some(recorder) = recorder {
            condition["recorder"] = json!({"reference": recorder});
            condition["asserter"] = json!({"reference": recorder});
        }
        if !self.comment.trim().is_empty() {
            condition["note"] = json!([{"text": self.comment.trim()}]);
        }
        condition
    }

    fn render(
        &self,
        active: &Active,
        handle: &str,
        errors: &[Problem],
        status: StatusCode,
    ) -> Response {
        let (comment_attributes, comment_message) = invalid(errors, "comment");
        let (onset_attributes, onset_message) = invalid(errors, "onset");
        let chosen = if self.status.is_empty() {
            "active"
        } else {
            &self.status
        };
        let body = format!(
            "<h1>Add a problem</h1>{summary}<form method=\"post\" action=\"/app/p/{handle}/problem\" novalidate>{csrf}\
         {problem}{status}<label for=\"onset\">Onset<span class=\"hint\">Optional, YYYY-MM-DD</span></label>{onset_message}\
         <input id=\"onset\" name=\"onset\" type=\"date\" value=\"{onset}\"{onset_attributes}>\
         <label for=\"comment\">Comment<span class=\"hint\">Optional</span></label>{comment_message}\
         <textarea id=\"comment\" name=\"comment\" rows=\"3\"{comment_attributes}>{comment}</textarea>\
         <button type=\"submit\" class=\"wide\">Save problem</button></form>\
         <p><a href=\"/app/p/{handle}\">Cancel and return to the chart</a></p>",
            summary = error_summary(errors),
            csrf = hidden("csrf", &active.session.csrf),
            problem = text_input(
                "problem",
                "Problem",
                "For example: Essential hypertension",
                &self.problem,
                errors
            ),
            status = select(
                "status",
                "Clinical status",
                PROBLEM_STATUSES,
                chosen,
                errors
            ),
            onset = escape(&self.onset),
            comment = escape(&self.comment),
        );
        AppPage::new(status, "Add a problem", body)
            .signed_in(active.bar())
            .into_response()
    }
}

/// The form that changes a problem's clinical status.
#[derive(Deserialize, Default)]
pub struct StatusForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    version: String,
}

fn clinical_status(resource: &Value) -> String {
    resource
        .pointer("/clinicalStatus/coding/0/code")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned()
}

#[allow(clippy::too_many_arguments)]
fn render_status(
    active: &Active,
    handle: &str,
    id: &str,
    condition: &Value,
    form: &StatusForm,
    errors: &[Problem],
    conflict: &str,
    status: StatusCode,
) -> Response {
    let body = format!(
        "<h1>Change a problem's status</h1>{conflict}{summary}\
         <dl><dt>Problem</dt><dd>{name}</dd><dt>Status now</dt><dd>{current}</dd></dl>\
         <form method=\"post\" action=\"/app/p/{handle}/problems/{id}\" novalidate>{csrf}{version}{select}\
         <button type=\"submit\" class=\"wide\">Save status</button></form>\
         <p><a href=\"/app/p/{handle}/history/Condition/{id}\">History of this problem</a></p>\
         <p><a href=\"/app/p/{handle}\">Cancel and return to the chart</a></p>",
        summary = error_summary(errors),
        name = escape(&concept_text(condition.get("code"))),
        current = escape(&clinical_status(condition)),
        csrf = hidden("csrf", &active.session.csrf),
        version = hidden("version", &form.version),
        select = select(
            "status",
            "New clinical status",
            PROBLEM_STATUSES,
            &form.status,
            errors
        ),
    );
    AppPage::new(status, "Change a problem", body)
        .signed_in(active.bar())
        .into_response()
}

/// `GET /app/p/{handle}/problems/{id}`: the status form of a problem,
/// rendered from its current version.
pub async fn status_form(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path((handle, id)): Path<(String, String)>,
) -> Response {
    let (active, _, condition) =
        match open_record(&state, peer, &headers, &handle, "Condition", &id).await {
            Ok(opened) => opened,
            Err(response) => return response,
        };
    let form = StatusForm {
        csrf: String::new(),
        status: clinical_status(&condition),
        version: version_of(&condition),
    };
    render_status(
        &active,
        &handle,
        &id,
        &condition,
        &form,
        &[],
        "",
        StatusCode::OK,
    )
}

/// `POST /app/p/{handle}/problems/{id}`: saves the new status with
/// `If-Match` on the version the form was rendered from.
pub async fn save_status(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path((handle, id)): Path<(String, String)>,
    WebForm(mut form): WebForm<StatusForm, NOTE_FORM_BYTES>,
) -> Response {
    let (active, patient_id) =
        match open_for_form(&state, peer, &headers, &handle, &form.csrf).await {
            Ok(opened) => opened,
            Err(response) => return response,
        };

    let current = match read_record(&state, peer, &active, &patient_id, "Condition", &id).await {
        Ok(condition) => condition,
        Err(response) => return response,
    };

    let mut errors = Vec::new();
    if !is_choice(PROBLEM_STATUSES, &form.status) {
        errors.push(Problem {
            field: "status",
            message: "Choose the clinical status.".to_owned(),
        });
    }
    if !valid_version(&form.version) {
        errors.push(Problem {
            field: "status",
            message:
                "The form does not say which version it changes. Reload the page and try again."
                    .to_owned(),
        });
    }
    if !errors.is_empty() {
        return render_status(
            &active,
            &handle,
            &id,
            &current,
            &form,
            &errors,
            "",
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }

    let token = active.token();
    let mut changed = for_update(&current);
    changed["clinicalStatus"] =
        json!({"coding": [{"system": CONDITION_CLINICAL, "code": form.status}]});
    // The user who changes the record takes responsibility for its content.
    if let Some(recorder) = performer_of(&state, token) {
        changed["recorder"] = json!({"reference": recorder});
    }

    let uri = format!("/fhir/Condition/{id}");
    let reply = call::send(
        &state,
        peer,
        put_if_match(&uri, token, &changed, &form.version),
    )
    .await;
    if reply.status == StatusCode::PRECONDITION_FAILED {
        tracing::info!(target: "ward::webapp", resource_type = "Condition", id = %id, base_version = %form.version, "a status change conflicted with a newer version");
        let latest = match read_record(&state, peer, &active, &patient_id, "Condition", &id).await {
            Ok(condition) => condition,
            Err(response) => return response,
        };
        let conflict = format!(
            "<div class=\"error conflict\" role=\"alert\"><p>This problem was changed by someone \
             else since you opened it. Nothing was saved. It is now at version {version} with \
             status \"{status}\". Your choice is kept below; save again to apply it.</p></div>",
            version = escape(&version_of(&latest)),
            status = escape(&clinical_status(&latest)),
        );
        form.version = version_of(&latest);
        return render_status(
            &active,
            &handle,
            &id,
            &latest,
            &form,
            &[],
            &conflict,
            StatusCode::CONFLICT,
        );
    }

    if !reply.status.is_success() {
        return rejected(&reply);
    }
    see_other(&format!("/app/p/{handle}?saved=problem"), &[])
}

// ------------------------------------------------------------ allergies

const ALLERGY_STATUSES: &[(&str, &str)] = &[
    ("active", "Active"),
    ("inactive", "Inactive"),
    ("resolved", "Resolved"),
];
const ALLERGY_TYPES: &[(&str, &str)] = &[("allergy", "Allergy"), ("intolerance", "Intolerance")];
const ALLERGY_CATEGORIES: &[(&str, &str)] = &[
    ("", "Not stated"),
    ("medication", "Medication"),
    ("food", "Food"),
    ("environment", "Environment"),
    ("biologic", "Biologic"),
];
const CRITICALITIES: &[(&str, &str)] = &[
    ("", "Not stated"),
    ("low", "Low"),
    ("high", "High"),
    ("unable-to-assess", "Unable to assess"),
];
const SEVERITIES: &[(&str, &str)] = &[
    ("", "Not stated"),
    ("mild", "Mild"),
    ("moderate", "Moderate"),
    ("severe", "Severe"),
];

/// The new-allergy form.
#[derive(Deserialize, Default)]
pub struct AllergyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    substance: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    criticality: String,
    #[serde(default)]
    reaction: String,
    #[serde(default)]
    severity: String,
}

impl NewRecordForm for AllergyForm {
    const RESOURCE_TYPE: &'static str = "AllergyIntolerance";
    const SAVED: &'static str = "allergy";

    fn csrf(&self) -> &str {
        &self.csrf
    }

    fn check(&self) -> Vec<Problem> {
        let mut errors = Vec::new();
        check_required_text(&mut errors, "substance", &self.substance);
        let choices = [
            (
                "status",
                ALLERGY_STATUSES,
                &self.status,
                "Choose the clinical status.",
            ),
            (
                "kind",
                ALLERGY_TYPES,
                &self.kind,
                "Choose allergy or intolerance.",
            ),
            (
                "category",
                ALLERGY_CATEGORIES,
                &self.category,
                "Choose a category from the list.",
            ),
            (
                "criticality",
                CRITICALITIES,
                &self.criticality,
                "Choose a criticality from the list.",
            ),
            (
                "severity",
                SEVERITIES,
                &self.severity,
                "Choose a severity from the list.",
            ),
        ];
        for (field, options, value, message) in choices {
            if !is_choice(options, value) {
                errors.push(Problem {
                    field,
                    message: message.to_owned(),
                });
            }
        }
        check_text_length(&mut errors, "reaction", &self.reaction);
        if self.reaction.trim().is_empty() && !self.severity.is_empty() {
            errors.push(Problem {
                field: "reaction",
                message: "Describe the reaction to give its severity.".to_owned(),
            });
        }
        errors
    }

    /// Builds the AllergyIntolerance: a confirmed entry of the patient.
    fn resource(&self, patient_id: &str, recorder: Option<&str>) -> Value {
        let mut allergy = json!({
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "code": self.status}]},
            "verificationStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                "code": "confirmed"}]},
            "type": self.kind,
            "code": {"text": self.substance.trim()},
            "patient": {"reference": format!("Patient/{patient_id}")},
            "recordedDate": now_instant(),
        });
        if !self.category.is_empty() {
            allergy["category"] = json!([self.category]);
        }
        if !self.criticality.is_empty() {
            allergy["criticality"] = json!(self.criticality);
        }
        if let Some(recorder) = recorder {
            allergy["recorder"] = json!({"reference": recorder});
        }
        if !self.reaction.trim().is_empty() {
            let mut reaction = json!({"manifestation": [{"text": self.reaction.trim()}]});
            if !self.severity.is_empty() {
                reaction["severity"] = json!(self.severity);
            }
            allergy["reaction"] = json!([reaction]);
        }
        allergy
    }

    fn render(
        &self,
        active: &Active,
        handle: &str,
        errors: &[Problem],
        status: StatusCode,
    ) -> Response {
        let or = |value: &str, default: &'static str| -> String {
            if value.is_empty() {
                default.to_owned()
            } else {
                value.to_owned()
            }
        };
        let body = format!(
            "<h1>Add an allergy</h1>{summary}<form method=\"post\" action=\"/app/p/{handle}/allergy\" novalidate>{csrf}\
         {substance}{kind}{status}{category}{criticality}\
         <fieldset><legend>Reaction</legend>{reaction}{severity}</fieldset>\
         <button type=\"submit\" class=\"wide\">Save allergy</button></form>\
         <p><a href=\"/app/p/{handle}\">Cancel and return to the chart</a></p>",
            summary = error_summary(errors),
            csrf = hidden("csrf", &active.session.csrf),
            substance = text_input(
                "substance",
                "Substance",
                "For example: Penicillin, Peanuts, Latex",
                &self.substance,
                errors
            ),
            kind = select(
                "kind",
                "Type",
                ALLERGY_TYPES,
                &or(&self.kind, "allergy"),
                errors
            ),
            status = select(
                "status",
                "Clinical status",
                ALLERGY_STATUSES,
                &or(&self.status, "active"),
                errors
            ),
            category = select(
                "category",
                "Category",
                ALLERGY_CATEGORIES,
                &self.category,
                errors
            ),
            criticality = select(
                "criticality",
                "Criticality",
                CRITICALITIES,
                &self.criticality,
                errors
            ),
            reaction = text_input(
                "reaction",
                "What happened",
                "Optional, for example: Hives",
                &self.reaction,
                errors
            ),
            severity = select("severity", "Severity", SEVERITIES, &self.severity, errors),
        );
        AppPage::new(status, "Add an allergy", body)
            .signed_in(active.bar())
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_is_a_progress_note_with_text() {
        let form = NoteForm {
            title: " ".into(),
            text: "Seen on the ward round.".into(),
            ..NoteForm::default()
        };
        assert!(form.check().is_empty());
        let document = note_document("p1", &form, Some("Practitioner/9"));
        assert_eq!(document["description"], "Clinical note");
        assert_eq!(document["type"]["coding"][0]["code"], "11506-3");
        assert_eq!(document["author"][0]["reference"], "Practitioner/9");
        assert_eq!(
            note_text(&document).as_deref(),
            Some("Seen on the ward round.")
        );
    }

    #[test]
    fn empty_and_oversized_notes_are_rejected() {
        let empty = NoteForm::default();
        assert_eq!(empty.check()[0].field, "text");
        let long = NoteForm {
            text: "x".repeat(MAX_NOTE_BYTES + 1),
            ..NoteForm::default()
        };
        assert!(long.check()[0].message.contains("64 KB"));
    }

    #[test]
    fn problem_form_checks_status_and_dates() {
        let mut form = ProblemForm {
            problem: "Asthma".into(),
            status: "active".into(),
            onset: "2019-02-30".into(),
            ..ProblemForm::default()
        };
        assert_eq!(form.check()[0].field, "onset");
        form.onset = "2999-01-01".into();
        assert!(form.check()[0].message.contains("future"));
        form.onset = "2019-02-28".into();
        assert!(form.check().is_empty());
        let condition = form.resource("p1", Some("Practitioner/9"));
        assert_eq!(condition["clinicalStatus"]["coding"][0]["code"], "active");
        assert_eq!(
            condition["category"][0]["coding"][0]["code"],
            "problem-list-item"
        );
        assert_eq!(condition["subject"]["reference"], "Patient/p1");
        form.status = "cured".into();
        assert_eq!(form.check()[0].field, "status");
    }

    #[test]
    fn allergy_reaction_and_choices() {
        let mut form = AllergyForm {
            substance: "Latex".into(),
            status: "active".into(),
            kind: "allergy".into(),
            severity: "severe".into(),
            ..AllergyForm::default()
        };
        assert_eq!(form.check()[0].field, "reaction");
        form.reaction = "Hives".into();
        assert!(form.check().is_empty());
        let allergy = form.resource("p1", None);
        assert_eq!(allergy["reaction"][0]["severity"], "severe");
        assert_eq!(allergy["patient"]["reference"], "Patient/p1");
        form.criticality = "extreme".into();
        assert_eq!(form.check()[0].field, "criticality");
    }

    #[test]
    fn instants_are_shown_to_the_minute() {
        assert_eq!(when_text("2025-11-20T09:30:12Z"), "2025-11-20 09:30 UTC");
        assert_eq!(when_text("2025-11-20"), "2025-11-20");
    }

    #[test]
    fn versions_are_numbers() {
        assert!(valid_version("12"));
        assert!(!valid_version(""));
        assert!(!valid_version("1\"; x"));
    }
}
