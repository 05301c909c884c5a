//! The prescriber's second factor for controlled-substance prescriptions
//! sent with `$send-message`, between real `ward serve` processes. Without
//! a TOTP code, with a wrong one or with one already used the message is
//! rejected with 403 and audited. With a fresh code it is sent with a
//! Provenance recording the digest of the prescription and the time of the
//! check, and the receiver files that Provenance.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use ward_auth::totp::{self, TotpSecret};

use common::exchange::{FAST_RETRY, audit_log, oxycodone, prescription, trust_both};
use common::{Server, header, json_body, send};

/// The header that carries the TOTP code.
const TOTP_HEADER: &str = "ward-totp";

/// The extension on the added Provenance.
const SECOND_FACTOR_EXTENSION: &str = "urn:ward:extension:prescriber-second-factor";

const PASSWORD: &str = "violet-otter-harbor-42";
/// The medical record number of the patient of the prescriptions.
const MRN: &str = "MRN-RX-1";
/// The dosage of the oxycodone prescription.
const DOSE: &str = "1 tablet every 6 hours as needed, at most 4 a day";

/// A prescriber created with `ward user add`, with a token that names them.
struct Prescriber {
    token: String,
    secret: TotpSecret,
}

impl Prescriber {
    /// Returns the code of the current TOTP step.
    fn current_code(&self) -> String {
        totp::code_at(&self.secret, OffsetDateTime::now_utc()).expect("code")
    }

    /// Returns a code that is wrong for every accepted step.
    fn wrong_code(&self) -> String {
        let now = OffsetDateTime::now_utc();
        let accepted: Vec<String> = [-30, 0, 30]
            .iter()
            .map(|offset| {
                totp::code_at(&self.secret, now + time::Duration::seconds(*offset)).expect("code")
            })
            .collect();
        (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|candidate| !accepted.contains(candidate))
            .expect("a wrong code")
    }
}

