//! The durable outbox: messages waiting for delivery, as sealed key-value
//! records of the store (namespace [`NS_OUTBOX`], keyed by message id).
//!
//! A message is stored `queued` before the response to the sender's request.
//! A delivery loop retries it with exponential backoff and jitter until a
//! valid signed acknowledgement marks it `delivered`, or until its give-up
//! time marks it `failed`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ward_store::Store;

use crate::error::Error;

/// Outbox messages by message id.
pub const NS_OUTBOX: &str = "exchange.outbox";

/// The delivery state of an outbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Waiting for its next delivery attempt.
    Queued,
    /// Acknowledged by the recipient with a valid signature.
    Delivered,
    /// Given up on; an alert was raised.
    Failed,
    /// Delivered, and the recipient pharmacy reported the prescription in
    /// it as dispensed.
    Dispensed,
}

impl Status {
    /// Returns the status as the status resource shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Dispensed => "dispensed",
        }
    }
}

/// One message of the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// The message id, also the JWS `jti` of every attempt.
    pub id: String,
    /// The recipient organization id.
    pub recipient: String,
    /// The token subject of the user who sent it; only they read its status.
    pub sender_user: String,
    /// The message Bundle.
    pub bundle: Value,
    /// The delivery state.
    pub status: Status,
    /// When it was queued, in seconds since the Unix epoch.
    pub created: i64,
    /// When the next attempt is due, in seconds since the Unix epoch.
    pub next_attempt: i64,
    /// When the outbox gives up, in seconds since the Unix epoch.
    pub give_up_at: i64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// The reason the last attempt failed, without PHI.
    pub last_error: Option<String>,
    /// The response code of the acknowledgement (`ok`, `fatal-error`).
    pub response_code: Option<String>,
    /// When it was acknowledged, in seconds since the Unix epoch.
    pub delivered_at: Option<i64>,
}

/// Stores a new message; fails when the id is taken.
///
/// # Errors
///
/// [`Error::InvalidEntry`] for a taken id, [`Error::Store`].
pub fn enqueue(store: &dyn Store, message: &OutboxMessage) -> Result<(), Error> {
    let bytes = serde_json::to_vec(message).map_err(|_| Error::Corrupt(NS_OUTBOX))?;
    if store.kv_insert_new(NS_OUTBOX, &message.id, &bytes, None)? {
        Ok(())
    } else {
        Err(Error::InvalidEntry(format!(
            "outbox message {} already exists",
            message.id
        )))
    }
}

/// Replaces the stored state of `message`.
///
/// # Errors
///
/// [`Error::Store`].
pub fn save(store: &dyn Store, message: &OutboxMessage) -> Result<(), Error> {
    let bytes = serde_json::to_vec(message).map_err(|_| Error::Corrupt(NS_OUTBOX))?;
    store.kv_put(NS_OUTBOX, &message.id, &bytes, None)?;
    Ok(())
}

/// Reads one message.
///
/// # Errors
///
/// [`Error::Store`] or [`Error::Corrupt`].
pub fn get(store: &dyn Store, id: &str) -> Result<Option<OutboxMessage>, Error> {
    match store.kv_get(NS_OUTBOX, id)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| Error::Corrupt(NS_OUTBOX)),
        None => Ok(None),
    }
}

/// Marks message `id` dispensed when `reporter` is the organization it was
/// sent to. Returns whether the message was marked: an unknown id, another
/// recipient or a failed message leaves the outbox unchanged.
///
/// NOTE: the delivery loop saves its in-memory copy of a message after the
/// acknowledgement, so a dispensing report that arrives before that save
/// is overwritten with `delivered`.
///
/// # Errors
///
/// [`Error::Store`] or [`Error::Corrupt`].
pub fn mark_dispensed(store: &dyn Store, id: &str, reporter: &str) -> Result<bool, Error> {
    let Some(mut message) = get(store, id)? else {
        return Ok(false);
    };
    if message.recipient != reporter || message.status == Status::Failed {
        return Ok(false);
    }
    message.status = Status::Dispensed;
    save(store, &message)?;
    Ok(true)
}

