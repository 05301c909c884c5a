//! `ward demo`: runs the exchange scenario on loopback and prints each
//! step with the audit records it left. Four `ward serve` processes (this
//! executable), each with its own temporary data directory and port, play
//! a primary care clinic, a specialist clinic, a pharmacy and a lab. A
//! physician enrolls her phone with the `ward-mobile` library and sends a
//! referral and an e-prescription from it, a pharmacist dispenses the
//! prescription, and the lab sends a result back. Every child process is
//! killed when the demo ends, also on error.

mod bundles;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use ward_auth::totp::{self, TotpSecret};
use ward_exchange::TrustEntry;
use ward_mobile::{Client, ClientOptions, KdfCost, Posture};
use zeroize::Zeroizing;

/// Options of `ward demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How long to wait for a server to start or a message to reach its final state, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// The physician's user name at the clinic.
const PHYSICIAN: &str = "mquill";
/// The physician's FHIR resource at the clinic.
const PHYSICIAN_RESOURCE: &str = "Practitioner/mquill";
/// The PIN that seals the demo phone's keys.
const PIN: &str = "482915";
/// Outbox retry settings that keep the demo short.
const FAST_RETRY: &[&str] = &["--exchange-retry-base", "1", "--exchange-retry-max", "2"];
/// Environment variables of the caller that would point a child at
/// another store or address.
const CLEARED_ENV: &[&str] = &["WARD_DATA", "WARD_DATABASE", "WARD_LISTEN", "WARD_BASE_URL"];

/// One organization: a running `ward serve` child.
struct Org {
    name: &'static str,
    child: Child,
    data: PathBuf,
    origin: String,
    log: PathBuf,
    /// Its exchange id, known after `ward org export`.
    id: String,
    /// Audit records already printed.
    audit_seen: usize,
}

/// The organizations of the demo. Dropping it kills every child and then
/// removes the temporary directory.
// NOTE: a SIGTERM or SIGKILL sent to the demo process alone skips the drop
// and leaves the children running; Ctrl-C in a terminal reaches them too,
// because they stay in the demo's process group.
struct Network {
    orgs: Vec<Org>,
    root: tempfile::TempDir,
    exe: PathBuf,
    timeout: Duration,
}

impl Drop for Network {
    fn drop(&mut self) {
        for org in &mut self.orgs {
            if let Err(error) = org.child.kill() {
                tracing::warn!(org = org.name, %error, "stopping a demo server failed");
            }
            let _ = org.child.wait();
        }
    }
}

/// Runs the demo; any failed step returns an error, so the exit status is
/// non-zero.
pub fn run(args: DemoArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the ward executable")?;
    let root = tempfile::Builder::new()
        .prefix("ward-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let mut network = Network {
        orgs: Vec::new(),
        root,
        exe,
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
    };

    step("Start four organizations, each a `ward serve` with its own data directory");
    for (name, role) in [
        ("clinic", "clinic"),
        ("specialist", "clinic"),
        ("pharmacy", "pharmacy"),
        ("lab", "lab"),
    ] {
        let org = network.start(name, role)?;
        println!(
            "  {name}: {} as a {role} (data {})",
            org.origin,
            org.data.display()
        );
        network.orgs.push(org);
    }
    network.print_audit()?;

    step("Exchange trust with `ward org export` and `ward org trust`");
    network.exchange_trust()?;
    network.print_audit()?;

    step("Create the physician (password and TOTP) and enroll her phone");
    let phone_dir = network.root.path().join("phone");
    let phone = network.enroll_physician(&phone_dir)?;
    network.print_audit()?;

    step("Load one patient into the clinic with `ward import`");
    network.import_patient()?;
    network.print_audit()?;

    step("From the phone: a referral to the specialist and an e-prescription to the pharmacy");
    let specialist = network.org(SPECIALIST).id.clone();
    let pharmacy = network.org(PHARMACY).id.clone();
    let referral = phone
        .send_message(&specialist, &bundles::referral())
        .context("sending the referral from the phone")?;
    println!("  referral queued as outbox message {referral}");
    let prescription = phone
        .send_message(&pharmacy, &bundles::prescription())
        .context("sending the e-prescription from the phone")?;
    println!("  e-prescription queued as outbox message {prescription}");
    for (what, id) in [("referral", &referral), ("e-prescription", &prescription)] {
        let status = network.wait_until(|| {
            let status = phone.message_status(id)?;
            // `queued` and `sent` messages are still being delivered.
            Ok((!matches!(status.status.as_str(), "queued" | "sent")).then_some(status))
        })?;
        if status.status != "delivered" {
            bail!(
                "the {what} ended as '{}' after {} attempts: {}",
                status.status,
                status.attempts,
                status.last_error.unwrap_or_default()
            );
        }
        println!("  {what}: delivered after {} attempts", status.attempts);
    }
    network.print_audit()?;

    step("A pharmacist at the pharmacy dispenses the prescription");
    network.dispense()?;
    let status = network.wait_until(|| {
        let status = phone.message_status(&prescription)?;
        Ok((status.status == "dispensed").then_some(status))
    })?;
    println!("  the phone sees the e-prescription as '{}'", status.status);
    network.print_audit()?;

    step("The lab sends a result back to the clinic");
    network.send_lab_result()?;
    network.print_audit()?;

    step("Done: every step succeeded; stopping the servers");
    Ok(())
}

