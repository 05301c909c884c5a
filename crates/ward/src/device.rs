//! `ward device` (enrollment codes, listing, revocation, wipe and the
//! lost-device report, on the data directory's store like `ward user`),
//! `ward ca import` (an organization's own CA for device and server
//! certificates), and the device service `ward serve` runs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use ward_audit::record::{Action, Subtype};
use ward_crypto::CertificateAuthority;
use ward_device::registry::{self, RevokeReason};
use ward_device::{Device, DeviceId, PosturePolicy};
use ward_server::device::DeviceService;
use ward_server::oauth::identity;
use ward_server::setup::{DataDir, Keys, write_atomic};
use ward_store::Store;

use crate::admin_audit::record_change;
use crate::cli::DataArgs;
use crate::config::Settings;
use crate::user::{StoreArgs, open_store};

/// The device policy file in the data directory.
const POLICY_FILE: &str = "device-policy.toml";

/// Options of `ward device`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: DeviceCommand,
}

/// The `ward device` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Create a one-time enrollment code for a user; prints the code and its URL once.
    EnrollCode(EnrollCodeArgs),
    /// List the enrolled devices with status and compliance.
    List(StoreArgs),
    /// Show one device.
    Show(DeviceIdArgs),
    /// Revoke a device: its tokens are rejected at once and it wipes itself at its next check-in.
    Revoke(RevokeArgs),
    /// Request a wipe at the device's next check-in; this revokes an active device too.
    Wipe(WipeArgs),
    /// Print the lost-device report: last posture, check-in and sync, patients fetched, wipe status.
    Report(DeviceIdArgs),
}

/// Options of `ward device enroll-code`.
#[derive(Debug, Args)]
pub struct EnrollCodeArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The sign-in name of the user the device will belong to.
    #[arg(long)]
    pub user: String,
    /// How long the code stays valid, in seconds (60 to 86400).
    #[arg(long, default_value_t = 900)]
    pub ttl: i64,
}

/// A data directory and a device id.
#[derive(Debug, Args)]
pub struct DeviceIdArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The device id (32 hex digits).
    pub id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `ward device revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The device.
    #[command(flatten)]
    pub device: DeviceIdArgs,
    /// Why: lost, stolen, retired or compromised.
    #[arg(long)]
    pub reason: String,
}

/// Options of `ward device wipe`.
#[derive(Debug, Args)]
pub struct WipeArgs {
    /// The device.
    #[command(flatten)]
    pub device: DeviceIdArgs,
    /// Why, recorded with the revocation: lost, stolen, retired or compromised.
    #[arg(long)]
    pub reason: Option<String>,
}

/// Options of `ward ca`: without a subcommand it prints the CA certificate.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CaArgs {
    /// The data directory.
    #[command(flatten)]
    pub data: DataArgs,
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Option<CaCommand>,
}

/// The `ward ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Replace the organization CA with an existing one (restart the servers afterwards).
    Import(CaImportArgs),
}

/// Options of `ward ca import`.
#[derive(Debug, Args)]
pub struct CaImportArgs {
    /// The data directory.
    #[command(flatten)]
    pub data: DataArgs,
    /// The CA certificate, PEM.
    #[arg(long)]
    pub cert: PathBuf,
    /// The CA private key, PEM (PKCS#8, SEC1 or PKCS#1; ECDSA P-256/P-384, Ed25519 or RSA). It is stored only sealed under the master key.
    #[arg(long)]
    pub key: PathBuf,
}

/// Builds the device service for `ward serve`: the organization CA and the
/// posture policy (`device-policy.toml` in the data directory, or the
/// default).
///
/// # Errors
///
/// An invalid policy file, or a CA key that cannot be copied.
pub fn service(settings: &Settings, keys: &Keys) -> Result<Arc<DeviceService>> {
    let policy_path = settings.data.join(POLICY_FILE);
    let policy = PosturePolicy::load_or_default(&policy_path)?;
    // The server keeps its own copy of the CA, because `Keys` owns the one
    // that issues the server certificate.
    let sealed = keys.ca.sealed_key(&keys.master)?;
    let ca =
        CertificateAuthority::from_pem_and_sealed_key(&keys.ca.to_pem(), &sealed, &keys.master)
            .context("loading the organization CA for device certificates")?;
    Ok(Arc::new(DeviceService::new(
        Arc::new(ca),
        policy,
        &settings.origin,
    )))
}

