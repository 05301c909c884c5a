//! `ward demo` end to end: four `ward serve` children, the phone's
//! referral and e-prescription, the dispensing, the lab result, the audit summary of each
//! step, and no child process or temporary directory left behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::WARD;

#[test]
fn demo_runs_every_step() {
    let output = Command::new(WARD)
        .arg("demo")
        .env("WARD_LOG", "warn")
        .output()
        .expect("run ward demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ward demo failed:\n{stdout}\n{stderr}"
    );
    for expected in [
        "referral: delivered",
        "e-prescription: delivered",
        "the phone sees the e-prescription as 'dispensed'",
        "lab result delivered to the clinic",
        "message_queued x2",
        "Done: every step succeeded",
    ] {
        assert!(
            stdout.contains(expected),
            "missing '{expected}' in:\n{stdout}"
        );
    }

    // Each receiver audited the message it filed.
    for receiver in ["specialist", "pharmacy"] {
        let prefix = format!("audit {receiver}: ");
        let received = stdout.lines().any(|line| {
            line.trim_start().starts_with(&prefix) && line.contains("message_received")
        });
        assert!(
            received,
            "no message_received for the {receiver}:\n{stdout}"
        );
    }

    // Every server's data directory was under one temporary directory,
    // removed after the children were killed.
    let data_dirs: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split("(data ").nth(1))
        .map(|rest| rest.trim_end_matches(')'))
        .collect();
    assert_eq!(data_dirs.len(), 4, "{stdout}");
    for dir in data_dirs {
        assert!(!Path::new(dir).exists(), "{dir} is left behind");
    }

    // No server listens any more.
    let ports: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains("(data "))
        .filter_map(|line| line.split("https://127.0.0.1:").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(ports.len(), 4, "{stdout}");
    for port in ports {
        let address = format!("127.0.0.1:{port}");
        assert!(
            std::net::TcpStream::connect(&address).is_err(),
            "a demo server still listens on {address}"
        );
    }
}