fn add_prescriber(server: &Server, name: &str) -> Prescriber {
    let output = common::ward(
        server,
        &[
            "user",
            "add",
            "--username",
            name,
            "--role",
            "physician",
            "--fhir-user",
            "Practitioner/dr-a",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let secret = output
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret: "))
        .expect("the secret is printed");
    let user_id = output
        .split("(id ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the user id is printed");
    let token = server.token_with(
        "user/*.cruds",
        &[
            "--role",
            "physician",
            "--fhir-user",
            "Practitioner/dr-a",
            "--subject",
            user_id,
        ],
    );
    Prescriber {
        token,
        secret: TotpSecret::from_base32(secret).expect("valid secret"),
    }
}

/// Posts `bundle` to `$send-message` with an optional TOTP code.
async fn send_message(
    sender: &Server,
    recipient: &str,
    token: &str,
    code: Option<&str>,
    bundle: &Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let path = format!("/fhir/$send-message?recipient={recipient}");
    let mut builder = sender.request(Method::POST, &path, token);
    if let Some(code) = code {
        builder = builder.header(TOTP_HEADER, code);
    }
    send(json_body(builder, bundle)).await
}

/// Asserts a 403 OperationOutcome whose diagnostics contain `text`.
fn assert_forbidden(reply: &(StatusCode, reqwest::header::HeaderMap, Value), text: &str) {
    let (status, _, body) = reply;
    assert_eq!(*status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["code"], "security", "{body}");
    let diagnostics = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(diagnostics.contains(text), "{diagnostics}");
    assert_eq!(
        body["issue"][0]["expression"][0], "Bundle.entry[2].resource",
        "{body}"
    );
}

/// Computes `sha256:HEX` over the JSON of `value` with sorted keys.
fn expected_digest(value: &Value) -> String {
    fn sort(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let sorted: BTreeMap<&String, Value> =
                    map.iter().map(|(key, item)| (key, sort(item))).collect();
                let mut object = serde_json::Map::new();
                for (key, item) in sorted {
                    object.insert(key.clone(), item);
                }
                Value::Object(object)
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    let bytes = serde_json::to_vec(&sort(value)).expect("serialize");
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    format!("sha256:{}", hex::encode(hash.as_ref()))
}

#[tokio::test]
async fn controlled_without_code_is_rejected() {
    let a = Server::start();
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let prescriber = add_prescriber(&a, "dr-no-code");

    let reply = send_message(
        &a,
        &b_entry.org_id,
        &prescriber.token,
        None,
        &prescription(MRN, &oxycodone(DOSE)),
    )
    .await;
    assert_forbidden(&reply, "ward-totp header");

    // A prescription marked with the schedule extension needs a code too.
    let mut marked = oxycodone(DOSE);
    marked["medicationCodeableConcept"] = json!({ "text": "Compounded sleeping aid" });
    marked["extension"] =
        json!([{ "url": "urn:ward:extension:controlled-substance-schedule", "valueCode": "IV" }]);
    let reply = send_message(
        &a,
        &b_entry.org_id,
        &prescriber.token,
        None,
        &prescription(MRN, &marked),
    )
    .await;
    assert_forbidden(&reply, "ward-totp header");

    // An uncontrolled prescription needs no code.
    let mut aspirin = oxycodone(DOSE);
    aspirin["medicationCodeableConcept"] = json!({ "text": "Aspirin 100 mg" });
    let (status, _, body) = send_message(
        &a,
        &b_entry.org_id,
        &prescriber.token,
        None,
        &prescription(MRN, &aspirin),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let log = audit_log(&a);
    assert!(
        log.contains("second_factor_rejected"),
        "rejection not audited"
    );
    assert!(log.contains("second_factor_missing"), "reason not audited");
}

#[tokio::test]
async fn invalid_schedule_extension_is_rejected() {
    let a = Server::start();
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let prescriber = add_prescriber(&a, "dr-schedule");
    let mut request = oxycodone(DOSE);
    request["extension"] =
        json!([{ "url": "urn:ward:extension:controlled-substance-schedule", "valueCode": "VI" }]);
    let code = prescriber.current_code();
    let (status, _, body) = send_message(
        &a,
        &b_entry.org_id,
        &prescriber.token,
        Some(&code),
        &prescription(MRN, &request),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["issue"][0]["expression"][0],
        "Bundle.entry[2].resource.extension[0].valueCode"
    );
}

#[tokio::test]
async fn wrong_code_and_non_user_are_rejected() {
    let a = Server::start();
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let prescriber = add_prescriber(&a, "dr-wrong");
    let bundle = prescription(MRN, &oxycodone(DOSE));

    let wrong = prescriber.wrong_code();
    let reply = send_message(
        &a,
        &b_entry.org_id,
        &prescriber.token,
        Some(&wrong),
        &bundle,
    )
    .await;
    assert_forbidden(&reply, "is invalid");

    let reply = send_message(
        &a,
        &b_entry.org_id,
        &prescriber.token,
        Some("12ab"),
        &bundle,
    )
    .await;
    assert_forbidden(&reply, "is invalid");

    // A token minted for a subject that is no user has no second factor.
    let service = a.token_with(
        "user/*.cruds",
        &["--role", "physician", "--subject", "dr-nobody"],
    );
    let code = prescriber.current_code();
    let reply = send_message(&a, &b_entry.org_id, &service, Some(&code), &bundle).await;
    assert_forbidden(&reply, "not an active user");

    let log = audit_log(&a);
    assert!(
        log.contains("second_factor_invalid"),
        "wrong code not audited"
    );
    assert!(
        log.contains("second_factor_not_enrolled"),
        "unknown user not audited"
    );
}

#[tokio::test]
async fn fresh_code_sends_once_with_provenance() {
    let a = Server::start_with(FAST_RETRY, &[]);
    let b = Server::start();
    let (_, b_entry) = trust_both(&a, &b);
    let prescriber = add_prescriber(&a, "dr-rx");
    let request = oxycodone(DOSE);
    let bundle = prescription(MRN, &request);

    let code = prescriber.current_code();
    let (status, headers, body) =
        send_message(&a, &b_entry.org_id, &prescriber.token, Some(&code), &bundle).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let location = header(&headers, "content-location").to_owned();

    let reply = send_message(&a, &b_entry.org_id, &prescriber.token, Some(&code), &bundle).await;
    assert_forbidden(&reply, "already used");

    let deadline = Instant::now() + Duration::from_secs(30);
    let outbox = loop {
        let (status, _, body) = a.get(&location, &prescriber.token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["status"] != "queued" || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(outbox["status"], "delivered", "{outbox}");

    let token = b.token("system/*.cruds");
    let (status, _, found) = b.get("Provenance", &token).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["total"], 1, "{found}");
    let provenance = &found["entry"][0]["resource"];
    let target = provenance["target"][0]["reference"]
        .as_str()
        .expect("target");
    assert!(target.starts_with("MedicationRequest/"), "{target}");
    let (status, _, filed) = b.get(target, &token).await;
    assert_eq!(status, StatusCode::OK, "{filed}");
    assert_eq!(
        filed["medicationCodeableConcept"]["coding"][0]["code"],
        "7804"
    );

    let extension = provenance["extension"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|item| item["url"] == SECOND_FACTOR_EXTENSION)
        })
        .expect("second-factor extension");
    let part = |name: &str| -> Value {
        extension["extension"]
            .as_array()
            .and_then(|items| items.iter().find(|item| item["url"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        part("digest")["valueString"],
        expected_digest(&request),
        "{provenance}"
    );
    assert_eq!(part("schedule")["valueCode"], "II");
    assert_eq!(part("method")["valueCode"], "totp");
    assert_eq!(
        provenance["agent"][0]["who"]["display"],
        "Practitioner/dr-a"
    );
    let recorded = provenance["recorded"].as_str().expect("recorded");
    let recorded = OffsetDateTime::parse(recorded, &time::format_description::well_known::Rfc3339)
        .expect("recorded is an instant");
    let age = OffsetDateTime::now_utc() - recorded;
    assert!(
        age >= time::Duration::ZERO && age < time::Duration::minutes(5),
        "{recorded}"
    );

    let log = audit_log(&a);
    assert!(log.contains("second_factor_verified"), "check not audited");
    assert!(log.contains("second_factor_reused"), "reuse not audited");
}
