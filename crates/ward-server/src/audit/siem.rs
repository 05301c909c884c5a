//! Formats of audit records for a SIEM: one `AuditEvent` per JSON line, or
//! an RFC 5424 syslog message carrying that JSON.

use ward_audit::ChainEntry;
use ward_audit::record::Outcome;

/// Syslog facility 10, security/authorization messages (RFC 5424
/// section 6.2.1).
const FACILITY_AUTHPRIV: u8 = 10;

/// Returns the `AuditEvent` JSON of `entry` on one line, its id being the
/// sequence number.
pub fn json_line(entry: &ChainEntry) -> String {
    entry
        .record
        .to_audit_event(&entry.seq.to_string())
        .to_string()
}

/// Returns an RFC 5424 message for `entry`, without framing: severity
/// informational for a success and warning otherwise, `MSGID` `audit`, the
/// sequence number in the structured data and the `AuditEvent` JSON as the
/// message.
pub fn syslog_message(entry: &ChainEntry, hostname: &str) -> String {
    let severity = match entry.record.outcome {
        Outcome::Success => 6,
        _ => 4,
    };
    let priority = u16::from(FACILITY_AUTHPRIV) * 8 + severity;
    let timestamp = entry
        .record
        .recorded
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".to_owned());
    let hostname = printable(hostname, 255);
    format!(
        "<{priority}>1 {timestamp} {hostname} ward - audit [ward@32473 seq=\"{}\"] {}",
        entry.seq,
        json_line(entry)
    )
}

/// Keeps printable ASCII without spaces (RFC 5424 `PRINTUSASCII`), `-` when
/// nothing is left.
fn printable(text: &str, max: usize) -> String {
    let kept: String = text
        .chars()
        .filter(|c| ('!'..='~').contains(c))
        .take(max)
        .collect();
    if kept.is_empty() {
        "-".to_owned()
    } else {
        kept
    }
}

/// Frames a message for syslog over TLS with octet counting (RFC 5425
/// section 4.3): the length in bytes, a space, the message.
pub fn octet_counted(message: &str) -> String {
    format!("{} {message}", message.len())
}
