//! End-to-end tests of the server process: graceful shutdown, TLS versions
//! and certificate reload, configuration sources, `ward ca` and key file
//! permissions.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fixtures::{Admin, entries, sigterm};
use common::{Server, WARD};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SerialNumber};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use serde_json::json;

/// Completes a TLS handshake with `port` on 127.0.0.1 and returns the
/// server's end-entity certificate.
fn handshake(
    port: u16,
    roots: &[CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<CertificateDer<'static>, String> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut connection =
        ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut socket = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    while connection.is_handshaking() {
        connection
            .complete_io(&mut socket)
            .map_err(|e| e.to_string())?;
    }
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .cloned()
        .ok_or_else(|| "the server sent no certificate".to_owned())
}

fn port_of(origin: &str) -> u16 {
    origin
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the origin has a port")
}

fn ca_of(data: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(data.join("ca.pem"))
        .expect("open ca.pem")
        .collect::<Result<_, _>>()
        .expect("parse ca.pem")
}

/// A test CA that issues server certificates for 127.0.0.1.
struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            der: cert.der().clone(),
            params,
            key,
        }
    }

    /// Issues a leaf with `serial` and writes its chain and key PEM.
    fn issue(&self, serial: u64, cert_path: &Path, key_path: &Path) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("leaf params");
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("leaf key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign the leaf");
        // Replace each file atomically, as a certificate renewal tool does.
        let write = |path: &Path, text: &str| {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, text).expect("write a PEM file");
            std::fs::rename(&tmp, path).expect("replace a PEM file");
        };
        write(key_path, &key.serialize_pem());
        write(cert_path, &cert.pem());
        cert.der().clone()
    }
}

#[tokio::test]
async fn sigterm_drains_request_in_flight() {
    let admin = Admin::start();
    let entry_count = 1500;
    let bundle_entries: Vec<_> = (0..entry_count)
        .map(|i| {
            json!({
                "fullUrl": format!("urn:uuid:00000000-0000-4000-8000-{i:012}"),
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{ "system": "http://example.org/mrn", "value": format!("S{i}") }],
                    "name": [{ "family": format!("Drain{i}"), "given": ["Slow"] }],
                    "birthDate": "1970-01-01"
                },
                "request": { "method": "POST", "url": "Patient" }
            })
        })
        .collect();
    let bundle =
        json!({ "resourceType": "Bundle", "type": "transaction", "entry": bundle_entries });

    // Open the connection first, so the transaction is in flight as soon as
    // it is sent.
    let (status, _, _) = admin.get("metadata").await;
    assert_eq!(status, StatusCode::OK);
    let request = common::json_body(
        admin
            .server
            .request(reqwest::Method::POST, "/fhir", &admin.token),
        &bundle,
    );
    let started = Instant::now();
    let pending = tokio::spawn(common::send(request));
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(admin.server.pid());

    let (status, _, body) = pending.await.expect("the request task");
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "transaction-response");
    assert_eq!(entries(&body).len(), entry_count);
    assert!(
        elapsed > Duration::from_millis(300),
        "the transaction finished before SIGTERM ({elapsed:?}); the test needs a slower request"
    );

    let mut server = admin.server;
    let exit = server
        .wait_exit(Duration::from_secs(40))
        .expect("the server exits after draining");
    assert!(exit.success(), "exit status {exit}");
    assert!(
        TcpStream::connect(server.origin().trim_start_matches("https://")).is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn tls_certificate_reloads_without_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cert_path = dir.path().join("server.pem");
    let key_path = dir.path().join("server.key");
    let ca = TestCa::new();
    let first = ca.issue(1001, &cert_path, &key_path);
    let cert_arg = cert_path.to_str().expect("UTF-8 path");
    let key_arg = key_path.to_str().expect("UTF-8 path");
    let server = Server::start_with(&["--tls-cert", cert_arg, "--tls-key", key_arg], &[]);
    let port = port_of(server.origin());
    let roots = vec![ca.der.clone()];
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    let seen = handshake(port, &roots, tls13).expect("handshake with the first certificate");
    assert_eq!(seen, first);

    let renewed = ca.issue(2002, &cert_path, &key_path);
    assert_ne!(renewed, first);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut latest = seen;
    while latest != renewed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        latest = handshake(port, &roots, tls13).expect("handshake during renewal");
    }
    assert_eq!(
        latest, renewed,
        "a new connection sees the renewed certificate"
    );

    // The renewed certificate serves the FHIR API.
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_der(&ca.der).expect("CA DER"))
        .build()
        .expect("client");
    let response = client
        .get(format!("{}/metadata", server.base()))
        .send()
        .await
        .expect("GET metadata");
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn only_tls13_is_offered() {
    let server = Server::start();
    let port = port_of(server.origin());
    let roots = ca_of(server.data_dir());
    handshake(port, &roots, &[&rustls::version::TLS13]).expect("TLS 1.3 handshake succeeds");
    let refused = handshake(port, &roots, &[&rustls::version::TLS12]);
    assert!(refused.is_err(), "a TLS 1.2-only client connected");
}

