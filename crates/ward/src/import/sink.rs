//! Import targets: the engine in this process over the local store
//! (`--data`), or a running server over HTTPS (`--server`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;
use ward_server::auth::Principal;
use ward_server::fhir::engine::{Engine, Limits};
use ward_server::fhir::response::ReturnPreference;
use ward_server::setup::DataDir;
use zeroize::Zeroizing;

use crate::cli::{DataArgs, ServeArgs};
use crate::config::resolve;

/// The FHIR media type.
const FHIR_JSON: &str = "application/fhir+json";

/// A Bundle the target did not process.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The OperationOutcome, when the response held one.
    pub outcome: Option<Value>,
    /// A description, for failures without an outcome.
    pub message: String,
}

impl Rejection {
    fn transport(message: String) -> Self {
        Self {
            status: None,
            outcome: None,
            message,
        }
    }

    /// Formats the reason as one line: status, then each issue's
    /// diagnostics and expression.
    pub fn reason(&self) -> String {
        let details = self
            .outcome
            .as_ref()
            .map(outcome_text)
            .filter(|text| !text.is_empty())
            .unwrap_or_else(|| self.message.clone());
        match self.status {
            Some(status) => format!("rejected with status {status}: {details}"),
            None => details,
        }
    }

    /// Returns the index of the Bundle entry the outcome blames, if any.
    pub fn entry_index(&self) -> Option<usize> {
        let issues = self.outcome.as_ref()?.get("issue")?.as_array()?;
        issues
            .iter()
            .filter_map(|issue| issue.get("expression")?.as_array())
            .flatten()
            .filter_map(Value::as_str)
            .find_map(entry_index_of)
    }
}

/// Parses the `N` of a leading `Bundle.entry[N]`.
fn entry_index_of(expression: &str) -> Option<usize> {
    let rest = expression.strip_prefix("Bundle.entry[")?;
    let (digits, _) = rest.split_once(']')?;
    digits.parse().ok()
}

