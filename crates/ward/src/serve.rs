//! `ward serve`, `ward ca` and `ward token`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum_server::tls_rustls::RustlsConfig;
use ward_auth::dpop::DpopVerifier;
use ward_server::access::Access;
use ward_server::audit::alerts::{self, Alerts, Webhook};
use ward_server::audit::checkpoints::{self, Checkpointer};
use ward_server::audit::siem::{BacklogAlert, Destination, Exporter};
use ward_server::audit::{AuditFailure, Auditor};
use ward_server::auth::{Grant, TokenIssuer, TokenVerifier};
use ward_server::exchange::{DeliverySettings, ExchangeService};
use ward_server::fhir::engine::{Engine, Limits};
use ward_server::oauth::{OAuthServer, OAuthSettings};
use ward_server::setup::{DataDir, Keys};
use ward_server::tls::{CertFiles, ClientTrust, server_config_with_verifier};
use ward_server::{AppState, app};
use ward_store::Store;

use crate::cli::{AuditServeArgs, DataArgs, ExchangeServeArgs, ServeArgs, ServeCommand, TokenArgs};
use crate::config::{Settings, resolve};

/// The organization name written into a new CA.
pub(crate) const DEFAULT_ORG_NAME: &str = "Ward organization";

/// The longest lifetime `ward token` grants.
const MAX_TOKEN_TTL_SECS: i64 = 24 * 3600;

/// How often the CAs of the trusted organizations are reloaded into the
/// client certificate roots. A certificate from a CA not yet loaded also
/// triggers a reload, so this bounds how long a removed organization can
/// still connect.
const TRUST_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// How often the exchange client certificate is checked for renewal.
const CLIENT_CERT_CHECK_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Loads the exchange client certificate from the data directory, issuing
/// it when it is missing or near its end.
pub(crate) fn exchange_client_cert(
    settings: &Settings,
    keys: &Keys,
    org_id: &str,
) -> Result<ward_exchange::identity::OrgClientCert> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (cert, issued) = ward_exchange::identity::OrgClientCert::open_or_issue(
        &settings.data,
        &keys.master,
        &keys.ca,
        org_id,
        now,
    )
    .context("loading the exchange client certificate")?;
    if issued {
        tracing::info!(target: "ward::exchange", org = %org_id, not_after = cert.not_after, "issued the exchange client certificate");
    }
    Ok(cert)
}

/// Checks the exchange client certificate once a day and renews it when
/// less than 30 days are left. The keys are loaded afresh each time, so a
/// renewal seals under the current master key.
fn renew_client_cert_daily(data: std::path::PathBuf, exchange: Arc<ExchangeService>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CLIENT_CERT_CHECK_INTERVAL).await;
            let exchange = exchange.clone();
            let data = data.clone();
            let renewed = tokio::task::spawn_blocking(move || {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let due = exchange.client_cert().is_none_or(|cert| {
                    cert.not_after - now <= ward_exchange::identity::CLIENT_RENEW_BEFORE_SECS
                });
                if !due {
                    return Ok(false);
                }
                let (keys, _) = DataDir::new(&data).open_or_init(DEFAULT_ORG_NAME)?;
                let (cert, _) = ward_exchange::identity::OrgClientCert::open_or_issue(
                    &data,
                    &keys.master,
                    &keys.ca,
                    &exchange.identity.id,
                    now,
                )?;
                exchange.set_client_cert(cert);
                Ok::<_, anyhow::Error>(true)
            })
            .await;
            match renewed {
                Ok(Ok(true)) => {
                    tracing::info!(target: "ward::exchange", "renewed the exchange client certificate");
                }
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(target: "ward::exchange", error = %error, "renewing the exchange client certificate failed; retrying tomorrow");
                }
                Err(error) => {
                    tracing::warn!(target: "ward::exchange", %error, "renewing the exchange client certificate failed; retrying tomorrow");
                }
            }
        }
    });
}

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(args: ServeCommand) -> Result<()> {
    let settings = resolve(&args.serve)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(settings, args.audit, args.exchange));
    // Work still running on blocking threads after the grace period (a
    // write that outlived it) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// Builds the outbox delivery settings from the command line.
