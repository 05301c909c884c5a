//! Measures `ward serve` over real HTTPS on SQLite and PostgreSQL, next to
//! the floors it cannot beat: the store used directly, an HTTPS request that
//! does nothing (`/healthz`), and the AEAD seal and open of one resource.
//!
//! Build the server first, then run the benchmark in release mode:
//!
//! ```text
//! cargo build --release -p ward --bins --examples
//! target/release/examples/bench [--patients 60] [--clients 32] [--backends sqlite,postgres]
//! ```
//!
//! `--exchange-messages N --exchange-senders C` adds the exchange figure:
//! two servers that trust each other, N messages through `$send-message`
//! from C concurrent senders. With `--backends '' --memory-resources 0` it
//! runs alone.
//!
//! Each backend gets a server on a fresh temporary data directory on a free
//! port of 127.0.0.1 (PostgreSQL: a fresh database on 127.0.0.1:5432,
//! dropped at the end). Security stays on: TLS, bearer tokens, access
//! control and an audit record for every request. See BENCHMARKS.md for
//! recorded runs and the goals.

mod exchange;
mod floors;
mod http;
mod phases;
mod report;
mod server;
mod workload;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::server::Backend;

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(about = "Benchmarks ward serve over HTTPS against its floors")]
pub struct Options {
    /// The `ward` binary [default: `ward` in the target folder above this example].
    #[arg(long)]
    ward: Option<PathBuf>,
    /// A folder of Synthea transaction Bundles [default: ../shared/data/synthea-r4 when present, else generated patients].
    #[arg(long)]
    synthea: Option<PathBuf>,
    /// Concurrent clients, each with its own HTTP/2 connection.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Patients to load (N), each from a Synthea Bundle of about 70 resources.
    #[arg(long, default_value_t = 60)]
    patients: usize,
    /// Requests per measured operation.
    #[arg(long, default_value_t = 3000)]
    ops: usize,
    /// Patients on the clinician's care team, whose sync is measured.
    #[arg(long, default_value_t = 10)]
    panel: usize,
    /// Backends to run, comma-separated: sqlite, postgres; empty for the memory figure alone.
    #[arg(long, default_value = "sqlite,postgres", value_delimiter = ',')]
    backends: Vec<String>,
    /// Resources to load for the memory figure (SQLite); 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    memory_resources: usize,
    /// Messages for the exchange figure between two servers (SQLite); 0 skips it.
    #[arg(long, default_value_t = 0)]
    exchange_messages: usize,
    /// Concurrent senders for the exchange figure.
    #[arg(long, default_value_t = 8)]
    exchange_senders: usize,
}

fn default_ward() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this example")?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("the example has no target folder above it")?;
    Ok(target.join("ward"))
}

fn parse_backends(names: &[String]) -> Result<Vec<Backend>> {
    names
        .iter()
        .filter(|name| !name.trim().is_empty())
        .map(|name| match name.trim() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => bail!("unknown backend '{other}'; use sqlite or postgres"),
        })
        .collect()
}

async fn run(options: Options) -> Result<()> {
    let ward = match options.ward.clone() {
        Some(path) => path,
        None => default_ward()?,
    };
    if !ward.is_file() {
        bail!(
            "{} not found; run 'cargo build --release -p ward --bins --examples' first or pass --ward",
            ward.display()
        );
    }
    let backends = parse_backends(&options.backends)?;
    report::print_environment(&ward, &options);

    let synthea = match options.synthea.clone().or_else(workload::default_synthea) {
        Some(dir) => Some(workload::read_synthea(&dir)?),
        None => None,
    };
    let aead = phases::aead(&options)?;
    report::print_aead(&aead);

    let mut results = Vec::new();
    for backend in backends {
        let result = phases::run_backend(&ward, backend, &options, synthea.as_ref()).await?;
        report::print_backend(&result, &aead);
        results.push(result);
    }
    let memory = if options.memory_resources > 0 {
        let figure = phases::memory(&ward, &options).await?;
        report::print_memory(&figure);
        Some(figure)
    } else {
        None
    };
    if options.exchange_messages > 0 {
        let work = tempfile::tempdir()?;
        let figure = exchange::run(
            &ward,
            work.path(),
            options.exchange_messages,
            options.exchange_senders,
        )
        .await?;
        exchange::print(&figure);
    }
    report::print_goals(&results, memory.as_ref());
    Ok(())
}

fn main() -> Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}
