//! Prometheus metrics: request counts and latency by route template, and
//! authentication failures. Labels never carry ids, query values or tokens.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The request latency histogram, in seconds.
pub const REQUEST_DURATION: &str = "ward_http_request_duration_seconds";
/// Requests by method, route template and status.
pub const REQUESTS: &str = "ward_http_requests_total";
/// Rejected credentials by reason.
pub const AUTH_FAILURES: &str = "ward_auth_failures_total";
/// Audit records committed.
pub const AUDIT_RECORDS: &str = "ward_audit_records_total";
/// Seconds from queueing a read's audit record to its commit, last batch.
pub const AUDIT_LAG: &str = "ward_audit_lag_seconds";
/// Audit records not yet delivered to the SIEM.
pub const SIEM_LAG: &str = "ward_siem_export_lag_records";
/// Security alerts raised, by rule.
pub const ALERTS: &str = "ward_alerts_total";

/// Latency buckets from 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle; `None`
/// when another recorder was installed first (metrics are then not
/// rendered).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), BUCKETS)
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(
        REQUESTS,
        "HTTP requests by method, route template and status"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency by method and route template"
    );
    metrics::describe_counter!(
        AUTH_FAILURES,
        "requests rejected for missing or invalid credentials"
    );
    metrics::describe_counter!(AUDIT_RECORDS, "audit records committed");
    metrics::describe_gauge!(
        AUDIT_LAG,
        metrics::Unit::Seconds,
        "time from queueing an audit record to its commit, in the last batch"
    );
    metrics::describe_gauge!(SIEM_LAG, "audit records not yet exported to the SIEM");
    metrics::describe_counter!(ALERTS, "security alerts raised, by rule");
}

/// Records one finished request.
pub fn record_request(method: &str, route: &str, status: u16, seconds: f64) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!(REQUESTS, &labels).increment(1);
    let labels = [("method", method.to_owned()), ("route", route.to_owned())];
    metrics::histogram!(REQUEST_DURATION, &labels).record(seconds);
}

/// Records a rejected credential.
pub fn record_auth_failure(reason: &'static str) {
    metrics::counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

/// Records committed audit records.
pub fn record_audit_records(count: u64) {
    metrics::counter!(AUDIT_RECORDS).increment(count);
}

/// Records the queueing delay of the last audit batch.
pub fn record_audit_lag(seconds: f64) {
    metrics::gauge!(AUDIT_LAG).set(seconds);
}

/// Records how many audit records the SIEM export is behind.
pub fn record_siem_lag(records: u64) {
    metrics::gauge!(SIEM_LAG).set(records as f64);
}

/// Records a raised alert.
pub fn record_alert(rule: &'static str) {
    metrics::counter!(ALERTS, "rule" => rule).increment(1);
}
