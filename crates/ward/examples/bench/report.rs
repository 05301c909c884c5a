//! Prints the figures: the machine, each backend's table with its floors,
//! the memory figure, and the goals with whether each was met.

use std::path::Path;

use crate::Options;
use crate::floors::AeadFloor;
use crate::http::Measured;
use crate::phases::{BackendResult, Floor, Memory, Row, SyncPass};

/// The goals that `print_goals` checks.
const GOAL_MIXED_PER_SEC: f64 = 3_000.0;
const GOAL_IMPORT_PER_SEC: f64 = 10_000.0;
const GOAL_P99_MS: f64 = 25.0;
const GOAL_MEMORY_BYTES: f64 = 300.0 * 1024.0 * 1024.0;

const MIB: f64 = 1024.0 * 1024.0;

fn first_line(path: &str, prefix: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Prints the machine, the load average and the settings of the run.
pub fn print_environment(ward: &Path, options: &Options) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("ward: {}", ward.display());
    println!(
        "machine: {cores} cores, {}, memory {}",
        first_line("/proc/cpuinfo", "model name"),
        first_line("/proc/meminfo", "MemTotal")
    );
    print_load("load average at start");
    println!(
        "settings: {} clients (one HTTP/2 connection each), {} patients, {} requests per operation, care team of {}",
        options.clients, options.patients, options.ops, options.panel
    );
}

/// Prints `/proc/loadavg` with a label.
pub fn print_load(label: &str) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let figures: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("{label}: {}", figures.join(" "));
}

/// Prints the AEAD floor.
pub fn print_aead(aead: &AeadFloor) {
    let per_sec = |m: &Measured| m.rate();
    println!(
        "AEAD floor (AES-256-GCM DataKey, one thread, {} byte resource): seal {:.0}/s ({:.1} MB/s, p50 {:.1} us), open {:.0}/s ({:.1} MB/s, p50 {:.1} us)",
        aead.bytes,
        per_sec(&aead.seal),
        per_sec(&aead.seal) * aead.bytes as f64 / 1e6,
        aead.seal.percentile_ms(50.0) * 1000.0,
        per_sec(&aead.open),
        per_sec(&aead.open) * aead.bytes as f64 / 1e6,
        aead.open.percentile_ms(50.0) * 1000.0,
    );
}

fn header() {
    println!(
        "| {:<38} | {:>6} | {:>8} | {:>7} | {:>7} | {:>9} | {:<18} | {:>8} | {:>7} |",
        "operation", "ops", "per s", "p50 ms", "p99 ms", "CPU ms/op", "floor", "floor/s", "slower"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(40),
        "-".repeat(8),
        "-".repeat(10),
        "-".repeat(9),
        "-".repeat(9),
        "-".repeat(11),
        "-".repeat(20),
        "-".repeat(10),
        "-".repeat(9)
    );
}

fn line(name: &str, m: &Measured, cpu_ms: Option<f64>, floor: Option<(&str, f64)>) {
    let cpu = cpu_ms.map_or("-".to_owned(), |c| format!("{c:.2}"));
    let (floor_name, floor_rate, slower) = match floor {
        Some((name, rate)) if m.rate() > 0.0 => (
            name.to_owned(),
            format!("{rate:.0}"),
            format!("{:.1}x", rate / m.rate()),
        ),
        _ => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
    };
    println!(
        "| {:<38} | {:>6} | {:>8.0} | {:>7.2} | {:>7.2} | {:>9} | {:<18} | {:>8} | {:>7} |",
        name,
        m.ops,
        m.rate(),
        m.percentile_ms(50.0),
        m.percentile_ms(99.0),
        cpu,
        floor_name,
        floor_rate,
        slower
    );
}

fn cpu_ms_per_op(row: &Row) -> f64 {
    if row.measured.ops == 0 {
        return 0.0;
    }
    1000.0 * row.cpu_secs / row.measured.ops as f64
}

fn sync_line(label: &str, pass: &SyncPass) {
    println!(
        "{label}: {:.3} s, {} entries, {} pages, {:.1} KiB",
        pass.elapsed.as_secs_f64(),
        pass.entries,
        pass.pages,
        pass.bytes as f64 / 1024.0
    );
    if !pass.denied.is_empty() {
        println!(
            "  history denied to the role for: {}",
            pass.denied.join(", ")
        );
    }
}

