//! The client object an app holds: it ties the keys, the encrypted store,
//! sign-in, sync and documentation together and enforces the idle lock,
//! the offline window and the wipe.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::device::{self, Checkin, Enrollment, Posture};
use crate::documents::{self, DraftInfo, DraftState, Vitals};
use crate::error::{MobileError, MobileResult};
use crate::http::Transport;
use crate::keys::{self, KdfCost, KeyStore, UnlockedKeys};
use crate::signin::{self, Credentials, TokenSet};
use crate::store::{self, Store, kind};
use crate::sync::{self, Puller, SyncReport};

/// Settings of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Idle time after which the keys are locked, in seconds.
    pub idle_lock_secs: u64,
    /// Time since the last successful server contact after which cached
    /// patient data is purged, in seconds.
    pub max_offline_secs: u64,
    /// Wrong PINs in a row after which the client wipes itself.
    pub max_wrong_pins: u32,
    /// Argon2id cost of the PIN hash.
    pub kdf: KdfCost,
    /// Name of the device sent at enrollment.
    pub device_name: String,
    /// Time after a check-in during which [`Client::sync`] does not check
    /// in again, in seconds. 0 checks in at every sync. A revoked device
    /// still learns of its wipe at once, because its next FHIR request is
    /// rejected with 401 and the client then checks in.
    pub checkin_interval_secs: u64,
    /// Time before its certificate expires at which a check-in renews it
    /// (`/device/renew`, the current certificate proving possession), in
    /// seconds. The stored tokens are bound to the old certificate, so the
    /// user signs in again after a renewal.
    pub renew_before_secs: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            idle_lock_secs: 5 * 60,
            max_offline_secs: 72 * 3600,
            max_wrong_pins: 10,
            kdf: KdfCost::default(),
            device_name: "ward-mobile".to_owned(),
            checkin_interval_secs: 0,
            renew_before_secs: 7 * 24 * 3600,
        }
    }
}

/// A cached patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientSummary {
    /// Patient id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Birth date, when known.
    pub birth_date: Option<String>,
    /// Administrative gender, when known.
    pub gender: Option<String>,
    /// Cached resources of this patient, the Patient included.
    pub resources: u32,
}

/// One cached resource of a patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResource {
    /// Resource type.
    pub resource_type: String,
    /// Resource id.
    pub id: String,
    /// Server version.
    pub version_id: Option<String>,
    /// A one-line description.
    pub summary: String,
    /// The resource as JSON.
    pub json: String,
}

/// A patient's cached chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientRecord {
    /// The patient.
    pub patient: PatientSummary,
    /// Every cached resource of the patient, by type.
    pub resources: Vec<CachedResource>,
    /// Drafts for the patient not yet on the server.
    pub drafts: Vec<DraftInfo>,
}

/// The state of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Whether sealed keys exist, made by `enroll` or `provision`.
    pub has_keys: bool,
    /// Whether the device has a certificate from enrollment. It is `None`
    /// while the keys are locked, because the configuration that records
    /// it is sealed. A provisioned device reports `Some(false)`, because it
    /// uses bearer tokens and has no certificate.
    pub enrolled: Option<bool>,
    /// Whether the keys are unlocked now.
    pub unlocked: bool,
    /// Consecutive wrong PINs.
    pub failed_pins: u32,
    /// Last successful server contact (RFC 3339).
    pub last_contact: Option<String>,
    /// When cached data will be purged without contact (RFC 3339).
    pub offline_deadline: Option<String>,
    /// The server, when unlocked.
    pub server_url: Option<String>,
    /// The device id, when unlocked and enrolled with a certificate.
    pub device_id: Option<String>,
    /// End of the certificate's validity, when unlocked.
    pub certificate_not_after: Option<String>,
    /// The signed-in user, when unlocked.
    pub user: Option<String>,
    /// Patients on the panel, when unlocked.
    pub patients: u32,
    /// Cached resources, when unlocked.
    pub cached_resources: u64,
    /// Every draft, when unlocked.
    pub drafts: Vec<DraftInfo>,
    /// Drafts in conflict with the server, when unlocked.
    pub conflicts: Vec<DraftInfo>,
    /// The last sync, when unlocked.
    pub last_sync: Option<SyncReport>,
}

