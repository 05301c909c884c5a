//! JSON records in the store's sealed key-value namespaces.

use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use ward_store::Store;
use zeroize::Zeroize as _;

use crate::error::{DeviceError, Result};

/// Returns `at` in microseconds since the Unix epoch, the unit of record
/// expiry.
pub(crate) fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// Reads and decodes a JSON record.
pub(crate) fn read_json<T: DeserializeOwned>(
    store: &dyn Store,
    ns: &'static str,
    key: &str,
) -> Result<Option<T>> {
    match store.kv_get(ns, key)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| DeviceError::Corrupt(ns)),
        None => Ok(None),
    }
}

/// Encodes and stores a JSON record; `expires` is in microseconds.
pub(crate) fn write_json<T: Serialize>(
    store: &dyn Store,
    ns: &'static str,
    key: &str,
    value: &T,
    expires: Option<i64>,
) -> Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(|_| DeviceError::Corrupt(ns))?;
    let result = store.kv_put(ns, key, &bytes, expires);
    bytes.zeroize();
    Ok(result?)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use ward_crypto::MasterKey;
    use ward_store::{SqliteOptions, SqliteStore, Store};

    /// Opens a SQLite store in a new temporary directory.
    pub(crate) fn temp_store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let options = SqliteOptions::new(dir.path().join("ward.db"));
        let store = SqliteStore::open(&options, &master).unwrap();
        (dir, Arc::new(store))
    }
}
