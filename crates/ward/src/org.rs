//! `ward org`: the organization's exchange identity and its trust bundle.
//! `export` prints this organization's trust entry, `trust` adds another
//! organization's entry, `list` and `remove` manage the bundle. Every
//! change is audited.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ward_audit::record::{Action, Subtype};
use ward_exchange::{OrgIdentity, TrustEntry, trust};
use ward_server::setup::DataDir;

use crate::admin_audit::record_change;
use crate::cli::ServeArgs;
use crate::config::resolve;
use crate::user::{StoreArgs, open_store};

/// Options of `ward org`.
#[derive(Debug, Args)]
pub struct OrgArgs {
    /// The subcommand.
    #[command(subcommand)]
    pub command: OrgCommand,
}

/// The subcommands of `ward org`.
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Print this organization's trust entry (JSON) for other organizations to trust; its fingerprint goes to standard error.
    Export(ExportArgs),
    /// Trust another organization: check its exported entry and store it.
    Trust(TrustArgs),
    /// List the trusted organizations.
    List(StoreArgs),
    /// Stop trusting an organization.
    Remove(RemoveArgs),
}

/// Options of `ward org export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The URL other organizations post messages to [default: the server's origin + /fhir/$process-message].
    #[arg(long)]
    pub endpoint: Option<String>,
}

/// Options of `ward org trust`.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The SHA-256 fingerprint (hex) the other organization gave you out of band; the entry must match it.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// The JSON file written by `ward org export` at the other organization.
    pub file: PathBuf,
}

/// Options of `ward org remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The organization id, as `ward org list` prints it.
    pub id: String,
}

/// Runs `ward org`.
pub fn run(args: OrgArgs) -> Result<()> {
    match args.command {
        OrgCommand::Export(args) => export(&args),
        OrgCommand::Trust(args) => trust_file(&args),
        OrgCommand::List(args) => list(&args),
        OrgCommand::Remove(args) => remove(&args),
    }
}

fn export(args: &ExportArgs) -> Result<()> {
    let serve_args = ServeArgs {
        data: args.store.data.clone(),
        database: args.store.database.clone(),
        ..ServeArgs::default()
    };
    let settings = resolve(&serve_args)?;
    let dir = DataDir::new(&settings.data);
    if !dir.exists() {
        bail!(
            "no data directory at {}; run 'ward serve --data {}' once to create it",
            settings.data.display(),
            settings.data.display()
        );
    }
    let (keys, _) = dir.open_or_init(crate::serve::DEFAULT_ORG_NAME)?;
    let identity =
        OrgIdentity::open_or_init(&settings.data, &keys.master, crate::serve::DEFAULT_ORG_NAME)
            .context("loading the exchange identity")?;
    // The server records the origin it serves at; without it, the
    // configured one is the best guess.
    let origin = std::fs::read_to_string(settings.data.join("origin"))
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| settings.origin.clone());
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("{origin}/fhir/$process-message"));
    let entry = TrustEntry::for_identity(
        &identity,
        &endpoint,
        &keys.ca.to_pem(),
        keys.ca.not_after().unix_timestamp(),
    );
    entry.check(None).context(
        "the exported entry is invalid; pass --endpoint https://HOST:PORT/fhir/$process-message",
    )?;
    println!("{}", serde_json::to_string_pretty(&entry)?);
    eprintln!("fingerprint: {}", entry.fingerprint);
    Ok(())
}

fn trust_file(args: &TrustArgs) -> Result<()> {
    let text =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let entry: TrustEntry = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a trust entry written by `ward org export`",
            args.file.display()
        )
    })?;
    let store = open_store(&args.store)?;
    trust::trust(store.as_ref(), &entry, args.fingerprint.as_deref())
        .with_context(|| format!("not trusting {}", args.file.display()))?;
    record_change(
        store.as_ref(),
        "org_trusted",
        Subtype::SecurityConfiguration,
        Action::Create,
        &[
            ("org_id", &entry.org_id),
            ("name", &entry.name),
            ("role", entry.role.as_str()),
            ("endpoint", &entry.endpoint),
            ("fingerprint", &entry.fingerprint),
        ],
    )?;
    println!("trusted {} ({}, {})", entry.org_id, entry.name, entry.role);
    Ok(())
}

fn list(args: &StoreArgs) -> Result<()> {
    let store = open_store(args)?;
    let entries = trust::list(store.as_ref())?;
    println!(
        "{:<40} {:<24} {:<9} {:<20} {:<16} ENDPOINT",
        "ID", "NAME", "ROLE", "NOT AFTER", "FINGERPRINT"
    );
    for entry in entries {
        let not_after = time::OffsetDateTime::from_unix_timestamp(entry.not_after)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| entry.not_after.to_string());
        println!(
            "{:<40} {:<24} {:<9} {:<20} {:<16} {}",
            entry.org_id,
            entry.name,
            entry.role.as_str(),
            not_after,
            entry.fingerprint.get(..16).unwrap_or_default(),
            entry.endpoint
        );
    }
    Ok(())
}

fn remove(args: &RemoveArgs) -> Result<()> {
    let store = open_store(&args.store)?;
    if !trust::remove(store.as_ref(), &args.id)? {
        bail!(
            "organization {} is not trusted; `ward org list` shows the trusted ones",
            args.id
        );
    }
    record_change(
        store.as_ref(),
        "org_removed",
        Subtype::SecurityConfiguration,
        Action::Delete,
        &[("org_id", &args.id)],
    )?;
    println!("removed {}", args.id);
    Ok(())
}