fn delivery_settings(args: &ExchangeServeArgs) -> DeliverySettings {
    DeliverySettings {
        retry_base: Duration::from_secs(args.exchange_retry_base.max(1)),
        retry_max: Duration::from_secs(args.exchange_retry_max.max(1)),
        give_up_after: Duration::from_secs(args.exchange_give_up),
        ..DeliverySettings::default()
    }
}

/// Builds the HTTPS client of the alert webhook, trusting only `ca`.
fn alert_webhook(args: &AuditServeArgs) -> Result<Option<Webhook>> {
    let Some(url) = &args.alert_webhook else {
        return Ok(None);
    };
    if !url.starts_with("https://") {
        bail!("--alert-webhook must be an https:// URL");
    }
    let Some(ca) = &args.siem_ca else {
        bail!("--alert-webhook needs --siem-ca, the CA certificate its server uses");
    };
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let certificate = reqwest::Certificate::from_pem(&pem)
        .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(certificate)
        .build()
        .context("building the alert webhook client")?;
    Ok(Some(Webhook {
        url: url.clone(),
        client,
    }))
}

/// Starts one export task per SIEM destination. The tasks end with the
/// runtime.
fn start_siem_exports(
    settings: &Settings,
    args: &AuditServeArgs,
    store: &Arc<dyn Store>,
    auditor: &Arc<Auditor>,
) -> Result<()> {
    let mut destinations = Vec::new();
    if let Some(address) = &args.siem_syslog {
        let Some(ca) = &args.siem_ca else {
            bail!("--siem-syslog needs --siem-ca, the CA certificate of the collector");
        };
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        destinations.push(
            Destination::syslog(address, &pem)
                .with_context(|| format!("--siem-syslog {address}"))?,
        );
    }
    if let Some(path) = &args.siem_jsonl {
        let path = std::path::absolute(path)
            .with_context(|| format!("resolving --siem-jsonl {}", path.display()))?;
        destinations.push(Destination::Jsonl { path });
    }
    if let Some(url) = &args.siem_https {
        let Some(ca) = &args.siem_ca else {
            bail!("--siem-https needs --siem-ca, the CA certificate of the collector");
        };
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let token = std::env::var("WARD_SIEM_HTTPS_TOKEN")
            .ok()
            .filter(|token| !token.is_empty());
        destinations.push(
            Destination::https(url, &pem, token).with_context(|| format!("--siem-https {url}"))?,
        );
    }
    let backlog = BacklogAlert {
        records: args.siem_backlog_records,
        after: Duration::from_secs(args.siem_backlog_secs),
    };
    let hostname = settings
        .origin
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map_or(
            settings.origin.trim_start_matches("https://"),
            |(host, _)| host,
        )
        .to_owned();
    for destination in destinations {
        let exporter = Exporter::new(
            store.clone(),
            auditor.clone(),
            destination,
            &hostname,
            backlog,
        );
        tokio::spawn(exporter.run());
    }
    Ok(())
}

/// Loads the audit key and checkpoint file, checks the records after the
/// newest checkpoint, and builds the auditor.
async fn start_audit(
    settings: &Settings,
    args: &AuditServeArgs,
    data: &DataDir,
    keys: &Keys,
    store: &Arc<dyn Store>,
) -> Result<(Arc<Auditor>, Checkpointer)> {
    let key = data
        .audit_key(&keys.master)
        .context("loading the audit key")?;
    let path = args
        .audit_checkpoints
        .clone()
        .or_else(|| settings.audit_checkpoints.clone())
        .unwrap_or_else(|| data.audit_checkpoints_path());
    if settings.audit_failure == AuditFailure::Allow {
        tracing::warn!(
            "audit_failure = \"allow\": requests proceed when their audit record cannot be written"
        );
        eprintln!(
            "warning: audit_failure = \"allow\" in ward.toml; requests will not fail when the audit log cannot be written"
        );
    }
    let alerts = Alerts::new(settings.alerts.clone(), alert_webhook(args)?);
    let auditor = Arc::new(
        Auditor::new(settings.origin.trim_start_matches("https://"))
            .with_failure(settings.audit_failure)
            .with_writer(store.clone())
            .with_alerts(alerts),
    );
    let checkpointer = Checkpointer::new(store.clone(), key, path.clone(), &auditor);
    if let Some(newest) = checkpoints::latest_in(&path) {
        let tail_store = store.clone();
        let checked =
            tokio::task::spawn_blocking(move || checkpoints::verify_tail(&*tail_store, &newest))
                .await
                .context("checking the audit log")?;
        if let Err(problem) = checked {
            tracing::error!(target: "ward::audit", %problem, "the audit log failed verification at startup");
            alerts::raise(
                &auditor,
                "audit_verification_failed",
                None,
                &[("problem", problem)],
            )
            .await;
        }
    }
    Ok((auditor, checkpointer))
}

