//! `ward user`: adds, lists and disables users, and resets their second
//! factor. The commands open the data directory's store directly, which is
//! safe while a server runs on it (SQLite in WAL mode, or PostgreSQL).

use std::io::Read as _;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ward_audit::record::{Action, Subtype};
use ward_server::oauth::TOTP_ISSUER;
use ward_server::oauth::identity::{self, Enrollment, NewUser};
use ward_server::setup::DataDir;
use ward_store::Store;
use zeroize::Zeroizing;

use crate::admin_audit::record_change;
use crate::cli::{DataArgs, ServeArgs};
use crate::config::resolve;

/// Options of `ward user`.
#[derive(Debug, Args)]
pub struct UserArgs {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: UserCommand,
}

/// The `ward user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; prints the TOTP secret and recovery codes once.
    Add(UserAddArgs),
    /// List the users (names, roles, status, passkey count; no secrets).
    List(StoreArgs),
    /// Disable a user: ends their sessions, revokes their refresh tokens, and their access tokens stop working.
    Disable(UserNameArgs),
    /// Replace a user's TOTP secret and recovery codes and remove their passkeys; prints the new codes once.
    ResetMfa(UserNameArgs),
}

/// The location of the identity records: the data directory (keys,
/// `ward.toml`) and optionally the database.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The data directory.
    #[command(flatten)]
    pub data: DataArgs,
    /// The database, when not the data directory's own: as for `ward serve --database`.
    #[arg(long, env = "WARD_DATABASE")]
    pub database: Option<String>,
}

/// Options of `ward user add`.
#[derive(Debug, Args)]
pub struct UserAddArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The sign-in name.
    #[arg(long)]
    pub username: String,
    /// The role: physician, nurse, pharmacist, front_desk, security_admin, auditor, patient or lab_technician.
    #[arg(long)]
    pub role: String,
    /// The user's FHIR resource: Practitioner/ID, or Patient/ID (required for the patient role).
    #[arg(long)]
    pub fhir_user: Option<String>,
    /// Read the password from standard input (one line) instead of generating one.
    #[arg(long)]
    pub password_stdin: bool,
}

/// A data directory and a user name.
#[derive(Debug, Args)]
pub struct UserNameArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The sign-in name.
    pub username: String,
}

/// Opens the store of an existing data directory.
pub fn open_store(args: &StoreArgs) -> Result<Arc<dyn Store>> {
    let serve_args = ServeArgs {
        data: args.data.clone(),
        database: args.database.clone(),
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
    ward_store::open(&settings.store, &keys.master)
        .with_context(|| format!("opening the database {}", settings.store.describe()))
}

/// Runs `ward user`.
pub fn run(args: UserArgs) -> Result<()> {
    match args.command {
        UserCommand::Add(args) => add(&args),
        UserCommand::List(data) => list(&data),
        UserCommand::Disable(args) => disable(&args),
        UserCommand::ResetMfa(args) => reset_mfa(&args),
    }
}

/// Length of a generated password, in characters.
const GENERATED_PASSWORD_LEN: usize = 20;

fn add(args: &UserAddArgs) -> Result<()> {
    let (password, generated) = if args.password_stdin {
        let mut text = Zeroizing::new(String::new());
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from standard input")?;
        let line = Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
        (line, false)
    } else {
        (generate_password()?, true)
    };
    let store = open_store(&args.store)?;
    let new = NewUser {
        username: &args.username,
        role: &args.role,
        fhir_user: args.fhir_user.as_deref(),
        password: &password,
    };
    let enrollment = identity::create_user(store.as_ref(), &new, TOTP_ISSUER)
        .with_context(|| format!("adding the user {}", args.username))?;
    record_change(
        store.as_ref(),
        "user_added",
        Subtype::UserSecurityAttributesChanged,
        Action::Create,
        &[
            ("user", &enrollment.user_id),
            ("username", &args.username),
            ("role", &args.role),
        ],
    )?;
    println!(
        "Created user {} (id {}) with role {}.",
        args.username, enrollment.user_id, args.role
    );
    if generated {
        println!("Password: {}", password.as_str());
    }
    print_enrollment(&enrollment);
    Ok(())
}

/// Generates a password from 120 random bits, in characters that survive
/// copying by hand.
fn generate_password() -> Result<Zeroizing<String>> {
    let token = ward_auth::oauth::generate_token().context("generating a password")?;
    Ok(Zeroizing::new(
        token.chars().take(GENERATED_PASSWORD_LEN).collect(),
    ))
}

fn print_enrollment(enrollment: &Enrollment) {
    println!("TOTP secret: {}", enrollment.secret.as_str());
    println!("Authenticator URI: {}", enrollment.uri.as_str());
    println!("Recovery codes (each works once):");
    for code in &enrollment.recovery_codes {
        println!("  {}", code.as_str());
    }
    println!("These are shown only now: hand them to the user over a safe channel.");
}

fn list(data: &StoreArgs) -> Result<()> {
    let store = open_store(data)?;
    let users = identity::list_users(store.as_ref())?;
    println!(
        "{:<24} {:<16} {:<24} {:<9} {:<8} ID",
        "USER NAME", "ROLE", "FHIR USER", "STATUS", "PASSKEYS"
    );
    for user in &users {
        println!(
            "{:<24} {:<16} {:<24} {:<9} {:<8} {}",
            user.username,
            user.role,
            user.fhir_user.as_deref().unwrap_or("-"),
            if user.disabled { "disabled" } else { "active" },
            user.passkeys.len(),
            user.id
        );
    }
    Ok(())
}

fn disable(args: &UserNameArgs) -> Result<()> {
    let store = open_store(&args.store)?;
    let revoked = identity::disable_user(store.as_ref(), &args.username)
        .with_context(|| format!("disabling the user {}", args.username))?;
    record_change(
        store.as_ref(),
        "user_disabled",
        Subtype::UserSecurityAttributesChanged,
        Action::Update,
        &[("username", &args.username)],
    )?;
    println!(
        "Disabled {}: ended {} session(s) and revoked {} refresh token famil{}.",
        args.username,
        revoked.sessions,
        revoked.families,
        if revoked.families == 1 { "y" } else { "ies" }
    );
    Ok(())
}

fn reset_mfa(args: &UserNameArgs) -> Result<()> {
    let store = open_store(&args.store)?;
    let enrollment = identity::reset_mfa(store.as_ref(), &args.username, TOTP_ISSUER)
        .with_context(|| format!("resetting the second factor of {}", args.username))?;
    record_change(
        store.as_ref(),
        "user_mfa_reset",
        Subtype::UserSecurityAttributesChanged,
        Action::Update,
        &[("username", &args.username)],
    )?;
    println!(
        "New second factor for {}; removed {} passkey(s), ended {} session(s) and revoked {} refresh token famil{}.",
        args.username,
        enrollment.passkeys_removed,
        enrollment.ended.sessions,
        enrollment.ended.families,
        if enrollment.ended.families == 1 {
            "y"
        } else {
            "ies"
        }
    );
    print_enrollment(&enrollment);
    Ok(())
}