/// Prints one backend's table, floors, sync and storage figures.
pub fn print_backend(result: &BackendResult, aead: &AeadFloor) {
    let healthz_rate = result.healthz.measured.rate();
    println!();
    header();
    for row in &result.rows {
        let floor = match row.floor {
            Floor::Healthz => Some(("GET /healthz", healthz_rate)),
            Floor::None => None,
            Floor::StoreWrite => Some(("store write+audit", result.store.write.rate())),
            Floor::StoreRead => Some(("store read", result.store.read.rate())),
        };
        line(&row.name, &row.measured, Some(cpu_ms_per_op(row)), floor);
    }
    line(
        "floor: GET /healthz (HTTPS, no work)",
        &result.healthz.measured,
        Some(cpu_ms_per_op(&result.healthz)),
        None,
    );
    line(
        "floor: store write+audit (no HTTP)",
        &result.store.write,
        None,
        None,
    );
    line(
        "floor: store write, no audit",
        &result.store.write_unaudited,
        None,
        None,
    );
    if let Some(ungrouped) = &result.store.write_ungrouped {
        line("floor: store write+audit, no group", ungrouped, None, None);
    }
    line(
        "floor: store read (no HTTP)",
        &result.store.read,
        None,
        None,
    );
    println!();
    println!(
        "Rows with a count in resources: 'transaction import' counts resources per second; its latencies and CPU time are per Bundle."
    );
    println!(
        "'slower' is the floor's rate divided by the operation's rate. Store floors use {} threads in the benchmark process.",
        result.clients
    );
    let audited = result.store.write.percentile_ms(50.0);
    let plain = result.store.write_unaudited.percentile_ms(50.0);
    if audited > 0.0 {
        println!(
            "audit share of a store write (p50, with vs without its audit record): {:.0}%",
            100.0 * (audited - plain).max(0.0) / audited
        );
    }
    if let Some(read) = result.row("read Observation") {
        let open = aead.open.percentile_ms(50.0);
        println!(
            "AEAD open is {:.4}% of a read's p50 latency",
            100.0 * open / read.measured.percentile_ms(50.0).max(1e-9)
        );
    }
    print_sync_and_storage(result);
    print_load("load average after this backend");
}

/// Prints the clinician sync, the peak memory and the store size.
fn print_sync_and_storage(result: &BackendResult) {
    sync_line(
        &format!(
            "clinician sync of {} care-team patients out of {}, first",
            result.panel, result.patients
        ),
        &result.sync.first,
    );
    sync_line(
        &format!(
            "clinician sync, second (after {} changes)",
            result.sync.changed
        ),
        &result.sync.second,
    );
    println!(
        "server peak resident memory (VmHWM): {:.1} MiB",
        result.server_hwm as f64 / MIB
    );
    let per_resource = result.store_bytes as f64 / result.resources.max(1) as f64;
    let per_version = result.store_bytes as f64 / result.versions.max(1) as f64;
    println!(
        "store size: {:.1} MiB for {} resources ({} versions): {:.0} bytes per resource, {:.0} per version",
        result.store_bytes as f64 / MIB,
        result.resources,
        result.versions,
        per_resource,
        per_version
    );
}

/// Prints the memory figure.
pub fn print_memory(memory: &Memory) {
    println!(
        "loaded {} resources in {:.1} s ({:.0} resources/s, Bundles of 500)",
        memory.resources,
        memory.load.elapsed.as_secs_f64(),
        memory.load.rate()
    );
    println!(
        "resident memory: {:.1} MiB after start, {:.1} MiB after loading, {:.1} MiB after 2,000 searches; peak {:.1} MiB",
        memory.after_start.rss as f64 / MIB,
        memory.after_load.rss as f64 / MIB,
        memory.after_reads.rss as f64 / MIB,
        memory.after_reads.hwm as f64 / MIB
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// Prints each goal with the measured figure.
pub fn print_goals(results: &[BackendResult], memory: Option<&Memory>) {
    println!("\n== goals ==");
    for result in results {
        let name = result.backend.name();
        if let Some(row) = result.row("mixed CRUD (1C:2R:1U)") {
            let rate = row.measured.rate();
            println!(
                "{name}: mixed CRUD >= {GOAL_MIXED_PER_SEC:.0} requests/s: {rate:.0}/s, {}",
                verdict(rate >= GOAL_MIXED_PER_SEC)
            );
        }
        if let Some(row) = result.row("transaction import (resources)") {
            let rate = row.measured.rate();
            println!(
                "{name}: import >= {GOAL_IMPORT_PER_SEC:.0} resources/s: {rate:.0}/s, {}",
                verdict(rate >= GOAL_IMPORT_PER_SEC)
            );
        }
        for op in [
            "create Observation",
            "read Observation",
            "update Observation (If-Match)",
            "mixed CRUD (1C:2R:1U)",
        ] {
            if let Some(row) = result.row(op) {
                let p99 = row.measured.percentile_ms(99.0);
                println!(
                    "{name}: {op} p99 < {GOAL_P99_MS:.0} ms at {} clients: {p99:.1} ms, {}",
                    result.clients,
                    verdict(p99 < GOAL_P99_MS)
                );
            }
        }
    }
    if let Some(memory) = memory {
        let rss = memory.after_reads.rss.max(memory.after_load.rss) as f64;
        println!(
            "SQLite: < 300 MB resident for {} stored resources: {:.1} MiB, {}",
            memory.resources,
            rss / MIB,
            verdict(rss < GOAL_MEMORY_BYTES)
        );
    }
    println!(
        "The goals for mixed CRUD and import are set for SQLite; PostgreSQL figures are shown against them for comparison."
    );
}
