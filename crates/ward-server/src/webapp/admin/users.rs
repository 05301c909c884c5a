//! The user account screens: the list (name, role, status, passkeys, last
//! sign-in), and disable, enable and second-factor reset, each behind a
//! confirmation page.
//!
//! Accounts have no HTTP admin API, so these handlers use the identity
//! store directly, after [`super::require_admin`], and record each change
//! in the audit log (Security Alert, User Security Attributes Changed,
//! with the administrator as the agent) like `ward user` does.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ward_audit::record::{Action, EventType, Outcome, Subtype};

use super::{
    AdminSession, consume_confirmation, expired_form, issue_confirmation, now_micros,
    require_admin, when,
};
use crate::AppState;
use crate::oauth::TOTP_ISSUER;
use crate::oauth::identity::{self, IdentityError, UserRecord};
use crate::webapp::call::{self, Call};
use crate::webapp::html::{WebForm, escape, hidden, see_other};
use crate::webapp::signin::{PeerAddr, blocking};

/// How many recent successful sign-ins the list looks through for the
/// "last sign-in" column.
const RECENT_SIGN_INS: usize = 200;

/// A change an administrator can make to an account.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Disable,
    Enable,
    ResetMfa,
}

impl Change {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "disable" => Some(Self::Disable),
            "enable" => Some(Self::Enable),
            "reset-mfa" => Some(Self::ResetMfa),
            _ => None,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Enable => "enable",
            Self::ResetMfa => "reset-mfa",
        }
    }

    /// Returns the audit detail `event`, as `ward user` records it.
    fn event(self) -> &'static str {
        match self {
            Self::Disable => "user_disabled",
            Self::Enable => "user_enabled",
            Self::ResetMfa => "user_mfa_reset",
        }
    }

    fn button(self) -> &'static str {
        match self {
            Self::Disable => "Disable",
            Self::Enable => "Enable",
            Self::ResetMfa => "Reset second factor",
        }
    }

    fn consequence(self) -> &'static str {
        match self {
            Self::Disable => {
                "They can no longer sign in. Their sign-in sessions end and their tokens stop working at once."
            }
            Self::Enable => "They can sign in again with their password and second factor.",
            Self::ResetMfa => {
                "Their authenticator code, recovery codes and passkeys stop working, and their \
                 sign-in sessions end and their tokens stop working at once. You get a new \
                 secret and recovery codes to hand to them in person."
            }
        }
    }
}

/// The form of a change and of its confirmation.
#[derive(Deserialize)]
pub struct ChangeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    action: String,
    /// The one-time nonce of the confirmation page.
    #[serde(default)]
    nonce: String,
}

/// The query of the page that shows a reset's new second factor.
#[derive(Deserialize)]
pub struct NewFactorQuery {
    #[serde(default)]
    t: String,
}

/// A reset's new second factor, kept until its page is shown once.
#[derive(Serialize, Deserialize)]
struct NewFactor {
    admin: String,
    username: String,
    secret: String,
    uri: String,
    recovery_codes: Vec<String>,
    passkeys_removed: usize,
    sessions_ended: usize,
}

/// New second factors waiting to be shown, by one-time key.
const NS_NEW_FACTOR: &str = "webapp.admin_new_factor";
/// How long a new second factor waits to be shown.
const NEW_FACTOR_TTL_SECS: i64 = 5 * 60;

/// `GET /app/admin/users`.
pub async fn list(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let store = state.engine.store.clone();
    let users = match blocking(move || identity::list_users(store.as_ref())).await {
        Ok(Ok(users)) => users,
        Ok(Err(error)) => {
            tracing::error!(target: "ward::webapp", %error, "listing users failed");
            return admin.page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Users",
                "<h1>Users</h1><p class=\"error\" role=\"alert\">The user list could not be read. Try again.</p>",
            );
        }
        Err(response) => return response,
    };
    let last = last_sign_ins(&state, &admin).await;
    let mut users: Vec<&UserRecord> = users.iter().collect();
    users.sort_by_key(|user| user.username.to_lowercase());
    let mut rows = String::new();
    for user in users {
        rows.push_str(&user_card(
            &admin,
            user,
            last.get(&user.id).map(String::as_str),
        ));
    }
    let body = if rows.is_empty() {
        "<h1>Users</h1><p class=\"empty\">No users yet. Add one with <code>ward user add</code>.</p>"
            .to_owned()
    } else {
        format!(
            "<h1>Users</h1><p class=\"hint\">Add users with <code>ward user add</code>. \
             Last sign-in looks through the newest {RECENT_SIGN_INS} sign-ins.</p>\
             <ul class=\"admin-list\" aria-label=\"Users\">{rows}</ul>"
        )
    };
    admin.page(StatusCode::OK, "Users", &body)
}

