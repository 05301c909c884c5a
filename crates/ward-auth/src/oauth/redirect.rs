//! Redirect URI matching.
//!
//! A presented `redirect_uri` must equal a registered one character for
//! character (OAuth 2.0 Security BCP, RFC 9700 section 4.1.3): no
//! normalization, no prefix or wildcard matching. The one exception is the
//! native-app loopback redirect of RFC 8252 section 7.3: when the registered
//! URI is `http://127.0.0.1…` or `http://[::1]…`, the port may differ
//! (native apps listen on an ephemeral port) while scheme, host, path and
//! query must still match exactly. A registered `localhost` gets no such
//! exception and never matches an IP-literal form (RFC 8252 section 8.3
//! advises against `localhost`).

/// Why a redirect URI was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectError {
    /// The request has no `redirect_uri` and the client has several.
    #[error("redirect_uri is required because the client registered several")]
    Missing,
    /// The URI matches none of the client's registered URIs.
    #[error("redirect_uri does not match a registered redirect URI")]
    NotRegistered,
}

/// A loopback URI split around its port.
struct Loopback<'a> {
    /// `127.0.0.1` or `[::1]`.
    host: &'a str,
    /// Everything after the authority: path, query and fragment.
    rest: &'a str,
}

/// Splits `http://127.0.0.1[:port]rest` or `http://[::1][:port]rest`.
/// Returns `None` for anything else, including an invalid port.
fn parse_loopback(uri: &str) -> Option<Loopback<'_>> {
    let after_scheme = uri.strip_prefix("http://")?;
    let host = ["127.0.0.1", "[::1]"]
        .into_iter()
        .find(|h| after_scheme.starts_with(h))?;
    let after_host = after_scheme.get(host.len()..)?;
    let rest = match after_host.strip_prefix(':') {
        Some(port_and_rest) => {
            let digits = port_and_rest.bytes().take_while(u8::is_ascii_digit).count();
            let port = port_and_rest.get(..digits)?;
            if port.is_empty() || port.len() > 5 || port.parse::<u32>().ok()? > 65535 {
                return None;
            }
            port_and_rest.get(digits..)?
        }
        None => after_host,
    };
    // The authority must end here, so "127.0.0.1.evil.example" is rejected.
    if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
        return None;
    }
    Some(Loopback { host, rest })
}

/// True when `presented` matches `registered` under the rules above.
pub fn redirect_uri_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    match (parse_loopback(registered), parse_loopback(presented)) {
        (Some(r), Some(p)) => r.host == p.host && r.rest == p.rest,
        _ => false,
    }
}

/// Selects the redirect URI for an authorization request.
///
/// With `presented` set, returns it when it matches one of `registered`.
/// Without it, returns the single registered URI (RFC 6749 section 3.1.2.3
/// lets the parameter be omitted only then).
///
/// # Errors
///
/// [`RedirectError::NotRegistered`] or [`RedirectError::Missing`].
pub fn match_redirect_uri<'a>(
    registered: &'a [String],
    presented: Option<&'a str>,
) -> Result<&'a str, RedirectError> {
    match presented {
        Some(uri) => {
            if registered.iter().any(|r| redirect_uri_matches(r, uri)) {
                Ok(uri)
            } else {
                Err(RedirectError::NotRegistered)
            }
        }
        None => match registered {
            [only] => Ok(only.as_str()),
            [] => Err(RedirectError::NotRegistered),
            _ => Err(RedirectError::Missing),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "https://app.example.org/callback?tenant=a";

    #[test]
    fn exact_match_is_accepted() {
        assert!(redirect_uri_matches(APP, APP));
    }

    #[test]
    fn any_difference_is_rejected() {
        for presented in [
            "http://app.example.org/callback?tenant=a",
            "https://evil.example.org/callback?tenant=a",
            "https://APP.example.org/callback?tenant=a",
            "https://app.example.org/callback/?tenant=a",
            "https://app.example.org/Callback?tenant=a",
            "https://app.example.org/callback?tenant=b",
            "https://app.example.org/callback?tenant=a&x=1",
            "https://app.example.org/callback",
            "https://app.example.org:443/callback?tenant=a",
            "https://app.example.org:8443/callback?tenant=a",
            "https://app.example.org/callback?tenant=a#frag",
            "https://app.example.org.evil.example/callback?tenant=a",
        ] {
            assert!(!redirect_uri_matches(APP, presented), "{presented}");
        }
    }

    #[test]
    fn loopback_port_may_differ() {
        assert!(redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:51004/cb"
        ));
        assert!(redirect_uri_matches(
            "http://127.0.0.1:8080/cb",
            "http://127.0.0.1:9090/cb"
        ));
        assert!(redirect_uri_matches(
            "http://[::1]:1/cb?x=1",
            "http://[::1]:65535/cb?x=1"
        ));
    }

    #[test]
    fn loopback_rest_must_match() {
        for (registered, presented) in [
            ("http://127.0.0.1/cb", "http://127.0.0.1:5000/other"),
            ("http://127.0.0.1/cb?x=1", "http://127.0.0.1:5000/cb?x=2"),
            ("http://127.0.0.1/cb", "https://127.0.0.1:5000/cb"),
            ("http://127.0.0.1/cb", "http://[::1]:5000/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.2:5000/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:65536/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1.evil.example/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:80@evil.example/cb"),
        ] {
            assert!(!redirect_uri_matches(registered, presented), "{presented}");
        }
    }

    #[test]
    fn localhost_is_not_loopback() {
        assert!(!redirect_uri_matches(
            "http://localhost:8080/cb",
            "http://localhost:9090/cb"
        ));
        assert!(!redirect_uri_matches(
            "http://localhost/cb",
            "http://127.0.0.1:9090/cb"
        ));
        assert!(!redirect_uri_matches(
            "http://localhost/cb",
            "http://[::1]:9090/cb"
        ));
        assert!(redirect_uri_matches(
            "http://localhost:8080/cb",
            "http://localhost:8080/cb"
        ));
    }

    #[test]
    fn omitted_uri_needs_single_registration() {
        let one = vec![APP.to_owned()];
        let two = vec![APP.to_owned(), "https://b.example/cb".to_owned()];
        assert_eq!(match_redirect_uri(&one, None), Ok(APP));
        assert_eq!(match_redirect_uri(&two, None), Err(RedirectError::Missing));
        assert_eq!(
            match_redirect_uri(&[], None),
            Err(RedirectError::NotRegistered)
        );
        assert_eq!(
            match_redirect_uri(&two, Some("https://c.example/cb")),
            Err(RedirectError::NotRegistered)
        );
        assert_eq!(
            match_redirect_uri(&two, Some("https://b.example/cb")),
            Ok("https://b.example/cb")
        );
    }
}
