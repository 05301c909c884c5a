//! `ward audit verify` and `ward audit export`: reading the tamper-evident
//! audit log straight from the database, with the server stopped or
//! running.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ward_audit::checkpoint::{Checkpoint, read_file};
use ward_audit::verify::prove_range;
use ward_audit::{ChainEntry, StoredAudit, VerifyReport, verify_log, verify_range};
use ward_crypto::SigningKey;
use ward_server::audit::checkpoints::{log_key, origin_for};
use ward_server::audit::siem;
use ward_server::setup::DataDir;
use ward_store::Store;

use crate::cli::{
    AuditArgs, AuditCommand, AuditExportArgs, AuditStoreArgs, AuditVerifyArgs, ServeArgs,
};
use crate::config::{Settings, resolve};

/// Rows read from the store at a time.
const PAGE: usize = 10_000;

/// Runs `ward audit`.
pub fn run(args: AuditArgs) -> Result<()> {
    match args.command {
        AuditCommand::Verify(args) => verify(&args),
        AuditCommand::Export(args) => export(&args),
    }
}

struct Opened {
    settings: Settings,
    data: DataDir,
    store: Arc<dyn Store>,
    key: Option<SigningKey>,
}

fn open(args: &AuditStoreArgs) -> Result<Opened> {
    let serve_args = ServeArgs {
        data: args.data.clone(),
        database: args.database.clone(),
        ..ServeArgs::default()
    };
    let settings = resolve(&serve_args)?;
    let data = DataDir::new(&settings.data);
    if !data.exists() {
        bail!(
            "no data directory at {}; pass --data DIR",
            settings.data.display()
        );
    }
    let (keys, _) = data
        .open_or_init(crate::serve::DEFAULT_ORG_NAME)
        .context("opening the data directory")?;
    let key = if data.path().join("audit.key.sealed").exists() {
        Some(
            data.audit_key(&keys.master)
                .context("loading the audit key")?,
        )
    } else {
        None
    };
    let store = ward_store::open(&settings.store, &keys.master)
        .with_context(|| format!("opening the database {}", settings.store.describe()))?;
    Ok(Opened {
        settings,
        data,
        store,
        key,
    })
}

/// Reads every row from `from`, in pages, stopping at the first read error,
/// which it keeps in `error`.
fn rows<'a>(
    store: &'a dyn Store,
    from: u64,
    error: &'a RefCell<Option<String>>,
) -> impl Iterator<Item = StoredAudit> + 'a {
    let mut next = from;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match store.audit_rows(next, PAGE) {
            Ok(page) if page.is_empty() => {
                done = true;
                None
            }
            Ok(page) => {
                next = page.last().map_or(next, |row| row.seq.saturating_add(1));
                if page.len() < PAGE {
                    done = true;
                }
                Some(page)
            }
            Err(err) => {
                *error.borrow_mut() = Some(err.to_string());
                done = true;
                None
            }
        }
    })
    .flatten()
}