fn user_card(admin: &AdminSession, user: &UserRecord, last: Option<&str>) -> String {
    let status = if user.disabled {
        "<span class=\"status bad\">Disabled</span>"
    } else {
        "<span class=\"status good\">Active</span>"
    };
    let own = user.id == admin.principal.subject;
    let toggle = if user.disabled {
        Change::Enable
    } else {
        Change::Disable
    };
    let mut actions = String::new();
    let changes: &[Change] = if own {
        // An administrator does not lock themselves out from here.
        &[]
    } else {
        &[toggle, Change::ResetMfa]
    };
    for change in changes {
        actions.push_str(&format!(
            "<form method=\"post\" action=\"/app/admin/users/confirm\">{}{}{}\
             <button type=\"submit\" class=\"{}\">{}<span class=\"visually-hidden\"> {}</span></button></form>",
            hidden("csrf", admin.csrf()),
            hidden("username", &user.username),
            hidden("action", change.code()),
            if *change == Change::Disable {
                "danger"
            } else {
                "plain"
            },
            change.button(),
            escape(&user.username),
        ));
    }
    if own {
        actions.push_str("<p class=\"hint\">This is your account.</p>");
    }
    format!(
        "<li><h2>{name}</h2>{status}<dl><dt>Role</dt><dd>{role}</dd>\
         <dt>Passkeys</dt><dd>{passkeys}</dd><dt>Last sign-in</dt><dd>{last}</dd></dl>\
         <div class=\"actions\">{actions}</div></li>",
        name = escape(&user.username),
        role = escape(&user.role.replace('_', " ")),
        passkeys = user.passkeys.len(),
        last = escape(&when(last, "not among recent sign-ins")),
    )
}

/// Reads the newest successful sign-in of each user among the newest
/// [`RECENT_SIGN_INS`] through the audit search, by user id.
async fn last_sign_ins(state: &AppState, admin: &AdminSession) -> HashMap<String, String> {
    // DICOM 110114 User Authentication, subtype 110122 Login, outcome 0.
    let uri =
        format!("/fhir/AuditEvent?type=110114&subtype=110122&outcome=0&_count={RECENT_SIGN_INS}");
    let reply = call::send(state, admin.peer, Call::get(&uri, admin.token())).await;
    let mut last = HashMap::new();
    if !reply.status.is_success() {
        tracing::warn!(target: "ward::webapp", status = reply.status.as_u16(), "reading recent sign-ins failed");
        return last;
    }
    for event in call::resources(&reply.body) {
        let Some(recorded) = event.get("recorded").and_then(Value::as_str) else {
            continue;
        };
        let agents = event.get("agent").and_then(Value::as_array);
        for agent in agents.into_iter().flatten() {
            if let Some(id) = agent
                .pointer("/who/identifier/value")
                .and_then(Value::as_str)
            {
                // Newest first, so the first record of a user is the last sign-in.
                last.entry(id.to_owned())
                    .or_insert_with(|| recorded.to_owned());
            }
        }
    }
    last
}

/// Checks the form of a change: the CSRF token, the action and that the
/// account exists and is not the administrator's own.
async fn checked(
    state: &AppState,
    admin: &AdminSession,
    form: &ChangeForm,
) -> Result<(Change, UserRecord), Response> {
    if !admin.active.session.csrf_matches(&form.csrf) {
        return Err(expired_form());
    }
    let Some(change) = Change::parse(&form.action) else {
        return Err(problem(
            admin,
            StatusCode::BAD_REQUEST,
            "That change is not known. Go back to the user list and use its buttons.",
        ));
    };
    let store = state.engine.store.clone();
    let username = form.username.clone();
    let user = match blocking(move || identity::find_user(store.as_ref(), &username)).await? {
        Ok(Some(user)) => user,
        Ok(None) => {
            return Err(problem(
                admin,
                StatusCode::NOT_FOUND,
                "No user has this name. Go back to the user list and pick one there.",
            ));
        }
        Err(error) => {
            tracing::error!(target: "ward::webapp", %error, "reading a user failed");
            return Err(problem(
                admin,
                StatusCode::INTERNAL_SERVER_ERROR,
                "The user could not be read. Try again.",
            ));
        }
    };
    if user.id == admin.principal.subject {
        return Err(problem(
            admin,
            StatusCode::BAD_REQUEST,
            "You cannot change your own account here; ask another administrator or use ward user.",
        ));
    }
    Ok((change, user))
}

