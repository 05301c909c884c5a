//! Helpers for tests of message exchange between `ward serve` processes:
//! `ward org` commands on a server's store and mutual trust set-up.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ward_exchange::TrustEntry;

use super::{Server, TestDatabase, WARD};

/// Retry settings that keep the tests short.
pub const FAST_RETRY: &[&str] = &["--exchange-retry-base", "1", "--exchange-retry-max", "2"];

/// Runs `ward` without the server's environment variables.
pub fn ward(args: &[&str]) -> Output {
    Command::new(WARD)
        .args(args)
        .env_remove("WARD_DATA")
        .env_remove("WARD_LISTEN")
        .env_remove("WARD_BASE_URL")
        .output()
        .expect("run ward")
}

/// Returns the data directory of `server` as an argument.
pub fn data_arg(server: &Server) -> String {
    server.data_dir().to_str().expect("UTF-8 path").to_owned()
}

/// Runs `ward org SUBCOMMAND` (or `ward audit export`) on the store of
/// `server`: its data directory, and its database on PostgreSQL.
pub fn ward_on(server: &Server, subcommand: &[&str], extra: &[&str]) -> Output {
    let data = data_arg(server);
    let url = server.database().map(TestDatabase::url);
    let mut args: Vec<&str> = subcommand.to_vec();
    args.extend(["--data", data.as_str()]);
    if let Some(url) = &url {
        args.extend(["--database", url.as_str()]);
    }
    args.extend(extra);
    ward(&args)
}

/// Exports the trust entry of `server` to a file beside its data directory.
pub fn export(server: &Server) -> (PathBuf, TrustEntry) {
    let output = ward_on(server, &["org", "export"], &[]);
    assert!(
        output.status.success(),
        "ward org export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entry: TrustEntry = serde_json::from_slice(&output.stdout).expect("export prints JSON");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&entry.fingerprint),
        "fingerprint not printed: {stderr}"
    );
    let path = server
        .data_dir()
        .with_file_name(format!("{}.json", entry.org_id));
    std::fs::write(&path, &output.stdout).expect("write the export");
    (path, entry)
}

/// Runs `ward org trust` on `server` for the exported entry in `file`.
pub fn trust(server: &Server, file: &Path, fingerprint: &str) {
    let file = file.to_str().expect("UTF-8 path");
    let output = ward_on(
        server,
        &["org", "trust"],
        &["--fingerprint", fingerprint, file],
    );
    assert!(
        output.status.success(),
        "ward org trust failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes `a` and `b` trust each other; returns their entries.
pub fn trust_both(a: &Server, b: &Server) -> (TrustEntry, TrustEntry) {
    let (a_file, a_entry) = export(a);
    let (b_file, b_entry) = export(b);
    trust(a, &b_file, &b_entry.fingerprint);
    trust(b, &a_file, &a_entry.fingerprint);
    (a_entry, b_entry)
}
