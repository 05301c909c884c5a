//! Result sets kept for paging: the ordered keys of every match, so later
//! pages never repeat or skip an entry while writes go on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::types::SnapshotSettings;

/// The maximum number of result sets kept at once. When full, the one that
/// expires first is evicted.
const MAX_SNAPSHOTS: usize = 2_000;

struct Snapshot {
    pks: Arc<Vec<i64>>,
    settings: Arc<SnapshotSettings>,
    expires: Instant,
}

/// In-memory result sets of one process.
#[derive(Default)]
pub(crate) struct Snapshots {
    inner: Mutex<HashMap<String, Snapshot>>,
}

impl Snapshots {
    /// Stores a result set and returns its id.
    pub(crate) fn put(&self, pks: Vec<i64>, settings: SnapshotSettings, ttl_secs: i64) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let now = Instant::now();
        let ttl = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0).max(1));
        let mut inner = self.inner.lock();
        inner.retain(|_, s| s.expires > now);
        if inner.len() >= MAX_SNAPSHOTS
            && let Some(oldest) = inner
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            inner.remove(&oldest);
        }
        inner.insert(
            id.clone(),
            Snapshot {
                pks: Arc::new(pks),
                settings: Arc::new(settings),
                expires: now + ttl,
            },
        );
        id
    }

    /// Returns a live result set.
    pub(crate) fn get(&self, id: &str) -> Option<(Arc<Vec<i64>>, Arc<SnapshotSettings>)> {
        let inner = self.inner.lock();
        let snapshot = inner.get(id)?;
        if snapshot.expires <= Instant::now() {
            return None;
        }
        Some((snapshot.pks.clone(), snapshot.settings.clone()))
    }
}