fn problem(admin: &AdminSession, status: StatusCode, message: &str) -> Response {
    admin.page(
        status,
        "Users",
        &format!(
            "<h1>Users</h1><p class=\"error\" role=\"alert\">{}</p>\
             <p><a class=\"button wide\" href=\"/app/admin/users\">Back to users</a></p>",
            escape(message)
        ),
    )
}

/// `POST /app/admin/users/confirm`: shows the change for the administrator to confirm.
pub async fn confirm(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<ChangeForm>,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let (change, user) = match checked(&state, &admin, &form).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let nonce = match issue_confirmation(&state, &admin, &user.username, change.code()).await {
        Ok(nonce) => nonce,
        Err(response) => return response,
    };
    let body = format!(
        "<h1>{verb} {name}?</h1><p>{consequence}</p>\
         <form method=\"post\" action=\"/app/admin/users/apply\">{csrf}{username}{action}{nonce}\
         <button type=\"submit\" class=\"wide {class}\">{verb} {name}</button></form>\
         <p><a class=\"button wide plain\" href=\"/app/admin/users\">Cancel</a></p>",
        verb = change.button(),
        name = escape(&user.username),
        consequence = escape(change.consequence()),
        csrf = hidden("csrf", admin.csrf()),
        username = hidden("username", &user.username),
        action = hidden("action", change.code()),
        nonce = hidden("nonce", &nonce),
        class = if change == Change::Enable {
            ""
        } else {
            "danger"
        },
    );
    admin.page(StatusCode::OK, "Users: confirm", &body)
}

/// `POST /app/admin/users/apply`: makes the confirmed change and records it.
pub async fn apply(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    WebForm(form): WebForm<ChangeForm>,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let (change, user) = match checked(&state, &admin, &form).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    if let Err(response) = consume_confirmation(
        &state,
        &admin,
        &form.nonce,
        &user.username,
        change.code(),
        "/app/admin/users",
    )
    .await
    {
        return response;
    }

    let store = state.engine.store.clone();
    let username = user.username.clone();
    let result = blocking(
        move || -> Result<Option<(identity::Enrollment, usize)>, IdentityError> {
            match change {
                Change::Disable => identity::disable_user(store.as_ref(), &username).map(|_| None),
                Change::Enable => {
                    let mut user = identity::find_user(store.as_ref(), &username)?
                        .ok_or_else(|| IdentityError::NotFound("the user".into()))?;
                    user.disabled = false;
                    identity::save_user(store.as_ref(), &user).map(|()| None)
                }
                Change::ResetMfa => {
                    // The reset also ends the sessions and tokens opened
                    // with the old factor.
                    let enrollment = identity::reset_mfa(store.as_ref(), &username, TOTP_ISSUER)?;
                    let ended = enrollment.ended.sessions + enrollment.ended.families;
                    Ok(Some((enrollment, ended)))
                }
            }
        },
    )
    .await;

    let enrollment = match result {
        Ok(Ok(enrollment)) => enrollment,
        Ok(Err(error)) => {
            tracing::error!(target: "ward::webapp", %error, change = change.event(), "an account change failed");
            return problem(
                &admin,
                StatusCode::INTERNAL_SERVER_ERROR,
                "The change could not be saved. Try again.",
            );
        }
        Err(response) => return response,
    };

    let auditor = &state.engine.auditor;
    let mut record = auditor.record(EventType::Security, Action::Update, Outcome::Success);
    record.subtypes.push(Subtype::UserSecurityAttributesChanged);
    record.agents.push(admin.actor().agent());
    record
        .detail
        .insert("event".to_owned(), change.event().to_owned());
    record
        .detail
        .insert("username".to_owned(), crate::audit::ascii(&user.username));
    if auditor.commit(record).await.is_err() {
        tracing::error!(target: "ward::webapp", change = change.event(), "recording an account change failed");
        return problem(
            &admin,
            StatusCode::INTERNAL_SERVER_ERROR,
            "The change was made, but its audit record could not be written. Tell the security team.",
        );
    }

    tracing::info!(target: "ward::webapp", change = change.event(), "an administrator changed an account");
    match enrollment {
        Some((enrollment, ended)) => {
            keep_new_factor(&state, &admin, &user.username, &enrollment, ended).await
        }
        None => see_other("/app/admin/users", &[]),
    }
}

