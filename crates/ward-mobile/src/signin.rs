//! Sign-in as the public OAuth client `ward-mobile`: the authorization
//! code flow with PKCE (RFC 7636), driven the way the sign-in pages would
//! be by a browser, then the code exchange and refreshes at
//! `/oauth/token`. Over a connection that presents the device
//! certificate, the server binds the tokens to it (RFC 8705).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{MobileError, MobileResult};
use crate::http::{CookieJar, Reply, Transport};
use crate::keys::random;

/// The client id of the mobile app.
pub const CLIENT_ID: &str = "ward-mobile";
/// The redirect URI of the mobile app (RFC 8252 private-use scheme).
pub const REDIRECT_URI: &str = "com.ward.mobile:/oauth/callback";
/// The scopes the app requests.
pub const SCOPE: &str = "openid fhirUser offline_access user/*.cruds";

/// Seconds before expiry at which the access token is refreshed.
const REFRESH_MARGIN_SECS: i64 = 30;

/// The tokens of the signed-in user, stored sealed.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct TokenSet {
    pub(crate) user: String,
    pub(crate) access_token: String,
    pub(crate) refresh_token: Option<String>,
    /// Unix time at which the access token expires.
    pub(crate) expires_at: i64,
    /// The user's FHIR resource, such as `Practitioner/123`.
    pub(crate) fhir_user: Option<String>,
}

impl TokenSet {
    /// True when the access token expires within the refresh margin.
    pub(crate) fn is_stale(&self, now: i64) -> bool {
        now + REFRESH_MARGIN_SECS >= self.expires_at
    }
}

/// Credentials typed by the user.
pub(crate) struct Credentials<'a> {
    pub(crate) user: &'a str,
    pub(crate) password: &'a str,
    pub(crate) totp: &'a str,
}

/// Runs the whole sign-in and returns the token set.
pub(crate) fn sign_in(
    transport: &Transport,
    credentials: &Credentials<'_>,
    now: i64,
) -> MobileResult<TokenSet> {
    let verifier = Zeroizing::new(B64URL.encode(random::<32>()?));
    let challenge = B64URL.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let state = B64URL.encode(random::<16>()?);
    let mut jar = CookieJar::default();

    let mut authorize = url::Url::parse(&transport.url("/oauth/authorize"))
        .map_err(|e| MobileError::invalid("server URL", e.to_string()))?;
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("scope", SCOPE)
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("aud", &format!("{}/fhir", transport.origin()));
    let page = transport.send(
        transport.request(Method::GET, authorize.as_str()),
        "opening the sign-in page",
    )?;
    let page = expect_form(page, "/oauth/login", "the sign-in page")?;
    jar.store(&page);

    let csrf = csrf_of(&page)?;
    let page = post_form(
        transport,
        &jar,
        "/oauth/login",
        &[
            ("csrf", &csrf),
            ("username", credentials.user),
            ("password", credentials.password),
        ],
    )?;
    let page = expect_form(page, "/oauth/mfa", "the password step")?;
    jar.store(&page);

    let page = post_form(
        transport,
        &jar,
        "/oauth/mfa",
        &[("csrf", &csrf), ("code", credentials.totp)],
    )?;
    let page = expect_form(page, "/oauth/consent", "the second-factor step")?;
    jar.store(&page);

    let reply = post_form(
        transport,
        &jar,
        "/oauth/consent",
        &[("csrf", &csrf), ("decision", "approve")],
    )?;
    let code = code_from_redirect(&reply, &state, transport.origin())?;
    let reply = transport.send(
        transport.request(Method::POST, "/oauth/token").form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", CLIENT_ID),
            ("code_verifier", verifier.as_str()),
        ]),
        "exchanging the authorization code",
    )?;
    token_set(reply, credentials.user, now)
}

/// Exchanges the refresh token for a new token set.
pub(crate) fn refresh(
    transport: &Transport,
    tokens: &TokenSet,
    now: i64,
) -> MobileResult<TokenSet> {
    let Some(refresh_token) = &tokens.refresh_token else {
        return Err(MobileError::Unauthorized {
            detail: "the access token expired and there is no refresh token".into(),
        });
    };
    let reply = transport.send(
        transport.request(Method::POST, "/oauth/token").form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
            ("client_id", CLIENT_ID),
        ]),
        "refreshing the access token",
    )?;
    let mut fresh = token_set(reply, &tokens.user, now)?;
    if fresh.refresh_token.is_none() {
        fresh.refresh_token = tokens.refresh_token.clone();
    }
    if fresh.fhir_user.is_none() {
        fresh.fhir_user = tokens.fhir_user.clone();
    }
    Ok(fresh)
}

fn post_form(
    transport: &Transport,
    jar: &CookieJar,
    path: &str,
    fields: &[(&str, &str)],
) -> MobileResult<Reply> {
    let builder = transport
        .request(Method::POST, path)
        .header("cookie", jar.header().as_str())
        .form(fields);
    transport.send(builder, "signing in")
}

/// Checks that `page` is the page whose form posts to `action`; the same
/// page again with an error paragraph means the step failed.
fn expect_form(page: Reply, action: &str, step: &str) -> MobileResult<Reply> {
    let text = String::from_utf8_lossy(&page.body);
    if page.status == 200 && text.contains(&format!("action=\"{action}\"")) {
        return Ok(page);
    }
    let message = error_paragraph(&text)
        .or_else(|| (!page.detail().is_empty()).then(|| page.detail()))
        .unwrap_or_else(|| format!("HTTP {}", page.status));
    Err(MobileError::SignIn {
        detail: format!("{step} was rejected: {message}"),
    })
}