const CLINIC: usize = 0;
const SPECIALIST: usize = 1;
const PHARMACY: usize = 2;
const LAB: usize = 3;

fn step(title: &str) {
    println!();
    println!("== {title}");
}

impl Network {
    fn org(&self, index: usize) -> &Org {
        &self.orgs[index]
    }

    /// Starts `ward serve` for `name` on a free port, retrying when another
    /// process takes the port first.
    fn start(&self, name: &'static str, role: &str) -> Result<Org> {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let data = dir.join("data");
        let log = dir.join("server.log");
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            match self.spawn(&data, &log, port, role) {
                Ok(child) => {
                    return Ok(Org {
                        name,
                        child,
                        data,
                        origin: format!("https://127.0.0.1:{port}"),
                        log,
                        id: String::new(),
                        audit_seen: 0,
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt ran"))
            .context(format!("starting the {name} server")))
    }

    /// Spawns one server and waits for its "Ward is serving" line.
    fn spawn(&self, data: &Path, log: &Path, port: u16, role: &str) -> Result<Child> {
        let stderr = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(&self.exe);
        command
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(FAST_RETRY)
            .args(["--role", role])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        for name in CLEARED_ENV {
            command.env_remove(name);
        }
        let mut child = command.spawn().context("spawning ward serve")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining stdout so the server does not block on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ward is serving") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let deadline = Instant::now() + self.timeout;
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                return Ok(child);
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "ward serve on port {port} did not start within {:?}; last log lines:\n{}",
                    self.timeout,
                    tail.join("\n")
                );
            }
        }
    }

    /// Runs `ward ARGS --data DATA` on the store of `org`, with `stdin` as
    /// its input, and fails with its error output when it fails.
    fn ward(&self, org: usize, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let org = &self.orgs[org];
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .arg("--data")
            .arg(&org.data)
            .env("WARD_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in CLEARED_ENV {
            command.env_remove(name);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("running ward {}", args.join(" ")))?;
        if let Some(text) = stdin
            && let Some(mut input) = child.stdin.take()
        {
            input.write_all(text.as_bytes())?;
        }
        drop(child.stdin.take());
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "ward {} failed for the {}: {}",
                args.join(" "),
                org.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }

    /// Makes the clinic and each other organization trust each other.
    fn exchange_trust(&mut self) -> Result<()> {
        let mut entries = Vec::new();
        for index in 0..self.orgs.len() {
            let output = self.ward(index, &["org", "export"], None)?;
            let entry: TrustEntry = serde_json::from_slice(&output.stdout)
                .context("reading the output of ward org export")?;
            let file = self
                .root
                .path()
                .join(format!("{}.trust.json", self.orgs[index].name));
            std::fs::write(&file, &output.stdout)
                .with_context(|| format!("writing {}", file.display()))?;
            println!(
                "  {} exported organization {} (fingerprint {})",
                self.orgs[index].name, entry.org_id, entry.fingerprint
            );
            self.orgs[index].id = entry.org_id.clone();
            entries.push((file, entry));
        }
        for other in [SPECIALIST, PHARMACY, LAB] {
            for (truster, trusted) in [(CLINIC, other), (other, CLINIC)] {
                let (file, entry) = &entries[trusted];
                let file = file.to_str().context("the temporary path is not UTF-8")?;
                self.ward(
                    truster,
                    &["org", "trust", "--fingerprint", &entry.fingerprint, file],
                    None,
                )?;
                println!(
                    "  {} trusts {}",
                    self.orgs[truster].name, self.orgs[trusted].name
                );
            }
        }
        println!(
            "  deliveries use mutual TLS: each organization presents its client certificate (urn:ward:org:ID), checked against the CA in its trust entry"
        );
        Ok(())
    }

