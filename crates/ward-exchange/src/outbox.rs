//! The durable outbox: messages waiting for delivery, as sealed key-value
//! records of the store (namespace [`NS_OUTBOX`], keyed by message id).
//!
//! A message is stored `queued` before the response to the sender's request.
//! A delivery loop retries it with exponential backoff and jitter until a
//! valid signed acknowledgement marks it `delivered`, or until its give-up
//! time marks it `failed`. An attempt that transmitted the message but got
//! no valid acknowledgement back (a timeout after sending, a 5xx answer, an
//! invalid acknowledgement) marks it `sent`; it is retried like a `queued`
//! one. The status only moves forward: `queued` < `sent` < `delivered` <
//! `dispensed`, and `failed` is final.
//!
//! Each message also has an entry in the sender index
//! ([`NS_OUTBOX_BY_SENDER`], keyed by a digest of the sender and the time
//! it was queued), so [`list_for_sender`] reads one user's messages
//! without reading the whole outbox.
//!
//! Several server replicas may share one store, and a dispensing report may
//! mark a message `dispensed` while its delivery attempt is still running.
//! So every change of a stored message is a read-modify-write in one store
//! transaction ([`WriteTx::kv_get`] locks the record on PostgreSQL; SQLite
//! runs one write transaction at a time):
//!
//! - [`lease`] takes a due message for one delivery attempt by moving its
//!   `next_attempt` past the attempt's end, so no other replica sends it at
//!   the same time. When a replica stops mid-attempt, its lease runs out and
//!   the message is due again.
//! - [`finish_attempt`] stores the result of an attempt only when the stored
//!   state allows it: a status never moves back (`dispensed` stays, and a
//!   `delivered` or `failed` message is final), and a retry is scheduled
//!   only by the attempt that still has the lease.
//! - [`mark_dispensed`] moves a `queued` or `delivered` message to
//!   `dispensed`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ward_store::{Store, WriteTx};

use crate::error::Error;

/// Outbox messages by message id.
pub const NS_OUTBOX: &str = "exchange.outbox";

/// The sender index of the outbox: keys `SENDER_DIGEST:QUEUED_MICROS:ID`,
/// values the message id.
pub const NS_OUTBOX_BY_SENDER: &str = "exchange.outbox.sender";

