//! The envelope of a message: the sender signs claims that carry the
//! Bundle (JWS ES256), then encrypts the JWS to the receiver (JWE ECDH-ES,
//! A256GCM). The receiver decrypts, checks the sender against the trust
//! bundle, verifies the signature, the recipient, the clock window and
//! replays, and returns a signed acknowledgement.
//!
//! A message is filed exactly once. [`record`] writes the record of a
//! received message id ([`NS_SEEN`]) with its acknowledgement inside the
//! store transaction that files the message, so the filing and the record
//! commit together or not at all. A receiver that stops before the commit
//! leaves nothing behind, and the sender's next attempt files the message
//! afresh.

use serde_json::{Value, json};
use ward_store::{Store, WriteTx};

use crate::error::{Error, Rejection};
use crate::identity::OrgIdentity;
use crate::jose::{self, UnverifiedJws, jwk_point};
use crate::trust::TrustEntry;

/// The JWS `typ` of a message.
pub const MESSAGE_TYP: &str = "ward-message+jwt";
/// The JWS `typ` of an acknowledgement.
pub const ACK_TYP: &str = "ward-ack+jwt";
/// How far `iat` may lie ahead of the receiver's clock, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
/// The lifetime of one sealed message, `exp - iat`, in seconds. The outbox
/// seals each delivery attempt afresh, so this bounds one attempt only.
pub const MESSAGE_TTL_SECS: i64 = 600;
/// Message ids already received, by `SENDER.MESSAGE_ID`.
pub const NS_SEEN: &str = "exchange.seen";
/// How long a received message id is remembered, in seconds; longer than
/// any outbox gives up, so a late retry never files a message twice.
pub const SEEN_RETENTION_SECS: i64 = 30 * 24 * 3600;
/// Longest accepted message id, in bytes.
const MAX_MESSAGE_ID_LEN: usize = 64;

/// Either a check failed ([`Rejection`]) or the receiver itself failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The message failed a check.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A local failure (store, keys).
    #[error(transparent)]
    Local(#[from] Error),
}

/// Seals `bundle` as message `message_id` from `identity` to `recipient`,
/// issued at `now` (seconds since the Unix epoch).
///
/// # Errors
///
/// [`Error::InvalidKey`] if the recipient's encryption key is not a P-256
/// key, [`Error::Crypto`] if signing or encryption fails.
pub fn seal(
    identity: &OrgIdentity,
    recipient: &TrustEntry,
    message_id: &str,
    bundle: &Value,
    now: i64,
) -> Result<String, Error> {
    let claims = json!({
        "jti": message_id,
        "iss": identity.id,
        "aud": recipient.org_id,
        "iat": now,
        "exp": now + MESSAGE_TTL_SECS,
        "bundle": bundle,
    });
    let jws = jose::sign(&identity.signing, MESSAGE_TYP, &claims)?;
    let point = jwk_point(&recipient.encryption_jwk).ok_or(Error::InvalidKey(
        "the recipient encryption key is not a P-256 JWK",
    ))?;
    let kid = recipient
        .encryption_jwk
        .get("kid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    jose::encrypt(&point, kid, jws.as_bytes())
}

/// A message that passed every check except the replay check.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The message id (`jti`).
    pub message_id: String,
    /// The sender's trust entry.
    pub sender: TrustEntry,
    /// The message Bundle.
    pub bundle: Value,
    /// SHA-256 (hex) of the JWS signature, which tells an exact replay of
    /// this envelope from a fresh delivery attempt of the same message.
    pub signature_digest: String,
}