/// Runs `ward device`.
pub fn run(args: DeviceArgs) -> Result<()> {
    match args.command {
        DeviceCommand::EnrollCode(args) => enroll_code(&args),
        DeviceCommand::List(store) => list(&store),
        DeviceCommand::Show(args) => show(&args),
        DeviceCommand::Revoke(args) => revoke(&args),
        DeviceCommand::Wipe(args) => wipe(&args),
        DeviceCommand::Report(args) => report(&args),
    }
}

/// Runs `ward ca`.
pub fn run_ca(args: CaArgs) -> Result<()> {
    match args.command {
        None => crate::serve::print_ca(args.data),
        Some(CaCommand::Import(import)) => import_ca(&import),
    }
}

fn load_policy(store: &StoreArgs) -> Result<PosturePolicy> {
    let path = store.data.dir().join(POLICY_FILE);
    Ok(PosturePolicy::load_or_default(&path)?)
}

fn parse_id(text: &str) -> Result<DeviceId> {
    Ok(DeviceId::parse(text)?)
}

fn format_time(at: Option<OffsetDateTime>) -> String {
    at.and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

fn origin(store: &StoreArgs) -> String {
    std::fs::read_to_string(store.data.dir().join("origin"))
        .map(|origin| origin.trim().to_owned())
        .unwrap_or_else(|_| "https://127.0.0.1:8443".to_owned())
}

fn enroll_code(args: &EnrollCodeArgs) -> Result<()> {
    let ttl = ward_device::code_ttl(Some(args.ttl))?;
    let store = open_store(&args.store)?;
    let user = identity::find_user(store.as_ref(), &args.user)?
        .with_context(|| format!("no user named {}; add one with 'ward user add'", args.user))?;
    if user.disabled {
        bail!("the user {} is disabled", args.user);
    }
    let now = OffsetDateTime::now_utc();
    let new = ward_device::create_code(
        store.as_ref(),
        &user.id,
        &user.username,
        "ward-cli",
        ttl,
        now,
    )?;
    record_change(
        store.as_ref(),
        "enrollment_code_created",
        Subtype::Attach,
        Action::Create,
        &[("for_user", &user.id)],
    )?;
    println!("Enrollment code: {}", new.code.as_str());
    println!(
        "Enrollment URL:  {}",
        ward_device::enrollment_url(&origin(&args.store), new.code.as_str())
    );
    println!(
        "Expires at:      {}",
        format_time(Some(new.record.expires_at))
    );
    println!(
        "The code works once; hand it to {} over a safe channel.",
        user.username
    );
    Ok(())
}

fn list(args: &StoreArgs) -> Result<()> {
    let store = open_store(args)?;
    let policy = load_policy(args)?;
    let now = OffsetDateTime::now_utc();
    println!(
        "{:<32} {:<16} {:<8} {:<13} {:<25} NAME",
        "DEVICE ID", "USER", "STATUS", "COMPLIANCE", "LAST CHECK-IN"
    );
    for device in registry::list(store.as_ref())? {
        let summary = device.summary(&policy, now);
        println!(
            "{:<32} {:<16} {:<8} {:<13} {:<25} {}",
            summary.device_id,
            summary.user,
            summary.status.as_str(),
            if summary.compliance.compliant {
                "compliant"
            } else {
                "not compliant"
            },
            format_time(summary.last_checkin),
            summary.name
        );
    }
    Ok(())
}

fn print_device(device: &Device, policy: &PosturePolicy, as_json: bool) -> Result<()> {
    let summary = device.summary(policy, OffsetDateTime::now_utc());
    if as_json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!("Device:          {}", summary.device_id);
    println!("Name:            {}", summary.name);
    println!("Kind:            {}", summary.kind.as_str());
    println!("User:            {} ({})", summary.user, summary.user_id);
    println!(
        "Status:          {} (reason: {})",
        summary.status.as_str(),
        summary.reason.map_or("-", RevokeReason::as_str)
    );
    println!(
        "Enrolled:        {}",
        format_time(Some(summary.enrolled_at))
    );
    println!("Last check-in:   {}", format_time(summary.last_checkin));
    println!("Last sync:       {}", format_time(summary.last_sync));
    println!(
        "Certificate:     serial {}, valid until {}",
        summary.certificate.serial,
        format_time(Some(summary.certificate.not_after))
    );
    if summary.compliance.compliant {
        println!("Compliance:      compliant");
    } else {
        println!(
            "Compliance:      not compliant: {}",
            summary.compliance.summary()
        );
    }
    println!(
        "Wipe requested:  {}",
        format_time(summary.wipe_requested_at)
    );
    println!(
        "Wipe confirmed:  {}",
        format_time(summary.wipe_confirmed_at)
    );
    Ok(())
}

fn show(args: &DeviceIdArgs) -> Result<()> {
    let id = parse_id(&args.id)?;
    let store = open_store(&args.store)?;
    let device = registry::require(store.as_ref(), &id)?;
    print_device(&device, &load_policy(&args.store)?, args.json)
}

/// Revokes a device (and requests its wipe) and records the change. A
/// device revoked before stays as it was: the error names its first
/// revocation.
fn change(
    store: &Arc<dyn Store>,
    id: &DeviceId,
    reason: Option<RevokeReason>,
    wipe: bool,
) -> Result<Device> {
    let now = OffsetDateTime::now_utc();
    let device = registry::revoke(store.as_ref(), id, reason, "ward-cli", now)?;
    let event = if wipe {
        "device_wipe_requested"
    } else {
        "device_revoked"
    };
    let reason_text = reason.map_or("-", RevokeReason::as_str);
    record_change(
        store.as_ref(),
        event,
        Subtype::Detach,
        Action::Update,
        &[("device", id.as_str()), ("reason", reason_text)],
    )?;
    Ok(device)
}

fn revoke(args: &RevokeArgs) -> Result<()> {
    let reason = RevokeReason::parse(&args.reason)?;
    let id = parse_id(&args.device.id)?;
    let store = open_store(&args.device.store)?;
    let device = change(&store, &id, Some(reason), false)?;
    if args.device.json {
        return print_device(&device, &load_policy(&args.device.store)?, true);
    }
    println!(
        "Revoked device {id} ({}); it wipes itself at its next check-in.",
        reason.as_str()
    );
    Ok(())
}

fn wipe(args: &WipeArgs) -> Result<()> {
    let reason = args
        .reason
        .as_deref()
        .map(RevokeReason::parse)
        .transpose()?;
    let id = parse_id(&args.device.id)?;
    let store = open_store(&args.device.store)?;
    let device = change(&store, &id, reason, true)?;
    if args.device.json {
        return print_device(&device, &load_policy(&args.device.store)?, true);
    }
    println!(
        "Requested a wipe of device {id}; it is revoked and wipes itself at its next check-in."
    );
    Ok(())
}

fn report(args: &DeviceIdArgs) -> Result<()> {
    let id = parse_id(&args.id)?;
    let store = open_store(&args.store)?;
    let policy = load_policy(&args.store)?;
    let report =
        ward_device::report::build(store.as_ref(), &id, &policy, OffsetDateTime::now_utc())?;
    // The report lists the patients the device fetched, so reading it is
    // recorded like any other access to that list.
    record_change(
        store.as_ref(),
        "device_report_read",
        Subtype::UseOfRestrictedFunction,
        Action::Read,
        &[("device", id.as_str())],
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

fn import_ca(args: &CaImportArgs) -> Result<()> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let cert_pem = read(&args.cert)?;
    let key_pem = zeroize::Zeroizing::new(read(&args.key)?);
    let ca = CertificateAuthority::import(&cert_pem, &key_pem).with_context(|| {
        format!(
            "importing {} and {}",
            args.cert.display(),
            args.key.display()
        )
    })?;
    let data = DataDir::new(args.data.dir());
    let (keys, _) = data
        .open_or_init(crate::serve::DEFAULT_ORG_NAME)
        .context("opening the data directory")?;
    let sealed = ca.sealed_key(&keys.master)?;
    // The key is written first: if the certificate write fails, the next
    // start reports that the certificate does not match the sealed key
    // rather than silently using a mix.
    write_atomic(
        &data.path().join("ca.key.sealed"),
        sealed.as_str().as_bytes(),
        0o600,
    )?;
    write_atomic(&data.ca_cert_path(), ca.to_pem().as_bytes(), 0o644)?;
    println!(
        "Imported the CA {}; restart the servers. Clients must now trust {}.",
        args.cert.display(),
        data.ca_cert_path().display()
    );
    println!(
        "Device certificates issued by the previous CA no longer work: enroll those devices again."
    );
    Ok(())
}
