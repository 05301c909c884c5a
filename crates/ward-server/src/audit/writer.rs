//! The group-commit writer: a thread that appends every queued audit
//! record in one store transaction per round, so concurrent reads share one
//! commit (and one fsync) instead of paying one each.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::Instant;

use tokio::sync::oneshot;
use ward_audit::AuditRecord;
use ward_store::Store;

/// The most records appended in one transaction.
const MAX_BATCH: usize = 1024;

struct Job {
    record: AuditRecord,
    queued: Instant,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle of the writer thread. The thread stops when the handle is
/// dropped, after writing what was queued.
pub struct AuditWriter {
    queue: Sender<Job>,
}

impl AuditWriter {
    /// Starts the writer thread on `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (queue, jobs) = channel();
        let spawned = std::thread::Builder::new()
            .name("ward-audit-writer".into())
            .spawn(move || run(&*store, &jobs));
        if let Err(error) = spawned {
            // Submissions then fail, and the failure policy decides.
            tracing::error!(target: "ward::audit", %error, "starting the audit writer failed");
        }
        Self { queue }
    }

    /// Queues `record` and waits until it committed.
    pub async fn submit(&self, record: AuditRecord) -> Result<(), String> {
        let receiver = self.enqueue(record)?;
        receiver
            .await
            .unwrap_or_else(|_| Err("the audit writer stopped".to_owned()))
    }

    /// Queues `record` and blocks until it committed; for blocking threads
    /// only.
    pub fn submit_blocking(&self, record: AuditRecord) -> Result<(), String> {
        let receiver = self.enqueue(record)?;
        receiver
            .blocking_recv()
            .unwrap_or_else(|_| Err("the audit writer stopped".to_owned()))
    }

    fn enqueue(
        &self,
        record: AuditRecord,
    ) -> Result<oneshot::Receiver<Result<(), String>>, String> {
        let (done, receiver) = oneshot::channel();
        let job = Job {
            record,
            queued: Instant::now(),
            done,
        };
        self.queue
            .send(job)
            .map_err(|_| "the audit writer is not running".to_owned())?;
        Ok(receiver)
    }
}

fn run(store: &dyn Store, jobs: &Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        write_batch(store, batch);
    }
}

/// Appends the valid records of `batch` in one transaction and reports the
/// result to each waiting request. An invalid record fails alone; a store
/// failure fails the whole batch.
fn write_batch(store: &dyn Store, batch: Vec<Job>) {
    let (valid, invalid): (Vec<Job>, Vec<Job>) = batch
        .into_iter()
        .partition(|job| job.record.validate().is_ok());
    for job in invalid {
        let _ = job.done.send(Err("the audit record is invalid".to_owned()));
    }
    if valid.is_empty() {
        return;
    }
    let result = append_all(store, &valid);
    let oldest = valid.iter().map(|job| job.queued).min();
    if result.is_ok() {
        crate::metrics::record_audit_records(valid.len() as u64);
        if let Some(oldest) = oldest {
            crate::metrics::record_audit_lag(oldest.elapsed().as_secs_f64());
        }
    }
    for job in valid {
        let _ = job.done.send(result.clone());
    }
}

fn append_all(store: &dyn Store, jobs: &[Job]) -> Result<(), String> {
    let mut tx = store.begin().map_err(|e| e.to_string())?;
    for job in jobs {
        tx.append_audit(&job.record).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}