/// Opens the configured store. A new PostgreSQL database gets the schema;
/// one with an older schema fails until `ward migrate` has run.
fn open_store(settings: &Settings, keys: &Keys) -> Result<Arc<dyn Store>> {
    // The PostgreSQL store blocks on its own runtime, which must not happen
    // on an async worker thread.
    tokio::task::block_in_place(|| ward_store::open(&settings.store, &keys.master))
        .with_context(|| format!("opening the database {}", settings.store.describe()))
}

/// Loads `policy.toml` from the data directory, or the default policy.
pub fn load_access(settings: &Settings) -> Result<Access> {
    Access::load_or_default(&settings.data.join("policy.toml")).map_err(anyhow::Error::msg)
}

/// Builds the token verifier for a server at `settings.origin`.
pub fn verifier(settings: &Settings, keys: &Keys) -> Result<TokenVerifier> {
    let (x, y) = keys.signing.public_key_xy();
    let mut public = vec![(keys.signing.kid().to_owned(), x.to_owned(), y.to_owned())];
    for retired in &keys.retired_signing {
        public.push((retired.kid.clone(), retired.x.clone(), retired.y.clone()));
    }
    // Every replica derives the same DPoP nonce key from the master key, so
    // a nonce one replica issues is accepted by all of them.
    // NOTE: after `ward keys rotate-master`, replicas still running on the
    // old master key issue nonces the restarted ones reject (clients get
    // `use_dpop_nonce` and retry) until every replica has restarted.
    let nonce_key = keys
        .master
        .derived_index_key()
        .hash("ward-dpop-nonce-key", "v1");
    let verifier = TokenVerifier::new(&public, &settings.origin, &settings.fhir_base())
        .context("loading the token verification key")?;
    Ok(verifier.with_dpop(DpopVerifier::new(&nonce_key)))
}

