//! `ward backup` and `ward restore`: an encrypted, integrity-checked copy of
//! the whole store, taken while servers keep running, and its restore into
//! an empty store of either backend.
//!
//! The file is the portable dump of `ward_store::backup` sealed as a chunked
//! AES-256-GCM stream (`ward_crypto::backup`) under the data directory's
//! backup key, which the master key seals. Inside, data keys and the index
//! key are wrapped under a key derived from the backup key instead of the
//! master key, so a backup still restores after a master-key rotation. A restore reads the file twice:
//! once to authenticate every chunk and check the manifest and the wrapped
//! keys before anything is written, then again inside one transaction. After
//! the commit it checks row counts, the audit log and a sample of resources,
//! and empties the target again if any check fails.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use ward_crypto::{BackupKey, BackupReader, BackupWriter, MasterKey};
use ward_server::setup::{DataDir, Keys, MASTER_KEY_ENV};
use ward_store::Database;
use ward_store::backup::{Cell, KeyTransfer, Manifest, Restore, read_dump, transfer_wrapped};

use crate::cli::{AuditStoreArgs, ServeArgs};
use crate::config::{Settings, resolve};

/// How many restored resources are read back through the store.
const SAMPLE_RESOURCES: usize = 25;

/// Options of `ward backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: AuditStoreArgs,
    /// The backup file to write; it must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
}

/// Options of `ward restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The data directory, holding the key files of the organization that
    /// made the backup (master.key or WARD_MASTER_KEY, backup.key.sealed,
    /// the other *.sealed files and ca.pem), and the target database.
    #[command(flatten)]
    pub store: AuditStoreArgs,
    /// The backup file.
    pub file: PathBuf,
}

/// Opens the data directory of `args`, which must exist already.
fn open_data(args: &AuditStoreArgs) -> Result<(Settings, DataDir, Keys)> {
    let serve_args = ServeArgs {
        data: args.data.clone(),
        database: args.database.clone(),
        ..ServeArgs::default()
    };
    let settings = resolve(&serve_args)?;
    let data = DataDir::new(&settings.data);
    if !data.exists() {
        bail!(
            "no data directory at {}; pass --data DIR of an initialized organization",
            settings.data.display()
        );
    }
    let has_master = data.path().join("master.key").exists() || data.master_key_from_env();
    if !has_master {
        bail!(
            "no master key in {} and {MASTER_KEY_ENV} is not set; copy the organization's master.key there first",
            settings.data.display()
        );
    }
    let (keys, _) = data
        .open_or_init(crate::serve::DEFAULT_ORG_NAME)
        .context("opening the data directory")?;
    Ok((settings, data, keys))
}

/// Runs `ward backup`.
pub fn run_backup(args: &BackupArgs) -> Result<()> {
    let (settings, data, keys) = open_data(&args.store)?;
    let key = data
        .backup_key(&keys.master)
        .context("loading the backup key")?;

    let partial = partial_path(&args.out);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let result = write_backup(file, &key, &keys.master, &settings.store);
    let manifest = match result {
        Ok(manifest) => manifest,
        Err(error) => {
            let _ = fs::remove_file(&partial);
            return Err(error);
        }
    };
    // The link fails when the target exists, so no file is ever replaced.
    let linked = fs::hard_link(&partial, &args.out)
        .with_context(|| format!("creating {}; it must not exist yet", args.out.display()));
    let _ = fs::remove_file(&partial);
    linked?;

    let rows: u64 = manifest.row_counts.values().sum();
    let store = ward_store::open(&settings.store, &keys.master)
        .with_context(|| format!("opening the database {}", settings.store.describe()))?;
    crate::admin_audit::record_change(
        store.as_ref(),
        "backup_written",
        ward_audit::record::Subtype::UseOfRestrictedFunction,
        ward_audit::record::Action::Read,
        &[
            ("file", &args.out.display().to_string()),
            ("rows", &rows.to_string()),
        ],
    )?;
    println!(
        "backup written to {}: {} rows from {} ({}), backup key {}",
        args.out.display(),
        rows,
        settings.store.describe(),
        manifest.source_backend,
        key.id()
    );
    if let Some(head) = &manifest.audit_head {
        println!(
            "audit head: seq {} chain hash {}",
            head.seq, head.chain_hash
        );
    }
    Ok(())
}

fn partial_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

fn write_backup(
    file: File,
    key: &BackupKey,
    master: &MasterKey,
    database: &Database,
) -> Result<Manifest> {
    let wrapping = key.wrapping_key()?;
    let keys = KeyTransfer {
        from: master,
        to: &wrapping,
    };
    let mut writer = BackupWriter::new(BufWriter::new(file), key)?;
    let manifest = ward_store::backup::dump(database, &mut writer, &keys)
        .with_context(|| format!("reading {}", database.describe()))?;
    let buffered = writer.finish()?;
    let file = buffered
        .into_inner()
        .map_err(|error| error.into_error())
        .context("writing the backup file")?;
    file.sync_all().context("syncing the backup file")?;
    Ok(manifest)
}