    /// Adds the physician at the clinic, enrolls a phone for her in `dir`
    /// and signs her in on it with her password and a TOTP code.
    fn enroll_physician(&self, dir: &Path) -> Result<Client> {
        let password = new_password()?;
        let output = self.ward(
            CLINIC,
            &[
                "user",
                "add",
                "--username",
                PHYSICIAN,
                "--role",
                "physician",
                "--password-stdin",
                "--fhir-user",
                PHYSICIAN_RESOURCE,
            ],
            Some(&format!("{}\n", password.as_str())),
        )?;
        let stdout = Zeroizing::new(String::from_utf8_lossy(&output.stdout).into_owned());
        let secret = stdout
            .lines()
            .find_map(|line| line.strip_prefix("TOTP secret: "))
            .context("ward user add printed no TOTP secret")?;
        let secret = TotpSecret::from_base32(secret.trim())
            .map_err(|error| anyhow::anyhow!("the TOTP secret is invalid: {error}"))?;
        println!("  physician {PHYSICIAN} ({PHYSICIAN_RESOURCE}) created with a password and TOTP");

        let output = self.ward(
            CLINIC,
            &["device", "enroll-code", "--user", PHYSICIAN],
            None,
        )?;
        let stdout = Zeroizing::new(String::from_utf8_lossy(&output.stdout).into_owned());
        let code = stdout
            .lines()
            .find_map(|line| line.strip_prefix("Enrollment code: "))
            .context("ward device enroll-code printed no code")?
            .trim()
            .to_owned();
        let code = Zeroizing::new(code);

        let clinic = self.org(CLINIC);
        let ca = std::fs::read_to_string(clinic.data.join("ca.pem"))
            .context("reading the clinic's ca.pem")?;
        let options = ClientOptions {
            // A small PIN hash cost keeps the demo quick; apps keep the
            // default.
            kdf: KdfCost {
                memory_kib: 1024,
                iterations: 1,
            },
            device_name: "Demo phone".to_owned(),
            ..ClientOptions::default()
        };
        let phone = Client::open_with(dir, options).context("opening the phone's client")?;
        let posture = Posture {
            os: "ios".to_owned(),
            os_version: "17.4.1".to_owned(),
            screen_lock: true,
            storage_encrypted: true,
            rooted: false,
            app_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let enrollment = phone
            .enroll(&clinic.origin, &ca, &code, PIN, posture)
            .context("enrolling the phone")?;
        println!(
            "  phone enrolled as device {}, certificate valid until {}",
            enrollment.device_id, enrollment.not_after
        );
        let code = totp::code_at(&secret, time::OffsetDateTime::now_utc())
            .context("computing the TOTP code")?;
        phone
            .login(PHYSICIAN, &password, &code)
            .context("signing in on the phone")?;
        println!("  signed in on the phone over mutual TLS with a certificate-bound token");
        Ok(phone)
    }

    /// Loads the built-in patient into the clinic through its FHIR API.
    fn import_patient(&self) -> Result<()> {
        let file = self.root.path().join("patient.json");
        std::fs::write(&file, bundles::patient_record().to_string())
            .with_context(|| format!("writing {}", file.display()))?;
        let token = self.admin_token(CLINIC)?;
        let clinic = self.org(CLINIC);
        let base = format!("{}/fhir", clinic.origin);
        let ca = clinic.data.join("ca.pem");
        let file = file.to_str().context("the temporary path is not UTF-8")?;
        let ca = ca.to_str().context("the temporary path is not UTF-8")?;
        let output = self.ward(
            CLINIC,
            &[
                "import", "--server", &base, "--token", &token, "--ca", ca, file,
            ],
            None,
        )?;
        let summary = String::from_utf8_lossy(&output.stdout);
        for line in summary.lines().filter(|line| !line.trim().is_empty()) {
            println!("  {line}");
        }
        Ok(())
    }

    /// Mints a short-lived administrator token of `org`.
    fn admin_token(&self, org: usize) -> Result<Zeroizing<String>> {
        let output = self.ward(
            org,
            &["token", "--scope", "system/*.cruds", "--ttl", "10m"],
            None,
        )?;
        Ok(Zeroizing::new(
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        ))
    }

    /// Sends the lab result from the lab to the clinic and waits for its
    /// delivery.
    fn send_lab_result(&self) -> Result<()> {
        let token = self.user_token(LAB, "lab_technician", "lab-analyst")?;
        let lab = self.org(LAB);
        let http = self.https_client(LAB)?;
        let clinic = &self.org(CLINIC).id;
        let response = http
            .post(format!(
                "{}/fhir/$send-message?recipient={clinic}",
                lab.origin
            ))
            .bearer_auth(token.as_str())
            .header("content-type", "application/fhir+json")
            .body(bundles::lab_result().to_string())
            .send()
            .context("sending the lab result")?;
        let status = response.status();
        let location = response
            .headers()
            .get("content-location")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response.text().unwrap_or_default();
        let Some(location) = location.filter(|_| status.as_u16() == 202) else {
            bail!("the lab's $send-message responded with {status}: {body}");
        };
        println!("  lab result queued at {location}");
        let outbox = self.wait_until(|| {
            let reply: Value = http
                .get(&location)
                .bearer_auth(token.as_str())
                .send()?
                .json()?;
            Ok((reply["status"] != "queued" && reply["status"] != "sent").then_some(reply))
        })?;
        if outbox["status"] != "delivered" {
            bail!(
                "the lab result ended as {}: {}",
                outbox["status"],
                outbox["lastError"]
            );
        }
        println!(
            "  lab result delivered to the clinic after {} attempts",
            outbox["attempts"]
        );
        Ok(())
    }

    /// Mints a short-lived token of `org` for the user `subject` with
    /// `role`, as `Practitioner/SUBJECT`.
    fn user_token(&self, org: usize, role: &str, subject: &str) -> Result<Zeroizing<String>> {
        let fhir_user = format!("Practitioner/{subject}");
        let output = self.ward(
            org,
            &[
                "token",
                "--scope",
                "user/*.cruds",
                "--ttl",
                "10m",
                "--role",
                role,
                "--subject",
                subject,
                "--fhir-user",
                &fhir_user,
            ],
            None,
        )?;
        Ok(Zeroizing::new(
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        ))
    }

    /// Builds an HTTPS client that trusts only the CA of `org`.
    fn https_client(&self, org: usize) -> Result<reqwest::blocking::Client> {
        let org = self.org(org);
        let ca = std::fs::read(org.data.join("ca.pem"))
            .with_context(|| format!("reading the {}'s ca.pem", org.name))?;
        Ok(reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?)
    }

    /// Records a MedicationDispense for the prescription the pharmacy filed,
    /// as a pharmacist; the pharmacy then reports it to the clinic.
    fn dispense(&self) -> Result<()> {
        let pharmacy = self.org(PHARMACY);
        let http = self.https_client(PHARMACY)?;
        let admin = self.admin_token(PHARMACY)?;
        let bundle: Value = http
            .get(format!("{}/fhir/MedicationRequest", pharmacy.origin))
            .bearer_auth(admin.as_str())
            .send()
            .context("searching the pharmacy's prescriptions")?
            .json()
            .context("reading the pharmacy's prescriptions")?;
        let request = bundle["entry"]
            .as_array()
            .and_then(|entries| entries.first())
            .map(|entry| entry["resource"].clone())
            .context(
                "no MedicationRequest found at the pharmacy, so the e-prescription was not filed",
            )?;
        let request_id = request["id"]
            .as_str()
            .context("the MedicationRequest has no id")?;
        println!("  the pharmacy filed the prescription as MedicationRequest/{request_id}");
        // Access follows the care team, so the pharmacy's administrator
        // puts the pharmacist on the care team of the filed patient first.
        let care_team = serde_json::json!({
            "resourceType": "CareTeam",
            "status": "active",
            "subject": request["subject"],
            "participant": [{ "member": { "reference": "Practitioner/pharm-demo" } }]
        });
        let response = http
            .post(format!("{}/fhir/CareTeam", pharmacy.origin))
            .bearer_auth(admin.as_str())
            .header("content-type", "application/fhir+json")
            .body(care_team.to_string())
            .send()
            .context("adding the pharmacist to the care team")?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().unwrap_or_default();
            bail!("creating the CareTeam at the pharmacy failed with {status}: {body}");
        }
        println!("  pharmacist pharm-demo added to the patient's care team");
        let dispense = serde_json::json!({
            "resourceType": "MedicationDispense",
            "status": "completed",
            "medicationCodeableConcept": request["medicationCodeableConcept"],
            "subject": request["subject"],
            "performer": [{ "actor": { "reference": "Practitioner/pharm-demo" } }],
            "authorizingPrescription": [{ "reference": format!("MedicationRequest/{request_id}") }],
            "quantity": { "value": 30, "unit": "tablet" },
            "whenHandedOver": "2026-12-01T15:30:00Z"
        });
        let token = self.user_token(PHARMACY, "pharmacist", "pharm-demo")?;
        let response = http
            .post(format!("{}/fhir/MedicationDispense", pharmacy.origin))
            .bearer_auth(token.as_str())
            .header("content-type", "application/fhir+json")
            .body(dispense.to_string())
            .send()
            .context("recording the MedicationDispense")?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().unwrap_or_default();
            bail!("creating the MedicationDispense at the pharmacy failed with {status}: {body}");
        }
        println!("  pharmacist pharm-demo recorded a MedicationDispense ({status})");
        Ok(())
    }

    /// Calls `poll` every 200 ms until it returns a value or the timeout
    /// passes.
    fn wait_until<T>(&self, mut poll: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(value) = poll()? {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!(
                    "no final state within {:?}; see the server logs under {}",
                    self.timeout,
                    self.root.path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Prints, for each organization, the audit records written since the
    /// last call: their count and their event names.
    fn print_audit(&mut self) -> Result<()> {
        for index in 0..self.orgs.len() {
            let output = self.ward(index, &["audit", "export"], None)?;
            let text = String::from_utf8_lossy(&output.stdout);
            let events: Vec<Value> = text
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()
                .context("reading the output of ward audit export")?;
            let org = &mut self.orgs[index];
            let new = events.get(org.audit_seen..).unwrap_or_default();
            org.audit_seen = events.len();
            let mut names: BTreeMap<String, usize> = BTreeMap::new();
            for event in new {
                *names.entry(event_name(event)).or_default() += 1;
            }
            let names: Vec<String> = names
                .into_iter()
                .map(|(name, count)| format!("{name} x{count}"))
                .collect();
            println!(
                "  audit {}: {} new records{}{}",
                org.name,
                new.len(),
                if names.is_empty() { "" } else { ": " },
                names.join(", ")
            );
            if org.child.try_wait().ok().flatten().is_some() {
                bail!("the {} server exited; see {}", org.name, org.log.display());
            }
        }
        Ok(())
    }
}

/// Returns the name of an AuditEvent: its `event` detail when it has one (the
/// exchange events), else its subtype or type code and its action.
fn event_name(event: &Value) -> String {
    let detail = event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|entity| {
            entity["detail"]
                .as_array()?
                .iter()
                .find(|detail| detail["type"] == "event")?["valueString"]
                .as_str()
        });
    if let Some(name) = detail {
        return name.to_owned();
    }
    let code = event["subtype"]
        .as_array()
        .and_then(|subtypes| subtypes.last())
        .and_then(|subtype| subtype["code"].as_str())
        .or_else(|| event["type"]["code"].as_str())
        .unwrap_or("unknown");
    let action = event["action"].as_str().unwrap_or("?");
    format!("{code}/{action}")
}

/// Generates a password of 32 random hex digits.
fn new_password() -> Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new([0u8; 16]);
    aws_lc_rs::rand::fill(bytes.as_mut())
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(Zeroizing::new(hex::encode(bytes.as_ref())))
}

/// Returns a port that was free a moment ago on 127.0.0.1; another
/// process may take it before the server binds, so `start` retries.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_name_prefers_exchange_detail() {
        let exchange = json!({
            "type": { "code": "rest" }, "action": "E",
            "subtype": [{ "code": "operation" }],
            "entity": [{ "detail": [{ "type": "event", "valueString": "message_queued" }] }]
        });
        assert_eq!(event_name(&exchange), "message_queued");
        let read =
            json!({ "type": { "code": "rest" }, "action": "R", "subtype": [{ "code": "read" }] });
        assert_eq!(event_name(&read), "read/R");
        assert_eq!(event_name(&json!({})), "unknown/?");
    }
}
