//! Rotating the access-token signing key: old tokens stay valid until they
//! expire, new tokens carry the new key id, and the JWKS lists both.

mod common;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap_or_default();
    let header: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    header["kid"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn rotated_key_keeps_old_tokens() {
    // A fixed public base URL keeps the tokens' issuer and audience the
    // same across the restart, which picks a new port.
    let base = ["--base-url", "https://ward.test"];
    let server = common::Server::start_with(&base, &[]);
    let old_token = server.token("system/*.rs");
    let (root, data) = server.stop();

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["keys", "rotate-signing", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let server = common::Server::start_in(root, data, &base, &[]);
    let new_token = server.token("system/*.rs");
    assert_ne!(
        kid_of(&old_token),
        kid_of(&new_token),
        "the new token must use the new key"
    );

    let (status, _, body) = server.get("/Patient", &old_token).await;
    assert_eq!(status, StatusCode::OK, "a token of the retired key: {body}");
    let (status, _, body) = server.get("/Patient", &new_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let jwks_url = format!("{}/oauth/jwks", server.origin());
    let (status, _, jwks) = server.get(&jwks_url, "").await;
    assert_eq!(status, StatusCode::OK, "{jwks}");
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .map(|keys| keys.iter().filter_map(|k| k["kid"].as_str()).collect())
        .unwrap_or_default();
    assert!(kids.contains(&kid_of(&old_token).as_str()), "{jwks}");
    assert!(kids.contains(&kid_of(&new_token).as_str()), "{jwks}");
}
