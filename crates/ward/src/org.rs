//! `ward org`: the organization's exchange identity and its trust bundle.
//! `export` prints this organization's trust entry (and issues the exchange
//! client certificate when it is missing), `trust` adds another
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
    /// Trust another organization: check its exported entry against the fingerprint given out of band and store it.
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
    /// The end of trust in this entry, as an RFC 3339 time (2027-06-30T00:00:00Z) or seconds since the Unix epoch. It is capped at the end of the CA certificate, which is the default.
    #[arg(long, value_parser = parse_expires)]
    pub expires: Option<i64>,
}

/// Parses `--expires`: RFC 3339 or seconds since the Unix epoch.
fn parse_expires(text: &str) -> std::result::Result<i64, String> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(time::OffsetDateTime::unix_timestamp)
        .map_err(|_| {
            format!("'{text}' is not a time; give RFC 3339 (2027-06-30T00:00:00Z) or seconds since the Unix epoch")
        })
}

/// Options of `ward org trust`.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The SHA-256 fingerprint (hex) the other organization gave you out of band; the entry must match it. Required: the fingerprint inside the file only shows the file is intact, not where it came from.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Replace the entry of an organization that is already trusted when its endpoint, role, keys or CA differ. Check the new fingerprint with that organization out of band first.
    #[arg(long)]
    pub replace: bool,
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
    let ca_end = keys.ca.not_after().unix_timestamp();
    let not_after = args.expires.map_or(ca_end, |expires| expires.min(ca_end));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if not_after <= now {
        eprintln!(
            "warning: --expires lies in the past; organizations that trust this entry will refuse its messages"
        );
    }
    let entry = TrustEntry::for_identity(&identity, &endpoint, &keys.ca.to_pem(), not_after);
    entry.check(None).context(
        "the exported entry is invalid; pass --endpoint https://HOST:PORT/fhir/$process-message",
    )?;
    // Deliveries present this certificate; the receiver checks it against
    // the entry's CA certificate.
    let (client_cert, _) = ward_exchange::identity::OrgClientCert::open_or_issue(
        &settings.data,
        &keys.master,
        &keys.ca,
        &identity.id,
        now,
    )
    .context("issuing the exchange client certificate")?;
    println!("{}", serde_json::to_string_pretty(&entry)?);
    eprintln!("fingerprint: {}", entry.fingerprint);
    eprintln!(
        "client certificate: {} (URI {}{}, issued by the CA in this entry, valid until {})",
        settings
            .data
            .join(ward_exchange::identity::CLIENT_CERT_FILE)
            .display(),
        ward_crypto::ca::ORG_URI_PREFIX,
        identity.id,
        rfc3339(client_cert.not_after)
    );
    Ok(())
}

fn trust_file(args: &TrustArgs) -> Result<()> {
    let Some(pinned) = args.fingerprint.as_deref() else {
        bail!(
            "--fingerprint is required: pass the fingerprint the other organization gave you out of band \
             (its `ward org export` prints it on standard error). The fingerprint inside {} only shows \
             that the file is intact, not who wrote it",
            args.file.display()
        );
    };
    let text =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let entry: TrustEntry = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a trust entry written by `ward org export`",
            args.file.display()
        )
    })?;
    entry
        .check(Some(pinned))
        .with_context(|| format!("not trusting {}", args.file.display()))?;
    if own_org_id(&args.store).as_deref() == Some(entry.org_id.as_str()) {
        bail!(
            "not trusting {}: {} is this organization's own id; trust the export of another organization",
            args.file.display(),
            entry.org_id
        );
    }
    let store = open_store(&args.store)?;
    let existing = trust::get(store.as_ref(), &entry.org_id)?;
    let replaced = existing
        .as_ref()
        .filter(|old| old.fingerprint != entry.fingerprint);
    if let Some(old) = replaced {
        let changed = old.material_changes(&entry);
        if !changed.is_empty() && !args.replace {
            bail!(
                "organization {} is already trusted, with another {}; old fingerprint {}, new fingerprint {}. \
                 Confirm the new fingerprint with that organization out of band, then run again with --replace",
                entry.org_id,
                changed.join(", "),
                old.fingerprint,
                entry.fingerprint
            );
        }
    }
    trust::trust(store.as_ref(), &entry, Some(pinned))
        .with_context(|| format!("not trusting {}", args.file.display()))?;
    let old_fingerprint = replaced.map(|old| old.fingerprint.clone());
    let changed = replaced
        .map(|old| old.material_changes(&entry).join(","))
        .unwrap_or_default();
    record_change(
        store.as_ref(),
        if replaced.is_some() {
            "org_trust_replaced"
        } else {
            "org_trusted"
        },
        Subtype::SecurityConfiguration,
        if existing.is_some() {
            Action::Update
        } else {
            Action::Create
        },
        &[
            ("org_id", &entry.org_id),
            ("name", &entry.name),
            ("role", entry.role.as_str()),
            ("endpoint", &entry.endpoint),
            ("fingerprint", &entry.fingerprint),
            (
                "old_fingerprint",
                old_fingerprint.as_deref().unwrap_or_default(),
            ),
            ("changed", &changed),
        ],
    )?;
    if let Some(old) = &old_fingerprint {
        println!(
            "replaced the entry of {}: old fingerprint {old}, new fingerprint {}{}",
            entry.org_id,
            entry.fingerprint,
            if changed.is_empty() {
                String::new()
            } else {
                format!(" (changed: {})", changed.replace(',', ", "))
            }
        );
    }
    println!("trusted {} ({}, {})", entry.org_id, entry.name, entry.role);
    Ok(())
}

/// Returns this organization's exchange id from its data directory, when
/// the identity exists.
fn own_org_id(store: &StoreArgs) -> Option<String> {
    let serve_args = ServeArgs {
        data: store.data.clone(),
        database: store.database.clone(),
        ..ServeArgs::default()
    };
    let settings = resolve(&serve_args).ok()?;
    let text = std::fs::read(settings.data.join(ward_exchange::identity::ORG_FILE)).ok()?;
    let file: serde_json::Value = serde_json::from_slice(&text).ok()?;
    file.get("id")?.as_str().map(str::to_owned)
}

fn list(args: &StoreArgs) -> Result<()> {
    let store = open_store(args)?;
    let entries = trust::list(store.as_ref())?;
    println!(
        "{:<40} {:<24} {:<9} {:<20} {:<16} ENDPOINT",
        "ID", "NAME", "ROLE", "NOT AFTER", "FINGERPRINT"
    );
    for entry in entries {
        let not_after = rfc3339(entry.not_after);
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

/// Formats seconds since the Unix epoch as RFC 3339, or as the number
/// when out of range.
fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| seconds.to_string())
}