/// Opens a sealed message for `identity` at `now`. `lookup` reads the
/// trust entry of the claimed sender.
///
/// # Errors
///
/// [`ReceiveError::Rejected`] with the reason for a message that fails a
/// check, [`ReceiveError::Local`] if `lookup` fails.
pub fn open(
    identity: &OrgIdentity,
    compact: &str,
    now: i64,
    lookup: impl FnOnce(&str) -> Result<Option<TrustEntry>, Error>,
) -> Result<Opened, ReceiveError> {
    let plaintext = jose::decrypt(identity.encryption_key(), compact)?;
    let text = std::str::from_utf8(&plaintext)
        .map_err(|_| Rejection::Malformed("the decrypted content is not a JWS"))?;
    let jws = UnverifiedJws::parse(text)?;
    if jws.header.get("typ").and_then(Value::as_str) != Some(MESSAGE_TYP) {
        return Err(Rejection::Malformed("the JWS typ is not ward-message+jwt").into());
    }
    let sender = claim_str(&jws.claims, "iss")?;
    let entry = lookup(sender)?.ok_or_else(|| Rejection::UntrustedSender(sender.to_owned()))?;
    verify_signer(&jws, &entry, now)?;

    let recipient = claim_str(&jws.claims, "aud")?;
    if recipient != identity.id {
        return Err(Rejection::WrongRecipient(recipient.to_owned()).into());
    }
    check_times(&jws.claims, now)?;
    let message_id = claim_str(&jws.claims, "jti")?;
    if !is_message_id(message_id) {
        return Err(Rejection::Malformed("jti must be 1 to 64 of A-Z a-z 0-9 - .").into());
    }
    let bundle = jws
        .claims
        .get("bundle")
        .filter(|bundle| bundle.is_object())
        .cloned()
        .ok_or(Rejection::Malformed("the claims carry no bundle object"))?;
    let signature_digest = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        text.rsplit('.').next().unwrap_or_default().as_bytes(),
    ));
    Ok(Opened {
        message_id: message_id.to_owned(),
        sender: entry,
        bundle,
        signature_digest,
    })
}

/// Checks that `entry` is still trusted and that its key signed `jws`.
fn verify_signer(jws: &UnverifiedJws, entry: &TrustEntry, now: i64) -> Result<(), Rejection> {
    if entry.not_after <= now {
        return Err(Rejection::ExpiredSender(entry.org_id.clone()));
    }
    if jws.kid() != Some(entry.signing_kid()) {
        return Err(Rejection::BadSignature);
    }
    jws.verify(&entry.signing_jwk)
}

/// Checks `iat` and `exp` against `now`.
fn check_times(claims: &Value, now: i64) -> Result<(), Rejection> {
    let (Some(iat), Some(exp)) = (
        claims.get("iat").and_then(Value::as_i64),
        claims.get("exp").and_then(Value::as_i64),
    ) else {
        return Err(Rejection::Malformed("iat and exp must be integers"));
    };
    if exp <= now {
        return Err(Rejection::Expired);
    }
    if iat > now + MAX_CLOCK_SKEW_SECS || iat < now - MESSAGE_TTL_SECS - MAX_CLOCK_SKEW_SECS {
        return Err(Rejection::Stale);
    }
    if exp - iat > MESSAGE_TTL_SECS + MAX_CLOCK_SKEW_SECS {
        return Err(Rejection::Malformed("exp lies too far after iat"));
    }
    Ok(())
}

fn claim_str<'a>(claims: &'a Value, name: &'static str) -> Result<&'a str, Rejection> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .ok_or(Rejection::Malformed("a claim (iss, aud or jti) is missing"))
}

/// Returns true for 1 to 64 of `A-Z a-z 0-9 - .`.
pub fn is_message_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MESSAGE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// What the replay check found for an opened message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// No acknowledged delivery of this message id: the caller files it and
    /// calls [`record`] in the filing transaction.
    New,
    /// A fresh delivery attempt of a message already filed: answer with the
    /// stored acknowledgement and file nothing.
    Filed(String),
}

/// The stored state of a received message id.
#[derive(serde::Serialize, serde::Deserialize)]
struct SeenRecord {
    signatures: Vec<String>,
    /// The acknowledgement, always set by [`record`]. Earlier versions stored
    /// a claim without one before filing, and such a claim counts as not
    /// received.
    ack: Option<String>,
}

fn seen_key(opened: &Opened) -> String {
    format!("{}.{}", opened.sender.org_id, opened.message_id)
}

fn decode(bytes: &[u8]) -> Result<SeenRecord, Error> {
    serde_json::from_slice(bytes).map_err(|_| Error::Corrupt(NS_SEEN))
}

fn encode(record: &SeenRecord) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(record).map_err(|_| Error::Corrupt(NS_SEEN))
}