/// Lists the queued messages whose next attempt is due at `now`.
///
/// NOTE: this reads the whole namespace, delivered messages included, on
/// every pass; an index by status is needed before outboxes grow large.
///
/// # Errors
///
/// [`Error::Store`] or [`Error::Corrupt`].
pub fn due(store: &dyn Store, now: i64) -> Result<Vec<OutboxMessage>, Error> {
    let mut due = Vec::new();
    for (_, bytes) in store.kv_list(NS_OUTBOX, "")? {
        let message: OutboxMessage =
            serde_json::from_slice(&bytes).map_err(|_| Error::Corrupt(NS_OUTBOX))?;
        if message.status == Status::Queued && message.next_attempt <= now {
            due.push(message);
        }
    }
    Ok(due)
}

/// Returns the delay before attempt `attempts + 1`, in seconds: `base`
/// doubled per failed attempt, capped at `max`, then scaled by a random
/// factor in [0.5, 1] (`jitter` is a uniformly random `u32`).
pub fn backoff_secs(attempts: u32, base: u64, max: u64, jitter: u32) -> u64 {
    let exponent = attempts.saturating_sub(1).min(32);
    let delay = base.saturating_mul(1u64 << exponent).min(max).max(1);
    let half = delay / 2;
    let spread = (delay - half) * u64::from(jitter) / u64::from(u32::MAX);
    (half + spread).max(1)
}

/// Returns a uniformly random `u32` for [`backoff_secs`].
pub fn random_jitter() -> u32 {
    let mut bytes = [0u8; 4];
    // A failed random source gives no jitter, which only makes retries of
    // many messages line up; it cannot break delivery.
    let _ = aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut bytes);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_secs(1, 2, 60, u32::MAX), 2);
        assert_eq!(backoff_secs(2, 2, 60, u32::MAX), 4);
        assert_eq!(backoff_secs(3, 2, 60, u32::MAX), 8);
        assert_eq!(backoff_secs(10, 2, 60, u32::MAX), 60);
        assert_eq!(backoff_secs(40, 2, 60, u32::MAX), 60);
    }

    #[test]
    fn backoff_jitter_stays_in_upper_half() {
        assert_eq!(backoff_secs(4, 2, 60, 0), 8);
        assert_eq!(backoff_secs(4, 2, 60, u32::MAX / 2), 11);
        assert_eq!(backoff_secs(4, 2, 60, u32::MAX), 16);
        assert!(backoff_secs(0, 0, 0, 0) >= 1);
    }

    fn queued(id: &str, recipient: &str) -> OutboxMessage {
        OutboxMessage {
            id: id.to_owned(),
            recipient: recipient.to_owned(),
            sender_user: "dr-a".to_owned(),
            bundle: Value::Null,
            status: Status::Delivered,
            created: 1,
            next_attempt: 1,
            give_up_at: 2,
            attempts: 1,
            last_error: None,
            response_code: Some("ok".to_owned()),
            delivered_at: Some(1),
        }
    }

    #[test]
    fn dispensed_only_by_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let master = ward_crypto::MasterKey::generate().unwrap();
        let options = ward_store::SqliteOptions::new(dir.path().join("ward.db"));
        let store = ward_store::SqliteStore::open(&options, &master).unwrap();
        enqueue(&store, &queued("m-1", "org-pharmacy")).unwrap();

        assert!(!mark_dispensed(&store, "m-1", "org-other").unwrap());
        assert_eq!(
            get(&store, "m-1").unwrap().unwrap().status,
            Status::Delivered
        );
        assert!(!mark_dispensed(&store, "m-unknown", "org-pharmacy").unwrap());
        assert!(mark_dispensed(&store, "m-1", "org-pharmacy").unwrap());
        assert_eq!(
            get(&store, "m-1").unwrap().unwrap().status,
            Status::Dispensed
        );
    }

    #[test]
    fn status_serializes_as_lowercase() {
        assert_eq!(
            serde_json::to_value(Status::Delivered).unwrap(),
            Value::from("delivered")
        );
        assert_eq!(Status::Queued.as_str(), "queued");
    }
}
