//! Canonical bytes of an audit record and the linear hash chain.
//!
//! Each stored record is a [`ChainEntry`]: the record plus its sequence
//! number and the chain hash of the record before it. Its canonical bytes are
//! deterministic JSON (keys sorted by UTF-8 bytes, no whitespace):
//!
//! ```text
//! {"prev":"<64 hex digits>","record":{...},"seq":<n>,"v":1}
//! ```
//!
//! From those bytes:
//!
//! - `leaf_hash = SHA-256(0x00 || canonical)`, the RFC 6962 leaf hash, which
//!   is also the leaf of the Merkle tree in [`crate::merkle`];
//! - `chain_hash = SHA-256(0x02 || prev || leaf_hash)`, where `prev` is the
//!   chain hash of the previous record and 32 zero bytes for the first. The
//!   `0x02` prefix keeps chain hashes apart from Merkle leaves (`0x00`) and
//!   interior nodes (`0x01`).
//!
//! Sequence numbers start at 0 and equal the record's leaf index.

use aws_lc_rs::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::merkle::to_hash;
use crate::record::AuditRecord;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The `prev` value of the first record: 32 zero bytes.
pub const GENESIS: Hash = [0u8; 32];

/// The canonical format version written in the `v` member.
pub const FORMAT_VERSION: u64 = 1;

/// Returns the RFC 6962 leaf hash `SHA-256(0x00 || canonical)`.
pub fn leaf_hash(canonical: &[u8]) -> Hash {
    let mut context = Context::new(&SHA256);
    context.update(&[0x00]);
    context.update(canonical);
    to_hash(context.finish().as_ref())
}

/// Returns the chain hash `SHA-256(0x02 || prev || leaf)`.
pub fn chain_hash(prev: &Hash, leaf: &Hash) -> Hash {
    let mut context = Context::new(&SHA256);
    context.update(&[0x02]);
    context.update(prev);
    context.update(leaf);
    to_hash(context.finish().as_ref())
}

/// Returns `hash` as 64 lowercase hex digits.
pub fn to_hex(hash: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for byte in hash {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Parses 64 lowercase hex digits. Returns `None` for any other input.
pub fn from_hex(text: &str) -> Option<Hash> {
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (out, pair) in hash.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let digit = |byte: u8| match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            _ => None,
        };
        let (&[high, low], _) = pair.split_at(2) else {
            return None;
        };
        *out = digit(high)? << 4 | digit(low)?;
    }
    Some(hash)
}

/// A record together with its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainEntry {
    /// The sequence number, equal to the leaf index.
    pub seq: u64,
    /// The chain hash of the previous record, [`GENESIS`] for the first.
    pub prev: Hash,
    /// The record.
    pub record: AuditRecord,
}

/// The serialized form of an entry, with sorted keys and no sorting pass.
///
/// Serde writes struct fields in declaration order, and this crate declares
/// every serialized field in alphabetical order. Maps are `BTreeMap`s.
/// Internally tagged enums write their `kind` tag first, and `kind` sorts
/// before every other field name of those variants. A unit test compares
/// the output with a sorting canonicalizer.
#[derive(Serialize)]
struct EntryOut<'a> {
    prev: String,
    record: &'a AuditRecord,
    seq: u64,
    v: u64,
}

#[derive(Deserialize)]
struct EntryJson {
    prev: String,
    record: AuditRecord,
    seq: u64,
    v: u64,
}

impl ChainEntry {
    /// Returns the canonical bytes of this entry.
    ///
    /// # Errors
    ///
    /// [`Error::Time`] if `recorded` lies outside the years 0 to 9999.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>> {
        canonical_bytes(self.seq, &self.prev, &self.record)
    }

    /// Decodes canonical bytes and checks that they are exactly the canonical
    /// form of what they decode to, so two different byte strings never
    /// decode to the same entry.
    ///
    /// # Errors
    ///
    /// [`Error::MalformedEntry`] if the bytes are not JSON of the entry
    /// structure, carry another format version or are not canonical, and
    /// [`Error::InvalidRecord`] if the record breaks a validation rule.
    pub fn from_canonical(bytes: &[u8]) -> Result<Self> {
        let json: EntryJson = serde_json::from_slice(bytes).map_err(|_| Error::MalformedEntry {
            reason: "not JSON of the audit entry structure",
        })?;
        if json.v != FORMAT_VERSION {
            return Err(Error::MalformedEntry {
                reason: "unsupported format version",
            });
        }
        let prev = from_hex(&json.prev).ok_or(Error::MalformedEntry {
            reason: "prev is not 64 lowercase hex digits",
        })?;
        let entry = Self {
            seq: json.seq,
            prev,
            record: json.record,
        };
        if entry.canonical_bytes()? != bytes {
            return Err(Error::MalformedEntry {
                reason: "bytes are not in canonical form",
            });
        }
        entry.record.validate()?;
        Ok(entry)
    }
}

