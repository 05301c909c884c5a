//! `ward-mobile`: the mobile client core on the command line, for testing
//! a server the way a phone would and for scripts.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ward_mobile::{Client, ClientOptions, MessageStatus, Posture, Vitals};
use zeroize::Zeroizing;

/// The Ward mobile client on the command line.
#[derive(Parser)]
#[command(name = "ward-mobile", version)]
struct Cli {
    /// Client directory holding the keys and the encrypted store.
    #[arg(long, env = "WARD_MOBILE_DIR", default_value = "./ward-mobile")]
    dir: PathBuf,
    /// Idle time after which the keys lock, in seconds.
    #[arg(long, default_value_t = 300)]
    idle_lock_secs: u64,
    /// Time without server contact after which cached data is purged, in
    /// hours.
    #[arg(long, default_value_t = 72)]
    max_offline_hours: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this device with a one-time code (PIN from WARD_MOBILE_PIN or
    /// a prompt).
    Enroll {
        /// Server URL, such as https://127.0.0.1:8443.
        #[arg(long)]
        server: String,
        /// The organization CA certificate (PEM), from `ward ca`.
        #[arg(long)]
        ca: PathBuf,
        /// The enrollment code from `ward device enroll-code`.
        #[arg(long)]
        code: String,
        /// Device name shown to administrators.
        #[arg(long, default_value = "ward-mobile")]
        name: String,
        /// Report that no screen lock is set.
        #[arg(long)]
        no_screen_lock: bool,
        /// Report that storage is not encrypted.
        #[arg(long)]
        unencrypted_storage: bool,
    },
    /// Create keys without enrolling, for a server that takes bearer tokens
    /// (PIN from WARD_MOBILE_PIN or a prompt).
    Provision {
        /// Server URL, such as https://127.0.0.1:8443.
        #[arg(long)]
        server: String,
        /// The organization CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
    },
    /// Sign in (password from WARD_MOBILE_PASSWORD and code from
    /// WARD_MOBILE_TOTP, or prompts).
    Login {
        /// User name.
        #[arg(long)]
        user: String,
    },
    /// Use a bearer token from `ward token` instead of signing in.
    Token {
        /// The access token.
        #[arg(long, env = "WARD_MOBILE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Send drafts and pull changes.
    Sync,
    /// List cached patients.
    Patients,
    /// Show a cached patient's chart.
    Show {
        /// Patient id.
        patient: String,
        /// Print every resource as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write documentation offline; it is sent at the next sync.
    Document {
        #[command(subcommand)]
        kind: DocumentKind,
    },
    /// Remove a draft.
    Discard {
        /// Draft id.
        draft: String,
    },
    /// Show the state of the client.
    Status,
    /// Lock the keys (the CLI unlocks them for each command).
    Lock,
    /// Report the posture to the server, and wipe this device when the
    /// server orders a wipe.
    Checkin {
        /// Report a changed posture: whether a screen lock is set. With
        /// this or --storage-encrypted, the new posture is stored and
        /// reported. An option left out counts as true.
        #[arg(long)]
        screen_lock: Option<bool>,
        /// Report a changed posture: whether storage is encrypted.
        #[arg(long)]
        storage_encrypted: Option<bool>,
    },
    /// Send a FHIR message Bundle to a trusted organization through the
    /// server's outbox, then print its delivery status.
    Send {
        /// The recipient organization id, from `ward org list`.
        #[arg(long)]
        to: String,
        /// The message Bundle (JSON) to send.
        #[arg(long)]
        file: PathBuf,
    },
    /// Print the delivery status of a sent message.
    Outbox {
        /// The outbox id that `send` printed.
        id: String,
    },
    /// Renew the device certificate now (check-ins also renew it a week
    /// before it expires); sign in again afterwards.
    Renew,
    /// Erase the keys and the store.
    Wipe,
}

#[derive(Subcommand)]
enum DocumentKind {
    /// A clinical note.
    Note {
        /// Patient id.
        #[arg(long)]
        patient: String,
        /// Title.
        #[arg(long, default_value = "Clinical note")]
        title: String,
        /// Note text.
        #[arg(long)]
        text: String,
        /// Id of a cached DocumentReference this note replaces.
        #[arg(long)]
        amends: Option<String>,
    },
    /// Vital signs.
    Vitals {
        /// Patient id.
        #[arg(long)]
        patient: String,
        /// Heart rate in beats per minute.
        #[arg(long)]
        heart_rate: Option<f64>,
        /// Systolic blood pressure in mmHg.
        #[arg(long)]
        systolic: Option<f64>,
        /// Diastolic blood pressure in mmHg.
        #[arg(long)]
        diastolic: Option<f64>,
        /// Respiratory rate in breaths per minute.
        #[arg(long)]
        respiratory_rate: Option<f64>,
        /// Body temperature in degrees Celsius.
        #[arg(long)]
        temperature: Option<f64>,
        /// Oxygen saturation in percent.
        #[arg(long)]
        spo2: Option<f64>,
        /// Body weight in kilograms.
        #[arg(long)]
        weight: Option<f64>,
    },
}

/// Reads a secret from `variable` or, when unset, from a prompt on
/// standard input.
// NOTE: the prompt echoes what is typed; set the environment variable to
// keep a secret off the screen.
fn secret(variable: &str, prompt: &str) -> Result<Zeroizing<String>> {
    if let Ok(value) = std::env::var(variable) {
        return Ok(Zeroizing::new(value));
    }
    eprint!("{prompt}: ");
    std::io::stderr().flush().ok();
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("reading {prompt} from standard input (or set {variable})"))?;
    Ok(Zeroizing::new(
        line.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

fn pin() -> Result<Zeroizing<String>> {
    secret("WARD_MOBILE_PIN", "PIN")
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARD_MOBILE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut options = ClientOptions {
        idle_lock_secs: cli.idle_lock_secs,
        max_offline_secs: cli.max_offline_hours * 3600,
        ..ClientOptions::default()
    };
    if let Command::Enroll { name, .. } = &cli.command {
        options.device_name = name.clone();
    }
    let client = Client::open_with(&cli.dir, options)
        .with_context(|| format!("opening the client directory {}", cli.dir.display()))?;
    run(&client, cli.command)
}

fn read_ca(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading the CA certificate {}", path.display()))
}

fn run(client: &Client, command: Command) -> Result<()> {
    match command {
        Command::Enroll {
            server,
            ca,
            code,
            no_screen_lock,
            unencrypted_storage,
            ..
        } => {
            let ca = read_ca(&ca)?;
            let posture = Posture::of_this_machine(!no_screen_lock, !unencrypted_storage);
            let enrollment = client.enroll(&server, &ca, &code, &pin()?, posture)?;
            println!("enrolled as device {}", enrollment.device_id);
            println!("certificate valid until {}", enrollment.not_after);
            for failure in &enrollment.compliance.failures {
                println!("not compliant: {}: {}", failure.rule, failure.message);
            }
        }
        Command::Provision { server, ca } => {
            client.provision(&server, &read_ca(&ca)?, &pin()?)?;
            println!("keys created for {server}; add a token with `ward-mobile token`");
        }
        Command::Wipe => {
            client.wipe()?;
            println!("wiped {}", client.dir().display());
        }
        Command::Status => {
            if client.status()?.has_keys {
                unlock(client)?;
            }
            print_status(client)?;
        }
        command => {
            unlock(client)?;
            unlocked(client, command)?;
        }
    }
    Ok(())
}

fn unlock(client: &Client) -> Result<()> {
    client.unlock(&pin()?)?;
    Ok(())
}

fn unlocked(client: &Client, command: Command) -> Result<()> {
    match command {
        Command::Login { user } => {
            let password = secret("WARD_MOBILE_PASSWORD", "password")?;
            let totp = secret("WARD_MOBILE_TOTP", "one-time code")?;
            client.login(&user, &password, &totp)?;
            println!("signed in as {user}");
        }
        Command::Token { token } => {
            client.use_bearer_token(&token)?;
            println!("token stored");
        }
        Command::Sync => {
            let report = client.sync()?;
            println!(
                "{} sync: {} patients, {} requests, {} bytes, {} resources received, {} changed, {} deleted, {} drafts sent, {} conflicts, {} ms",
                if report.full { "full" } else { "delta" },
                report.patients,
                report.requests,
                report.bytes_received,
                report.resources_received,
                report.resources_changed,
                report.resources_deleted,
                report.drafts_sent,
                report.conflicts,
                report.millis
            );
        }
        Command::Patients => {
            for patient in client.patients()? {
                println!(
                    "{}\t{}\t{}\t{}\t{} resources",
                    patient.id,
                    patient.name,
                    patient.birth_date.unwrap_or_default(),
                    patient.gender.unwrap_or_default(),
                    patient.resources
                );
            }
        }
        Command::Show { patient, json } => {
            let record = client.show(&patient)?;
            println!("{} ({})", record.patient.name, record.patient.id);
            for resource in record.resources {
                if json {
                    println!("{}", resource.json);
                } else {
                    println!(
                        "{}/{}\t{}",
                        resource.resource_type, resource.id, resource.summary
                    );
                }
            }
            for draft in record.drafts {
                println!(
                    "draft {} {} {:?}",
                    draft.id, draft.resource_type, draft.state
                );
            }
        }
        Command::Document { kind } => document(client, kind)?,
        Command::Discard { draft } => {
            client.discard_draft(&draft)?;
            println!("draft {draft} removed");
        }
        Command::Lock => {
            client.lock();
            println!("locked");
        }
        Command::Checkin {
            screen_lock,
            storage_encrypted,
        } => {
            let answer = if screen_lock.is_some() || storage_encrypted.is_some() {
                let posture = Posture::of_this_machine(
                    screen_lock.unwrap_or(true),
                    storage_encrypted.unwrap_or(true),
                );
                client.checkin_with(posture)?
            } else {
                client.checkin()?
            };
            println!(
                "status {}, compliant {}",
                answer.status, answer.compliance.compliant
            );
            for failure in &answer.compliance.failures {
                println!("not compliant: {}: {}", failure.rule, failure.message);
            }
            if answer.wipe {
                println!("the server ordered a wipe; this device is wiped and the wipe confirmed");
            }
        }
        Command::Send { to, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading the message Bundle {}", file.display()))?;
            let bundle: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let id = client.send_message(&to, &bundle)?;
            println!("queued message {id} for {to}");
            print_message_status(&client.message_status(&id)?);
        }
        Command::Outbox { id } => print_message_status(&client.message_status(&id)?),
        Command::Renew => {
            let not_after = client.renew()?;
            println!("renewed the device certificate, valid until {not_after}; sign in again");
        }
        Command::Enroll { .. } | Command::Provision { .. } | Command::Wipe | Command::Status => {
            bail!("this command runs without unlocking")
        }
    }
    Ok(())
}

fn document(client: &Client, kind: DocumentKind) -> Result<()> {
    match kind {
        DocumentKind::Note {
            patient,
            title,
            text,
            amends,
        } => {
            let id = client.document_note(&patient, &title, &text, amends)?;
            println!("note saved as draft {id}; it is sent at the next sync");
        }
        DocumentKind::Vitals {
            patient,
            heart_rate,
            systolic,
            diastolic,
            respiratory_rate,
            temperature,
            spo2,
            weight,
        } => {
            let vitals = Vitals {
                heart_rate,
                systolic,
                diastolic,
                respiratory_rate,
                temperature_c: temperature,
                spo2,
                weight_kg: weight,
            };
            let ids = client.document_vitals(&patient, vitals)?;
            println!(
                "{} observations saved as drafts: {}",
                ids.len(),
                ids.join(" ")
            );
        }
    }
    Ok(())
}

fn print_message_status(status: &MessageStatus) {
    println!(
        "message {} to {}: {} after {} attempts",
        status.id, status.recipient, status.status, status.attempts
    );
    let meaning = match status.status.as_str() {
        "queued" => "not transmitted yet; the server retries",
        "sent" => "transmitted, but the recipient has not confirmed receipt; the server retries",
        "delivered" => "the recipient filed it",
        "dispensed" => "the pharmacy reported it dispensed",
        "failed" => "the server gave up; send it again or call the recipient",
        _ => "",
    };
    if !meaning.is_empty() {
        println!("status {}: {meaning}", status.status);
    }
    if let Some(code) = &status.response_code {
        println!("acknowledgement: {code}");
    }
    if let Some(error) = &status.last_error {
        println!("last error: {error}");
    }
}

fn print_status(client: &Client) -> Result<()> {
    let status = client.status()?;
    let enrolled = match status.enrolled {
        Some(true) => "yes",
        Some(false) if status.has_keys => "no (provisioned: bearer tokens only, no certificate)",
        Some(false) => "no",
        None => "unknown while locked",
    };

    println!("keys: {}", if status.has_keys { "yes" } else { "no" });
    println!("enrolled: {enrolled}");
    println!("unlocked: {}", status.unlocked);
    if let Some(server) = &status.server_url {
        println!("server: {server}");
    }
    if let Some(device) = &status.device_id {
        println!("device: {device}");
    }
    if let Some(not_after) = &status.certificate_not_after {
        println!("certificate valid until: {not_after}");
    }
    if let Some(user) = &status.user {
        println!("user: {user}");
    }
    if let Some(contact) = &status.last_contact {
        println!("last contact: {contact}");
    }
    if let Some(deadline) = &status.offline_deadline {
        println!("cached data purged after: {deadline}");
    }
    println!("wrong PINs: {}", status.failed_pins);
    println!("patients: {}", status.patients);
    println!("cached resources: {}", status.cached_resources);
    println!("drafts: {}", status.drafts.len());
    for conflict in &status.conflicts {
        println!(
            "conflict: draft {} ({} of patient {}): {}",
            conflict.id,
            conflict.resource_type,
            conflict.patient_id,
            conflict.message.as_deref().unwrap_or("")
        );
    }
    if let Some(report) = &status.last_sync {
        println!(
            "last sync: {} bytes, {} resources received, {} ms",
            report.bytes_received, report.resources_received, report.millis
        );
    }
    Ok(())
}
