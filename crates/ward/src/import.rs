//! `ward import`: loading FHIR Bundles (`.json`) and NDJSON files
//! (`.ndjson`) into the local store (`--data`) or through a running server
//! (`--server`).
//!
//! Files load in tiers so that referenced resources are stored first (see
//! [`files`]). Within a tier, one thread reads files into Bundles and a few
//! workers submit them. Each Bundle is atomic. When an NDJSON transaction
//! fails because of one line, that line is reported and the rest of its
//! chunk is submitted again, so one bad line does not cost its neighbours.
//! Every failure is reported with its path (and line), and the import goes
//! on with the other files; the exit status is non-zero when anything failed.

mod files;
mod read;
mod report;
mod sink;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use zeroize::Zeroizing;

use self::files::SourceFile;
use self::read::{Chunk, entries};
use self::report::Report;
use self::sink::{Direct, Rejection, Remote, Sink};
use crate::cli::ImportArgs;

/// The maximum number of rejected lines left out of one NDJSON chunk
/// before the rest of the chunk is reported as failed.
const MAX_LINES_DROPPED: usize = 50;

/// Statuses for which an NDJSON chunk is retried without the entry the
/// outcome blames: the entry's content was at fault, not the request.
const RETRY_STATUSES: [u16; 5] = [400, 404, 409, 412, 422];

/// Runs an import and prints its summary; fails when anything was not
/// imported.
pub fn run(mut args: ImportArgs) -> Result<()> {
    let started = Instant::now();
    let sink: Box<dyn Sink> = match &args.server {
        Some(server) => {
            let token = Zeroizing::new(args.token.take().context("--server needs --token")?);
            let ca = args
                .ca
                .clone()
                .unwrap_or_else(|| args.data.dir().join("ca.pem"));
            Box::new(Remote::connect(server, token, &ca)?)
        }
        None => Box::new(Direct::open(&args.data)?),
    };

    let (files, unusable) = files::collect(&args.paths);
    if files.is_empty() && unusable.is_empty() {
        bail!("no .json or .ndjson files found in the given paths");
    }
    let total = files.iter().map(read::count_resources).sum();
    let report = Report::new(total);
    for item in &unusable {
        report.failed(&item.path, None, &item.reason, 0);
    }

    let mut start = 0;
    while start < files.len() {
        let tier = files.get(start).map_or(0, |f| f.tier);
        let end = files[start..]
            .iter()
            .position(|f| f.tier != tier)
            .map_or(files.len(), |n| start + n);
        load_tier(&files[start..end], sink.as_ref(), &report);
        start = end;
    }

    let summary = report.finish(files.len() + unusable.len(), started.elapsed());
    print!("{}", summary.render());
    if summary.files_failed > 0 {
        bail!(
            "{} of {} files were not imported completely; see the errors above",
            summary.files_failed,
            summary.files_failed + summary.files_loaded
        );
    }
    Ok(())
}

/// Loads the files of one tier: this thread reads, the workers submit.
fn load_tier(files: &[SourceFile], sink: &dyn Sink, report: &Report) {
    let workers = sink.concurrency().max(1);
    let (sender, receiver) = sync_channel::<Chunk>(workers);
    let receiver = Mutex::new(receiver);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let next = match receiver.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(_) => break,
                    };
                    match next {
                        Ok(chunk) => submit(chunk, sink, report),
                        Err(_) => break,
                    }
                }
            });
        }
        for file in files {
            if report.is_stopped() {
                break;
            }
            let path = file.path.clone();
            read::read_file(
                file,
                &mut |chunk| sender.send(chunk).is_ok(),
                &mut |failure| {
                    let line = failure.line.map(|n| n.to_string());
                    report.failed(&path, line.as_deref(), &failure.reason, failure.resources);
                },
            );
        }
        drop(sender);
    });
}