/// Returns the canonical bytes of `record` at sequence number `seq` after
/// the record whose chain hash is `prev`.
///
/// # Errors
///
/// [`Error::Time`] if `recorded` lies outside the years 0 to 9999.
pub fn canonical_bytes(seq: u64, prev: &Hash, record: &AuditRecord) -> Result<Vec<u8>> {
    let entry = EntryOut {
        prev: to_hex(prev),
        record,
        seq,
        v: FORMAT_VERSION,
    };
    let mut out = Vec::with_capacity(1024);
    serde_json::to_writer(&mut out, &entry).map_err(|_| Error::Time {
        reason: "recorded time outside years 0 to 9999",
    })?;
    Ok(out)
}

/// One stored audit row: everything the store keeps for a record.
///
/// `prev_hash`, `leaf_hash` and `chain_hash` follow from `canonical`; the
/// store keeps them so that rows can be checked and proofs built without
/// parsing every record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAudit {
    /// The sequence number, starting at 0.
    pub seq: u64,
    /// The canonical bytes of the [`ChainEntry`].
    pub canonical: Vec<u8>,
    /// The chain hash of the previous row, [`GENESIS`] for the first.
    pub prev_hash: Hash,
    /// `SHA-256(0x00 || canonical)`.
    pub leaf_hash: Hash,
    /// `SHA-256(0x02 || prev_hash || leaf_hash)`.
    pub chain_hash: Hash,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::write_canonical;
    use crate::record::{
        Action, Agent, AgentKind, Coding, Entity, EventType, Outcome, PurposeOfUse, Source, Subtype,
    };

    /// Builds a record with every optional field set, so every key is serialized.
    fn full_record() -> AuditRecord {
        let mut record = AuditRecord::new(
            EventType::Rest,
            Action::Read,
            time::OffsetDateTime::UNIX_EPOCH,
            Outcome::MinorFailure,
            Source {
                observer: "server".into(),
                site: Some("Organization/o".into()),
            },
        );
        record.subtypes = vec![Subtype::Read, Subtype::Operation];
        record.outcome_desc = Some("denied".into());
        record.purpose_of_use = vec![PurposeOfUse::BreakTheGlass];
        let mut agent = Agent::new(AgentKind::User);
        agent.user_id = Some("u".into());
        agent.fhir_user = Some("Practitioner/p".into());
        agent.client_id = Some("c".into());
        agent.device_id = Some("d".into());
        agent.requestor = true;
        agent.network = Some("10.0.0.1".into());
        agent.roles.push(Coding {
            system: "s".into(),
            code: "c".into(),
            display: Some("d".into()),
        });
        record.agents.push(agent);
        record.entities = vec![
            Entity::patient("p1").unwrap(),
            Entity::resource("Observation", "o1", Some(2)).unwrap(),
            Entity::query([("name", "x"), ("_count", "5")]),
        ];
        record.detail.insert("zeta".into(), "1".into());
        record.detail.insert("alpha".into(), "2".into());
        record
    }

    #[test]
    fn serialized_form_has_sorted_keys() {
        let record = full_record();
        let bytes = canonical_bytes(7, &[9u8; 32], &record).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut sorted = Vec::new();
        write_canonical(&value, &mut sorted);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            String::from_utf8(sorted).unwrap()
        );
    }

    #[test]
    fn hex_round_trip() {
        let hash: Hash = std::array::from_fn(|i| (i * 8) as u8);
        let text = to_hex(&hash);
        assert_eq!(text.len(), 64);
        assert_eq!(from_hex(&text), Some(hash));
        assert_eq!(from_hex(&text.to_uppercase()), None);
        assert_eq!(from_hex(&text[..62]), None);
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn chain_hash_differs_from_node_hash() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_ne!(chain_hash(&a, &b), crate::merkle::node_hash(&a, &b));
        assert_ne!(chain_hash(&a, &b), chain_hash(&b, &a));
    }
}
