//! Sending FHIR messages to other organizations from the device: the
//! signed-in clinician queues a message Bundle with
//! `POST /fhir/$send-message?recipient=ORG_ID` on her own server, which
//! signs, encrypts and delivers it, and reads the delivery status from the
//! outbox. Both requests go over the device's mutual TLS connection with
//! its certificate-bound token.

use reqwest::Method;
use serde_json::Value;

use crate::client::{self, Client};
use crate::error::{MobileError, MobileResult};

/// The delivery state of a message in the server's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageStatus {
    /// The outbox id.
    pub id: String,
    /// The recipient organization id.
    pub recipient: String,
    /// `queued` (not transmitted yet), `sent` (transmitted, no valid
    /// acknowledgement yet), `delivered`, `dispensed` or `failed`.
    pub status: String,
    /// Delivery attempts so far.
    pub attempts: u64,
    /// The response code of the recipient's acknowledgement
    /// (`MessageHeader.response.code`: `ok`, `transient-error` or
    /// `fatal-error`), once one arrived.
    pub response_code: Option<String>,
    /// The last delivery error, when any.
    pub last_error: Option<String>,
}

/// Checks that an outbox id or organization id is safe to put in a URL.
fn check_id(field: &str, value: &str) -> MobileResult<()> {
    let valid = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if valid {
        Ok(())
    } else {
        Err(MobileError::invalid(
            field,
            format!("'{value}' is not an id: use 1 to 128 letters, digits, '-', '.' or '_'"),
        ))
    }
}

impl Client {
    /// Queues `bundle` (a FHIR message Bundle whose first entry is a
    /// MessageHeader) for the trusted organization `recipient` and returns
    /// the outbox id. The server validates the Bundle before it responds,
    /// so an invalid Bundle or an untrusted recipient fails here.
    pub fn send_message(&self, recipient: &str, bundle: &Value) -> MobileResult<String> {
        check_id("recipient", recipient)?;
        if bundle["resourceType"] != "Bundle" || bundle["type"] != "message" {
            return Err(MobileError::invalid(
                "bundle",
                "expected a FHIR Bundle with type 'message'",
            ));
        }
        self.with_session(|session| {
            let transport = client::transport(session)?;
            let tokens = client::fresh_tokens(session, &transport)?;
            let path = format!("/fhir/$send-message?recipient={recipient}");
            let reply = transport
                .post_json(
                    &path,
                    bundle,
                    Some(&tokens.access_token),
                    "sending a message",
                )?
                .check("sending a message")?;
            let json = reply.json();
            let id = json["id"].as_str().ok_or_else(|| MobileError::Server {
                operation: "sending a message".to_owned(),
                status: reply.status,
                detail: "the response names no outbox id".to_owned(),
            })?;
            tracing::info!(target: "ward_mobile", outbox = id, recipient, "message queued");
            Ok(id.to_owned())
        })
    }

    /// Reads the delivery status of the outbox message `id`, which only
    /// the user who sent it can read.
    pub fn message_status(&self, id: &str) -> MobileResult<MessageStatus> {
        check_id("outbox id", id)?;
        self.with_session(|session| {
            let transport = client::transport(session)?;
            let tokens = client::fresh_tokens(session, &transport)?;
            let request = transport
                .request(Method::GET, &format!("/exchange/outbox/{id}"))
                .bearer_auth(&tokens.access_token);
            let reply = transport
                .send(request, "reading a message status")?
                .check("reading a message status")?;
            status_of(&reply.json()).ok_or_else(|| MobileError::Server {
                operation: "reading a message status".to_owned(),
                status: reply.status,
                detail: "the response is not an outbox status".to_owned(),
            })
        })
    }
}

/// Reads an outbox status document; `None` when `id` or `status` is missing.
fn status_of(json: &Value) -> Option<MessageStatus> {
    Some(MessageStatus {
        id: json["id"].as_str()?.to_owned(),
        recipient: json["recipient"].as_str().unwrap_or_default().to_owned(),
        status: json["status"].as_str()?.to_owned(),
        attempts: json["attempts"].as_u64().unwrap_or(0),
        response_code: json["responseCode"].as_str().map(str::to_owned),
        last_error: json["lastError"].as_str().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_with_url_characters_rejected() {
        assert!(check_id("recipient", "org-1.a_b").is_ok());
        assert!(check_id("recipient", "").is_err());
        assert!(check_id("recipient", "a&recipient=b").is_err());
        assert!(check_id("recipient", "../admin").is_err());
        assert!(check_id("recipient", &"a".repeat(129)).is_err());
    }

    #[test]
    fn status_document_parsed() {
        let status = status_of(&json!({
            "id": "m1", "recipient": "org-b", "status": "delivered",
            "attempts": 2, "responseCode": "ok", "lastError": null,
        }))
        .expect("a status");
        assert_eq!(status.status, "delivered");
        assert_eq!(status.attempts, 2);
        assert_eq!(status.response_code.as_deref(), Some("ok"));
        assert_eq!(status.last_error, None);
        assert!(status_of(&json!({ "status": "queued" })).is_none());
    }
}