/// Renders an OperationOutcome's issues as `diagnostics (at expression)`,
/// joined by `; `.
pub fn outcome_text(outcome: &Value) -> String {
    let Some(issues) = outcome.get("issue").and_then(Value::as_array) else {
        return String::new();
    };
    let texts: Vec<String> = issues
        .iter()
        .map(|issue| {
            let diagnostics = issue
                .get("diagnostics")
                .and_then(Value::as_str)
                .or_else(|| issue.get("code").and_then(Value::as_str))
                .unwrap_or("no diagnostics");
            let expressions: Vec<&str> = issue
                .get("expression")
                .and_then(Value::as_array)
                .map(|list| list.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if expressions.is_empty() {
                diagnostics.to_owned()
            } else {
                format!("{diagnostics} (at {})", expressions.join(", "))
            }
        })
        .collect();
    texts.join("; ")
}

/// A target for Bundles.
pub trait Sink: Sync {
    /// Processes a batch or transaction Bundle and returns the response
    /// Bundle.
    fn submit(&self, bundle: &Value) -> Result<Value, Rejection>;

    /// Returns how many Bundles to submit at once.
    fn concurrency(&self) -> usize;
}

/// The engine over the local store.
pub struct Direct {
    engine: Engine,
    principal: Principal,
}

impl Direct {
    /// Opens the data directory (creating it on first use) and its store.
    pub fn open(data: &DataArgs) -> Result<Self> {
        let serve_args = ServeArgs {
            data: data.clone(),
            database: std::env::var("WARD_DATABASE").ok(),
            ..ServeArgs::default()
        };
        let mut settings = resolve(&serve_args)?;
        // Absolute `request.url` values are relative to the base the server
        // last ran under.
        if let Ok(origin) = std::fs::read_to_string(settings.data.join("origin")) {
            settings.origin = origin.trim().to_owned();
        }
        let (keys, _) = DataDir::new(&settings.data)
            .open_or_init(crate::serve::DEFAULT_ORG_NAME)
            .context("opening the data directory")?;
        let store = ward_store::open(&settings.store, &keys.master)
            .with_context(|| format!("opening the database {}", settings.store.describe()))?;
        let engine = Engine {
            store,
            base: settings.fhir_base(),
            limits: Limits::default(),
            access: crate::serve::load_access(&settings)?,
            auditor: Arc::new(ward_server::audit::Auditor::new("ward-import")),
        };
        let principal = Principal::system("ward-import", "system/*.cruds");
        Ok(Self { engine, principal })
    }
}

impl Sink for Direct {
    fn submit(&self, bundle: &Value) -> Result<Value, Rejection> {
        self.engine
            .process_bundle(&self.principal, bundle, ReturnPreference::Minimal)
            .map_err(|err| Rejection {
                status: Some(err.status.as_u16()),
                outcome: Some(err.outcome.to_json()),
                message: String::new(),
            })
    }

    // SQLite has one writer, so a second worker only overlaps its parsing
    // and validation with the other's writes.
    fn concurrency(&self) -> usize {
        2
    }
}

/// A running server, over HTTPS.
pub struct Remote {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
}

impl Remote {
    /// Connects to the FHIR base URL `base`, trusting the CA in `ca`, and
    /// checks that `GET [base]/metadata` succeeds.
    pub fn connect(base: &str, token: Zeroizing<String>, ca: &Path) -> Result<Self> {
        let pem = std::fs::read(ca).with_context(|| {
            format!(
                "reading the CA certificate {}; pass --ca or --data",
                ca.display()
            )
        })?;
        let certificate = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("parsing the CA certificate {}", ca.display()))?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(certificate)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()
            .context("building the HTTPS client")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let base = base.trim_end_matches('/').to_owned();
        let remote = Self {
            runtime,
            client,
            base,
            token,
        };
        remote.check()?;
        Ok(remote)
    }

    fn check(&self) -> Result<()> {
        let url = format!("{}/metadata", self.base);
        let response = self
            .runtime
            .block_on(async { self.client.get(&url).header(ACCEPT, FHIR_JSON).send().await })
            .with_context(|| format!("connecting to the FHIR server at {}", self.base))?;
        if !response.status().is_success() {
            bail!(
                "{url} returned status {}; is --server the FHIR base URL, such as https://HOST:PORT/fhir?",
                response.status().as_u16()
            );
        }
        Ok(())
    }

    async fn post(&self, bundle: &Value) -> Result<Value, Rejection> {
        let body = serde_json::to_vec(bundle)
            .map_err(|e| Rejection::transport(format!("cannot encode the Bundle: {e}")))?;
        let response = self
            .client
            .post(&self.base)
            .bearer_auth(self.token.as_str())
            .header(CONTENT_TYPE, FHIR_JSON)
            .header(ACCEPT, FHIR_JSON)
            .body(body)
            .send()
            .await
            .map_err(|e| Rejection::transport(format!("the request failed: {e}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Rejection::transport(format!("reading the response failed: {e}")))?;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return parsed.ok_or_else(|| Rejection {
                status: Some(status.as_u16()),
                outcome: None,
                message: "the response is not JSON".into(),
            });
        }
        let outcome = parsed
            .filter(|v| v.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome"));
        Err(Rejection {
            status: Some(status.as_u16()),
            outcome,
            message: status.canonical_reason().unwrap_or("no details").to_owned(),
        })
    }
}

impl Sink for Remote {
    fn submit(&self, bundle: &Value) -> Result<Value, Rejection> {
        self.runtime.block_on(self.post(bundle))
    }

    fn concurrency(&self) -> usize {
        4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entry_index_from_expression() {
        let rejection = Rejection {
            status: Some(422),
            outcome: Some(json!({
                "resourceType": "OperationOutcome",
                "issue": [{
                    "severity": "error",
                    "code": "value",
                    "diagnostics": "bad date",
                    "expression": ["Bundle.entry[12].resource.birthDate"]
                }]
            })),
            message: String::new(),
        };
        assert_eq!(rejection.entry_index(), Some(12));
        assert_eq!(
            rejection.reason(),
            "rejected with status 422: bad date (at Bundle.entry[12].resource.birthDate)"
        );
    }

    #[test]
    fn entry_index_absent() {
        assert_eq!(entry_index_of("Patient.birthDate"), None);
        assert_eq!(entry_index_of("Bundle.entry[x]"), None);
        let rejection = Rejection::transport("refused".into());
        assert_eq!(rejection.entry_index(), None);
        assert_eq!(rejection.reason(), "refused");
    }
}
