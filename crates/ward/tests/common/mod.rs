//! A test harness that runs the real `ward` binary over HTTPS.
//!
//! Each [`Server`] owns a fresh temporary data directory, listens on a free
//! loopback port and is killed when dropped. Its stderr goes to a file so a
//! test can read the server log at any time.
//!
//! With `WARD_TEST_DATABASE=postgres`, each server also gets a fresh
//! PostgreSQL database on 127.0.0.1:5432 (created and dropped with `psql`
//! as user `postgres`), so the whole suite runs on that backend.

#![allow(dead_code)]

pub mod browser;
pub mod device;
pub mod exchange;
pub mod fixtures;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

/// The path of the `ward` binary that cargo built for these tests.
pub const WARD: &str = env!("CARGO_BIN_EXE_ward");

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a start is retried when another process took the port.
const START_ATTEMPTS: usize = 3;

/// A response as the helpers return it: status, headers and the body as
/// JSON. An empty body is `Value::Null`; a body that is not JSON is a
/// `Value::String` with the raw text.
pub type Reply = (StatusCode, HeaderMap, Value);

/// A running `ward serve` child process.
pub struct Server {
    child: Child,
    root: Option<TempDir>,
    data: PathBuf,
    origin: String,
    client: Client,
    database: Option<TestDatabase>,
}

/// True when `WARD_TEST_DATABASE=postgres` asks for the PostgreSQL backend.
pub fn on_postgres() -> bool {
    std::env::var("WARD_TEST_DATABASE").as_deref() == Ok("postgres")
}