/// Server settings and the device certificate, stored sealed.
#[derive(Serialize, Deserialize)]
struct ServerConfig {
    origin: String,
    ca_pem: String,
    device_id: Option<String>,
    certificate_pem: Option<String>,
    not_after: Option<String>,
    posture: Option<Posture>,
}

const CONFIG_KEY: &str = "server";
const TOKEN_KEY: &str = "tokens";
/// The Unix time of the last successful check-in, stored sealed.
const CHECKIN_KEY: &str = "last-checkin";

/// Keys and store while unlocked.
pub(crate) struct Session {
    keys: UnlockedKeys,
    store: Store,
    last_activity: Instant,
}

/// The mobile client core. Every method takes `&self` and is safe to call
/// from several threads; calls run one at a time.
pub struct Client {
    dir: PathBuf,
    options: ClientOptions,
    keys: KeyStore,
    session: Mutex<Option<Session>>,
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(unix: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
}

/// Checks a server URL and returns its origin (`https://host:port`).
fn origin_of(server_url: &str) -> MobileResult<String> {
    let url = url::Url::parse(server_url).map_err(|e| {
        MobileError::invalid("server URL", format!("'{server_url}' is not a URL: {e}"))
    })?;
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err(MobileError::invalid(
            "server URL",
            format!("'{server_url}' must be an https:// URL such as https://127.0.0.1:8443"),
        ));
    }
    Ok(url.origin().ascii_serialization())
}

impl Client {
    /// Opens the client directory `dir` (created with mode 0700 when
    /// missing) with the default options.
    pub fn open(dir: &Path) -> MobileResult<Client> {
        Client::open_with(dir, ClientOptions::default())
    }

    /// Opens the client directory with `options`.
    pub fn open_with(dir: &Path, options: ClientOptions) -> MobileResult<Client> {
        keys::create_dir(dir)?;
        let client = Client {
            dir: dir.to_owned(),
            keys: KeyStore::new(dir),
            options,
            session: Mutex::new(None),
        };
        client.enforce_offline_window(&mut client.guard())?;
        Ok(client)
    }

    fn guard(&self) -> MutexGuard<'_, Option<Session>> {
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Purges cached patient data when the last contact is older than the
    /// offline window. Queued drafts are kept: they are the user's own
    /// unsent work, not a copy of server data.
    fn enforce_offline_window(&self, session: &mut Option<Session>) -> MobileResult<()> {
        if !self.keys.exists() {
            return Ok(());
        }
        let file = self.keys.load()?;
        let age = now() - file.last_contact;
        if age <= self.options.max_offline_secs as i64 {
            return Ok(());
        }
        let purged = match session {
            Some(session) => purge_cached(&session.store)?,
            None => purge_cached_locked(&self.dir)?,
        };
        if purged > 0 {
            tracing::warn!(target: "ward_mobile", purged, age_secs = age, "offline window exceeded; cached patient data purged");
        }
        Ok(())
    }

    /// Runs `work` with the unlocked session after the idle and offline
    /// checks, and records the activity.
    pub(crate) fn with_session<T>(
        &self,
        work: impl FnOnce(&mut Session) -> MobileResult<T>,
    ) -> MobileResult<T> {
        let mut guard = self.guard();
        if let Some(session) = guard.as_ref()
            && session.last_activity.elapsed() > Duration::from_secs(self.options.idle_lock_secs)
        {
            *guard = None;
            tracing::info!(target: "ward_mobile", "locked after the idle time");
        }
        self.enforce_offline_window(&mut guard)?;
        let session = guard.as_mut().ok_or(if self.keys.exists() {
            MobileError::Locked
        } else {
            MobileError::NotEnrolled
        })?;
        session.last_activity = Instant::now();
        work(session)
    }