/// The text of `<p class="error">` in a sign-in page.
fn error_paragraph(html: &str) -> Option<String> {
    let start = html.find("<p class=\"error\">")? + "<p class=\"error\">".len();
    let end = html[start..].find("</p>")? + start;
    Some(unescape(&html[start..end]))
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The CSRF token of a sign-in form.
fn csrf_of(page: &Reply) -> MobileResult<String> {
    let html = String::from_utf8_lossy(&page.body);
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).map(|i| i + marker.len());
    let value = start.and_then(|s| html[s..].find('"').map(|e| &html[s..s + e]));
    value.map(unescape).ok_or_else(|| MobileError::SignIn {
        detail: "the sign-in page has no csrf field; is the server a Ward server?".into(),
    })
}

/// Reads the authorization code from the redirect to the app.
fn code_from_redirect(reply: &Reply, state: &str, origin: &str) -> MobileResult<Zeroizing<String>> {
    if reply.status != 302 {
        let text = String::from_utf8_lossy(&reply.body);
        let message = error_paragraph(&text).unwrap_or_else(|| format!("HTTP {}", reply.status));
        return Err(MobileError::SignIn {
            detail: format!("the consent step was rejected: {message}"),
        });
    }
    let location = reply.header("location");
    let url = url::Url::parse(location).map_err(|_| MobileError::SignIn {
        detail: "the server redirected to an invalid URI".into(),
    })?;
    if !location.starts_with(REDIRECT_URI) {
        return Err(MobileError::SignIn {
            detail: format!(
                "the server redirected to {}, expected {REDIRECT_URI}",
                url.scheme()
            ),
        });
    }
    let param = |name: &str| {
        url.query_pairs()
            .find(|(n, _)| n == name)
            .map(|(_, v)| Zeroizing::new(v.into_owned()))
    };
    if let Some(error) = param("error") {
        let description = param("error_description")
            .map(|d| d.to_string())
            .unwrap_or_default();
        return Err(MobileError::SignIn {
            detail: format!("{} ({description})", error.as_str()),
        });
    }
    let returned_state = param("state").unwrap_or_default();
    if aws_lc_rs::constant_time::verify_slices_are_equal(
        returned_state.as_bytes(),
        state.as_bytes(),
    )
    .is_err()
    {
        return Err(MobileError::SignIn {
            detail: "the state in the redirect does not match the request".into(),
        });
    }
    // RFC 9207: the issuer must be the server the flow started at.
    if let Some(issuer) = param("iss")
        && issuer.trim_end_matches('/') != origin
    {
        return Err(MobileError::SignIn {
            detail: format!(
                "the redirect names issuer {}, expected {origin}",
                issuer.as_str()
            ),
        });
    }
    param("code").ok_or_else(|| MobileError::SignIn {
        detail: "the redirect carries no authorization code".into(),
    })
}

/// Builds the token set from a token endpoint reply.
fn token_set(reply: Reply, user: &str, now: i64) -> MobileResult<TokenSet> {
    if reply.status != 200 {
        return Err(MobileError::SignIn {
            detail: format!(
                "the token endpoint answered HTTP {}: {}",
                reply.status,
                reply.detail()
            ),
        });
    }
    let mut body = reply.json();
    let access_token = body["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| MobileError::SignIn {
            detail: "the token response has no access_token".into(),
        })?;
    let expires_in = body["expires_in"].as_i64().unwrap_or(300);
    let refresh_token = body["refresh_token"].as_str().map(str::to_owned);
    let fhir_user = claim(&access_token, "fhirUser");
    // The response holds the tokens; clear them from the parsed copy.
    if let Some(map) = body.as_object_mut() {
        map.clear();
    }
    Ok(TokenSet {
        user: user.to_owned(),
        access_token,
        refresh_token,
        expires_at: now + expires_in,
        fhir_user,
    })
}

/// Reads a string claim from a JWT payload without verifying it: the
/// server verifies the token, and the client only needs the user's FHIR
/// resource to find the care team.
pub(crate) fn claim(jwt: &str, name: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = B64URL.decode(payload).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value[name].as_str().map(str::to_owned)
}

/// Reads a number claim from a JWT payload without verifying it.
pub(crate) fn claim_number(jwt: &str, name: &str) -> Option<i64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = B64URL.decode(payload).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value[name].as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_reads_jwt_payload() {
        let payload = B64URL.encode(br#"{"fhirUser":"Practitioner/7","sub":"u"}"#);
        let jwt = format!("e30.{payload}.sig");
        assert_eq!(claim(&jwt, "fhirUser").as_deref(), Some("Practitioner/7"));
        assert_eq!(claim(&jwt, "missing"), None);
        assert_eq!(claim("not-a-jwt", "fhirUser"), None);
    }

    #[test]
    fn error_paragraph_unescaped() {
        let html = "<p class=\"error\">The code is wrong &amp; expired.</p>";
        assert_eq!(
            error_paragraph(html).as_deref(),
            Some("The code is wrong & expired.")
        );
    }
}
