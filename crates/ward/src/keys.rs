//! `ward keys`: a new token signing key, and replacing the master key while
//! servers keep running. Each change is recorded in the audit log.
//!
//! A rotation makes a new active key and keeps the old one in
//! `master-retired/`, so every process that loads the data directory can
//! open values wrapped under either. It then rewraps the data keys and the
//! index key in the database (one transaction) and reseals the key files.
//! Running servers are not disturbed: they unwrapped their keys at start and
//! never need the master key again, and a server started during the
//! rotation loads both keys. Retiring deletes the old key file, and only
//! when nothing is wrapped under it any more.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use ward_audit::record::{Action, Subtype};
use ward_server::setup::{DataDir, Keys, MASTER_KEY_ENV};
use ward_store::{Database, Store};

use crate::admin_audit::record_change;
use crate::cli::{AuditStoreArgs, ServeArgs};
use crate::config::{Settings, resolve};

/// Options of `ward keys rotate-master`.
#[derive(Debug, Clone, Args)]
pub struct RotateMasterArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: AuditStoreArgs,
    /// With WARD_MASTER_KEY: the new file to write the new master key to
    /// (mode 0600); required then, because the environment cannot be changed.
    #[arg(long)]
    pub new_key_file: Option<PathBuf>,
}

/// Options of `ward keys retire-master`.
#[derive(Debug, Clone, Args)]
pub struct RetireMasterArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: AuditStoreArgs,
    /// The id of the retired master key (16 hex digits), as printed by
    /// `ward keys rotate-master`.
    pub key_id: String,
}

fn open(args: &AuditStoreArgs) -> Result<(Settings, DataDir, Keys)> {
    let serve_args = ServeArgs {
        data: args.data.clone(),
        database: args.database.clone(),
        ..ServeArgs::default()
    };
    let settings = resolve(&serve_args)?;
    let data = DataDir::new(&settings.data);
    if !data.exists() {
        bail!(
            "no data directory at {}; run 'ward serve --data {}' once to create it",
            settings.data.display(),
            settings.data.display()
        );
    }
    let (keys, _) = data
        .open_or_init(crate::serve::DEFAULT_ORG_NAME)
        .context("opening the data directory")?;
    Ok((settings, data, keys))
}

/// Appends the record of a key change to the audit log of `database`.
fn audit_key_change(
    database: &Database,
    master: &ward_crypto::MasterKey,
    event: &str,
    details: &[(&str, &str)],
) -> Result<()> {
    let store: std::sync::Arc<dyn Store> = ward_store::open(database, master)
        .with_context(|| format!("opening the database {}", database.describe()))?;
    record_change(
        store.as_ref(),
        event,
        Subtype::SecurityConfiguration,
        Action::Update,
        details,
    )
}

/// Runs `ward keys rotate-signing`.
pub fn rotate_signing(args: &AuditStoreArgs) -> Result<()> {
    let (settings, data, keys) = open(args)?;
    let old = keys.signing.kid().to_owned();
    let new = data.rotate_signing_key(&keys)?;
    audit_key_change(
        &settings.store,
        &keys.master,
        "signing_key_rotated",
        &[("old_key", &old), ("new_key", &new)],
    )?;
    println!("new signing key: {new}");
    println!(
        "retired key {old} stays trusted for tokens it signed; restart the servers to sign with the new key"
    );
    Ok(())
}

/// Runs `ward keys rotate-master`.
pub fn rotate_master(args: &RotateMasterArgs) -> Result<()> {
    let (settings, data, keys) = open(&args.store)?;
    let from_env = data.master_key_from_env();
    match (from_env, &args.new_key_file) {
        (true, None) => bail!(
            "the master key comes from {MASTER_KEY_ENV}, which this command cannot change; \
             pass --new-key-file FILE to receive the new key"
        ),
        (false, Some(_)) => bail!(
            "--new-key-file is only for a master key in {MASTER_KEY_ENV}; \
             without it the new key replaces master.key in the data directory"
        ),
        _ => {}
    }

    let old = keys.master.id();
    let keyring = data
        .rotate_master_key(&keys.master, args.new_key_file.as_deref())
        .context("writing the new master key")?;
    let new = keyring.id();
    tracing::info!(old = %old, new = %new, "new master key is active");

    let report = ward_store::backup::rewrap_keys(&settings.store, &keyring).with_context(|| {
        format!(
            "rewrapping the keys in {}; run the command again to finish",
            settings.store.describe()
        )
    })?;
    let files = data
        .reseal_files(&keyring)
        .context("resealing the key files; run the command again to finish")?;

    audit_key_change(
        &settings.store,
        &keyring,
        "master_key_rotated",
        &[("old_key", &old.to_string()), ("new_key", &new.to_string())],
    )?;
    println!("new master key: {new}");
    println!(
        "rewrapped {} database keys ({} were already under it) and {} key files",
        report.rewrapped,
        report.unchanged,
        files.len()
    );
    if from_env {
        println!(
            "set {MASTER_KEY_ENV} to the content of the new key file for every server and command, then restart the servers"
        );
    } else {
        for retired in keyring.retired_ids() {
            println!(
                "retired master key {retired} is kept in master-retired/; once every data directory copy has the new key, run 'ward keys retire-master {retired}'"
            );
        }
    }
    Ok(())
}

/// Runs `ward keys retire-master`.
pub fn retire_master(args: &RetireMasterArgs) -> Result<()> {
    let (settings, data, keys) = open(&args.store)?;
    let requested = args.key_id.trim().to_ascii_lowercase();
    if keys.master.id().to_string() == requested {
        bail!(
            "master key {requested} is the active key; rotate first with 'ward keys rotate-master'"
        );
    }
    let Some(id) = keys
        .master
        .retired_ids()
        .into_iter()
        .find(|id| id.to_string() == requested)
    else {
        bail!(
            "no retired master key {requested} in {}/master-retired",
            data.path().display()
        );
    };
    let path = data
        .retired_master_key_path(&requested)
        .with_context(|| format!("the file of retired master key {requested} is missing"))?;

    let in_database = ward_store::backup::wrapped_key_counts(&settings.store)?
        .get(&id)
        .copied()
        .unwrap_or(0);
    let files = data.sealed_files_under(id)?;
    if in_database > 0 || !files.is_empty() {
        let names: Vec<String> = files
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        bail!(
            "master key {requested} still wraps {in_database} keys in {} and {} key files ({}); \
             run 'ward keys rotate-master' to rewrap them, then retire it",
            settings.store.describe(),
            files.len(),
            names.join(", ")
        );
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    audit_key_change(
        &settings.store,
        &keys.master,
        "master_key_retired",
        &[("key", &requested)],
    )?;
    println!(
        "retired master key {requested}: nothing is wrapped under it and its file was removed"
    );
    Ok(())
}
