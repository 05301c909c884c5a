//! Audit records for the administrative commands (`ward user`,
//! `ward client`, `ward keys`): each change they make is appended to the
//! audit log with the operating-system account that ran the command, so
//! account, client and key changes show up beside the request records.

use anyhow::{Context, Result};
use ward_audit::record::{Action, Subtype};
use ward_server::audit::Auditor;
use ward_store::Store;

/// The operating-system account running the command, as `os:NAME`: the
/// real user id from `/proc/self/status`, named through `/etc/passwd`
/// (`os:uid=N` when it has no entry). Environment variables such as `USER`
/// are not used, because the caller sets them.
fn operator() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(uid) = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .map(str::to_owned)
    else {
        return "os:unknown".to_owned();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let entry_uid = fields.nth(1)?;
        (entry_uid == uid).then(|| name.to_owned())
    });
    match name {
        Some(name) => format!("os:{name}"),
        None => format!("os:uid={uid}"),
    }
}

/// Appends the record of one administrative change to the audit log of
/// `store`. `event` names the change (`user_added`); `details` name the
/// accounts, clients or keys involved and never carry a secret.
///
/// # Errors
///
/// Writing the record failed; the caller reports it, because a change
/// without its audit record must not pass silently.
pub fn record_change(
    store: &dyn Store,
    event: &str,
    subtype: Subtype,
    action: Action,
    details: &[(&str, &str)],
) -> Result<()> {
    let auditor = Auditor::new("ward-cli");
    let record = auditor.admin_change(&operator(), event, subtype, action, details);
    auditor.commit_blocking(store, record).map_err(|error| {
        let reason = error
            .outcome
            .issues
            .first()
            .map_or("unknown error", |issue| issue.diagnostics.as_str())
            .to_owned();
        anyhow::anyhow!(
            "the change was made, but writing its audit record ({event}) failed: {reason}"
        )
    })
}

/// The key-value namespace holding the digest of the access policy that the
/// last server start loaded.
const POLICY_NAMESPACE: &str = "audit.policy";

/// Records a change of the access policy: when the policy that `path`
/// holds (or the built-in default when `path` does not exist) differs from
/// the one the previous start loaded, an audit record names both SHA-256
/// digests. The first start records the policy it loaded.
///
/// # Errors
///
/// Reading the policy file, the store or writing the record failed.
pub fn record_policy(store: &dyn Store, path: &std::path::Path) -> Result<()> {
    let text = if path.exists() {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        ward_auth::policy::DEFAULT_POLICY.as_bytes().to_vec()
    };
    let digest = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &text));
    let previous = store
        .kv_get(POLICY_NAMESPACE, "current")
        .context("reading the digest of the previous access policy")?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    if previous.as_deref() == Some(digest.as_str()) {
        return Ok(());
    }
    let source = if path.exists() {
        path.display().to_string()
    } else {
        "built-in default".to_owned()
    };
    let previous = previous.unwrap_or_else(|| "none".to_owned());
    record_change(
        store,
        "policy_changed",
        Subtype::SecurityConfiguration,
        Action::Update,
        &[
            ("policy", &source),
            ("sha256", &digest),
            ("previous_sha256", &previous),
        ],
    )?;
    store
        .kv_put(POLICY_NAMESPACE, "current", digest.as_bytes(), None)
        .context("saving the digest of the access policy")?;
    Ok(())
}