/// Checks `opened` against the messages already received. An envelope whose
/// signature was already seen is a replay. A newly signed attempt of a
/// message id that was acknowledged is a retry by the sender, which gets the
/// stored acknowledgement. Its signature is stored too, so a replay of that
/// envelope is rejected.
///
/// A new message id is only read here, so two deliveries of one new message
/// may both get [`Seen::New`]. Then [`record`] lets only the first filing
/// transaction commit.
///
/// # Errors
///
/// [`ReceiveError::Rejected`] with [`Rejection::Replayed`], or a store
/// failure.
pub fn check(store: &dyn Store, opened: &Opened, now: i64) -> Result<Seen, ReceiveError> {
    let key = seen_key(opened);
    let Some(bytes) = store.kv_get(NS_SEEN, &key).map_err(Error::from)? else {
        return Ok(Seen::New);
    };
    let existing = decode(&bytes)?;
    if existing.signatures.contains(&opened.signature_digest) {
        return Err(Rejection::Replayed(opened.message_id.clone()).into());
    }
    if existing.ack.is_none() {
        return Ok(Seen::New);
    }
    // Remember this envelope's signature under the record's lock, so a
    // concurrent retry does not drop it.
    let mut tx = store.begin().map_err(Error::from)?;
    let Some(bytes) = tx.kv_get(NS_SEEN, &key).map_err(Error::from)? else {
        return Ok(Seen::New);
    };
    let mut existing = decode(&bytes)?;
    let Some(ack) = existing.ack.clone() else {
        return Ok(Seen::New);
    };
    if !existing.signatures.contains(&opened.signature_digest) {
        existing.signatures.push(opened.signature_digest.clone());
        let expires = (now + SEEN_RETENTION_SECS) * 1_000_000;
        tx.kv_put(NS_SEEN, &key, &encode(&existing)?, Some(expires))
            .map_err(Error::from)?;
        tx.commit().map_err(Error::from)?;
    }
    Ok(Seen::Filed(ack))
}

/// Records, in the transaction `tx` that files `opened`, that the message
/// was received and acknowledged with `ack`. Returns false when another
/// delivery of the message id was recorded first. The caller then rolls
/// back `tx` and responds with the result of [`check`].
///
/// A claim without an acknowledgement left by an earlier version of this
/// function is taken over.
///
/// NOTE: such a claim may belong to a receiver that stopped after its
/// filing committed but before the acknowledgement was stored, and taking
/// it over files that message a second time. New receivers leave no such
/// claims; the record expires after [`SEEN_RETENTION_SECS`].
///
/// # Errors
///
/// A store failure.
pub fn record(tx: &mut dyn WriteTx, opened: &Opened, ack: &str, now: i64) -> Result<bool, Error> {
    let key = seen_key(opened);
    let expires = (now + SEEN_RETENTION_SECS) * 1_000_000;
    let mut record = SeenRecord {
        signatures: vec![opened.signature_digest.clone()],
        ack: Some(ack.to_owned()),
    };
    match tx.kv_get(NS_SEEN, &key)? {
        None => Ok(tx.kv_insert_new(NS_SEEN, &key, &encode(&record)?, Some(expires))?),
        Some(bytes) => {
            let existing = decode(&bytes)?;
            if existing.ack.is_some() {
                return Ok(false);
            }
            for signature in existing.signatures {
                if !record.signatures.contains(&signature) {
                    record.signatures.push(signature);
                }
            }
            tx.kv_put(NS_SEEN, &key, &encode(&record)?, Some(expires))?;
            Ok(true)
        }
    }
}

/// Signs the acknowledgement of message `message_id` from `sender`:
/// claims naming both organizations and the response Bundle.
///
/// # Errors
///
/// [`Error::Crypto`] if signing fails.
pub fn sign_ack(
    identity: &OrgIdentity,
    sender: &str,
    message_id: &str,
    response: &Value,
    now: i64,
) -> Result<String, Error> {
    let claims = json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "iss": identity.id,
        "aud": sender,
        "iat": now,
        "in_response_to": message_id,
        "bundle": response,
    });
    jose::sign(&identity.signing, ACK_TYP, &claims)
}

