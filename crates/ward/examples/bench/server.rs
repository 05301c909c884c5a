//! The `ward serve` process under test: starting it on a fresh data
//! directory (and a fresh PostgreSQL database), minting tokens, and reading
//! its CPU time, memory and disk use from `/proc` and the database.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The database backend a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// A PostgreSQL database created for one run and dropped with this value.
pub struct BenchDatabase {
    pub name: String,
}

impl BenchDatabase {
    /// Creates an empty database named after this process and the time.
    pub fn create() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("ward_bench_{}_{nanos}", std::process::id());
        psql("test", &format!("CREATE DATABASE {name}"))
            .context("creating the benchmark database on 127.0.0.1:5432")?;
        Ok(Self { name })
    }

    /// Returns the URL `ward serve --database` takes.
    pub fn url(&self) -> String {
        format!(
            "postgres://127.0.0.1:5432/{}?user=postgres&sslmode=disable",
            self.name
        )
    }

    /// Sums the bytes of every table of the database with its indexes and TOAST
    /// data (`pg_total_relation_size`).
    pub fn bytes(&self) -> Result<u64> {
        let out = psql(
            &self.name,
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r'",
        )?;
        out.trim()
            .parse()
            .with_context(|| format!("parsing the table size '{}'", out.trim()))
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = psql("test", &sql) {
            eprintln!(
                "dropping the benchmark database {} failed: {error}",
                self.name
            );
        }
    }
}

/// Runs `sql` with `psql` as user `postgres` on 127.0.0.1:5432.
pub fn psql(database: &str, sql: &str) -> Result<String> {
    let output = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d"])
        .arg(database)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .context("running psql")?;
    if !output.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A running `ward serve`, killed on drop.
pub struct Server {
    child: Child,
    pub ward: PathBuf,
    pub data: PathBuf,
    pub base: String,
    pub origin: String,
    pub ca: reqwest::Certificate,
    pub database: Option<BenchDatabase>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time and memory of a process, from `/proc/PID/stat` and
/// `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    /// User plus system CPU time in seconds.
    pub cpu_secs: f64,
    /// Resident set size in bytes (`VmRSS`).
    pub rss: u64,
    /// Peak resident set size in bytes (`VmHWM`).
    pub hwm: u64,
}

impl Server {
    /// Starts `ward serve` on a free loopback port and waits until
    /// `/healthz` responds over HTTPS.
    pub async fn start(ward: &Path, data: &Path, backend: Backend) -> Result<Self> {
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(BenchDatabase::create()?),
        };
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(data.with_extension("log"))?;
        let mut command = Command::new(ward);
        command
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("WARD_MASTER_KEY")
            .env_remove("WARD_DATABASE")
            .env_remove("WARD_BASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some(database) = &database {
            command.args(["--database", &database.url()]);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", ward.display()))?;
        let origin = format!("https://127.0.0.1:{port}");
        let ca = match wait_ready(&mut child, data, &origin).await {
            Ok(ca) => ca,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err);
            }
        };
        Ok(Server {
            child,
            ward: ward.to_path_buf(),
            data: data.to_path_buf(),
            base: format!("{origin}/fhir"),
            origin,
            ca,
            database,
        })
    }

    /// Mints an access token with `ward token` and extra arguments such as
    /// `--role physician`.
    pub fn token(&self, scope: &str, extra: &[&str]) -> Result<String> {
        let output = Command::new(&self.ward)
            .args(["token", "--data"])
            .arg(&self.data)
            .args(["--scope", scope, "--ttl", "2h"])
            .args(extra)
            .env_remove("WARD_LISTEN")
            .env_remove("WARD_BASE_URL")
            .output()
            .context("running ward token")?;
        if !output.status.success() {
            bail!(
                "ward token failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the server's CPU time and memory.
    pub fn stats(&self) -> Result<ProcessStats> {
        process_stats(self.pid())
    }

    /// Measures the bytes the store occupies: the SQLite files of the data directory,
    /// or the PostgreSQL tables.
    pub fn store_bytes(&self) -> Result<u64> {
        match &self.database {
            Some(database) => database.bytes(),
            None => {
                let mut total = 0;
                for entry in std::fs::read_dir(&self.data)? {
                    let entry = entry?;
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with("ward.db") {
                        total += entry.metadata()?.len();
                    }
                }
                Ok(total)
            }
        }
    }
}

/// Waits until `/healthz` responds over HTTPS and returns the CA
/// certificate the server wrote to `DATA/ca.pem`.
async fn wait_ready(child: &mut Child, data: &Path, origin: &str) -> Result<reqwest::Certificate> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = format!("{origin}/healthz");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
            bail!("ward serve exited with {status}:\n{log}");
        }
        if Instant::now() > deadline {
            bail!("the server did not respond to {health} within 60 s");
        }
        if let Ok(pem) = std::fs::read(data.join("ca.pem")) {
            let ca = reqwest::Certificate::from_pem(&pem)?;
            let probe = crate::http::build_client(&ca)?;
            if probe
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(ca);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads user plus system CPU time and `VmRSS`/`VmHWM` of a process.
pub fn process_stats(pid: u32) -> Result<ProcessStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name in field 2 may hold spaces, so fields are counted
    // after its closing parenthesis: utime and stime are fields 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/PID/stat format")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| -> Result<f64> {
        fields
            .get(index)
            .context("/proc/PID/stat has too few fields")?
            .parse::<f64>()
            .context("parsing /proc/PID/stat")
    };
    // Fields 14 and 15 are at positions 11 and 12 after field 2.
    let cpu_ticks = ticks(11)? + ticks(12)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(ProcessStats {
        cpu_secs: cpu_ticks / clock_ticks_per_second(),
        rss: kib("VmRSS:"),
        hwm: kib("VmHWM:"),
    })
}

/// `sysconf(_SC_CLK_TCK)` through `getconf`, 100 when that fails.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