/// The delivery state of an outbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Waiting for its next delivery attempt; never transmitted.
    Queued,
    /// Transmitted at least once, but no valid signed acknowledgement came
    /// back yet; waiting for its next delivery attempt.
    Sent,
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
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Dispensed => "dispensed",
        }
    }

    /// Returns whether the message still waits for delivery (`queued` or
    /// `sent`).
    pub fn is_pending(self) -> bool {
        matches!(self, Self::Queued | Self::Sent)
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
    /// The sender's own reference of the patient the message is about
    /// (`Patient/ID`), when the sender gave one; it is never transmitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// Stores a new message; fails when the id is taken.
///
/// # Errors
///
/// [`Error::InvalidEntry`] for a taken id, [`Error::Store`].
pub fn enqueue(store: &dyn Store, message: &OutboxMessage) -> Result<(), Error> {
    let mut tx = store.begin()?;
    enqueue_in(tx.as_mut(), message)?;
    tx.commit()?;
    Ok(())
}

/// Stores a new message in the transaction `tx`, so that it commits with
/// the write that caused it. Fails when the id is taken.
///
/// # Errors
///
/// [`Error::InvalidEntry`] for a taken id, [`Error::Store`].
pub fn enqueue_in(tx: &mut dyn WriteTx, message: &OutboxMessage) -> Result<(), Error> {
    let bytes = serde_json::to_vec(message).map_err(|_| Error::Corrupt(NS_OUTBOX))?;
    if tx.kv_insert_new(NS_OUTBOX, &message.id, &bytes, None)? {
        let key = format!(
            "{}{:020}:{}",
            sender_prefix(&message.sender_user),
            queued_micros(message.created),
            message.id
        );
        tx.kv_put(NS_OUTBOX_BY_SENDER, &key, message.id.as_bytes(), None)?;
        Ok(())
    } else {
        Err(Error::InvalidEntry(format!(
            "outbox message {} already exists",
            message.id
        )))
    }
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

/// Returns the sender index prefix of the user with token subject
/// `sender`: a digest, so the index keys do not show who sent what.
fn sender_prefix(sender: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, sender.as_bytes());
    format!("{}:", hex::encode(digest.as_ref()))
}

/// Returns the time to order a message queued at `created` (seconds) by:
/// the current time in microseconds, so messages queued in the same
/// second keep their order, but never before `created`.
fn queued_micros(created: i64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let created = u64::try_from(created.max(0))
        .unwrap_or(0)
        .saturating_mul(1_000_000);
    now.max(created)
}

/// Lists the messages sent by the user with token subject `sender`, newest
/// first, at most `limit`. Reads the user's entries of the sender index and
/// then only the messages it returns.
///
/// # Errors
///
/// [`Error::Store`] or [`Error::Corrupt`].
pub fn list_for_sender(
    store: &dyn Store,
    sender: &str,
    limit: usize,
) -> Result<Vec<OutboxMessage>, Error> {
    // NOTE: the key-value API lists a whole prefix in key order, so all of
    // the user's index entries (ids only) are read. A store method that
    // lists a prefix backwards with a limit would read only `limit`.
    let mut keys = store.kv_list(NS_OUTBOX_BY_SENDER, &sender_prefix(sender))?;
    keys.sort_by(|a, b| b.0.cmp(&a.0));
    let mut messages = Vec::new();
    for (_, id) in keys {
        if messages.len() >= limit {
            break;
        }
        let id = String::from_utf8(id).map_err(|_| Error::Corrupt(NS_OUTBOX_BY_SENDER))?;
        if let Some(message) = get(store, &id)?
            && message.sender_user == sender
        {
            messages.push(message);
        }
    }
    Ok(messages)
}

/// Reads one message in the transaction `tx`, locking it until the
/// transaction ends.
fn get_in(tx: &mut dyn WriteTx, id: &str) -> Result<Option<OutboxMessage>, Error> {
    match tx.kv_get(NS_OUTBOX, id)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| Error::Corrupt(NS_OUTBOX)),
        None => Ok(None),
    }
}

/// Writes `message` in the transaction `tx`.
fn put_in(tx: &mut dyn WriteTx, message: &OutboxMessage) -> Result<(), Error> {
    let bytes = serde_json::to_vec(message).map_err(|_| Error::Corrupt(NS_OUTBOX))?;
    tx.kv_put(NS_OUTBOX, &message.id, &bytes, None)?;
    Ok(())
}

/// Runs `change` on the stored message `id` in one transaction and writes
/// the message back when `change` returns true. Returns what `change`
/// returned and the message as stored afterwards.
fn update(
    store: &dyn Store,
    id: &str,
    change: impl FnOnce(&mut OutboxMessage) -> bool,
) -> Result<Option<(bool, OutboxMessage)>, Error> {
    let mut tx = store.begin()?;
    let result = update_in(tx.as_mut(), id, change)?;
    if matches!(result, Some((true, _))) {
        tx.commit()?;
    }
    Ok(result)
}

/// Runs [`update`] inside the transaction `tx`. The caller commits.
fn update_in(
    tx: &mut dyn WriteTx,
    id: &str,
    change: impl FnOnce(&mut OutboxMessage) -> bool,
) -> Result<Option<(bool, OutboxMessage)>, Error> {
    let Some(mut message) = get_in(tx, id)? else {
        return Ok(None);
    };
    let changed = change(&mut message);
    if changed {
        put_in(tx, &message)?;
    }
    Ok(Some((changed, message)))
}

