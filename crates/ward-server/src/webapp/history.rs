//! The history of one record of the chart: every version, newest first,
//! with its date, who the version names as responsible for it, and what
//! changed from the version before, read from `/fhir/TYPE/ID/_history`
//! with the user's token.
//!
//! NOTE: the store keeps no writer per version; the audit log does, but
//! clinical roles may not read it. "Who" is therefore the person the
//! version itself names (recorder, author, performer and the like), which
//! the web app sets to the signed-in user on every change it makes.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::call::{self, Call, resources};
use super::chart::{self, Names, belongs_to, concept_text, valid_id};
use super::html::{AppPage, escape};
use super::pages::fhir_failure;
use super::signin::PeerAddr;
use crate::AppState;

/// The resource types whose history the chart links to.
const TYPES: &[&str] = &[
    "Condition",
    "AllergyIntolerance",
    "DocumentReference",
    "Observation",
    "MedicationRequest",
    "Immunization",
    "Encounter",
];

/// Maximum number of versions on one page.
const MAX_VERSIONS: usize = 50;
/// Maximum length of a value in a change line, in characters.
const MAX_VALUE_CHARS: usize = 120;

/// The elements that name who is responsible for a version, in order of
/// preference.
const WHO: &[&str] = &[
    "recorder",
    "author",
    "performer",
    "asserter",
    "requester",
    "authenticator",
];

/// Elements not compared: bookkeeping, not clinical content.
const SKIPPED: &[&str] = &["meta", "id", "text", "resourceType"];

/// Returns a readable name for an element.
fn label(element: &str) -> String {
    let known = match element {
        "clinicalStatus" => "Clinical status",
        "verificationStatus" => "Verification status",
        "code" => "What",
        "content" => "Content",
        "description" => "Title",
        "date" => "Date",
        "recordedDate" => "Recorded on",
        "recorder" => "Recorded by",
        "asserter" => "Asserted by",
        "author" => "Author",
        "performer" => "Performer",
        "note" => "Comment",
        "onsetDateTime" => "Onset",
        "abatementDateTime" => "Abatement",
        "status" => "Status",
        "docStatus" => "Document status",
        "criticality" => "Criticality",
        "reaction" => "Reaction",
        "valueQuantity" => "Value",
        "effectiveDateTime" => "Effective",
        "category" => "Category",
        "subject" | "patient" => "Patient",
        _ => "",
    };
    if known.is_empty() {
        element.to_owned()
    } else {
        known.to_owned()
    }
}

fn shorten(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() <= MAX_VALUE_CHARS {
        text
    } else {
        let cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
        format!("{cut}…")
    }
}

/// Summarizes an element's value in short text, with references as names.
async fn summary(value: &Value, names: &mut Names<'_>) -> String {
    match value {
        Value::String(text) => shorten(text),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => if *flag { "yes" } else { "no" }.to_owned(),
        Value::Array(items) => {
            let mut parts = Vec::new();
            for item in items {
                parts.push(Box::pin(summary(item, names)).await);
            }
            shorten(&parts.join("; "))
        }
        Value::Object(object) => {
            if object.contains_key("reference") {
                return names.of(value).await;
            }
            if let Some(attachment) = object.get("attachment") {
                return attachment_summary(attachment);
            }
            if object.contains_key("coding") || object.contains_key("text") {
                if let Some(text) = object.get("text").and_then(Value::as_str)
                    && !object.contains_key("coding")
                {
                    return shorten(text);
                }
                return shorten(&concept_text(Some(value)));
            }
            if let Some(manifestation) = object.get("manifestation") {
                return Box::pin(summary(manifestation, names)).await;
            }
            if let Some(number) = object.get("value") {
                let unit = object.get("unit").and_then(Value::as_str).unwrap_or("");
                return format!("{number} {unit}").trim().to_owned();
            }
            shorten(&value.to_string())
        }
        Value::Null => String::new(),
    }
}