/// Verifies an acknowledgement from `recipient` of our message
/// `message_id` and returns its response Bundle.
///
/// # Errors
///
/// [`Rejection`] naming the check that failed.
pub fn verify_ack(
    compact: &str,
    recipient: &TrustEntry,
    our_id: &str,
    message_id: &str,
    now: i64,
) -> Result<Value, Rejection> {
    let jws = UnverifiedJws::parse(compact)?;
    if jws.header.get("typ").and_then(Value::as_str) != Some(ACK_TYP) {
        return Err(Rejection::Malformed("the JWS typ is not ward-ack+jwt"));
    }
    let issuer = claim_str(&jws.claims, "iss")?;
    if issuer != recipient.org_id {
        return Err(Rejection::UntrustedSender(issuer.to_owned()));
    }
    verify_signer(&jws, recipient, now)?;
    let audience = claim_str(&jws.claims, "aud")?;
    if audience != our_id {
        return Err(Rejection::WrongRecipient(audience.to_owned()));
    }
    if jws.claims.get("in_response_to").and_then(Value::as_str) != Some(message_id) {
        return Err(Rejection::Malformed(
            "the acknowledgement answers another message",
        ));
    }
    jws.claims
        .get("bundle")
        .filter(|bundle| bundle.is_object())
        .cloned()
        .ok_or(Rejection::Malformed(
            "the acknowledgement carries no bundle",
        ))
}

#[cfg(test)]
mod tests {
    use ward_crypto::MasterKey;
    use ward_store::{SqliteOptions, SqliteStore};

    use super::*;
    use crate::trust::tests::{CA_PEM, identity};

    const NOW: i64 = 1_800_000_000;

    fn entry(identity: &OrgIdentity) -> TrustEntry {
        TrustEntry::for_identity(
            identity,
            "https://x.test/fhir/$process-message",
            CA_PEM,
            NOW + 3600,
        )
    }

    fn bundle() -> Value {
        json!({ "resourceType": "Bundle", "type": "message", "entry": [] })
    }

    fn open_with(
        receiver: &OrgIdentity,
        trusted: &[&TrustEntry],
        compact: &str,
        now: i64,
    ) -> Result<Opened, ReceiveError> {
        open(receiver, compact, now, |id| {
            Ok(trusted
                .iter()
                .find(|e| e.org_id == id)
                .map(|e| (*e).clone()))
        })
    }

