//! The trust bundle: the organizations this one exchanges messages with,
//! each an entry with its `$process-message` endpoint, its two public keys,
//! the CA certificate its server certificate chains to, an expiry and a
//! SHA-256 fingerprint. Entries are sealed key-value records of the store
//! (namespace [`NS_TRUST`], keyed by organization id).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ward_crypto::constant_time_eq;
use ward_store::Store;

use crate::error::Error;
use crate::identity::{OrgIdentity, thumbprint};
use crate::jose::jwk_point;
use crate::role::OrgRole;

/// Trust entries by organization id.
pub const NS_TRUST: &str = "exchange.trust";

/// Longest accepted organization id, in bytes.
const MAX_ORG_ID_LEN: usize = 64;

/// One trusted organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustEntry {
    /// The organization id, as its messages name the sender.
    pub org_id: String,
    /// The display name.
    pub name: String,
    /// The organization's role. Entries exported before roles existed lack
    /// it and were clinics.
    #[serde(default)]
    pub role: OrgRole,
    /// The `https://…/fhir/$process-message` URL messages are posted to.
    pub endpoint: String,
    /// The ES256 public key that signs its messages (JWK with `kid`).
    pub signing_jwk: Value,
    /// The P-256 public key messages to it are encrypted to (JWK with `kid`).
    pub encryption_jwk: Value,
    /// The PEM CA certificate its server's TLS certificate chains to.
    pub ca_pem: String,
    /// The end of trust, in seconds since the Unix epoch.
    pub not_after: i64,
    /// SHA-256 (hex) over the other fields, see [`TrustEntry::compute_fingerprint`].
    pub fingerprint: String,
}

impl TrustEntry {
    /// Builds the entry of this organization, for `ward org export`.
    pub fn for_identity(
        identity: &OrgIdentity,
        endpoint: &str,
        ca_pem: &str,
        not_after: i64,
    ) -> Self {
        let mut entry = Self {
            org_id: identity.id.clone(),
            name: identity.name.clone(),
            role: identity.role,
            endpoint: endpoint.to_owned(),
            signing_jwk: identity.signing.public_jwk(),
            encryption_jwk: identity.encryption_jwk().clone(),
            ca_pem: ca_pem.to_owned(),
            not_after,
            fingerprint: String::new(),
        };
        entry.fingerprint = entry.compute_fingerprint();
        entry
    }

    /// Computes the fingerprint: SHA-256 (hex) over the fields joined by
    /// newlines, each key given by its RFC 7638 thumbprint. A clinic entry
    /// leaves the role out (format v1), so entries exported before roles
    /// existed keep their fingerprint; any other role is covered (v2).
    pub fn compute_fingerprint(&self) -> String {
        let signing = thumbprint(&self.signing_jwk);
        let encryption = thumbprint(&self.encryption_jwk);
        let not_after = self.not_after.to_string();
        let mut fields = vec![
            "ward-trust-entry-v1",
            &self.org_id,
            &self.name,
            &self.endpoint,
            &signing,
            &encryption,
            self.ca_pem.trim(),
            &not_after,
        ];
        if self.role != OrgRole::Clinic {
            fields[0] = "ward-trust-entry-v2";
            fields.push(self.role.as_str());
        }
        let text = fields.join("\n");
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            text.as_bytes(),
        ))
    }

    /// Checks the entry: field forms, the keys, and that `fingerprint`
    /// matches the content and, when given, the `pinned` fingerprint that
    /// the operator received out of band.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEntry`] naming the first field that fails.
    pub fn check(&self, pinned: Option<&str>) -> Result<(), Error> {
        let invalid = |why: &str| Err(Error::InvalidEntry(why.to_owned()));
        let id_ok = !self.org_id.is_empty()
            && self.org_id.len() <= MAX_ORG_ID_LEN
            && self
                .org_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !id_ok {
            return invalid("org_id must be 1 to 64 of A-Z a-z 0-9 - .");
        }
        if !self.endpoint.starts_with("https://") {
            return invalid("endpoint must be an https:// URL");
        }
        for (name, jwk) in [
            ("signing_jwk", &self.signing_jwk),
            ("encryption_jwk", &self.encryption_jwk),
        ] {
            if jwk_point(jwk).is_none() {
                return Err(Error::InvalidEntry(format!(
                    "{name} must be a P-256 public JWK"
                )));
            }
            if jwk.get("d").is_some() {
                return Err(Error::InvalidEntry(format!(
                    "{name} contains a private key; export the public key only"
                )));
            }
        }
        if !self.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return invalid("ca_pem must be a PEM certificate");
        }
        let computed = self.compute_fingerprint();
        if !constant_time_eq(computed.as_bytes(), self.fingerprint.as_bytes()) {
            return invalid("fingerprint does not match the entry; the file was altered");
        }
        if let Some(pinned) = pinned {
            let pinned = pinned.trim().to_ascii_lowercase().replace(':', "");
            if !constant_time_eq(pinned.as_bytes(), computed.as_bytes()) {
                return invalid("fingerprint does not match the pinned --fingerprint value");
            }
        }
        Ok(())
    }

    /// Returns the names of the fields that decide where messages go and
    /// whom they are trusted from (`endpoint`, `role`, `signing_jwk`,
    /// `encryption_jwk`, `ca_pem`) and that differ between `self` and
    /// `other`. Keys compare by their RFC 7638 thumbprints.
    pub fn material_changes(&self, other: &Self) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.endpoint != other.endpoint {
            changed.push("endpoint");
        }
        if self.role != other.role {
            changed.push("role");
        }
        if thumbprint(&self.signing_jwk) != thumbprint(&other.signing_jwk) {
            changed.push("signing_jwk");
        }
        if thumbprint(&self.encryption_jwk) != thumbprint(&other.encryption_jwk) {
            changed.push("encryption_jwk");
        }
        if self.ca_pem.trim() != other.ca_pem.trim() {
            changed.push("ca_pem");
        }
        changed
    }

    /// Returns the kid of the signing key.
    pub fn signing_kid(&self) -> &str {
        self.signing_jwk
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Stores `entry` after checking it, replacing any entry of the same id.
///
/// # Errors
///
/// As [`TrustEntry::check`], and [`Error::Store`].
pub fn trust(store: &dyn Store, entry: &TrustEntry, pinned: Option<&str>) -> Result<(), Error> {
    entry.check(pinned)?;
    let bytes = serde_json::to_vec(entry).map_err(|_| Error::Corrupt(NS_TRUST))?;
    store.kv_put(NS_TRUST, &entry.org_id, &bytes, None)?;
    Ok(())
}

/// Reads the entry of `org_id`.
///
/// # Errors
///
/// [`Error::Store`], or [`Error::Corrupt`] for a record that does not decode.
pub fn get(store: &dyn Store, org_id: &str) -> Result<Option<TrustEntry>, Error> {
    match store.kv_get(NS_TRUST, org_id)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| Error::Corrupt(NS_TRUST)),
        None => Ok(None),
    }
}

