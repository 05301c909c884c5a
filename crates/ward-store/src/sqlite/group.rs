//! Group commit on the one SQLite writer connection.
//!
//! Every write transaction runs as the savepoint `write` inside an outer
//! `BEGIN IMMEDIATE` transaction. A transaction that commits releases its
//! savepoint and unlocks the connection. When no other thread is queued for
//! the connection (or the group is full), it runs the outer `COMMIT` itself;
//! otherwise the next holder inherits the open transaction and the duty to
//! commit it. Writers that queue while one commit's fsync runs therefore
//! share the next commit and its fsync.
//!
//! `WriteTx::commit` returns only after the outer `COMMIT` succeeded with
//! `synchronous=FULL`, so an acknowledged write is as durable as with one
//! transaction per write. When the outer `COMMIT` fails, every transaction
//! of the group gets the error and none of them is acknowledged. A
//! transaction that rolls back undoes only its own savepoint.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard};
use rusqlite::Connection;

use crate::{Result, StoreError};

/// The default maximum number of write transactions in one commit.
pub(crate) const DEFAULT_MAX_GROUP: usize = 64;

/// The writer connection and the transactions waiting for its next commit.
pub(crate) struct Writer {
    pub(crate) conn: Connection,
    /// Released transactions of the open outer transaction.
    pending: Vec<Arc<Durable>>,
}

/// The writer connection behind a mutex, with a count of the threads
/// queued for it.
pub(crate) struct GroupWriter {
    writer: Mutex<Writer>,
    queued: AtomicUsize,
    max_group: usize,
}

/// The outcome of the commit that a released transaction waits for.
#[derive(Default)]
pub(crate) struct Durable {
    outcome: Mutex<Option<std::result::Result<(), String>>>,
    settled: Condvar,
}

impl Durable {
    fn settle(&self, outcome: std::result::Result<(), String>) {
        *self.outcome.lock() = Some(outcome);
        self.settled.notify_all();
    }

    /// Blocks until the outer transaction holding this write committed or
    /// failed.
    pub(crate) fn wait(&self) -> Result<()> {
        let mut outcome = self.outcome.lock();
        loop {
            if let Some(result) = outcome.as_ref() {
                return result.clone().map_err(StoreError::Database);
            }
            self.settled.wait(&mut outcome);
        }
    }
}

/// The locked writer. Unlocking commits the open outer transaction unless
/// another thread is queued to continue it.
pub(crate) struct WriterGuard<'a> {
    group: &'a GroupWriter,
    writer: MutexGuard<'a, Writer>,
}

impl GroupWriter {
    /// Wraps the writer connection; `max_group` is clamped to at least 1.
    pub(crate) fn new(conn: Connection, max_group: usize) -> Self {
        Self {
            writer: Mutex::new(Writer {
                conn,
                pending: Vec::new(),
            }),
            queued: AtomicUsize::new(0),
            max_group: max_group.max(1),
        }
    }

    /// Locks the writer connection, waiting behind earlier writers.
    pub(crate) fn lock(&self) -> WriterGuard<'_> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let writer = self.writer.lock();
        self.queued.fetch_sub(1, Ordering::SeqCst);
        WriterGuard {
            group: self,
            writer,
        }
    }

    /// Runs `work` in a write transaction of its own and returns once the
    /// transaction is durable.
    pub(crate) fn write<T>(&self, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let mut guard = self.lock();
        guard.begin()?;
        let value = match work(&guard.conn) {
            Ok(value) => value,
            Err(err) => {
                guard.rollback();
                return Err(err);
            }
        };
        let durable = guard.release()?;
        drop(guard);
        durable.wait()?;
        Ok(value)
    }
}

impl Writer {
    /// Opens the savepoint of one write transaction, and the outer
    /// transaction first when none is open.
    pub(crate) fn begin(&mut self) -> Result<()> {
        if self.conn.is_autocommit() {
            self.fail_lost_group();
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
        }
        if let Err(err) = self.conn.execute_batch("SAVEPOINT write") {
            return Err(err.into());
        }
        Ok(())
    }

    /// Releases the savepoint into the outer transaction and returns what
    /// to wait on for its commit.
    pub(crate) fn release(&mut self) -> Result<Arc<Durable>> {
        if self.conn.is_autocommit() {
            // SQLite rolls the whole transaction back on some errors, such
            // as a full disk; the earlier writes of the group are lost too.
            self.fail_lost_group();
            return Err(StoreError::Database(
                "SQLite rolled the write transaction back; retry the request".into(),
            ));
        }
        if let Err(err) = self.conn.execute_batch("RELEASE write") {
            self.rollback();
            return Err(err.into());
        }
        let durable = Arc::new(Durable::default());
        self.pending.push(durable.clone());
        Ok(durable)
    }

    /// Undoes the savepoint, leaving the rest of the group in place.
    pub(crate) fn rollback(&mut self) {
        if self.conn.is_autocommit() {
            self.fail_lost_group();
            return;
        }
        if let Err(error) = self.conn.execute_batch("ROLLBACK TO write; RELEASE write") {
            tracing::error!(%error, "rolling back a write transaction failed");
        }
    }

    /// Commits the outer transaction, when one is open, and reports the
    /// outcome to every transaction of the group.
    fn flush(&mut self) {
        if self.conn.is_autocommit() {
            self.fail_lost_group();
            return;
        }
        let outcome = self.conn.execute_batch("COMMIT").map_err(|error| {
            tracing::error!(%error, writes = self.pending.len(), "committing a group of writes failed");
            format!("committing the write failed: {error}")
        });
        if outcome.is_err()
            && !self.conn.is_autocommit()
            && let Err(error) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(%error, "rolling back a failed group commit failed");
        }
        for durable in self.pending.drain(..) {
            durable.settle(outcome.clone());
        }
    }

    /// Fails the released transactions of an outer transaction that SQLite
    /// already rolled back.
    fn fail_lost_group(&mut self) {
        for durable in self.pending.drain(..) {
            durable.settle(Err(
                "SQLite rolled back the transaction holding this write; retry the request".into(),
            ));
        }
    }
}

impl Deref for WriterGuard<'_> {
    type Target = Writer;

    fn deref(&self) -> &Writer {
        &self.writer
    }
}

impl DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut Writer {
        &mut self.writer
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        // A thread counted in `queued` is blocked in `lock` and will take
        // the connection next, and its guard's drop then makes this check
        // again. So the open group always reaches a commit.
        let alone = self.group.queued.load(Ordering::SeqCst) == 0;
        if alone || self.writer.pending.len() >= self.group.max_group {
            self.writer.flush();
        }
    }
}
