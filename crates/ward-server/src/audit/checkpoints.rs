//! Signed checkpoints of the audit log: every interval, when the log grew,
//! the server signs the tree size, Merkle root and chain head with the audit
//! key and appends the checkpoint to a file kept apart from the database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ward_audit::checkpoint::{Checkpoint, append_to_file, read_file};
use ward_audit::{GENESIS, LogKey};
use ward_crypto::SigningKey;
use ward_store::Store;

use crate::audit::Auditor;

/// How often the log is checked for growth.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Returns the origin line of the audit log signed by `key`. It is derived
/// from the key, not the server address, so it stays the same when the
/// server moves.
pub fn origin_for(key: &SigningKey) -> String {
    format!("ward-audit/{}", key.kid())
}

/// Returns the key that verifies checkpoints of the log signed by `key`.
pub fn log_key<'a>(origin: &'a str, key: &'a SigningKey) -> LogKey<'a> {
    let (x, y) = key.public_key_xy();
    LogKey { origin, x, y }
}

/// Signs checkpoints of one store's audit log into one file.
pub struct Checkpointer {
    store: Arc<dyn Store>,
    key: SigningKey,
    origin: String,
    path: PathBuf,
    last_size: Option<u64>,
}

impl Checkpointer {
    /// Creates a checkpointer; the newest checkpoint already in `path`, if
    /// any, becomes the one served and the size to grow from.
    pub fn new(store: Arc<dyn Store>, key: SigningKey, path: PathBuf, auditor: &Auditor) -> Self {
        let origin = origin_for(&key);
        let last = latest_in(&path);
        if let Some(checkpoint) = &last {
            *auditor.latest_checkpoint.write() = Some(checkpoint.to_text());
        }
        Self {
            store,
            key,
            origin,
            path,
            last_size: last.map(|checkpoint| checkpoint.tree_size),
        }
    }

    /// Signs and appends a checkpoint when the log grew since the last one.
    /// Returns the checkpoint written, if any.
    ///
    /// # Errors
    ///
    /// A message naming the step that failed: reading the log head,
    /// signing, or appending to the file.
    pub fn checkpoint_if_grown(&mut self, auditor: &Auditor) -> Result<Option<Checkpoint>, String> {
        let head = self
            .store
            .audit_head()
            .map_err(|e| format!("reading the audit log head: {e}"))?;
        if self.last_size == Some(head.size) || (self.last_size.is_none() && head.size == 0) {
            return Ok(None);
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let checkpoint = Checkpoint::sign(
            &self.origin,
            head.size,
            head.root,
            head.chain_head,
            now,
            &self.key,
        )
        .map_err(|e| format!("signing a checkpoint: {e}"))?;
        append_to_file(&self.path, &checkpoint).map_err(|e| e.to_string())?;
        self.last_size = Some(head.size);
        *auditor.latest_checkpoint.write() = Some(checkpoint.to_text());
        Ok(Some(checkpoint))
    }

    /// Runs [`Checkpointer::checkpoint_if_grown`] every [`INTERVAL`] until
    /// `stop` fires, then once more.
    pub async fn run(
        mut self,
        auditor: Arc<Auditor>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.tick().await;
        loop {
            let stopping = tokio::select! {
                _ = ticker.tick() => false,
                _ = stop.changed() => true,
            };
            let auditor_ref = auditor.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let result = self.checkpoint_if_grown(&auditor_ref);
                (self, result)
            })
            .await;
            let (this, result) = match joined {
                Ok(done) => done,
                Err(error) => {
                    tracing::error!(target: "ward::audit", %error, "the checkpoint task failed");
                    return;
                }
            };
            self = this;
            match result {
                Ok(Some(checkpoint)) => tracing::debug!(
                    target: "ward::audit",
                    size = checkpoint.tree_size,
                    "signed an audit checkpoint"
                ),
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(target: "ward::audit", %error, "writing an audit checkpoint failed");
                }
            }
            if stopping {
                return;
            }
        }
    }
}

/// Returns the checkpoint with the largest size in the file at `path`.
pub fn latest_in(path: &std::path::Path) -> Option<Checkpoint> {
    if !path.exists() {
        return None;
    }
    match read_file(path) {
        Ok(checkpoints) => checkpoints.into_iter().max_by_key(|c| c.tree_size),
        Err(error) => {
            tracing::error!(target: "ward::audit", %error, "reading the audit checkpoints failed");
            None
        }
    }
}

/// Checks the records after the newest checkpoint against it: the log is
/// at least as long, the record at its size links to its chain head, and
/// every later record chains. Quick enough for every start; the full check
/// is `ward audit verify`.
///
/// # Errors
///
/// A message naming the first record (by sequence number) that fails.
pub fn verify_tail(store: &dyn Store, checkpoint: &Checkpoint) -> Result<u64, String> {
    let size = checkpoint.tree_size;
    let head = store.audit_head().map_err(|e| e.to_string())?;
    if head.size < size {
        return Err(format!(
            "the log has {} records but a checkpoint covers {size} (records removed from the end)",
            head.size
        ));
    }
    let mut expected_prev = checkpoint.chain_head;
    let mut seq = size;
    if size > 0 {
        let rows = store.audit_rows(size - 1, 1).map_err(|e| e.to_string())?;
        match rows.first() {
            Some(row) if row.chain_hash == checkpoint.chain_head && row.seq == size - 1 => {}
            _ => {
                return Err(format!(
                    "seq {}: does not match the newest checkpoint",
                    size - 1
                ));
            }
        }
    } else {
        expected_prev = GENESIS;
    }
    loop {
        let rows = store.audit_rows(seq, 1000).map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(seq - size);
        }
        for row in rows {
            let leaf = ward_audit::leaf_hash(&row.canonical);
            let chained = ward_audit::chain_hash(&expected_prev, &leaf);
            if row.seq != seq
                || row.leaf_hash != leaf
                || row.prev_hash != expected_prev
                || row.chain_hash != chained
            {
                return Err(format!("seq {seq}: record does not chain"));
            }
            expected_prev = chained;
            seq += 1;
        }
    }
}