/// Lists every entry, ordered by organization id.
///
/// # Errors
///
/// As [`get`].
pub fn list(store: &dyn Store) -> Result<Vec<TrustEntry>, Error> {
    store
        .kv_list(NS_TRUST, "")?
        .into_iter()
        .map(|(_, bytes)| serde_json::from_slice(&bytes).map_err(|_| Error::Corrupt(NS_TRUST)))
        .collect()
}

/// Removes the entry of `org_id`; returns whether there was one.
///
/// # Errors
///
/// [`Error::Store`].
pub fn remove(store: &dyn Store, org_id: &str) -> Result<bool, Error> {
    Ok(store.kv_delete(NS_TRUST, org_id)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use ward_crypto::MasterKey;

    use super::*;

    pub(crate) const CA_PEM: &str =
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    pub(crate) fn identity(name: &str) -> (tempfile::TempDir, OrgIdentity) {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let identity = OrgIdentity::open_or_init(dir.path(), &master, name).unwrap();
        (dir, identity)
    }

    #[test]
    fn exported_entry_checks() {
        let (_dir, identity) = identity("Clinic A");
        let entry =
            TrustEntry::for_identity(&identity, "https://a.test/fhir/$process-message", CA_PEM, 9);
        entry.check(None).unwrap();
        entry
            .check(Some(&entry.fingerprint.to_uppercase()))
            .unwrap();
        assert_eq!(entry.signing_kid(), identity.signing.kid());
    }

    #[test]
    fn altered_entry_fails_fingerprint() {
        let (_dir, identity) = identity("Clinic A");
        let entry = TrustEntry::for_identity(&identity, "https://a.test/x", CA_PEM, 9);
        let mut altered = entry.clone();
        altered.endpoint = "https://evil.test/x".to_owned();
        assert!(matches!(altered.check(None), Err(Error::InvalidEntry(_))));
        let mut altered = entry.clone();
        altered.not_after += 1;
        assert!(altered.check(None).is_err());
        let mut altered = entry.clone();
        altered.role = OrgRole::Pharmacy;
        assert!(altered.check(None).is_err(), "role not covered");
        assert!(entry.check(Some("00")).is_err());
    }

    #[test]
    fn entry_rejects_bad_fields() {
        let (_dir, identity) = identity("Clinic A");
        let base = TrustEntry::for_identity(&identity, "https://a.test/x", CA_PEM, 9);
        let mut http = base.clone();
        http.endpoint = "http://a.test/x".to_owned();
        http.fingerprint = http.compute_fingerprint();
        assert!(http.check(None).is_err());
        let mut private = base.clone();
        private.signing_jwk["d"] = Value::from("secret");
        private.fingerprint = private.compute_fingerprint();
        assert!(private.check(None).is_err());
        let mut bad_id = base.clone();
        bad_id.org_id = "a/b".to_owned();
        bad_id.fingerprint = bad_id.compute_fingerprint();
        assert!(bad_id.check(None).is_err());
    }

    #[test]
    fn material_changes_name_fields() {
        let (_dir, clinic) = identity("Clinic A");
        let entry = TrustEntry::for_identity(&clinic, "https://a.test/x", CA_PEM, 9);
        let mut renewed = entry.clone();
        renewed.not_after = 99;
        renewed.name = "Clinic A renamed".to_owned();
        assert!(entry.material_changes(&renewed).is_empty());
        let mut moved = entry.clone();
        moved.endpoint = "https://evil.test/x".to_owned();
        assert_eq!(entry.material_changes(&moved), ["endpoint"]);
        let (_other_dir, other) = identity("Clinic B");
        let rekeyed = TrustEntry::for_identity(&other, "https://a.test/x", CA_PEM, 9);
        assert_eq!(
            entry.material_changes(&rekeyed),
            ["signing_jwk", "encryption_jwk"]
        );
    }
}