    fn rejection(result: Result<Opened, ReceiveError>) -> Rejection {
        match result {
            Err(ReceiveError::Rejected(rejection)) => rejection,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn sealed_message_opens() {
        let (_a, sender) = identity("A");
        let (_b, receiver) = identity("B");
        let compact = seal(&sender, &entry(&receiver), "m-1", &bundle(), NOW).unwrap();
        let opened = open_with(&receiver, &[&entry(&sender)], &compact, NOW + 5).unwrap();
        assert_eq!(opened.message_id, "m-1");
        assert_eq!(opened.sender.org_id, sender.id);
        assert_eq!(opened.bundle, bundle());
    }

    #[test]
    fn untrusted_sender_is_rejected() {
        let (_a, sender) = identity("A");
        let (_b, receiver) = identity("B");
        let compact = seal(&sender, &entry(&receiver), "m-1", &bundle(), NOW).unwrap();
        let rejected = rejection(open_with(&receiver, &[], &compact, NOW));
        assert_eq!(rejected, Rejection::UntrustedSender(sender.id.clone()));
    }

    #[test]
    fn expired_trust_entry_is_rejected() {
        let (_a, sender) = identity("A");
        let (_b, receiver) = identity("B");
        let compact = seal(&sender, &entry(&receiver), "m-1", &bundle(), NOW).unwrap();
        let mut expired = entry(&sender);
        expired.not_after = NOW - 1;
        let rejected = rejection(open_with(&receiver, &[&expired], &compact, NOW));
        assert_eq!(rejected, Rejection::ExpiredSender(sender.id.clone()));
    }

    #[test]
    fn impostor_signature_is_rejected() {
        let (_a, sender) = identity("A");
        let (_m, impostor) = identity("M");
        let (_b, receiver) = identity("B");
        // The impostor claims to be the sender but signs with its own key.
        let mut claims_as = impostor;
        claims_as.id = sender.id.clone();
        let compact = seal(&claims_as, &entry(&receiver), "m-1", &bundle(), NOW).unwrap();
        let rejected = rejection(open_with(&receiver, &[&entry(&sender)], &compact, NOW));
        assert_eq!(rejected, Rejection::BadSignature);
    }

    #[test]
    fn wrong_recipient_is_rejected() {
        let (_a, sender) = identity("A");
        let (_b, receiver) = identity("B");
        let (_c, other) = identity("C");
        // Encrypted to the receiver's key but addressed to another org.
        let mut addressed = entry(&receiver);
        addressed.org_id = other.id.clone();
        let compact = seal(&sender, &addressed, "m-1", &bundle(), NOW).unwrap();
        let rejected = rejection(open_with(&receiver, &[&entry(&sender)], &compact, NOW));
        assert_eq!(rejected, Rejection::WrongRecipient(other.id.clone()));
    }

    #[test]
    fn message_for_other_key_does_not_decrypt() {
        let (_a, sender) = identity("A");
        let (_b, receiver) = identity("B");
        let (_c, other) = identity("C");
        let compact = seal(&sender, &entry(&other), "m-1", &bundle(), NOW).unwrap();
        let rejected = rejection(open_with(&receiver, &[&entry(&sender)], &compact, NOW));
        assert_eq!(rejected, Rejection::Decrypt);
    }

    #[test]
    fn stale_and_expired_messages_are_rejected() {
        let (_a, sender) = identity("A");
        let (_b, receiver) = identity("B");
        let trusted = entry(&sender);
        let compact = seal(&sender, &entry(&receiver), "m-1", &bundle(), NOW).unwrap();
        let late = NOW + MESSAGE_TTL_SECS + 1;
        assert_eq!(
            rejection(open_with(&receiver, &[&trusted], &compact, late)),
            Rejection::Expired
        );
        let early = NOW - MAX_CLOCK_SKEW_SECS - 1;
        assert_eq!(
            rejection(open_with(&receiver, &[&trusted], &compact, early)),
            Rejection::Stale
        );
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let options = SqliteOptions::new(dir.path().join("ward.db"));
        let store = SqliteStore::open(&options, &master).unwrap();
        (dir, store)
    }

    #[test]
    fn replay_retry_and_ack_flow() {
        let (_db, store) = store();
        let (_a, sender) = identity("A");
        let (_b, receiver) = identity("B");
        let trusted = entry(&sender);
        let first = seal(&sender, &entry(&receiver), "m-1", &bundle(), NOW).unwrap();
        let opened = open_with(&receiver, &[&trusted], &first, NOW).unwrap();
        assert_eq!(check(&store, &opened, NOW).unwrap(), Seen::New);

        let ack = sign_ack(&receiver, &sender.id, "m-1", &bundle(), NOW).unwrap();
        let mut tx = store.begin().unwrap();
        assert!(record(tx.as_mut(), &opened, &ack, NOW).unwrap());
        tx.commit().unwrap();
        let replay = check(&store, &opened, NOW);
        assert!(matches!(
            replay,
            Err(ReceiveError::Rejected(Rejection::Replayed(_)))
        ));

        let retry = seal(&sender, &entry(&receiver), "m-1", &bundle(), NOW + 1).unwrap();
        let reopened = open_with(&receiver, &[&trusted], &retry, NOW + 1).unwrap();
        assert_eq!(
            check(&store, &reopened, NOW).unwrap(),
            Seen::Filed(ack.clone())
        );
        assert_eq!(
            check(&store, &reopened, NOW).unwrap_err().to_string(),
            "message m-1 was already received"
        );
        let mut tx = store.begin().unwrap();
        assert!(!record(tx.as_mut(), &reopened, &ack, NOW).unwrap());
    }

    #[test]
    fn ack_verifies_only_for_its_message() {
        let (_a, sender) = identity("A");
        let (_b, receiver) = identity("B");
        let ack = sign_ack(&receiver, &sender.id, "m-1", &bundle(), NOW).unwrap();
        let from = entry(&receiver);
        assert_eq!(
            verify_ack(&ack, &from, &sender.id, "m-1", NOW).unwrap(),
            bundle()
        );
        assert!(verify_ack(&ack, &from, &sender.id, "m-2", NOW).is_err());
        assert!(verify_ack(&ack, &from, "org-other", "m-1", NOW).is_err());
        let forged = sign_ack(&sender, &sender.id, "m-1", &bundle(), NOW).unwrap();
        assert!(verify_ack(&forged, &from, &sender.id, "m-1", NOW).is_err());
    }
}