    /// Creates the keys and the store for `server_url` without enrolling
    /// a certificate. Such a device uses bearer tokens (see
    /// [`Client::use_bearer_token`]); it is meant for development and
    /// benchmarks against a server without device enrollment.
    pub fn provision(&self, server_url: &str, ca_pem: &str, pin: &str) -> MobileResult<()> {
        let origin = origin_of(server_url)?;
        Transport::new(&origin, ca_pem, None)?;
        let key = device::new_key()?;
        let config = ServerConfig {
            origin,
            ca_pem: ca_pem.to_owned(),
            device_id: None,
            certificate_pem: None,
            not_after: None,
            posture: None,
        };
        self.create_session(pin, &key.der, &config)
    }

    fn create_session(&self, pin: &str, key_der: &[u8], config: &ServerConfig) -> MobileResult<()> {
        let mut guard = self.guard();
        let unlocked = self.keys.create(pin, key_der, self.options.kdf, now())?;
        let store = Store::open(&self.dir, &unlocked)?;
        store.put_json(kind::CONFIG, CONFIG_KEY, None, config)?;
        *guard = Some(Session {
            keys: unlocked,
            store,
            last_activity: Instant::now(),
        });
        Ok(())
    }

    /// Enrolls this device: makes a P-256 key pair here, sends its CSR with
    /// the one-time `code` to `/device/enroll`, and seals the key under
    /// `pin`. The private key never leaves the device. Leaves the client
    /// unlocked.
    pub fn enroll(
        &self,
        server_url: &str,
        ca_pem: &str,
        code: &str,
        pin: &str,
        posture: Posture,
    ) -> MobileResult<Enrollment> {
        if self.keys.exists() {
            return Err(MobileError::AlreadyEnrolled);
        }
        if pin.chars().count() < keys::MIN_PIN_LEN {
            return Err(MobileError::WeakPin {
                min: keys::MIN_PIN_LEN as u32,
            });
        }
        let origin = origin_of(server_url)?;
        let transport = Transport::new(&origin, ca_pem, None)?;
        let key = device::new_key()?;
        let (enrollment, certificate) = device::enroll(
            &transport,
            code.trim(),
            &key.csr_pem,
            &self.options.device_name,
            &posture,
        )?;
        let config = ServerConfig {
            origin,
            ca_pem: ca_pem.to_owned(),
            device_id: Some(enrollment.device_id.clone()),
            certificate_pem: Some(certificate),
            not_after: Some(enrollment.not_after.clone()),
            posture: Some(posture),
        };
        self.create_session(pin, &key.der, &config)?;
        tracing::info!(target: "ward_mobile", device = %enrollment.device_id, "enrolled");
        Ok(enrollment)
    }

    /// Opens the keys with `pin`. A wrong PIN is counted; after
    /// `max_wrong_pins` in a row the client wipes itself.
    pub fn unlock(&self, pin: &str) -> MobileResult<()> {
        let mut guard = self.guard();
        let mut file = self.keys.load()?;
        match self.keys.open(&file, pin)? {
            Some(unlocked) => {
                if file.failed_pins != 0 {
                    file.failed_pins = 0;
                    self.keys.save(&file)?;
                }
                let store = Store::open(&self.dir, &unlocked)?;
                *guard = Some(Session {
                    keys: unlocked,
                    store,
                    last_activity: Instant::now(),
                });
                drop(guard);
                self.enforce_offline_window(&mut self.guard())
            }
            None => {
                file.failed_pins += 1;
                self.keys.save(&file)?;
                if file.failed_pins >= self.options.max_wrong_pins {
                    *guard = None;
                    self.erase_local()?;
                    tracing::warn!(target: "ward_mobile", "wiped after too many wrong PINs");
                    return Err(MobileError::WipedAfterWrongPins);
                }
                Err(MobileError::WrongPin {
                    remaining: self.options.max_wrong_pins - file.failed_pins,
                })
            }
        }
    }

