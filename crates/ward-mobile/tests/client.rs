//! Client behaviour that needs no server: PIN handling, locking, the idle
//! lock, the wipe and input checks.

use std::path::Path;
use std::time::Duration;

use ward_mobile::{Client, ClientOptions, KdfCost, MobileError, Vitals};

const PIN: &str = "482915";

/// A self-signed CA certificate: provisioning only parses it.
fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["test-ca".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

fn options() -> ClientOptions {
    ClientOptions {
        kdf: KdfCost {
            memory_kib: 64,
            iterations: 1,
        },
        max_wrong_pins: 3,
        ..ClientOptions::default()
    }
}

fn provisioned(dir: &Path, options: ClientOptions) -> Client {
    let client = Client::open_with(dir, options).unwrap();
    client
        .provision("https://127.0.0.1:9", &ca_pem(), PIN)
        .unwrap();
    client
}

#[test]
fn unlock_after_lock() {
    let dir = tempfile::tempdir().unwrap();
    let client = provisioned(dir.path(), options());
    assert!(client.status().unwrap().unlocked);
    client.lock();
    assert!(!client.status().unwrap().unlocked);
    assert!(matches!(client.patients(), Err(MobileError::Locked)));
    client.unlock(PIN).unwrap();
    assert_eq!(client.patients().unwrap().len(), 0);
}

#[test]
fn wrong_pin_counts_down() {
    let dir = tempfile::tempdir().unwrap();
    let client = provisioned(dir.path(), options());
    client.lock();
    let error = client.unlock("000000").err().unwrap();
    assert!(
        matches!(error, MobileError::WrongPin { remaining: 2 }),
        "{error:?}"
    );
    assert_eq!(client.status().unwrap().failed_pins, 1);
    client.unlock(PIN).unwrap();
    assert_eq!(client.status().unwrap().failed_pins, 0);
}

#[test]
fn wrong_pins_wipe_device() {
    let dir = tempfile::tempdir().unwrap();
    let client = provisioned(dir.path(), options());
    client.lock();
    for remaining in [2, 1] {
        let error = client.unlock("111111").err().unwrap();
        assert!(matches!(error, MobileError::WrongPin { remaining: r } if r == remaining));
    }
    let error = client.unlock("111111").err().unwrap();
    assert!(
        matches!(error, MobileError::WipedAfterWrongPins),
        "{error:?}"
    );
    assert!(!dir.path().join("keys.json").exists());
    assert!(!dir.path().join("device.secret").exists());
    assert!(!dir.path().join("store.db").exists());
    assert_eq!(client.status().unwrap().enrolled, Some(false));
    assert!(matches!(client.unlock(PIN), Err(MobileError::NotEnrolled)));
}

#[test]
fn idle_time_locks() {
    let dir = tempfile::tempdir().unwrap();
    let client = provisioned(
        dir.path(),
        ClientOptions {
            idle_lock_secs: 1,
            ..options()
        },
    );
    assert!(client.patients().is_ok());
    std::thread::sleep(Duration::from_millis(1100));
    assert!(matches!(client.patients(), Err(MobileError::Locked)));
}

#[test]
fn reopened_client_needs_pin() {
    let dir = tempfile::tempdir().unwrap();
    drop(provisioned(dir.path(), options()));
    let client = Client::open_with(dir.path(), options()).unwrap();
    let status = client.status().unwrap();
    assert!(status.has_keys);
    assert_eq!(status.enrolled, None, "unknown while locked");
    assert!(!status.unlocked);
    client.unlock(PIN).unwrap();
    let status = client.status().unwrap();
    assert_eq!(status.enrolled, Some(false), "provisioning does not enroll");
    assert_eq!(status.device_id, None);
    assert_eq!(
        client.status().unwrap().server_url.as_deref(),
        Some("https://127.0.0.1:9")
    );
}

#[test]
fn wipe_erases_everything() {
    let dir = tempfile::tempdir().unwrap();
    let client = provisioned(dir.path(), options());
    client.wipe().unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left after the wipe: {left:?}");
    assert!(matches!(client.patients(), Err(MobileError::NotEnrolled)));
}

#[test]
fn provision_twice_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let client = provisioned(dir.path(), options());
    let error = client
        .provision("https://127.0.0.1:9", &ca_pem(), PIN)
        .err()
        .unwrap();
    assert!(matches!(error, MobileError::AlreadyEnrolled), "{error:?}");
}

#[test]
fn plain_http_server_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::open_with(dir.path(), options()).unwrap();
    let error = client
        .provision("http://127.0.0.1:9", &ca_pem(), PIN)
        .err()
        .unwrap();
    assert!(
        matches!(error, MobileError::InvalidInput { .. }),
        "{error:?}"
    );
    assert_eq!(client.status().unwrap().enrolled, Some(false));
}

#[test]
fn documenting_unknown_patient_fails() {
    let dir = tempfile::tempdir().unwrap();
    let client = provisioned(dir.path(), options());
    let note = client.document_note("nobody", "t", "text", None);
    assert!(
        matches!(note, Err(MobileError::NotFound { .. })),
        "{note:?}"
    );
    let vitals = Vitals {
        heart_rate: Some(70.0),
        ..Vitals::default()
    };
    let vitals = client.document_vitals("nobody", vitals);
    assert!(
        matches!(vitals, Err(MobileError::NotFound { .. })),
        "{vitals:?}"
    );
}

#[test]
fn sync_without_token_fails() {
    let dir = tempfile::tempdir().unwrap();
    let client = provisioned(dir.path(), options());
    assert!(matches!(client.sync(), Err(MobileError::NotSignedIn)));
}