/// Keeps a reset's new second factor for its page to show once, and
/// redirects there, so that reloading the result repeats nothing.
async fn keep_new_factor(
    state: &AppState,
    admin: &AdminSession,
    username: &str,
    enrollment: &identity::Enrollment,
    sessions_ended: usize,
) -> Response {
    let failed = || {
        problem(
            admin,
            StatusCode::INTERNAL_SERVER_ERROR,
            "The second factor was reset, but the new secret could not be shown. Reset it again.",
        )
    };
    let Ok(key) = ward_auth::oauth::generate_token().map(|t| t.to_string()) else {
        return failed();
    };
    let factor = NewFactor {
        admin: admin.principal.subject.clone(),
        username: username.to_owned(),
        secret: enrollment.secret.to_string(),
        uri: enrollment.uri.to_string(),
        recovery_codes: enrollment
            .recovery_codes
            .iter()
            .map(|code| code.to_string())
            .collect(),
        passkeys_removed: enrollment.passkeys_removed,
        sessions_ended,
    };
    let Ok(bytes) = serde_json::to_vec(&factor) else {
        return failed();
    };
    let store = state.engine.store.clone();
    let stored_key = key.clone();
    let expires = now_micros().saturating_add(NEW_FACTOR_TTL_SECS * 1_000_000);
    let saved = blocking(move || {
        let mut bytes = bytes;
        let saved = store.kv_insert_new(NS_NEW_FACTOR, &stored_key, &bytes, Some(expires));
        zeroize::Zeroize::zeroize(&mut bytes);
        saved
    })
    .await;
    if !matches!(saved, Ok(Ok(true))) {
        return failed();
    }
    see_other(&format!("/app/admin/users/new-factor?t={key}"), &[])
}

/// `GET /app/admin/users/new-factor?t=...`: shows a reset's new second
/// factor once; the record is taken as it is read.
pub async fn new_factor(
    State(state): State<AppState>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    Query(query): Query<NewFactorQuery>,
) -> Response {
    let admin = match require_admin(&state, peer, &headers).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    let taken = if query.t.is_empty() || query.t.len() > 128 {
        None
    } else {
        let store = state.engine.store.clone();
        let key = query.t.clone();
        match blocking(move || store.kv_take(NS_NEW_FACTOR, &key)).await {
            Ok(Ok(taken)) => taken,
            Ok(Err(error)) => {
                tracing::error!(target: "ward::webapp", %error, "reading a new second factor failed");
                None
            }
            Err(response) => return response,
        }
    };
    let factor = taken
        .and_then(|bytes| serde_json::from_slice::<NewFactor>(&bytes).ok())
        .filter(|factor| factor.admin == admin.principal.subject);
    match factor {
        Some(factor) => new_second_factor(&admin, &factor),
        None => problem(
            &admin,
            StatusCode::GONE,
            "This secret was shown once already, or its page expired. If it was lost, reset \
             the second factor again.",
        ),
    }
}

/// Shows a reset's new TOTP secret and recovery codes, once.
fn new_second_factor(admin: &AdminSession, factor: &NewFactor) -> Response {
    let codes: String = factor
        .recovery_codes
        .iter()
        .map(|code| format!("<li><code>{}</code></li>", escape(code)))
        .collect();
    let body = format!(
        "<h1>New second factor for {name}</h1>\
         <p class=\"notice\" role=\"status\">The second factor was reset; {removed} passkey(s) were removed \
         and {ended} sign-in session(s) and token families were ended. \
         This page is shown once: hand the secret and codes to {name} in person.</p>\
         <section><h2>Authenticator secret</h2><p><code class=\"secret\">{secret}</code></p>\
         <p class=\"hint\">Enter it in the authenticator app as a time-based key, or use this address:</p>\
         <p><code class=\"secret\">{uri}</code></p></section>\
         <section><h2>Recovery codes</h2><ul class=\"codes\">{codes}</ul></section>\
         <p><a class=\"button wide\" href=\"/app/admin/users\">Done</a></p>",
        name = escape(&factor.username),
        removed = factor.passkeys_removed,
        ended = factor.sessions_ended,
        secret = escape(&factor.secret),
        uri = escape(&factor.uri),
    );
    admin.page(StatusCode::OK, "Users: new second factor", &body)
}