    /// Locks the client: the keys are zeroized and the store is closed.
    pub fn lock(&self) {
        *self.guard() = None;
    }

    /// Signs `user` in with the authorization code flow and PKCE, over the
    /// device certificate when enrolled, and stores the tokens sealed.
    pub fn login(&self, user: &str, password: &str, totp: &str) -> MobileResult<()> {
        self.with_session(|session| {
            let transport = transport(session)?;
            let credentials = Credentials {
                user,
                password,
                totp,
            };
            let tokens = signin::sign_in(&transport, &credentials, now())?;
            session
                .store
                .put_json(kind::TOKEN, TOKEN_KEY, None, &tokens)?;
            self.record_contact()?;
            tracing::info!(target: "ward_mobile", "signed in");
            Ok(())
        })
    }

    /// Stores a bearer token (such as one from `ward token`) as the
    /// signed-in user's token. For development and benchmarks; apps sign
    /// in with [`Client::login`].
    pub fn use_bearer_token(&self, token: &str) -> MobileResult<()> {
        self.with_session(|session| {
            let tokens = TokenSet {
                user: signin::claim(token, "sub").unwrap_or_default(),
                access_token: token.to_owned(),
                refresh_token: None,
                expires_at: signin::claim_number(token, "exp").unwrap_or(i64::MAX),
                fhir_user: signin::claim(token, "fhirUser"),
            };
            session
                .store
                .put_json(kind::TOKEN, TOKEN_KEY, None, &tokens)
        })
    }

    fn record_contact(&self) -> MobileResult<()> {
        let mut file = self.keys.load()?;
        file.last_contact = now();
        self.keys.save(&file)
    }