/// Runs `sql` with `psql` on `database` as user `postgres` and returns its
/// unaligned output.
pub fn psql(database: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-d",
            database,
        ])
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .map_err(|e| format!("run psql: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A PostgreSQL database made for one test server, dropped with it.
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Creates an empty database with a unique name.
    pub fn create() -> TestDatabase {
        let unique = format!(
            "{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let name = format!("ward_test_{unique}");
        if let Err(error) = psql("postgres", &format!("CREATE DATABASE {name}")) {
            panic!("WARD_TEST_DATABASE=postgres but creating a database failed: {error}");
        }
        TestDatabase { name }
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL `ward serve --database` takes.
    pub fn url(&self) -> String {
        format!(
            "postgres://127.0.0.1:5432/{}?user=postgres&sslmode=disable",
            self.name
        )
    }

    /// Every row of every table as text, with `bytea` in escape form so
    /// printable bytes appear as themselves: what a plaintext scan reads.
    pub fn dump(&self) -> Vec<u8> {
        let tables = psql(
            &self.name,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
        )
        .expect("list the tables");
        let mut dump = Vec::new();
        for table in tables.lines().filter(|t| !t.is_empty()) {
            let rows = psql(
                &self.name,
                &format!("SET bytea_output = 'escape'; SELECT t::text FROM {table} t"),
            )
            .expect("read a table");
            dump.extend_from_slice(table.as_bytes());
            dump.push(b'\n');
            dump.extend_from_slice(rows.as_bytes());
        }
        dump
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = psql("postgres", &sql) {
            eprintln!("dropping the test database {} failed: {error}", self.name);
        }
    }
}

/// Databases of servers that were stopped to restart on the same data,
/// by temporary root.
static PARKED_DATABASES: Mutex<BTreeMap<PathBuf, TestDatabase>> = Mutex::new(BTreeMap::new());

impl Server {
    /// Starts a server with the default options.
    pub fn start() -> Server {
        Server::start_with(&[], &[])
    }

    /// Starts a server with extra `serve` arguments and environment
    /// variables. `--data` and `--listen` are always set by the harness.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let root = tempfile::tempdir().expect("create a temporary directory");
        let data = root.path().join("data");
        Server::start_in(root, data, args, env)
    }

    /// Starts a server on an existing data directory inside `root`, for
    /// tests that restart a server on the same data.
    pub fn start_in(root: TempDir, data: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Server {
        // A test that names its own database (such as replicas sharing one)
        // keeps it.
        let explicit = args.contains(&"--database");
        let database = (on_postgres() && !explicit).then(|| {
            let parked = PARKED_DATABASES
                .lock()
                .ok()
                .and_then(|mut parked| parked.remove(root.path()));
            parked.unwrap_or_else(TestDatabase::create)
        });
        let database_arg = database.as_ref().map(TestDatabase::url);
        let mut args = args.to_vec();
        if let Some(url) = &database_arg {
            args.extend(["--database", url.as_str()]);
        }
        let args = args.as_slice();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let log = root.path().join("stderr.log");
            match spawn(&data, &log, port, args, env) {
                Ok(child) => {
                    let origin = format!("https://127.0.0.1:{port}");
                    let client = client_for(&data);
                    return Server {
                        child,
                        root: Some(root),
                        data,
                        origin,
                        client,
                        database,
                    };
                }
                Err(error) if error.contains("Address already in use") => last_error = error,
                Err(error) => panic!("ward serve did not start: {error}"),
            }
        }
        panic!("ward serve did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    /// Stops this server and returns its temporary root and data directory,
    /// so a test can start a new server on the same data.
    pub fn stop(mut self) -> (TempDir, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let root = self.root.take().expect("the root is set until stop");
        // The database outlives this server, for a restart on the same data.
        if let (Some(database), Ok(mut parked)) = (self.database.take(), PARKED_DATABASES.lock()) {
            parked.insert(root.path().to_owned(), database);
        }
        (root, self.data.clone())
    }

    /// The PostgreSQL database of this server, when the suite runs on
    /// PostgreSQL.
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.as_ref()
    }

    /// The FHIR base URL, such as `https://127.0.0.1:PORT/fhir`.
    pub fn base(&self) -> String {
        format!("{}/fhir", self.origin)
    }

    /// The server origin, such as `https://127.0.0.1:PORT`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_log(&self) -> String {
        self.root
            .as_ref()
            .map(|root| std::fs::read_to_string(root.path().join("stderr.log")))
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for the server to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Mints an access token with `ward token` for `scope`, valid for 1 h.
    pub fn token(&self, scope: &str) -> String {
        self.token_with(scope, &[])
    }

    /// Mints an access token with extra `ward token` arguments, such as
    /// `["--ttl", "1s"]` or `["--patient", "123"]`.
    pub fn token_with(&self, scope: &str, extra: &[&str]) -> String {
        let data = self.data.to_str().expect("data path is UTF-8");
        let output = Command::new(WARD)
            .args(["token", "--data", data, "--scope", scope])
            .args(extra)
            .env_remove("WARD_LISTEN")
            .env_remove("WARD_BASE_URL")
            .output()
            .expect("run ward token");
        assert!(
            output.status.success(),
            "ward token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("token is UTF-8")
            .trim()
            .to_owned()
    }

    /// An HTTPS client that trusts only this server's CA (`ca.pem`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The URL of `path`: absolute URLs pass through, paths starting with
    /// `/fhir` or `/healthz` are taken from the origin, and anything else
    /// is relative to the FHIR base.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("https://") || path.starts_with("http://") {
            path.to_owned()
        } else if path == "/fhir"
            || path.starts_with("/fhir/")
            || path.starts_with("/fhir?")
            || path.starts_with("/healthz")
        {
            format!("{}{path}", self.origin)
        } else {
            format!("{}/{}", self.base(), path.trim_start_matches('/'))
        }
    }

    /// A request builder for `method` on `path` with `token` as the bearer
    /// token (no `Authorization` header when `token` is empty).
    pub fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        let builder = self.client.request(method, self.url(path));
        if token.is_empty() {
            builder
        } else {
            builder.bearer_auth(token)
        }
    }

    /// GET `path`.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        send(self.request(Method::GET, path, token)).await
    }

    /// POST `body` as `application/fhir+json` to `path`.
    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> Reply {
        send(json_body(self.request(Method::POST, path, token), body)).await
    }

    /// PUT `body` as `application/fhir+json` to `path`.
    pub async fn put_json(&self, path: &str, token: &str, body: &Value) -> Reply {
        send(json_body(self.request(Method::PUT, path, token), body)).await
    }

    /// DELETE `path`.
    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        send(self.request(Method::DELETE, path, token)).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds `body` as an `application/fhir+json` body.
pub fn json_body(builder: RequestBuilder, body: &Value) -> RequestBuilder {
    builder
        .header("content-type", "application/fhir+json")
        .body(serde_json::to_vec(body).expect("serialize the body"))
}

/// Sends a request and reads the reply; a transport error panics.
pub async fn send(builder: RequestBuilder) -> Reply {
    let response = builder.send().await.expect("send the request");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("read the response body");
    (status, headers, parse_body(&bytes))
}

/// Parses a response body: empty is `Null`, JSON is parsed, anything else
/// becomes a string.
pub fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Runs `ward ARGS --data DIR` (and `--database URL` on PostgreSQL) on
/// `server`'s store, writing `stdin` to its standard input, and returns its
/// standard output; panics with its stderr when it fails.
pub fn ward(server: &Server, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut command = Command::new(WARD);
    command
        .args(args)
        .arg("--data")
        .arg(server.data_dir())
        .env_remove("WARD_DATABASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(database) = server.database() {
        command.args(["--database", database.url().as_str()]);
    }
    let mut child = command.spawn().expect("run ward");
    if let Some(text) = stdin {
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("wait for ward");
    assert!(
        output.status.success(),
        "ward {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Adds user `username` with `role` and `password` through `ward user add`,
/// linked to `fhir_user` when given, and returns the TOTP secret it prints.
pub fn add_user(
    server: &Server,
    (username, role, password): (&str, &str, &str),
    fhir_user: Option<&str>,
) -> String {
    let mut args = vec![
        "user",
        "add",
        "--username",
        username,
        "--role",
        role,
        "--password-stdin",
    ];
    if let Some(reference) = fhir_user {
        args.extend(["--fhir-user", reference]);
    }
    let output = ward(server, &args, Some(&format!("{password}\n")));
    output
        .lines()
        .find_map(|line| line.strip_prefix("TOTP secret: "))
        .expect("ward user add prints the TOTP secret")
        .trim()
        .to_owned()
}

/// Computes the current TOTP code of the base32 `secret` that
/// `ward user add` prints.
pub fn totp_code(secret: &str) -> String {
    use ward_auth::totp::{self, TotpSecret};
    let secret = TotpSecret::from_base32(secret).expect("a valid TOTP secret");
    totp::code_at(&secret, time::OffsetDateTime::now_utc()).expect("a TOTP code")
}

/// A header value as text, or "" when it is missing.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Returns a port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Spawns `ward serve` and waits until it prints that it is serving.
/// Returns the stderr log as the error when it exits or times out.
fn spawn(
    data: &Path,
    log: &Path,
    port: u16,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Child, String> {
    let stderr = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let mut command = Command::new(WARD);
    command
        .arg("serve")
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env_remove("WARD_LISTEN")
        .env_remove("WARD_BASE_URL")
        .env_remove("WARD_DATA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().map_err(|e| format!("spawn {WARD}: {e}"))?;

    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining stdout after the banner so the server never blocks
        // on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Ward is serving") {
                let _ = ready_tx.send(());
            }
        }
    });

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if ready_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("ward serve exited with {status}; stderr:\n{log}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "ward serve did not listen within {START_TIMEOUT:?}; stderr:\n{log}"
            ));
        }
    }
}

/// Builds a client that trusts only `DATA/ca.pem`.
fn client_for(data: &Path) -> Client {
    let pem = std::fs::read(data.join("ca.pem")).expect("read ca.pem");
    let ca = reqwest::Certificate::from_pem(&pem).expect("parse ca.pem");
    Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build the HTTPS client")
}