async fn serve(
    settings: Settings,
    audit_args: AuditServeArgs,
    exchange_args: ExchangeServeArgs,
) -> Result<()> {
    let data = DataDir::new(&settings.data);
    let (keys, created) = data
        .open_or_init(DEFAULT_ORG_NAME)
        .context("opening the data directory")?;
    if created {
        tracing::info!(data = %settings.data.display(), "created a new data directory");
    }
    let store = open_store(&settings, &keys)?;
    // `ward token` reads the origin back, so tokens name this server.
    ward_server::setup::write_atomic(
        &settings.data.join("origin"),
        settings.origin.as_bytes(),
        0o644,
    )?;
    let (auditor, checkpointer) = start_audit(&settings, &audit_args, &data, &keys, &store).await?;
    let (stop_checkpoints, stopped) = tokio::sync::watch::channel(false);
    let stopped_outbox = stopped.clone();
    let checkpoint_task = tokio::spawn(checkpointer.run(auditor.clone(), stopped));
    start_siem_exports(&settings, &audit_args, &store, &auditor)?;
    let engine = Arc::new(Engine {
        store: store.clone(),
        base: settings.fhir_base(),
        limits: Limits {
            max_body_bytes: settings.max_body_bytes,
            ..Limits::default()
        },
        access: load_access(&settings)?,
        auditor: auditor.clone(),
    });
    let policy_path = settings.data.join("policy.toml");
    tokio::task::block_in_place(|| {
        crate::admin_audit::record_policy(store.as_ref(), &policy_path)
    })?;
    let verifier = Arc::new(verifier(&settings, &keys)?);
    let oauth_settings = OAuthSettings::new(&settings.origin, &settings.fhir_base())
        .with_session_timeouts(settings.session_idle, settings.session_max)
        .with_app_lock(settings.app_lock);
    let oauth = OAuthServer::new(
        oauth_settings,
        engine.store.clone(),
        &keys.signing,
        verifier.clone(),
    )
    .context("loading the token signing key")?
    .with_retired_keys(keys.retired_signing.iter().map(|k| k.jwk.clone()).collect());
    let devices = crate::device::service(&settings, &keys)?;
    let mut identity =
        ward_exchange::OrgIdentity::open_or_init(&settings.data, &keys.master, DEFAULT_ORG_NAME)
            .context("loading the exchange identity")?;
    if let Some(role) = exchange_args.role.filter(|role| *role != identity.role) {
        tracing::warn!(target: "ward::exchange", org = %identity.id, from = %identity.role, to = %role, "organization role changed; run `ward org export` again and send the new entry to the organizations that trust this one");
        identity
            .set_role(&settings.data, role)
            .context("storing the organization role")?;
    }
    tracing::info!(target: "ward::exchange", org = %identity.id, role = %identity.role, "exchange identity loaded");
    let client_cert = exchange_client_cert(&settings, &keys, &identity.id)?;
    let exchange = ExchangeService::new(identity, delivery_settings(&exchange_args));
    exchange.set_client_cert(client_cert);
    renew_client_cert_daily(settings.data.clone(), exchange.clone());
    let state = AppState::new(engine, verifier)
        .with_oauth(Arc::new(oauth))
        .with_devices(devices)
        .with_exchange(exchange);
    let outbox_task = tokio::spawn(ward_server::exchange::run_outbox(
        state.clone(),
        stopped_outbox,
    ));

    // Client certificates must chain to the organization CA (devices) or
    // to a trusted organization's CA (exchange deliveries, mutual TLS).
    let client_trust = ClientTrust::new(
        keys.ca.to_pem().as_bytes(),
        Some(ward_server::exchange::peer::partner_roots(store.clone())),
    )
    .context("loading the organization CA as the client certificate root")?;
    client_trust.watch(TRUST_RELOAD_INTERVAL);
    let tls = match &settings.tls {
        Some((cert, key)) => {
            let files = CertFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_trust: Some(client_trust.clone()),
            };
            let config = RustlsConfig::from_config(Arc::new(
                files.load().context("loading --tls-cert and --tls-key")?,
            ));
            files.watch(config.clone(), Duration::from_secs(5));
            config
        }
        None => {
            let host = settings
                .origin
                .trim_start_matches("https://")
                .rsplit_once(':')
                .map_or(settings.origin.trim_start_matches("https://"), |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_owned();
            let mut names = vec!["localhost", "127.0.0.1", "::1"];
            if !names.contains(&host.as_str()) {
                names.push(&host);
            }
            let issued = data
                .issue_server_certificate(&keys, &names)
                .context("issuing the server certificate")?;
            let config = server_config_with_verifier(
                issued.chain_pem.as_bytes(),
                issued.key_pem.as_bytes(),
                Some(client_trust.verifier()),
            )?;
            RustlsConfig::from_config(Arc::new(config))
        }
    };

    let addr: SocketAddr = settings.listen.parse().with_context(|| {
        format!(
            "--listen '{}' is not an address such as 127.0.0.1:8443",
            settings.listen
        )
    })?;
    let handle = axum_server::Handle::new();
    let grace = Duration::from_secs(settings.shutdown_grace);
    tokio::spawn(shutdown_on_signal(handle.clone(), grace));

    let server = ward_server::tls::bind(addr, tls, Some(client_trust))
        .handle(handle.clone())
        .serve(app(state).into_make_service_with_connect_info::<SocketAddr>());
    let listening = handle.clone();
    let data_path = settings.data.clone();
    let base = settings.fhir_base();
    tokio::spawn(async move {
        if let Some(bound) = listening.listening().await {
            println!("Ward is serving {base} (listening on {bound})");
            println!("CA certificate: {}", data_path.join("ca.pem").display());
            println!(
                "Mint a token:   ward token --data {} --scope 'system/*.cruds'",
                data_path.display()
            );
        }
    });
    let served = server.await.context("the HTTPS server stopped");
    // A last checkpoint covers the records of the final requests.
    let _ = stop_checkpoints.send(true);
    outbox_task.abort();
    if let Err(error) = checkpoint_task.await {
        tracing::error!(target: "ward::audit", %error, "the checkpoint task failed");
    }
    served?;
    tracing::info!("server stopped");
    Ok(())
}

async fn shutdown_on_signal(handle: axum_server::Handle<SocketAddr>, grace: Duration) {
    let ctrl_c = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "SIGTERM handler unavailable");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: draining requests in flight"
    );
    handle.graceful_shutdown(Some(grace));
}