    /// Checks in (when enrolled), sends queued drafts, then pulls the
    /// care-team panel: whole compartments for new patients, only changes
    /// for the others. A server-ordered wipe is carried out and confirmed.
    pub fn sync(&self) -> MobileResult<SyncReport> {
        let result = self.with_session(|session| {
            let transport = transport(session)?;
            if self.checkin_due(session)?
                && let Some(checkin) = self.checkin_in(session, &transport)?
                && checkin.wipe
            {
                return Ok(Err(checkin));
            }
            let tokens = fresh_tokens(session, &transport)?;
            let pushed = documents::push(&session.store, &transport, &tokens.access_token)?;
            let fhir_user = tokens.fhir_user.clone().ok_or_else(|| MobileError::invalid(
                "token",
                "the token names no fhirUser, so the care team cannot be found; sign in as a user with a FHIR resource",
            ))?;
            let mut puller = Puller::new(&transport, &tokens.access_token);
            sync::pull(&mut puller, &session.store, &fhir_user)?;
            let mut report = puller.report;
            report.drafts_sent = pushed.sent;
            report.conflicts = pushed.conflicts;
            report.requests += pushed.requests;
            report.bytes_received += pushed.bytes;
            sync::save_report(&session.store, &report)?;
            self.record_contact()?;
            tracing::info!(target: "ward_mobile", bytes = report.bytes_received, resources = report.resources_received, "sync finished");
            Ok(Ok(report))
        });
        match result {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(_)) => {
                self.wipe_ordered()?;
                Err(MobileError::Wiped {
                    reason: "the server ordered a wipe".into(),
                })
            }
            Err(MobileError::Unauthorized { detail }) => {
                // A revoked device learns of its wipe only at check-in.
                match self.checkin() {
                    Ok(checkin) if checkin.wipe => Err(MobileError::Wiped {
                        reason: format!(
                            "the server rejected a request ({detail}) and ordered a wipe"
                        ),
                    }),
                    _ => Err(MobileError::Unauthorized { detail }),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Sends the posture to `/device/checkin`. When the server orders a
    /// wipe, the client wipes itself, confirms it, and returns the answer
    /// with `wipe` set. Needs an enrolled, unlocked client.
    pub fn checkin(&self) -> MobileResult<Checkin> {
        let answer = self.with_session(|session| {
            let transport = transport(session)?;
            self.checkin_in(session, &transport)?.ok_or_else(|| {
                MobileError::invalid(
                    "device",
                    "this device has no certificate; enroll it with a code",
                )
            })
        })?;
        if answer.wipe {
            self.wipe_ordered()?;
        }
        Ok(answer)
    }

    /// Stores `posture` as the device's current posture and checks in
    /// with it, as an app does when the operating system reports a change
    /// (such as the screen lock turned off). When the server orders a
    /// wipe, the client wipes itself and confirms it, as in
    /// [`Client::checkin`].
    pub fn checkin_with(&self, posture: Posture) -> MobileResult<Checkin> {
        self.with_session(|session| {
            let mut config = config(&session.store)?;
            config.posture = Some(posture);
            session
                .store
                .put_json(kind::CONFIG, CONFIG_KEY, None, &config)
        })?;
        self.checkin()
    }

    /// Returns the current access token, refreshed when it is about to
    /// expire, for an app that calls a Ward API this library does not cover. A token
    /// of an enrolled device is bound to its certificate (RFC 8705), so it
    /// works only over a connection that presents that certificate.
    pub fn access_token(&self) -> MobileResult<Zeroizing<String>> {
        self.with_session(|session| {
            let transport = transport(session)?;
            let tokens = fresh_tokens(session, &transport)?;
            Ok(Zeroizing::new(tokens.access_token.clone()))
        })
    }

    /// Returns true when the last check-in is older than the check-in
    /// interval, or there was none.
    fn checkin_due(&self, session: &Session) -> MobileResult<bool> {
        let last: Option<i64> = session.store.get_json(kind::SYNC, CHECKIN_KEY)?;
        let interval = self.options.checkin_interval_secs as i64;
        Ok(last.is_none_or(|last| now() - last >= interval))
    }

    fn checkin_in(
        &self,
        session: &Session,
        transport: &Transport,
    ) -> MobileResult<Option<Checkin>> {
        let config = config(&session.store)?;
        if config.certificate_pem.is_none() {
            return Ok(None);
        }
        let posture = config
            .posture
            .clone()
            .unwrap_or_else(|| Posture::of_this_machine(true, true));
        let answer = device::checkin(transport, &posture)?;
        self.record_contact()?;
        session
            .store
            .put_json(kind::SYNC, CHECKIN_KEY, None, &now())?;
        if answer.status == "revoked" {
            tracing::warn!(target: "ward_mobile", wipe = answer.wipe, "the server reported this device as revoked");
        } else if self.renewal_due(answer.certificate_not_after.as_deref()) {
            self.renew_in(session, transport)?;
        }
        Ok(Some(answer))
    }

    /// Returns true when the certificate expires within
    /// `renew_before_secs` of now.
    fn renewal_due(&self, not_after: Option<&str>) -> bool {
        let Some(not_after) = not_after.and_then(|text| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
        }) else {
            return false;
        };
        not_after.unix_timestamp() - now() <= self.options.renew_before_secs as i64
    }

    /// Renews the device certificate now, for the same device key, and
    /// returns its new expiry. The tokens bound to the old certificate are
    /// dropped, so the user signs in again.
    pub fn renew(&self) -> MobileResult<String> {
        self.with_session(|session| {
            let transport = transport(session)?;
            self.renew_in(session, &transport)
        })
    }

    fn renew_in(&self, session: &Session, transport: &Transport) -> MobileResult<String> {
        let mut config = config(&session.store)?;
        if config.certificate_pem.is_none() {
            return Err(MobileError::invalid(
                "device",
                "this device has no certificate; enroll it with a code",
            ));
        }
        let csr = device::csr_for(session.keys.device_key_der())?;
        let (certificate, not_after) = device::renew(transport, &csr)?;
        config.certificate_pem = Some(certificate);
        config.not_after = Some(not_after.clone());
        session
            .store
            .put_json(kind::CONFIG, CONFIG_KEY, None, &config)?;
        session.store.delete(kind::TOKEN, TOKEN_KEY)?;
        tracing::info!(target: "ward_mobile", not_after = %not_after, "renewed the device certificate");
        Ok(not_after)
    }

    /// Wipes after a server order and confirms it with the certificate,
    /// which stays in memory until the confirmation is sent.
    fn wipe_ordered(&self) -> MobileResult<()> {
        let mut guard = self.guard();
        let transport = guard.as_ref().map(transport).transpose()?;
        *guard = None;
        self.erase_local()?;
        tracing::warn!(target: "ward_mobile", "wiped on the server's order");
        let wiped_at = rfc3339(now()).unwrap_or_default();
        if let Some(transport) = transport {
            device::confirm_wipe(&transport, &wiped_at)?;
        }
        Ok(())
    }

    /// Wipes this device: keys first (crypto-erase), then every file of the
    /// client directory.
    pub fn wipe(&self) -> MobileResult<()> {
        let mut guard = self.guard();
        *guard = None;
        self.erase_local()
    }

    fn erase_local(&self) -> MobileResult<()> {
        self.keys.erase()?;
        for path in store::store_files(&self.dir) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(MobileError::io(&path, e)),
            }
        }
        Ok(())
    }