/// The record's `recorded` time, when its row decodes.
fn recorded_at(store: &dyn Store, seq: u64) -> Option<String> {
    let rows = store.audit_rows(seq, 1).ok()?;
    let row = rows.first().filter(|row| row.seq == seq)?;
    let entry = ChainEntry::from_canonical(&row.canonical).ok()?;
    entry
        .record
        .recorded
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn checkpoints_path(opened: &Opened, explicit: Option<&PathBuf>) -> PathBuf {
    explicit
        .cloned()
        .or_else(|| opened.settings.audit_checkpoints.clone())
        .unwrap_or_else(|| opened.data.audit_checkpoints_path())
}

fn verify(args: &AuditVerifyArgs) -> Result<()> {
    let opened = open(&args.store)?;
    let Some(key) = &opened.key else {
        bail!(
            "no audit key (audit.key.sealed) in {}; run 'ward serve' once to create it",
            opened.data.path().display()
        );
    };
    let path = checkpoints_path(&opened, args.checkpoints.as_ref());
    let checkpoints: Vec<Checkpoint> = if path.exists() {
        read_file(&path).with_context(|| format!("reading {}", path.display()))?
    } else {
        eprintln!(
            "warning: no checkpoint file at {}; the records are checked against each other only",
            path.display()
        );
        Vec::new()
    };
    let origin = origin_for(key);
    let log_key = log_key(&origin, key);
    let store = &*opened.store;
    let error = RefCell::new(None);
    let report = match (args.from, args.to) {
        (Some(from), Some(to)) => verify_part(store, &checkpoints, &log_key, from, to)?,
        _ => verify_log(rows(store, 0, &error), &checkpoints, &log_key),
    };
    if let Some(error) = error.take() {
        bail!("reading the audit log failed: {error}");
    }
    if matches!(report, VerifyReport::Valid(_)) && args.from.is_none() {
        check_patient_index(store)?;
    }
    match report {
        VerifyReport::Valid(summary) => {
            println!(
                "audit log verified: {} records, {} checkpoints, {} records after the newest checkpoint",
                summary.tree_size, summary.checkpoints, summary.uncovered
            );
            Ok(())
        }
        VerifyReport::Invalid(problem) => {
            let seq = match &problem {
                ward_audit::Problem::Truncated { log_size, .. } => Some(*log_size),
                other => other.seq(),
            };
            let record = match seq {
                Some(seq) => match recorded_at(store, seq) {
                    Some(time) => format!("; record seq {seq}, recorded {time}"),
                    None => format!("; record seq {seq}"),
                },
                None => String::new(),
            };
            bail!("audit log verification failed: {problem}{record}")
        }
    }
}

/// Verifies the whole log of `store` as `ward audit verify` does, against
/// the checkpoints in `checkpoints` that cover at most `max_size` records,
/// and returns the summary line. `ward restore` runs it on the restored
/// store, which may be older than the newest checkpoints.
pub(crate) fn verify_whole_log(
    store: &dyn Store,
    key: &SigningKey,
    checkpoints: &std::path::Path,
    max_size: u64,
) -> Result<String> {
    let mut checkpoints: Vec<Checkpoint> = if checkpoints.exists() {
        read_file(checkpoints).with_context(|| format!("reading {}", checkpoints.display()))?
    } else {
        Vec::new()
    };
    checkpoints.retain(|checkpoint| checkpoint.tree_size <= max_size);
    let origin = origin_for(key);
    let log_key = log_key(&origin, key);
    let error = RefCell::new(None);
    let report = verify_log(rows(store, 0, &error), &checkpoints, &log_key);
    if let Some(error) = error.take() {
        bail!("reading the audit log failed: {error}");
    }
    match report {
        VerifyReport::Valid(summary) => {
            check_patient_index(store)?;
            Ok(format!(
                "audit log verified: {} records, {} checkpoints, {} records after the newest checkpoint",
                summary.tree_size, summary.checkpoints, summary.uncovered
            ))
        }
        VerifyReport::Invalid(problem) => bail!("audit log verification failed: {problem}"),
    }
}

/// Checks the per-patient index (used by `AuditEvent?patient=` and
/// `$disclosures`) against the hash-chained records it is derived from, so
/// rows removed from or added to the index are caught like changes to the
/// records themselves.
fn check_patient_index(store: &dyn Store) -> Result<()> {
    let mut expected: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let error = RefCell::new(None);
    for row in rows(store, 0, &error) {
        let Ok(entry) = ChainEntry::from_canonical(&row.canonical) else {
            continue;
        };
        for entity in &entry.record.entities {
            if let ward_audit::record::Entity::Patient { reference } = entity
                && let Some(id) = reference.strip_prefix("Patient/")
            {
                expected.entry(id.to_owned()).or_default().push(row.seq);
            }
        }
    }
    if let Some(error) = error.take() {
        bail!("reading the audit log failed: {error}");
    }
    for (patient, seqs) in &expected {
        let indexed = store.audit_seqs_for_patient(patient, i64::MIN, i64::MAX)?;
        if indexed != *seqs {
            let first = seqs
                .iter()
                .chain(indexed.iter())
                .find(|seq| seqs.contains(seq) != indexed.contains(seq))
                .copied()
                .unwrap_or_default();
            bail!(
                "audit log verification failed: the per-patient index for Patient/{patient} does not match the records (first difference at record seq {first}); it was changed outside Ward"
            );
        }
    }
    Ok(())
}

/// Verifies records `from..to` against the newest checkpoint that covers
/// them, with inclusion proofs built from the stored leaf hashes.
fn verify_part(
    store: &dyn Store,
    checkpoints: &[Checkpoint],
    key: &ward_audit::LogKey<'_>,
    from: u64,
    to: u64,
) -> Result<VerifyReport> {
    let Some(checkpoint) = checkpoints
        .iter()
        .filter(|c| c.tree_size >= to)
        .max_by_key(|c| c.tree_size)
    else {
        bail!("no checkpoint covers records up to {to}; verify the whole log instead");
    };
    let error = RefCell::new(None);
    let mut leaves = Vec::new();
    let mut range = Vec::new();
    for row in rows(store, 0, &error).take_while(|row| row.seq < checkpoint.tree_size) {
        leaves.push(row.leaf_hash);
        if (from..to).contains(&row.seq) {
            range.push(row);
        }
    }
    if let Some(error) = error.take() {
        bail!("reading the audit log failed: {error}");
    }
    let proofs = prove_range(&leaves, from, to, checkpoint.tree_size).unwrap_or_default();
    Ok(verify_range(&range, from, to, &proofs, checkpoint, key))
}

fn export(args: &AuditExportArgs) -> Result<()> {
    use std::io::Write as _;
    let opened = open(&args.store)?;
    let store = &*opened.store;
    let host = opened
        .settings
        .origin
        .trim_start_matches("https://")
        .to_owned();
    let error = RefCell::new(None);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for row in rows(store, args.since, &error) {
        let entry = ChainEntry::from_canonical(&row.canonical).with_context(|| {
            format!(
                "record seq {} is malformed; run 'ward audit verify'",
                row.seq
            )
        })?;
        let line = match args.format.as_str() {
            "syslog" => siem::syslog_message(&entry, &host),
            _ => siem::json_line(&entry),
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if let Some(error) = error.take() {
        bail!("reading the audit log failed: {error}");
    }
    Ok(())
}
