//! Import reporting: the progress bar, failure messages on stderr and the
//! summary on stdout.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// Counts shared by the workers of an import.
pub struct Report {
    bar: ProgressBar,
    totals: Mutex<Totals>,
    stopped: AtomicBool,
}

#[derive(Default)]
struct Totals {
    by_type: BTreeMap<String, u64>,
    failed_resources: u64,
    failed_files: BTreeSet<PathBuf>,
}

/// The final figures of an import.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Resources stored, by type.
    pub by_type: BTreeMap<String, u64>,
    /// Resources not stored.
    pub failed_resources: u64,
    /// Files that loaded completely.
    pub files_loaded: usize,
    /// Files with at least one failure, and paths that could not be read.
    pub files_failed: usize,
    /// The wall-clock time.
    pub elapsed: Duration,
}

impl Summary {
    /// Returns the number of resources stored.
    pub fn loaded(&self) -> u64 {
        self.by_type.values().sum()
    }

    /// Resources stored per second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.loaded() as f64 / secs
        } else {
            0.0
        }
    }

    /// Renders the summary for stdout.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Imported {} resources in {:.1} s ({:.0} resources/s)",
            self.loaded(),
            self.elapsed.as_secs_f64(),
            self.rate()
        );
        let _ = writeln!(
            out,
            "Files: {} loaded, {} failed",
            self.files_loaded, self.files_failed
        );
        let _ = writeln!(out, "Resources failed: {}", self.failed_resources);
        if !self.by_type.is_empty() {
            let _ = writeln!(out, "Resources by type:");
            for (resource_type, count) in &self.by_type {
                let _ = writeln!(out, "  {resource_type:<28} {count:>9}");
            }
        }
        out
    }
}

impl Report {
    /// Starts the progress bar for `total` resources. The bar draws only
    /// when stderr is a terminal.
    pub fn new(total: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} resources, {rate}/s, ETA {eta}",
        ) {
            let style = style
                .with_key("rate", |state: &ProgressState, out: &mut dyn fmt::Write| {
                    let _ = write!(out, "{:.0}", state.per_sec());
                })
                .progress_chars("=> ");
            bar.set_style(style);
        }
        Self {
            bar,
            totals: Mutex::new(Totals::default()),
            stopped: AtomicBool::new(false),
        }
    }

    fn with_totals(&self, f: impl FnOnce(&mut Totals)) {
        // A poisoned lock only means another worker panicked; its counts
        // are still the best available.
        let mut totals = self
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut totals);
    }

    /// Records stored resources, by type, and `processed` entries done.
    pub fn loaded(&self, by_type: &BTreeMap<String, u64>, processed: u64) {
        self.with_totals(|totals| {
            for (resource_type, count) in by_type {
                *totals.by_type.entry(resource_type.clone()).or_default() += count;
            }
        });
        self.bar.inc(processed);
    }

    /// Reports a failure on stderr as `PATH[:LINE]: REASON` and counts
    /// `resources` as not stored.
    pub fn failed(&self, path: &Path, line: Option<&str>, reason: &str, resources: u64) {
        let location = match line {
            Some(line) => format!("{}:{line}", path.display()),
            None => path.display().to_string(),
        };
        self.bar
            .suspend(|| eprintln!("error: {location}: {reason}"));
        self.with_totals(|totals| {
            totals.failed_resources += resources;
            totals.failed_files.insert(path.to_owned());
        });
        self.bar.inc(resources);
    }

    /// Stops the import: workers skip what remains.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// True once [`Report::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Clears the bar and returns the figures, given the number of files
    /// that were found.
    pub fn finish(self, files: usize, elapsed: Duration) -> Summary {
        self.bar.finish_and_clear();
        let totals = self
            .totals
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let files_failed = totals.failed_files.len();
        Summary {
            by_type: totals.by_type,
            failed_resources: totals.failed_resources,
            files_loaded: files.saturating_sub(files_failed),
            files_failed,
            elapsed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_and_renders() {
        let report = Report::new(10);
        let mut counts = BTreeMap::new();
        counts.insert("Patient".to_owned(), 3);
        report.loaded(&counts, 3);
        counts.insert("Observation".to_owned(), 2);
        report.loaded(&counts, 5);
        report.failed(Path::new("a.ndjson"), Some("7"), "invalid JSON", 1);
        report.failed(Path::new("a.ndjson"), Some("9"), "invalid JSON", 1);
        let summary = report.finish(3, Duration::from_secs(2));
        assert_eq!(summary.loaded(), 8);
        assert_eq!(summary.by_type["Patient"], 6);
        assert_eq!(summary.failed_resources, 2);
        assert_eq!(summary.files_loaded, 2);
        assert_eq!(summary.files_failed, 1);
        assert!((summary.rate() - 4.0).abs() < 1e-9);
        let text = summary.render();
        assert!(text.starts_with("Imported 8 resources in 2.0 s (4 resources/s)\n"));
        assert!(text.contains("Files: 2 loaded, 1 failed\n"));
        assert!(text.contains("  Observation"));
    }
}