    /// The patients on the panel that are cached.
    pub fn patients(&self) -> MobileResult<Vec<PatientSummary>> {
        self.with_session(|session| {
            let state = sync::load_state(&session.store)?;
            let mut list = Vec::new();
            for id in &state.patients {
                let Ok(patient) = sync::cached_patient(&session.store, id) else {
                    continue;
                };
                let count = session.store.list(kind::RESOURCE, Some(id))?.len() as u32;
                list.push(summary_of(&patient, count));
            }
            Ok(list)
        })
    }

    /// The cached chart of one patient and its drafts.
    pub fn show(&self, patient_id: &str) -> MobileResult<PatientRecord> {
        self.with_session(|session| {
            let patient = sync::cached_patient(&session.store, patient_id)?;
            let chart = sync::chart(&session.store, patient_id)?;
            let mut resources = Vec::new();
            let total = chart.values().map(Vec::len).sum::<usize>() as u32;
            for (resource_type, list) in chart {
                for resource in list {
                    resources.push(CachedResource {
                        resource_type: resource_type.clone(),
                        id: resource["id"].as_str().unwrap_or("").to_owned(),
                        version_id: resource["meta"]["versionId"].as_str().map(str::to_owned),
                        summary: describe(&resource),
                        json: resource.to_string(),
                    });
                }
            }
            let drafts = documents::drafts(&session.store)?
                .into_iter()
                .map(|d| d.info)
                .filter(|d| d.patient_id == patient_id)
                .collect();
            Ok(PatientRecord {
                patient: summary_of(&patient, total),
                resources,
                drafts,
            })
        })
    }

    /// Writes a clinical note for a cached patient as a draft, queued for
    /// the next sync. With `amends`, the note replaces the cached
    /// DocumentReference of that id, sent with `If-Match` on its version.
    /// Returns the draft id.
    pub fn document_note(
        &self,
        patient_id: &str,
        title: &str,
        text: &str,
        amends: Option<String>,
    ) -> MobileResult<String> {
        self.with_session(|session| {
            sync::cached_patient(&session.store, patient_id)?;
            let author = author(&session.store)?;
            let (resource, version) = match amends {
                Some(id) => {
                    let key = format!("DocumentReference/{id}");
                    let cached: Value = session
                        .store
                        .get_json(kind::RESOURCE, &key)?
                        .ok_or(MobileError::NotFound { what: key })?;
                    if sync::owner_of(&cached).as_deref() != Some(patient_id) {
                        return Err(MobileError::invalid(
                            "amends",
                            format!("DocumentReference/{id} is not a note of patient {patient_id}"),
                        ));
                    }
                    let (amended, version) = documents::amend_note(&cached, title, text)?;
                    (amended, Some(version))
                }
                None => (
                    documents::note_document(patient_id, title, text, author.as_deref())?,
                    None,
                ),
            };
            documents::save_draft(&session.store, patient_id, resource, version)
        })
    }