/// Takes message `id` for one delivery attempt at `now` when it is still
/// `queued` or `sent` and due: counts the attempt and moves `next_attempt` to
/// `now + lease_secs`, so no other delivery loop sharing the store picks it
/// up meanwhile. Returns the message to deliver, or `None` when it is not
/// due any more (another replica took it, or its status changed).
///
/// `lease_secs` must be longer than one attempt may take. When the loop
/// stops mid-attempt the message is due again once the lease runs out.
///
/// # Errors
///
/// [`Error::Store`] or [`Error::Corrupt`].
pub fn lease(
    store: &dyn Store,
    id: &str,
    now: i64,
    lease_secs: i64,
) -> Result<Option<OutboxMessage>, Error> {
    let leased = update(store, id, |message| {
        if !message.status.is_pending() || message.next_attempt > now {
            return false;
        }
        message.attempts = message.attempts.saturating_add(1);
        message.next_attempt = now.saturating_add(lease_secs.max(1));
        true
    })?;
    Ok(match leased {
        Some((true, message)) => Some(message),
        _ => None,
    })
}

/// Stores the outcome of the delivery attempt that [`lease`] returned as
/// `leased`; `outcome` is that message with its new status and fields.
/// Returns the message as stored afterwards.
///
/// - A `queued` or `sent` message takes a final outcome (`delivered`,
///   `failed`) from any attempt. It takes a retry (`queued` or `sent` with
///   a new `next_attempt`) only from the attempt that holds the lease,
///   because a later lease means another attempt has taken over. A retry
///   never moves a `sent` message back to `queued`.
/// - A `dispensed` message stays `dispensed`; a `delivered` outcome only
///   fills in the acknowledgement fields.
/// - A `delivered` or `failed` message keeps its state.
///
/// # Errors
///
/// [`Error::Store`] or [`Error::Corrupt`].
pub fn finish_attempt(
    store: &dyn Store,
    leased: &OutboxMessage,
    outcome: &OutboxMessage,
) -> Result<Option<OutboxMessage>, Error> {
    let stored = update(store, &outcome.id, |current| {
        merge_outcome(current, leased, outcome)
    })?;
    Ok(stored.map(|(_, message)| message))
}

/// Applies an attempt's `outcome` to the `current` stored state and
/// returns whether `current` changed.
fn merge_outcome(
    current: &mut OutboxMessage,
    leased: &OutboxMessage,
    outcome: &OutboxMessage,
) -> bool {
    match (current.status, outcome.status) {
        (Status::Queued | Status::Sent, Status::Queued | Status::Sent) => {
            let still_ours =
                current.attempts == leased.attempts && current.next_attempt == leased.next_attempt;
            if still_ours {
                let status = if current.status == Status::Sent {
                    Status::Sent
                } else {
                    outcome.status
                };
                *current = outcome.clone();
                current.status = status;
            }
            still_ours
        }
        (Status::Queued | Status::Sent, _) => {
            let attempts = current.attempts.max(outcome.attempts);
            *current = outcome.clone();
            current.attempts = attempts;
            true
        }
        (Status::Dispensed, Status::Delivered) if current.delivered_at.is_none() => {
            current.delivered_at = outcome.delivered_at;
            current.response_code.clone_from(&outcome.response_code);
            current.last_error = None;
            current.attempts = current.attempts.max(outcome.attempts);
            true
        }
        _ => false,
    }
}

/// Marks message `id` dispensed when `reporter` is the organization it was
/// sent to. Returns whether the message is now marked: an unknown id,
/// another recipient or a failed message leaves the outbox unchanged. A
/// `queued` or `sent` message is marked too, because the report shows that the
/// recipient filed it. A delivery attempt still running cannot move it
/// back (see [`finish_attempt`]).
///
/// # Errors
///
/// [`Error::Store`] or [`Error::Corrupt`].
pub fn mark_dispensed(store: &dyn Store, id: &str, reporter: &str) -> Result<bool, Error> {
    let mut tx = store.begin()?;
    let marked = mark_dispensed_in(tx.as_mut(), id, reporter)?;
    tx.commit()?;
    Ok(marked)
}

