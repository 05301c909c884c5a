//! Helpers shared by the search, Bundle, Synthea and server tests: a server
//! with an all-access token, resource creation, search result collection
//! and the scan of the data directory for plaintext.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::{Reply, Server};

/// A server and a token that may do everything.
pub struct Admin {
    /// The running server.
    pub server: Server,
    /// A `system/*.cruds` token.
    pub token: String,
}

impl Admin {
    /// Starts a fresh server and mints its token.
    pub fn start() -> Admin {
        Admin::wrap(Server::start())
    }

    /// Mints a `system/*.cruds` token for `server`.
    pub fn wrap(server: Server) -> Admin {
        let token = server.token("system/*.cruds");
        Admin { server, token }
    }

    /// GET `path` with the admin token.
    pub async fn get(&self, path: &str) -> Reply {
        self.server.get(path, &self.token).await
    }

    /// POST `body` to `path` with the admin token.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.server.post_json(path, &self.token, body).await
    }

    /// DELETE `path` with the admin token.
    pub async fn delete(&self, path: &str) -> Reply {
        self.server.delete(path, &self.token).await
    }

    /// Creates `resource` and returns its server-assigned id.
    pub async fn create(&self, resource: Value) -> String {
        let resource_type = resource["resourceType"]
            .as_str()
            .expect("resource has a resourceType")
            .to_owned();
        let (status, _, body) = self.post(&resource_type, &resource).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "create {resource_type}: {body}"
        );
        body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("create {resource_type} returned no id: {body}"))
            .to_owned()
    }

    /// Runs a search and returns the searchset Bundle, asserting 200.
    pub async fn search(&self, query: &str) -> Value {
        let (status, _, body) = self.get(query).await;
        assert_eq!(status, StatusCode::OK, "GET {query}: {body}");
        assert_eq!(body["type"], "searchset", "GET {query}: {body}");
        body
    }

    /// Runs a search and returns the ids of its `match` entries, in order.
    pub async fn match_ids(&self, query: &str) -> Vec<String> {
        ids_with_mode(&self.search(query).await, "match")
    }

    /// Runs a search and returns its match ids as a sorted list, for
    /// comparisons where order does not matter.
    pub async fn match_set(&self, query: &str) -> Vec<String> {
        let mut ids = self.match_ids(query).await;
        ids.sort();
        ids
    }
}

/// Returns the ids of the entries of `bundle` whose `search.mode` is `mode`.
pub fn ids_with_mode(bundle: &Value, mode: &str) -> Vec<String> {
    entries(bundle)
        .iter()
        .filter(|e| e["search"]["mode"] == mode)
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

/// Returns the entries of a Bundle (empty when it has none).
pub fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

/// Returns the URL of the link with `relation` in a Bundle.
pub fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

/// Sorts a list of ids, for comparing result sets.
pub fn sorted(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    ids.sort();
    ids
}

/// Sends SIGTERM to `pid` with the `kill` command.
pub fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// Stops a server with SIGTERM and asserts that it exits with status 0.
pub fn stop_gracefully(server: &mut Server) {
    sigterm(server.pid());
    let status = server
        .wait_exit(Duration::from_secs(40))
        .expect("the server exits within 40 s of SIGTERM");
    assert!(status.success(), "the server exited with {status}");
}

/// Lists every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(read) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in read.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    files
}

/// Asserts that no file under `dir` contains any of `needles`, as written
/// or lowercased, as UTF-8 bytes. Returns the files scanned.
pub fn assert_no_plaintext(dir: &Path, needles: &[String]) -> Vec<PathBuf> {
    let mut variants: HashSet<String> = HashSet::new();
    for needle in needles {
        let needle = needle.trim();
        // NOTE: values shorter than 4 bytes are not checked, because a
        // 3-byte string occurs by chance about once per 16 MiB of ciphertext.
        if needle.chars().count() < 4 {
            continue;
        }
        variants.insert(needle.to_owned());
        variants.insert(needle.to_lowercase());
    }
    let files = files_under(dir);
    for file in &files {
        let bytes = std::fs::read(file).expect("read a data file");
        for needle in &variants {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "{} contains the plaintext {needle:?}",
                file.display()
            );
        }
    }
    files
}

/// Returns true when `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(haystack, needle).is_some()
}
