//! The device screens: the list with status and last check-in, one
//! device's page with revoke and wipe (each behind a confirmation page),
//! and the lost-device report. Everything goes through the device admin
//! API (`/admin/devices/...`) in-process with the administrator's token.

use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use ward_device::DeviceId;
use ward_device::registry::RevokeReason;

use super::{
    AdminSession, api_failure, consume_confirmation, expired_form, issue_confirmation,
    require_admin, when,
};
use crate::AppState;
use crate::webapp::call::{self, Call};
use crate::webapp::html::{WebForm, escape, hidden, see_other};
use crate::webapp::signin::PeerAddr;

/// The form of a device change and of its confirmation.
#[derive(Deserialize)]
pub struct DeviceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    reason: String,
    /// The one-time nonce of the confirmation page.
    #[serde(default)]
    nonce: String,
}

/// A checked device change.
enum Change {
    Revoke(RevokeReason),
    Wipe(Option<RevokeReason>),
}

impl Change {
    /// Returns the action and reason, which the confirmation nonce is bound to.
    fn code(&self) -> String {
        match self {
            Self::Revoke(reason) => format!("revoke:{}", reason.as_str()),
            Self::Wipe(reason) => format!("wipe:{}", reason.map_or("-", RevokeReason::as_str)),
        }
    }
}

/// Builds the `<option>`s of the reason list, with an optional empty first one.
fn reason_options(empty: Option<&str>) -> String {
    let mut options = empty
        .map(|label| format!("<option value=\"\">{}</option>", escape(label)))
        .unwrap_or_default();
    for reason in RevokeReason::ALL {
        options.push_str(&format!(
            "<option value=\"{code}\">{code}</option>",
            code = reason.as_str()
        ));
    }
    options
}

/// Lists the compliance failures of a device or report, as `<li>`s.
fn failure_items(value: &Value) -> String {
    value
        .pointer("/compliance/failures")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|failure| {
            format!(
                "<li>{}</li>",
                escape(text(failure, "message").unwrap_or("a rule failed"))
            )
        })
        .collect()
}

/// Returns whether the admin API's summary is of a browser enrolled from
/// the web app (a key rather than a certificate), by the kind the server
/// recorded at enrollment, never by what the device reports.
fn is_browser(device: &Value) -> bool {
    device.get("kind").and_then(Value::as_str) == Some(ward_device::DeviceKind::Browser.as_str())
}

fn text<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.get(name).and_then(Value::as_str)
}

fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "not reported",
    }
}

/// Checks a device id from the URL before it goes into an API path.
fn checked_id(admin: &AdminSession, id: &str) -> Result<String, Box<Response>> {
    DeviceId::parse(id)
        .map(|id| id.as_str().to_owned())
        .map_err(|_| {
            Box::new(admin.page(
                StatusCode::NOT_FOUND,
                "Device",
                "<h1>Device not found</h1><p class=\"error\" role=\"alert\">No device has this id.</p>\
                 <p><a class=\"button wide\" href=\"/app/admin/devices\">All devices</a></p>",
            ))
        })
}

fn status_badge(device: &Value) -> String {
    let status = text(device, "status").unwrap_or("unknown");
    let compliant = device
        .pointer("/compliance/compliant")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (class, label) = match (status, compliant) {
        ("revoked", _) => ("bad", "Revoked".to_owned()),
        ("active", true) => ("good", "Active".to_owned()),
        ("active", false) => ("warn", "Active, not compliant".to_owned()),
        (other, _) => ("warn", other.to_owned()),
    };
    format!("<span class=\"status {class}\">{}</span>", escape(&label))
}