/// `ward keys`.
pub fn run_keys(args: crate::cli::KeysArgs) -> Result<()> {
    match args.command {
        crate::cli::KeysCommand::RotateSigning(args) => crate::keys::rotate_signing(&args),
        crate::cli::KeysCommand::RotateMaster(args) => crate::keys::rotate_master(&args),
        crate::cli::KeysCommand::RetireMaster(args) => crate::keys::retire_master(&args),
    }
}

/// `ward ca`.
pub fn print_ca(args: DataArgs) -> Result<()> {
    let data = DataDir::new(args.dir());
    let path = data.ca_cert_path();
    if !data.exists() {
        bail!(
            "no CA at {}; run 'ward serve --data {}' once to create the data directory",
            path.display(),
            args.dir().display()
        );
    }
    let pem =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    print!("{pem}");
    Ok(())
}

/// Parses a lifetime such as `90s`, `30m`, `1h` or `2d` into seconds.
fn parse_ttl(text: &str) -> Result<i64> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: i64 = number
        .parse()
        .with_context(|| format!("--ttl '{text}' must be a number followed by s, m, h or d"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--ttl '{text}' must be a number followed by s, m, h or d"),
    };
    let secs = number.saturating_mul(factor);
    if secs <= 0 || secs > MAX_TOKEN_TTL_SECS {
        bail!("--ttl must be between 1s and 24h, got '{text}'");
    }
    Ok(secs)
}

/// The scopes that are not about resources and that a token may carry.
const OTHER_SCOPES: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "admin",
    "metrics",
];

/// Rejects an empty scope list and scopes that grant nothing.
fn check_scopes(scope: &str) -> Result<()> {
    if scope.split_whitespace().next().is_none() {
        bail!("--scope is empty; give at least one scope such as 'system/*.cruds'");
    }
    for item in scope.split_whitespace() {
        let known = ward_server::scopes::ResourceScope::parse(item).is_some()
            || OTHER_SCOPES.contains(&item);
        if !known {
            bail!(
                "--scope '{item}' is not a SMART scope; use forms such as 'system/*.cruds', 'user/Patient.rs', 'patient/Observation.read', or one of: {}",
                OTHER_SCOPES.join(", ")
            );
        }
    }
    Ok(())
}

/// `ward token`.
pub fn print_token(args: TokenArgs) -> Result<()> {
    let ttl = parse_ttl(&args.ttl)?;
    check_scopes(&args.scope)?;
    let serve_args = ServeArgs {
        data: args.data.clone(),
        listen: std::env::var("WARD_LISTEN").ok(),
        base_url: std::env::var("WARD_BASE_URL").ok(),
        ..ServeArgs::default()
    };
    let mut settings = resolve(&serve_args)?;
    if serve_args.listen.is_none()
        && serve_args.base_url.is_none()
        && let Ok(origin) = std::fs::read_to_string(settings.data.join("origin"))
    {
        settings.origin = origin.trim().to_owned();
    }
    let data = DataDir::new(&settings.data);
    if !data.exists() {
        bail!(
            "no data directory at {}; run 'ward serve --data {}' once to create it",
            settings.data.display(),
            settings.data.display()
        );
    }
    let (keys, _) = data.open_or_init(DEFAULT_ORG_NAME)?;
    let issuer = TokenIssuer::new(
        &keys.signing.pkcs8_der()?,
        keys.signing.kid(),
        &settings.origin,
        &settings.fhir_base(),
    );
    let grant = Grant {
        subject: args.subject.clone(),
        scope: args.scope.clone(),
        patient: args.patient.clone(),
        role: args.role.clone(),
        fhir_user: args.fhir_user.clone(),
        client_id: None,
        ..Grant::default()
    };
    let token = issuer.issue(&grant, ttl).context("signing the token")?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units_parse() {
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("1d").unwrap(), 86_400);
    }

    #[test]
    fn scopes_are_checked() {
        assert!(check_scopes("system/*.cruds openid").is_ok());
        assert!(check_scopes("user/Observation.rs?category=laboratory").is_ok());
        for bad in ["", "  ", "bogus", "system/*.x", "system/Nope.rs"] {
            assert!(check_scopes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ttl_rejects_bad_values() {
        for bad in ["", "h", "0s", "2d", "5w", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