/// Submits one chunk, retrying NDJSON chunks without the lines the server
/// rejects.
fn submit(mut chunk: Chunk, sink: &dyn Sink, report: &Report) {
    let mut dropped = 0;
    loop {
        if report.is_stopped() {
            let count = chunk.len() as u64;
            report.failed(&chunk.path, None, "skipped after an earlier error", count);
            return;
        }
        let rejection = match sink.submit(&chunk.bundle) {
            Ok(response) => return record_response(&chunk, &response, report),
            Err(rejection) => rejection,
        };
        if rejection.status == Some(401) {
            report.failed(&chunk.path, None, &rejection.reason(), chunk.len() as u64);
            report.failed(
                &chunk.path,
                None,
                "the server rejected the access token; stopping the import",
                0,
            );
            report.stop();
            return;
        }
        let retry = dropped < MAX_LINES_DROPPED
            && chunk.len() > 1
            && rejection
                .status
                .is_some_and(|s| RETRY_STATUSES.contains(&s));
        match (retry, blamed_line(&chunk, &rejection)) {
            (true, Some((index, line))) => {
                report.failed(&chunk.path, Some(&line.to_string()), &rejection.reason(), 1);
                remove_entry(&mut chunk, index);
                dropped += 1;
            }
            _ => {
                let lines = line_range(&chunk);
                report.failed(
                    &chunk.path,
                    lines.as_deref(),
                    &rejection.reason(),
                    chunk.len() as u64,
                );
                return;
            }
        }
    }
}

/// Returns the entry index and NDJSON line a rejection blames.
fn blamed_line(chunk: &Chunk, rejection: &Rejection) -> Option<(usize, u64)> {
    let index = rejection.entry_index()?;
    let line = *chunk.lines.as_ref()?.get(index)?;
    Some((index, line))
}

/// Formats the lines of an NDJSON chunk as `FIRST-LAST`.
fn line_range(chunk: &Chunk) -> Option<String> {
    let lines = chunk.lines.as_ref()?;
    Some(format!("{}-{}", lines.first()?, lines.last()?))
}

fn remove_entry(chunk: &mut Chunk, index: usize) {
    if let Some(items) = chunk.bundle.get_mut("entry").and_then(Value::as_array_mut)
        && index < items.len()
    {
        items.remove(index);
    }
    if let Some(lines) = chunk.lines.as_mut()
        && index < lines.len()
    {
        lines.remove(index);
    }
}

/// Counts what a processed Bundle stored. In a batch response each entry
/// has its own status, and failed entries are reported.
fn record_response(chunk: &Chunk, response: &Value, report: &Report) {
    let Some(requests) = entries(&chunk.bundle) else {
        return;
    };
    let responses = entries(response);
    let batch = chunk.kind() == "batch";
    let mut by_type = BTreeMap::new();
    let mut failed = 0;
    for (index, entry) in requests.iter().enumerate() {
        let answer = responses.and_then(|r| r.get(index));
        if let Some(failure) = answer.filter(|_| batch).and_then(batch_failure) {
            let line = chunk
                .lines
                .as_ref()
                .and_then(|l| l.get(index))
                .map(u64::to_string);
            let reason = format!("Bundle.entry[{index}]: {failure}");
            report.failed(&chunk.path, line.as_deref(), &reason, 1);
            failed += 1;
        } else if let Some(resource_type) = stored_type(entry) {
            *by_type.entry(resource_type.to_owned()).or_insert(0) += 1;
        }
    }
    report.loaded(&by_type, requests.len() as u64 - failed);
}

/// Returns why a batch response entry failed, or `None` for a 2xx status.
fn batch_failure(answer: &Value) -> Option<String> {
    let status = answer
        .pointer("/response/status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if status.starts_with('2') {
        return None;
    }
    let details = answer
        .pointer("/response/outcome")
        .map(sink::outcome_text)
        .unwrap_or_default();
    Some(format!("rejected with status {status}: {details}"))
}

/// Returns the resource type a POST or PUT entry stores.
fn stored_type(entry: &Value) -> Option<&str> {
    let method = entry.pointer("/request/method").and_then(Value::as_str)?;
    if !matches!(method, "POST" | "PUT") {
        return None;
    }
    entry
        .pointer("/resource/resourceType")
        .and_then(Value::as_str)
}