/// The resources a restore reads back, and what the first pass learned.
struct Checked {
    manifest: Manifest,
    samples: Vec<(String, String)>,
}

/// Runs `ward restore`.
pub fn run_restore(args: &RestoreArgs) -> Result<()> {
    let (settings, data, keys) = open_data(&args.store)?;
    if !data.path().join("backup.key.sealed").exists() {
        bail!(
            "no backup key (backup.key.sealed) in {}; copy it from the data directory that made the backup",
            data.path().display()
        );
    }
    let key = data
        .backup_key(&keys.master)
        .context("loading the backup key")?;

    let checked = check_file(&args.file, &key, &keys.master)?;
    eprintln!(
        "backup checked: taken {} from {} (schema {}), {} rows",
        checked.manifest.created_at,
        checked.manifest.source_backend,
        checked.manifest.schema_version,
        checked.manifest.row_counts.values().sum::<u64>()
    );

    write_restore(&args.file, &key, &keys.master, &settings.store)?;
    if let Err(error) = verify_restored(&settings, &data, &keys, &checked) {
        let cleared = ward_store::backup::clear(&settings.store);
        return match cleared {
            Ok(()) => Err(error.context("the restored store failed verification and was emptied")),
            Err(clear_error) => Err(error.context(format!(
                "the restored store failed verification, and emptying it failed too ({clear_error}); delete {} before trying again",
                settings.store.describe()
            ))),
        };
    }
    println!(
        "restored {} rows into {}",
        checked.manifest.row_counts.values().sum::<u64>(),
        settings.store.describe()
    );
    Ok(())
}

fn open_reader(path: &Path, key: &BackupKey) -> Result<BackupReader<BufReader<File>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    BackupReader::new(BufReader::new(file), key)
        .with_context(|| format!("reading the backup {}", path.display()))
}

/// Authenticates the whole file and checks its manifest and wrapped keys
/// without writing anything.
fn check_file(path: &Path, key: &BackupKey, master: &MasterKey) -> Result<Checked> {
    let wrapping = key.wrapping_key()?;
    let keys = KeyTransfer {
        from: &wrapping,
        to: master,
    };
    let mut reader = open_reader(path, key)?;
    let mut samples = Vec::new();
    let manifest = read_dump(&mut reader, &mut |table, mut row| {
        transfer_wrapped(table, &mut row, &keys)?;
        if table.name == "resources"
            && samples.len() < SAMPLE_RESOURCES
            && let [_, Cell::Text(kind), Cell::Text(id), _, Cell::Int(0), ..] = row.as_slice()
        {
            samples.push((kind.clone(), id.clone()));
        }
        Ok(())
    })
    .with_context(|| {
        format!(
            "the backup {} is invalid; nothing was restored",
            path.display()
        )
    })?;
    Ok(Checked { manifest, samples })
}

/// Reads the file again and inserts every row in one transaction.
fn write_restore(
    path: &Path,
    key: &BackupKey,
    master: &MasterKey,
    database: &Database,
) -> Result<()> {
    let wrapping = key.wrapping_key()?;
    let keys = KeyTransfer {
        from: &wrapping,
        to: master,
    };
    let mut restore = Restore::begin(database)?;
    let mut reader = open_reader(path, key)?;
    read_dump(&mut reader, &mut |table, mut row| {
        transfer_wrapped(table, &mut row, &keys)?;
        restore.insert(table, &row)
    })
    .with_context(|| format!("restoring {}; nothing was kept", path.display()))?;
    restore
        .commit()
        .with_context(|| format!("committing the restore into {}", database.describe()))
}

fn verify_restored(
    settings: &Settings,
    data: &DataDir,
    keys: &Keys,
    checked: &Checked,
) -> Result<()> {
    let counts = ward_store::backup::row_counts(&settings.store)?;
    if counts != checked.manifest.row_counts {
        bail!("the restored row counts differ from the backup manifest");
    }

    let store = ward_store::open(&settings.store, &keys.master)
        .with_context(|| format!("opening the restored store {}", settings.store.describe()))?;
    for (kind, id) in &checked.samples {
        store
            .read(kind, id)
            .with_context(|| format!("reading back {kind}/{id}"))?;
    }

    let head = store.audit_head()?;
    let expected = checked
        .manifest
        .audit_head
        .as_ref()
        .map_or(0, |head| head.seq + 1);
    if head.size != expected {
        bail!(
            "the restored audit log has {} records, the backup {expected}",
            head.size
        );
    }
    if head.size > 0 {
        let audit_key = data
            .audit_key(&keys.master)
            .context("loading the audit key")?;
        let checkpoints = settings
            .audit_checkpoints
            .clone()
            .unwrap_or_else(|| data.audit_checkpoints_path());
        let summary = crate::audit::verify_whole_log(&*store, &audit_key, &checkpoints, head.size)?;
        eprintln!("{summary}");
    }
    std::io::stdout().flush().ok();
    Ok(())
}