/// `GET /app/admin/devices`.
pub async fn list(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let reply = call::send(&state, peer, Call::get("/admin/devices", admin.token())).await;
    if !reply.status.is_success() {
        return api_failure(&admin, &reply, "list the devices");
    }
    let mut devices: Vec<&Value> = reply
        .body
        .get("devices")
        .and_then(Value::as_array)
        .map(|all| all.iter().collect())
        .unwrap_or_default();
    // Active devices first, then by owner.
    devices.sort_by_key(|d| {
        (
            text(d, "status") != Some("active"),
            text(d, "user").unwrap_or("").to_lowercase(),
        )
    });
    let rows: String = devices
        .iter()
        .filter_map(|device| {
            let id = text(device, "device_id")?;
            Some(format!(
                "<li><a class=\"card\" href=\"/app/admin/devices/{id}\">\
                 <span class=\"name\">{name}</span> {badge}\
                 <span class=\"meta\">{user} · last check-in {checkin}</span></a></li>",
                id = escape(id),
                name = escape(text(device, "name").unwrap_or("(no name)")),
                badge = status_badge(device),
                user = escape(text(device, "user").unwrap_or("")),
                checkin = escape(&when(text(device, "last_checkin"), "never")),
            ))
        })
        .collect();
    let body = if rows.is_empty() {
        "<h1>Devices</h1><p class=\"empty\">No device is enrolled.</p>".to_owned()
    } else {
        format!("<h1>Devices</h1><ul class=\"cards\" aria-label=\"Devices\">{rows}</ul>")
    };
    admin.page(StatusCode::OK, "Devices", &body)
}

/// `GET /app/admin/devices/{id}`.
pub async fn show(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let id = match checked_id(&admin, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };

    let uri = format!("/admin/devices/{id}");
    let reply = call::send(&state, peer, Call::get(&uri, admin.token())).await;
    if !reply.status.is_success() {
        return api_failure(&admin, &reply, "read the device");
    }

    let device = &reply.body;
    let failures = failure_items(device);
    let compliance = if failures.is_empty() {
        "<dd>compliant</dd>".to_owned()
    } else {
        format!("<dd>not compliant<ul>{failures}</ul></dd>")
    };

    let revoked = text(device, "status") == Some("revoked");
    let posture = device.get("last_posture").filter(|p| !p.is_null());
    let mut details = format!(
        "<dl><dt>Owner</dt><dd>{user}</dd><dt>Status</dt><dd>{badge}</dd>\
         <dt>Compliance</dt>{compliance}\
         <dt>Last check-in</dt><dd>{checkin}</dd><dt>Last sync</dt><dd>{sync}</dd>\
         <dt>System</dt><dd>{os}</dd><dt>Enrolled</dt><dd>{enrolled}</dd>\
         <dt>{until}</dt><dd>{not_after}</dd>",
        // A browser has a non-exportable key, registered for a year,
        // rather than a device certificate.
        until = if is_browser(device) {
            "Key registered until"
        } else {
            "Certificate until"
        },
        user = escape(text(device, "user").unwrap_or("")),
        badge = status_badge(device),
        checkin = escape(&when(text(device, "last_checkin"), "never")),
        sync = escape(&when(text(device, "last_sync"), "never")),
        os = escape(&posture.map_or_else(
            || "not reported".to_owned(),
            |p| format!(
                "{} {}",
                text(p, "os").unwrap_or(""),
                text(p, "os_version").unwrap_or("")
            )
        )),
        enrolled = escape(&when(text(device, "enrolled_at"), "unknown")),
        not_after = escape(&when(
            device
                .pointer("/certificate/not_after")
                .and_then(Value::as_str),
            "unknown"
        )),
    );

    if revoked {
        details.push_str(&format!(
            "<dt>Revoked</dt><dd>{at} ({reason})</dd><dt>Wipe requested</dt><dd>{wipe}</dd>\
             <dt>Wipe confirmed</dt><dd>{confirmed}</dd>",
            at = escape(&when(text(device, "revoked_at"), "unknown")),
            reason = escape(text(device, "reason").unwrap_or("wipe requested")),
            wipe = escape(&when(text(device, "wipe_requested_at"), "no")),
            confirmed = escape(&when(text(device, "wipe_confirmed_at"), "not yet")),
        ));
    }
    details.push_str("</dl>");

    let csrf = hidden("csrf", admin.csrf());
    let actions = if revoked {
        String::new()
    } else {
        let options = reason_options(None);
        let wipe_options = reason_options(Some("not stated"));
        format!(
            "<section><h2>Revoke</h2><p>Its tokens stop working at the next request and it is \
             told to erase its data at its next check-in.</p>\
             <form method=\"post\" action=\"/app/admin/devices/{id}/confirm\">{csrf}{action}\
             <label for=\"reason\">Reason</label><select id=\"reason\" name=\"reason\">{options}</select>\
             <button type=\"submit\" class=\"wide danger\">Revoke this device</button></form></section>\
             <section><h2>Wipe</h2><p>Revokes the device too, and asks it to erase its keys and \
             records at its next check-in.</p>\
             <form method=\"post\" action=\"/app/admin/devices/{id}/confirm\">{csrf}{wipe}\
             <label for=\"wipe-reason\">Reason</label><select id=\"wipe-reason\" name=\"reason\">{wipe_options}</select>\
             <button type=\"submit\" class=\"wide danger\">Wipe this device</button></form></section>",
            id = escape(&id),
            action = hidden("action", "revoke"),
            wipe = hidden("action", "wipe"),
        )
    };

    let body = format!(
        "<h1>{name}</h1>{details}\
         <p><a class=\"button wide plain\" href=\"/app/admin/devices/{id}/report\">Lost-device report</a></p>{actions}",
        name = escape(text(device, "name").unwrap_or("Device")),
        id = escape(&id),
    );
    admin.page(StatusCode::OK, "Device", &body)
}