/// Runs [`mark_dispensed`] inside the transaction `tx`, so that the mark
/// commits with the filing of the report. The caller commits.
///
/// # Errors
///
/// [`Error::Store`] or [`Error::Corrupt`].
pub fn mark_dispensed_in(tx: &mut dyn WriteTx, id: &str, reporter: &str) -> Result<bool, Error> {
    let result = update_in(tx, id, |message| {
        if message.recipient != reporter
            || matches!(message.status, Status::Failed | Status::Dispensed)
        {
            return false;
        }
        message.status = Status::Dispensed;
        true
    })?;
    // A message this reporter already marked counts as marked, because a
    // sender whose acknowledgement was lost sends the same report again.
    let marked = result.is_some_and(|(_, message)| {
        message.recipient == reporter && message.status == Status::Dispensed
    });
    Ok(marked)
}

/// Lists the `queued` and `sent` messages whose next attempt is due at
/// `now`.
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
        if message.status.is_pending() && message.next_attempt <= now {
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
            subject: None,
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
        assert_eq!(
            serde_json::to_value(Status::Sent).unwrap(),
            Value::from("sent")
        );
    }

    fn store() -> (tempfile::TempDir, ward_store::SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let master = ward_crypto::MasterKey::generate().unwrap();
        let options = ward_store::SqliteOptions::new(dir.path().join("ward.db"));
        let store = ward_store::SqliteStore::open(&options, &master).unwrap();
        (dir, store)
    }

    #[test]
    fn sender_list_is_own_and_newest_first() {
        let (_dir, store) = store();
        for (id, sender) in [("m-1", "dr-a"), ("m-2", "dr-b"), ("m-3", "dr-a")] {
            let mut message = queued(id, "org-b");
            message.sender_user = sender.to_owned();
            enqueue(&store, &message).unwrap();
        }
        let ids = |sender: &str, limit: usize| -> Vec<String> {
            list_for_sender(&store, sender, limit)
                .unwrap()
                .into_iter()
                .map(|message| message.id)
                .collect()
        };
        assert_eq!(ids("dr-a", 10), ["m-3", "m-1"]);
        assert_eq!(ids("dr-a", 1), ["m-3"]);
        assert_eq!(ids("dr-b", 10), ["m-2"]);
        assert!(ids("dr-c", 10).is_empty());
    }

    #[test]
    fn retry_keeps_sent() {
        let (_dir, store) = store();
        let mut message = queued("m-1", "org-b");
        message.status = Status::Queued;
        message.delivered_at = None;
        enqueue(&store, &message).unwrap();

        let leased = lease(&store, "m-1", 5, 60).unwrap().unwrap();
        let mut outcome = leased.clone();
        outcome.status = Status::Sent;
        outcome.next_attempt = 10;
        let stored = finish_attempt(&store, &leased, &outcome).unwrap().unwrap();
        assert_eq!(stored.status, Status::Sent);
        assert!(due(&store, 10).unwrap().iter().any(|m| m.id == "m-1"));

        // A later attempt that could not connect leaves it `sent`.
        let leased = lease(&store, "m-1", 10, 60).unwrap().unwrap();
        let mut outcome = leased.clone();
        outcome.status = Status::Queued;
        outcome.next_attempt = 20;
        let stored = finish_attempt(&store, &leased, &outcome).unwrap().unwrap();
        assert_eq!(stored.status, Status::Sent);
        assert_eq!(stored.next_attempt, 20);

        let leased = lease(&store, "m-1", 20, 60).unwrap().unwrap();
        let mut outcome = leased.clone();
        outcome.status = Status::Delivered;
        let stored = finish_attempt(&store, &leased, &outcome).unwrap().unwrap();
        assert_eq!(stored.status, Status::Delivered);
        assert!(lease(&store, "m-1", 100, 60).unwrap().is_none());
    }
}