/// Spawns `ward serve` on `data` without `--listen` and returns the child
/// and the address it reports listening on.
fn spawn_unlisted(data: &Path, env: &[(&str, &str)]) -> (Child, String) {
    let mut command = Command::new(WARD);
    command
        .args(["serve", "--data"])
        .arg(data)
        .env_remove("WARD_LISTEN")
        .env_remove("WARD_BASE_URL")
        .env_remove("WARD_DATA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn ward serve");
    let stdout = child.stdout.take().expect("stdout pipe");
    let mut lines = BufReader::new(stdout).lines();
    let banner = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("listening on"));
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let Some(banner) = banner else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ward serve printed no banner");
    };
    let address = banner
        .rsplit("listening on ")
        .next()
        .unwrap_or("")
        .trim_end_matches(')')
        .to_owned();
    (child, address)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn listen_from_file_and_environment() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("create the data directory");
    let file_port = free_port();
    std::fs::write(
        data.join("ward.toml"),
        format!("listen = \"127.0.0.1:{file_port}\"\n"),
    )
    .expect("write ward.toml");

    let (child, address) = spawn_unlisted(&data, &[]);
    let from_file = address.clone();
    let reachable = TcpStream::connect(&address).is_ok();
    stop(child);
    assert_eq!(from_file, format!("127.0.0.1:{file_port}"));
    assert!(reachable, "nothing listens on {address}");

    let env_port = free_port();
    let env_listen = format!("127.0.0.1:{env_port}");
    let (child, address) = spawn_unlisted(&data, &[("WARD_LISTEN", &env_listen)]);
    let reachable = TcpStream::connect(&address).is_ok();
    let file_port_open = TcpStream::connect(("127.0.0.1", file_port)).is_ok();
    stop(child);
    assert_eq!(address, env_listen, "WARD_LISTEN overrides ward.toml");
    assert!(reachable, "nothing listens on {address}");
    assert!(!file_port_open, "the ward.toml address is not used");
}

#[test]
fn ca_command_prints_ca_pem() {
    let server = Server::start();
    let output = Command::new(WARD)
        .arg("ca")
        .arg("--data")
        .arg(server.data_dir())
        .env_remove("WARD_DATA")
        .output()
        .expect("run ward ca");
    assert!(output.status.success());
    let pem = std::fs::read(server.data_dir().join("ca.pem")).expect("read ca.pem");
    assert_eq!(output.stdout, pem);
    assert!(String::from_utf8_lossy(&pem).starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn key_files_are_private() {
    let server = Server::start();
    let data = server.data_dir();
    for name in ["master.key", "ca.key.sealed", "signing.key.sealed"] {
        let mode = std::fs::metadata(data.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {:o}", mode & 0o777);
    }
    let mode = std::fs::metadata(data)
        .expect("data directory")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the data directory is private: {:o}",
        mode & 0o777
    );
}