    /// Records vital signs for a cached patient as Observation drafts (LOINC
    /// codes, UCUM units, plausible ranges checked), queued for the next
    /// sync. Returns the draft ids.
    pub fn document_vitals(&self, patient_id: &str, vitals: Vitals) -> MobileResult<Vec<String>> {
        self.with_session(|session| {
            sync::cached_patient(&session.store, patient_id)?;
            let author = author(&session.store)?;
            let observations =
                documents::vitals_observations(patient_id, &vitals, author.as_deref())?;
            session.store.transaction(|store| {
                observations
                    .into_iter()
                    .map(|o| documents::save_draft(store, patient_id, o, None))
                    .collect()
            })
        })
    }

    /// Removes a draft, such as a conflict the user resolved.
    pub fn discard_draft(&self, draft_id: &str) -> MobileResult<()> {
        self.with_session(|session| {
            if session.store.delete(kind::DRAFT, draft_id)? {
                Ok(())
            } else {
                Err(MobileError::NotFound {
                    what: format!("draft {draft_id}"),
                })
            }
        })
    }

    /// The client's state; most fields need the client unlocked.
    pub fn status(&self) -> MobileResult<Status> {
        let has_keys = self.keys.exists();
        let file = if has_keys {
            Some(self.keys.load()?)
        } else {
            None
        };
        let mut status = Status {
            has_keys,
            enrolled: (!has_keys).then_some(false),
            unlocked: false,
            failed_pins: file.as_ref().map_or(0, |f| f.failed_pins),
            last_contact: file.as_ref().and_then(|f| rfc3339(f.last_contact)),
            offline_deadline: file
                .as_ref()
                .and_then(|f| rfc3339(f.last_contact + self.options.max_offline_secs as i64)),
            server_url: None,
            device_id: None,
            certificate_not_after: None,
            user: None,
            patients: 0,
            cached_resources: 0,
            drafts: Vec::new(),
            conflicts: Vec::new(),
            last_sync: None,
        };
        let unlocked = self.with_session(|session| {
            let store = &session.store;
            let config = config(store)?;
            status.unlocked = true;
            status.server_url = Some(config.origin);
            status.enrolled = Some(config.device_id.is_some());
            status.device_id = config.device_id;
            status.certificate_not_after = config.not_after;
            let tokens: Option<TokenSet> = store.get_json(kind::TOKEN, TOKEN_KEY)?;
            status.user = tokens.as_ref().map(|t| t.user.clone());
            status.patients = sync::load_state(store)?.patients.len() as u32;
            status.cached_resources = store.count(kind::RESOURCE)?;
            status.drafts = documents::drafts(store)?
                .into_iter()
                .map(|d| d.info)
                .collect();
            status.conflicts = status
                .drafts
                .iter()
                .filter(|d| d.state == DraftState::Conflict)
                .cloned()
                .collect();
            status.last_sync = sync::last_report(store)?;
            Ok(())
        });
        match unlocked {
            Ok(()) | Err(MobileError::Locked | MobileError::NotEnrolled) => Ok(status),
            Err(error) => Err(error),
        }
    }

    /// The directory of the client.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the database file, for tests that scan it.
    pub fn database_path(&self) -> PathBuf {
        self.dir.join(store::DB_FILE)
    }

    /// Copies the WAL into the database file, for tests and backups.
    pub fn checkpoint(&self) -> MobileResult<()> {
        self.with_session(|session| session.store.checkpoint())
    }
}

