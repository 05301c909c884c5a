//! Sealing and opening resource versions, and hashing index values.

use std::collections::HashMap;
use std::sync::Arc;

use ward_crypto::{DataKey, IndexKey};

use crate::{Result, StoreError};

/// The keys a store uses: data keys by id (the newest one seals new
/// versions) and the blind-index key.
pub struct ResourceCodec {
    keys: HashMap<i64, Arc<DataKey>>,
    active: i64,
    index: IndexKey,
}

impl ResourceCodec {
    /// Creates a codec from unwrapped data keys, the id of the one that seals
    /// new versions, and the index key.
    pub fn new(keys: HashMap<i64, Arc<DataKey>>, active: i64, index: IndexKey) -> Self {
        Self {
            keys,
            active,
            index,
        }
    }

    /// Seals a resource version's JSON; returns the data key id and sealed
    /// bytes.
    pub fn seal(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
        json: &[u8],
    ) -> Result<(i64, Vec<u8>)> {
        let key = self
            .keys
            .get(&self.active)
            .ok_or_else(|| StoreError::Database("active data key missing".into()))?;
        let aad = associated_data(resource_type, id, version);
        Ok((self.active, key.seal(&aad, json)?))
    }

    /// Opens a sealed resource version; fails with
    /// [`StoreError::Integrity`] when the bytes or their row were tampered
    /// with.
    pub fn open(
        &self,
        key_id: i64,
        resource_type: &str,
        id: &str,
        version: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        let label = || format!("{resource_type}/{id}/_history/{version}");
        let key = self
            .keys
            .get(&key_id)
            .ok_or_else(|| StoreError::Integrity(label()))?;
        let aad = associated_data(resource_type, id, version);
        key.open(&aad, sealed)
            .map_err(|_| StoreError::Integrity(label()))
    }

    /// Seals a key-value record; the namespace and key are the associated
    /// data.
    pub fn seal_record(&self, ns: &str, key: &str, value: &[u8]) -> Result<(i64, Vec<u8>)> {
        let data_key = self
            .keys
            .get(&self.active)
            .ok_or_else(|| StoreError::Database("active data key missing".into()))?;
        Ok((
            self.active,
            data_key.seal(&record_associated_data(ns, key), value)?,
        ))
    }

    /// Opens a sealed key-value record.
    pub fn open_record(&self, key_id: i64, ns: &str, key: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let label = || format!("record {ns}/{key}");
        let data_key = self
            .keys
            .get(&key_id)
            .ok_or_else(|| StoreError::Integrity(label()))?;
        data_key
            .open(&record_associated_data(ns, key), sealed)
            .map_err(|_| StoreError::Integrity(label()))
    }

    /// Hashes an index value under a domain (such as `string`, `token-code`).
    pub fn blind(&self, domain: &str, value: &str) -> [u8; 16] {
        self.index.hash(domain, value)
    }
}

fn record_associated_data(ns: &str, key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + ns.len() + key.len());
    aad.extend_from_slice(b"ward-kv-v1\0");
    aad.extend_from_slice(ns.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key.as_bytes());
    aad
}

fn associated_data(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + resource_type.len() + id.len());
    aad.extend_from_slice(b"ward-resource-v1\0");
    aad.extend_from_slice(resource_type.as_bytes());
    aad.push(0);
    aad.extend_from_slice(id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}