fn attachment_summary(attachment: &Value) -> String {
    let content_type = attachment
        .get("contentType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if content_type.starts_with("text/plain")
        && let Some(text) = attachment
            .get("data")
            .and_then(Value::as_str)
            .and_then(|data| B64.decode(data).ok())
    {
        return format!("\"{}\"", shorten(&String::from_utf8_lossy(&text)));
    }
    if content_type.starts_with("image/") {
        return "a photo".to_owned();
    }
    format!("an attachment ({content_type})")
}

/// Lists one line per element that differs between `older` and `newer`.
async fn changes(older: &Value, newer: &Value, names: &mut Names<'_>) -> Vec<String> {
    let empty = serde_json::Map::new();
    let old = older.as_object().unwrap_or(&empty);
    let new = newer.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut lines = Vec::new();
    for key in keys {
        if SKIPPED.contains(&key.as_str()) {
            continue;
        }
        let line = match (old.get(key), new.get(key)) {
            (Some(before), Some(after)) if before == after => continue,
            (Some(before), Some(after)) => {
                let before = summary(before, names).await;
                let after = summary(after, names).await;
                if before == after {
                    format!("<strong>{}</strong> changed", escape(&label(key)))
                } else {
                    format!(
                        "<strong>{}</strong>: {} → {}",
                        escape(&label(key)),
                        escape(&before),
                        escape(&after)
                    )
                }
            }
            (None, Some(after)) => format!(
                "<strong>{}</strong> added: {}",
                escape(&label(key)),
                escape(&summary(after, names).await)
            ),
            (Some(before), None) => format!(
                "<strong>{}</strong> removed (was {})",
                escape(&label(key)),
                escape(&summary(before, names).await)
            ),
            (None, None) => continue,
        };
        lines.push(line);
    }
    lines
}

/// `GET /app/p/{handle}/history/{type}/{id}`: the versions of a record.
pub async fn history(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path((handle, resource_type, id)): Path<(String, String, String)>,
) -> Response {
    let (active, patient_id) = match chart::open(&state, peer, &headers, &handle).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    if !TYPES.contains(&resource_type.as_str()) || !valid_id(&id) {
        return chart::record_not_found();
    }

    let token = active.token();
    let uri = format!("/fhir/{resource_type}/{id}/_history?_count={MAX_VERSIONS}");
    let reply = call::send(&state, peer, Call::get(&uri, token)).await;
    if !reply.status.is_success() {
        return fhir_failure(&reply);
    }

    let entries: Vec<&Value> = reply
        .body
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().collect())
        .unwrap_or_default();
    // Every version shown must be this patient's; a record that moved to
    // another patient shows only the versions of this one.
    let own = |entry: &&Value| {
        entry
            .get("resource")
            .is_none_or(|resource| belongs_to(resource, &patient_id))
    };
    if !resources(&reply.body)
        .iter()
        .any(|resource| belongs_to(resource, &patient_id))
    {
        return chart::record_not_found();
    }
    let entries: Vec<&Value> = entries.into_iter().filter(own).collect();

    let mut names = Names::new(&state, peer, token);
    let mut items = String::new();
    let mut title = String::new();
    for (index, entry) in entries.iter().enumerate() {
        let resource = entry.get("resource");
        if title.is_empty()
            && let Some(resource) = resource
        {
            title = if resource_type == "DocumentReference" {
                chart::document_title(resource)
            } else {
                concept_text(chart::resource_code(resource))
            };
        }

        let version = entry
            .pointer("/response/etag")
            .and_then(Value::as_str)
            .map(|etag| etag.trim_start_matches("W/").trim_matches('"').to_owned())
            .unwrap_or_else(|| "?".to_owned());
        let when = entry
            .pointer("/response/lastModified")
            .and_then(Value::as_str)
            .map(|w| w.get(..16).unwrap_or(w).replace('T', " "))
            .unwrap_or_else(|| "unknown time".to_owned());

        let mut responsible = "nobody named".to_owned();
        if let Some(resource) = resource {
            for element in WHO {
                let named = match resource.get(*element) {
                    Some(Value::Array(list)) => list.last().cloned(),
                    Some(other) => Some(other.clone()),
                    None => None,
                };
                if let Some(named) = named.filter(|n| n.get("reference").is_some()) {
                    responsible = format!("{}: {}", label(element), names.of(&named).await);
                    break;
                }
            }
        }

        let method = entry
            .pointer("/request/method")
            .and_then(Value::as_str)
            .unwrap_or("");

        let summary_html = match resource {
            Some(newer) if method != "DELETE" => match entries.get(index + 1) {
                None if method == "POST" => "<p>Recorded.</p>".to_owned(),
                None => "<p>Earlier versions are not shown.</p>".to_owned(),
                Some(older) => match older.get("resource") {
                    Some(older) => {
                        let lines = changes(older, newer, &mut names).await;
                        if lines.is_empty() {
                            "<p>Saved again without changes.</p>".to_owned()
                        } else {
                            let items: String =
                                lines.iter().map(|l| format!("<li>{l}</li>")).collect();
                            format!("<ul class=\"changes\">{items}</ul>")
                        }
                    }
                    None => "<p>Recorded again after a deletion.</p>".to_owned(),
                },
            },
            _ => "<p>Deleted.</p>".to_owned(),
        };

        items.push_str(&format!(
            "<li class=\"version\"><h2>Version {version}</h2>\
             <p class=\"meta\">{when} UTC · {responsible}</p>{summary_html}</li>",
            version = escape(&version),
            when = escape(&when),
            responsible = escape(&responsible),
        ));
    }

    let back = if resource_type == "DocumentReference" {
        format!("/app/p/{handle}/documents/{id}")
    } else {
        format!("/app/p/{handle}")
    };
    let body = format!(
        "<h1>History</h1><p class=\"lead\">{title}</p>\
         <ol class=\"history\" reversed>{items}</ol><p><a href=\"{back}\">Back</a></p>",
        title = escape(&title),
    );
    AppPage::new(StatusCode::OK, "Record history", body)
        .signed_in(active.bar())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_shortening() {
        assert_eq!(label("clinicalStatus"), "Clinical status");
        assert_eq!(label("bodySite"), "bodySite");
        let long = "word ".repeat(100);
        assert!(shorten(&long).ends_with('…'));
        assert_eq!(shorten("a\n  b"), "a b");
    }

    #[test]
    fn note_attachments_show_their_text() {
        let attachment = serde_json::json!({
            "contentType": "text/plain; charset=utf-8",
            "data": B64.encode("Better today"),
        });
        assert_eq!(attachment_summary(&attachment), "\"Better today\"");
        let photo = serde_json::json!({"contentType": "image/png", "url": "Binary/1"});
        assert_eq!(attachment_summary(&photo), "a photo");
    }
}