fn config(store: &Store) -> MobileResult<ServerConfig> {
    store.get_json(kind::CONFIG, CONFIG_KEY)?.ok_or_else(|| {
        MobileError::corrupt("the server configuration is missing; wipe and enroll again")
    })
}

pub(crate) fn transport(session: &Session) -> MobileResult<Transport> {
    let config = config(&session.store)?;
    let identity = match &config.certificate_pem {
        Some(certificate) => Some(device::identity_pem(
            session.keys.device_key_der(),
            certificate,
        )?),
        None => None,
    };
    Transport::new(&config.origin, &config.ca_pem, identity.as_ref())
}

/// The stored tokens, refreshed when the access token is about to expire.
pub(crate) fn fresh_tokens(session: &Session, transport: &Transport) -> MobileResult<TokenSet> {
    let tokens: TokenSet = session
        .store
        .get_json(kind::TOKEN, TOKEN_KEY)?
        .ok_or(MobileError::NotSignedIn)?;
    if !tokens.is_stale(now()) {
        return Ok(tokens);
    }
    let fresh = signin::refresh(transport, &tokens, now())?;
    session
        .store
        .put_json(kind::TOKEN, TOKEN_KEY, None, &fresh)?;
    Ok(fresh)
}

fn author(store: &Store) -> MobileResult<Option<String>> {
    let tokens: Option<TokenSet> = store.get_json(kind::TOKEN, TOKEN_KEY)?;
    Ok(tokens.and_then(|t| t.fhir_user.clone()))
}

/// Removes cached resources, tokens and sync state from an open store.
fn purge_cached(store: &Store) -> MobileResult<u64> {
    let mut purged = 0;
    for kind in [kind::RESOURCE, kind::TOKEN, kind::SYNC] {
        purged += store.delete_all(kind, None)?;
    }
    Ok(purged)
}

/// Removes the same records from a locked store: their kind is stored in
/// clear, so no key is needed to delete them.
fn purge_cached_locked(dir: &Path) -> MobileResult<u64> {
    let path = dir.join(store::DB_FILE);
    if !path.exists() {
        return Ok(0);
    }
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch("PRAGMA secure_delete = ON; PRAGMA temp_store = MEMORY;")?;
    let removed = conn.execute(
        "DELETE FROM records WHERE kind IN (?1, ?2, ?3)",
        rusqlite::params![kind::RESOURCE, kind::TOKEN, kind::SYNC],
    )?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(removed as u64)
}

fn summary_of(patient: &Value, resources: u32) -> PatientSummary {
    PatientSummary {
        id: patient["id"].as_str().unwrap_or("").to_owned(),
        name: name_of(patient),
        birth_date: patient["birthDate"].as_str().map(str::to_owned),
        gender: patient["gender"].as_str().map(str::to_owned),
        resources,
    }
}

fn name_of(patient: &Value) -> String {
    let Some(name) = patient["name"].as_array().and_then(|n| n.first()) else {
        return String::new();
    };
    if let Some(text) = name["text"].as_str() {
        return text.to_owned();
    }
    let mut parts: Vec<&str> = name["given"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(family) = name["family"].as_str() {
        parts.push(family);
    }
    parts.join(" ")
}

/// A one-line description of a resource.
fn describe(resource: &Value) -> String {
    let code = &resource["code"];
    let mut text = code["text"]
        .as_str()
        .or(code["coding"][0]["display"].as_str())
        .or(resource["description"].as_str())
        .or(resource["type"]["coding"][0]["display"].as_str())
        .unwrap_or("")
        .to_owned();
    let quantity = &resource["valueQuantity"];
    if let Some(value) = quantity.get("value") {
        text.push_str(&format!(
            " {value} {}",
            quantity["unit"].as_str().unwrap_or("")
        ));
    }
    let when = resource["effectiveDateTime"]
        .as_str()
        .or(resource["date"].as_str())
        .or(resource["period"]["start"].as_str());
    if let Some(when) = when {
        text.push_str(&format!(" ({when})"));
    }
    text.trim().to_owned()
}