/// Checks the form of a device change.
fn change_of(admin: &AdminSession, form: &DeviceForm) -> Result<Change, Box<Response>> {
    if !admin.active.session.csrf_matches(&form.csrf) {
        return Err(Box::new(expired_form()));
    }
    let bad = |message: &str| {
        Box::new(admin.page(
            StatusCode::BAD_REQUEST,
            "Device",
            &format!(
                "<h1>Device</h1><p class=\"error\" role=\"alert\">{}</p>",
                escape(message)
            ),
        ))
    };
    match form.action.as_str() {
        "revoke" => RevokeReason::parse(&form.reason)
            .map(Change::Revoke)
            .map_err(|_| bad("Pick a reason: lost, stolen, retired or compromised.")),
        "wipe" if form.reason.is_empty() => Ok(Change::Wipe(None)),
        "wipe" => RevokeReason::parse(&form.reason)
            .map(|reason| Change::Wipe(Some(reason)))
            .map_err(|_| bad("Pick a reason: lost, stolen, retired or compromised, or none.")),
        _ => Err(bad(
            "That change is not known. Go back to the device and use its buttons.",
        )),
    }
}

/// `POST /app/admin/devices/{id}/confirm`: shows the change for the administrator to confirm.
pub async fn confirm(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
    WebForm(form): WebForm<DeviceForm>,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let id = match checked_id(&admin, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let change = match change_of(&admin, &form) {
        Ok(change) => change,
        Err(response) => return *response,
    };
    let nonce = match issue_confirmation(&state, &admin, &id, &change.code()).await {
        Ok(nonce) => nonce,
        Err(response) => return response,
    };
    let (heading, what, fields) = match change {
        Change::Revoke(reason) => (
            "Revoke this device?",
            format!(
                "The device will be revoked as {}. Its tokens stop working at once and it \
                 erases its data at its next check-in. This cannot be undone; the user must \
                 enroll again.",
                reason.as_str()
            ),
            format!(
                "{}{}",
                hidden("action", "revoke"),
                hidden("reason", reason.as_str())
            ),
        ),
        Change::Wipe(reason) => (
            "Wipe this device?",
            format!(
                "The device will be revoked{} and asked to erase its keys and records at its \
                 next check-in. This cannot be undone.",
                reason.map_or(String::new(), |r| format!(" as {}", r.as_str()))
            ),
            format!(
                "{}{}",
                hidden("action", "wipe"),
                hidden("reason", reason.map_or("", RevokeReason::as_str))
            ),
        ),
    };
    let body = format!(
        "<h1>{heading}</h1><p>{what}</p>\
         <form method=\"post\" action=\"/app/admin/devices/{id}/apply\">{csrf}{fields}{nonce}\
         <button type=\"submit\" class=\"wide danger\">Yes, {verb}</button></form>\
         <p><a class=\"button wide plain\" href=\"/app/admin/devices/{id}\">Cancel</a></p>",
        what = escape(&what),
        id = escape(&id),
        csrf = hidden("csrf", admin.csrf()),
        nonce = hidden("nonce", &nonce),
        verb = match change {
            Change::Revoke(_) => "revoke",
            Change::Wipe(_) => "wipe",
        },
    );
    admin.page(StatusCode::OK, "Device", &body)
}

/// `POST /app/admin/devices/{id}/apply`: revokes or wipes through the API.
pub async fn apply(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
    WebForm(form): WebForm<DeviceForm>,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let id = match checked_id(&admin, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let change = match change_of(&admin, &form) {
        Ok(change) => change,
        Err(response) => return *response,
    };
    if let Err(response) = consume_confirmation(
        &state,
        &admin,
        &form.nonce,
        &id,
        &change.code(),
        &format!("/app/admin/devices/{id}"),
    )
    .await
    {
        return response;
    }

    let (uri, body, doing) = match change {
        Change::Revoke(reason) => (
            format!("/admin/devices/{id}/revoke"),
            json!({ "reason": reason.as_str() }),
            "revoke the device",
        ),
        Change::Wipe(reason) => (
            format!("/admin/devices/{id}/wipe"),
            reason.map_or_else(|| json!({}), |r| json!({ "reason": r.as_str() })),
            "wipe the device",
        ),
    };

    let mut request = Call::post_json(&uri, admin.token(), &body);
    request.method = Method::POST;
    let reply = call::send(&state, peer, request).await;
    if reply.status == StatusCode::CONFLICT {
        return admin.page(
            StatusCode::CONFLICT,
            "Device",
            &format!(
                "<h1>Already revoked</h1><p class=\"error\" role=\"alert\">This device was \
                 already revoked, and a wipe was requested then. A revocation is final and keeps \
                 its first reason, so nothing was changed.</p>\
                 <p><a class=\"button wide\" href=\"/app/admin/devices/{id}\">Back to the device</a></p>",
                id = escape(&id)
            ),
        );
    }
    if !reply.status.is_success() {
        return api_failure(&admin, &reply, doing);
    }
    tracing::info!(target: "ward::webapp", doing, "an administrator changed a device");
    see_other(&format!("/app/admin/devices/{id}"), &[])
}

/// `GET /app/admin/devices/{id}/report`: the lost-device report.
pub async fn report(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let id = match checked_id(&admin, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };

    let uri = format!("/admin/devices/{id}/report");
    let reply = call::send(&state, peer, Call::get(&uri, admin.token())).await;
    if !reply.status.is_success() {
        return api_failure(&admin, &reply, "build the report");
    }

    let report = &reply.body;
    let patients: String = report
        .get("patients")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|access| {
            format!(
                "<li><code>Patient/{patient}</code>: {reads} read(s), {first} to {last}</li>",
                patient = escape(text(access, "patient").unwrap_or("")),
                reads = access.get("reads").and_then(Value::as_u64).unwrap_or(0),
                first = escape(&when(text(access, "first_read"), "?")),
                last = escape(&when(text(access, "last_read"), "?")),
            )
        })
        .collect();
    let patients = if patients.is_empty() {
        "<p class=\"empty\">The audit log shows no patient data fetched by this device.</p>"
            .to_owned()
    } else {
        format!("<ul>{patients}</ul>")
    };

    let failures = failure_items(report);
    let compliance = if failures.is_empty() {
        "<dd>compliant</dd>".to_owned()
    } else {
        format!("<dd id=\"report-compliance\">not compliant<ul>{failures}</ul></dd>")
    };
    let confirmed = report
        .get("wipe_confirmed")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let wipe = if confirmed {
        format!(
            "yes, received {}",
            when(text(report, "wipe_confirmed_at"), "at an unknown time")
        )
    } else {
        "no".to_owned()
    };

    let body = format!(
        "<h1>Lost-device report</h1>\
         <dl><dt>Device</dt><dd>{name}</dd><dt>Owner</dt><dd>{user}</dd>\
         <dt>Status</dt><dd id=\"report-status\">{status}</dd><dt>Reason</dt><dd>{reason}</dd>\
         <dt>Revoked</dt><dd>{revoked}</dd>\
         <dt>Storage encrypted</dt><dd>{encrypted}</dd><dt>Screen lock</dt><dd>{lock}</dd>\
         <dt>System</dt><dd>{os}</dd><dt>Compliance</dt>{compliance}\
         <dt>Last check-in</dt><dd>{checkin}</dd><dt>Last sync</dt><dd>{sync}</dd>\
         <dt>Wipe requested</dt><dd>{wipe_requested}</dd>\
         <dt>Wipe confirmed</dt><dd id=\"report-wipe\">{wipe}</dd>\
         <dt>Wiped on device</dt><dd>{wiped_at}</dd>\
         <dt>Audit records</dt><dd>{records}</dd><dt>Made</dt><dd>{generated}</dd></dl>\
         <h2>Patients whose data it fetched</h2>{patients}\
         <p><a class=\"button wide plain\" href=\"/app/admin/devices/{id}\">Back to the device</a></p>",
        name = escape(text(report, "name").unwrap_or("")),
        user = escape(text(report, "user").unwrap_or("")),
        status = escape(text(report, "status").unwrap_or("unknown")),
        reason = escape(match (text(report, "reason"), text(report, "revoked_at")) {
            (Some(reason), _) => reason,
            (None, Some(_)) => "wipe requested",
            (None, None) => "not revoked",
        }),
        revoked = escape(&when(text(report, "revoked_at"), "no")),
        encrypted = yes_no(report.get("storage_encrypted").and_then(Value::as_bool)),
        lock = yes_no(report.get("screen_lock").and_then(Value::as_bool)),
        os = escape(text(report, "os").unwrap_or("not reported")),
        checkin = escape(&when(text(report, "last_checkin"), "never")),
        sync = escape(&when(text(report, "last_sync"), "never")),
        wipe_requested = escape(&when(text(report, "wipe_requested_at"), "no")),
        wipe = escape(&wipe),
        wiped_at = escape(&when(text(report, "wiped_at"), "not reported")),
        records = report
            .get("audit_records")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        generated = escape(&when(text(report, "generated_at"), "now")),
        id = escape(&id),
    );
    admin.page(StatusCode::OK, "Lost-device report", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_are_told_apart_from_phones() {
        let browser = json!({"kind": "browser", "certificate": {"serial": "none"}});
        let phone = json!({"kind": "phone", "certificate": {"serial": "40aa"}});
        // A phone that claims to be a browser in its posture is still a phone.
        let posing = json!({"kind": "phone", "last_posture": {"os": "browser"}});
        assert!(is_browser(&browser));
        assert!(!is_browser(&phone));
        assert!(!is_browser(&posing));
    }

    #[test]
    fn failures_are_listed_escaped() {
        let report = json!({"compliance": {"compliant": false, "failures": [
            {"rule": "screen_lock", "message": "no screen lock <set>"}
        ]}});
        assert_eq!(
            failure_items(&report),
            "<li>no screen lock &lt;set&gt;</li>"
        );
        assert_eq!(failure_items(&json!({})), "");
    }

    #[test]
    fn changes_bind_their_reason() {
        assert_eq!(Change::Revoke(RevokeReason::Stolen).code(), "revoke:stolen");
        assert_eq!(Change::Wipe(None).code(), "wipe:-");
        assert_eq!(Change::Wipe(Some(RevokeReason::Lost)).code(), "wipe:lost");
    }
}
