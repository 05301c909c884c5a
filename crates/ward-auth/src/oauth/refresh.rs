//! Refresh token families with rotation and reuse detection.
//!
//! Each authorization starts a [`RefreshFamily`]. Every refresh rotates the
//! token: the family's current digest moves to `retired` and a new token is
//! issued. A retired token can only come back if it was copied, so when one
//! is presented the whole family is revoked and the caller revokes the
//! access tokens issued from it (OAuth 2.0 Security BCP, RFC 9700 section
//! 4.14.2). The caller indexes every digest of the family, current and
//! retired, to find the family from a presented token.
//!
//! A refresh may ask for fewer scopes than originally granted, never more
//! (RFC 6749 section 6). Narrowing applies to that one access token: the
//! family keeps its original grant, so a later refresh may ask for all of it
//! again, as RFC 6749 allows.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::code::LaunchContext;
use super::{TokenDigest, generate_token};
use crate::error::Result;
use crate::scopes::Scopes;

/// Retired digests kept per family. An older token falls out of the list
/// and is then only "unknown"; 1000 rotations is years of hourly refreshes.
pub const MAX_RETIRED: usize = 1000;

/// A family of refresh tokens descended from one authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshFamily {
    /// Digest of the token that is valid now.
    pub current: TokenDigest,
    /// Digests of the tokens already rotated away, oldest first.
    pub retired: Vec<TokenDigest>,
    /// The client the family belongs to.
    pub client_id: String,
    /// The user who authorized it.
    pub user_id: String,
    /// The scopes originally granted, space-separated.
    pub scope: String,
    /// The launch context of the authorization.
    pub launch: LaunchContext,
    /// When the family was started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the family stops being usable, however often it is rotated.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The reason the family was revoked, if it was.
    pub revoked: Option<Revocation>,
}

/// The reason a family was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Revocation {
    /// A retired token was presented.
    ReuseDetected,
    /// The user, an administrator or the client revoked it.
    Revoked,
}

/// A refresh token request.
#[derive(Debug, Clone, Copy)]
pub struct RefreshRequest<'a> {
    /// `refresh_token`.
    pub token: &'a str,
    /// The authenticated client, or the `client_id` of a public client.
    pub client_id: &'a str,
    /// `scope`, when the client asks for less than the original grant.
    pub scope: Option<&'a str>,
}

/// A successful rotation.
#[derive(Debug)]
pub struct Rotation {
    /// The new refresh token to send to the client.
    pub token: Zeroizing<String>,
    /// The scopes for the new access token.
    pub scope: String,
}

/// The reason a refresh was rejected. Each maps to `invalid_grant` on the wire
/// except [`RefreshError::ScopeWidened`], which is `invalid_scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The token is neither the current nor a retired one of the family.
    #[error("the refresh token is not valid")]
    UnknownToken,
    /// A retired token was presented; the family is now revoked.
    #[error("the refresh token was already used; the grant has been revoked")]
    Reused,
    /// The family was revoked earlier.
    #[error("the grant has been revoked")]
    Revoked,
    /// The family's lifetime has ended.
    #[error("the refresh token has expired")]
    Expired,
    /// The token belongs to another client.
    #[error("the refresh token was issued to another client")]
    WrongClient,
    /// The requested scope is not within the original grant.
    #[error("the requested scope exceeds the original grant")]
    ScopeWidened,
}

/// The outcome of a refresh: the family state to store, whatever happened,
/// and the rotation or the reason for rejection.
#[derive(Debug)]
pub struct RefreshOutcome {
    /// The family as it must now be stored.
    pub family: RefreshFamily,
    /// The new token and scopes, or why there are none.
    pub result: std::result::Result<Rotation, RefreshError>,
}

impl RefreshFamily {
    /// Starts a family at `now` that lasts `lifetime`. Returns the first
    /// refresh token and the family to store.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Random`] if the random number generator fails.
    pub fn start(
        client_id: &str,
        user_id: &str,
        scope: &str,
        launch: LaunchContext,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<(Zeroizing<String>, Self)> {
        let token = generate_token()?;
        let family = Self {
            current: TokenDigest::of(&token),
            retired: Vec::new(),
            client_id: client_id.to_owned(),
            user_id: user_id.to_owned(),
            scope: scope.to_owned(),
            launch,
            created_at: now,
            expires_at: now.saturating_add(lifetime),
            revoked: None,
        };
        Ok((token, family))
    }

    /// Returns every digest that leads to this family, for the caller's index.
    pub fn digests(&self) -> impl Iterator<Item = &TokenDigest> {
        std::iter::once(&self.current).chain(&self.retired)
    }

    /// Returns the family revoked for `reason`.
    pub fn revoke(&self, reason: Revocation) -> Self {
        let mut next = self.clone();
        next.revoked.get_or_insert(reason);
        next
    }

    /// Handles a refresh request at `now`.
    ///
    /// # Errors
    ///
    /// Inside [`RefreshOutcome::result`]: the checks run in the order token,
    /// revocation, reuse, client, expiry, scope. A presented retired token
    /// revokes the family even when other checks would also fail.
    ///
    /// [`crate::Error::Random`] if no new token can be generated.
    pub fn refresh(
        &self,
        request: &RefreshRequest<'_>,
        now: OffsetDateTime,
    ) -> Result<RefreshOutcome> {
        let reject = |family: RefreshFamily, error| {
            Ok(RefreshOutcome {
                family,
                result: Err(error),
            })
        };
        let presented = TokenDigest::of(request.token);
        let is_current = presented == self.current;
        let is_retired = self.retired.contains(&presented);
        if !is_current && !is_retired {
            return reject(self.clone(), RefreshError::UnknownToken);
        }
        if self.revoked.is_some() {
            return reject(self.clone(), RefreshError::Revoked);
        }
        if is_retired {
            return reject(self.revoke(Revocation::ReuseDetected), RefreshError::Reused);
        }
        if request.client_id != self.client_id {
            return reject(self.clone(), RefreshError::WrongClient);
        }
        if now >= self.expires_at {
            return reject(self.clone(), RefreshError::Expired);
        }
        let scope = match request.scope {
            None => self.scope.clone(),
            Some(requested) => {
                let requested = Scopes::parse(requested);
                if !Scopes::parse(&self.scope).covers(&requested) {
                    return reject(self.clone(), RefreshError::ScopeWidened);
                }
                requested.to_string()
            }
        };

        let token = generate_token()?;
        let mut next = self.clone();
        next.retired.push(std::mem::replace(
            &mut next.current,
            TokenDigest::of(&token),
        ));
        if next.retired.len() > MAX_RETIRED {
            let excess = next.retired.len() - MAX_RETIRED;
            next.retired.drain(..excess);
        }
        Ok(RefreshOutcome {
            family: next,
            result: Ok(Rotation { token, scope }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-03-01 08:00 UTC);

    fn start() -> (Zeroizing<String>, RefreshFamily) {
        RefreshFamily::start(
            "growth-chart",
            "u-17",
            "openid patient/Observation.rs offline_access",
            LaunchContext::default(),
            NOW,
            Duration::days(90),
        )
        .unwrap()
    }

    fn request(token: &str) -> RefreshRequest<'_> {
        RefreshRequest {
            token,
            client_id: "growth-chart",
            scope: None,
        }
    }

    #[test]
    fn refresh_rotates_token() {
        let (first, family) = start();
        let outcome = family.refresh(&request(&first), NOW).unwrap();
        let rotation = outcome.result.unwrap();
        assert_ne!(*rotation.token, *first);
        assert_eq!(rotation.scope, family.scope);
        assert!(outcome.family.current.matches(&rotation.token));
        assert_eq!(outcome.family.retired, [TokenDigest::of(&first)]);
        assert_eq!(outcome.family.digests().count(), 2);
    }

    #[test]
    fn reused_token_revokes_family() {
        let (first, family) = start();
        let outcome = family.refresh(&request(&first), NOW).unwrap();
        let second = outcome.result.unwrap().token;
        let family = outcome.family;

        // The old token comes back: the attacker or the client replays it.
        let replay = family.refresh(&request(&first), NOW).unwrap();
        assert_eq!(replay.result.unwrap_err(), RefreshError::Reused);
        assert_eq!(replay.family.revoked, Some(Revocation::ReuseDetected));

        // The legitimate current token no longer works either.
        let after = replay.family.refresh(&request(&second), NOW).unwrap();
        assert_eq!(after.result.unwrap_err(), RefreshError::Revoked);
    }

    #[test]
    fn wider_scope_is_rejected() {
        let (first, family) = start();
        let wider = RefreshRequest {
            scope: Some("openid patient/*.rs offline_access"),
            ..request(&first)
        };
        let outcome = family.refresh(&wider, NOW).unwrap();
        assert_eq!(outcome.result.unwrap_err(), RefreshError::ScopeWidened);
        assert_eq!(outcome.family, family);
    }

    #[test]
    fn narrower_scope_is_granted() {
        let (first, family) = start();
        let narrower = RefreshRequest {
            scope: Some("patient/Observation.r"),
            ..request(&first)
        };
        let outcome = family.refresh(&narrower, NOW).unwrap();
        assert_eq!(outcome.result.unwrap().scope, "patient/Observation.r");
        assert_eq!(outcome.family.scope, family.scope);
    }

    #[test]
    fn other_rejections() {
        let (first, family) = start();
        let unknown = family.refresh(&request("guess"), NOW).unwrap();
        assert_eq!(unknown.result.unwrap_err(), RefreshError::UnknownToken);

        let other_client = RefreshRequest {
            client_id: "other",
            ..request(&first)
        };
        let outcome = family.refresh(&other_client, NOW).unwrap();
        assert_eq!(outcome.result.unwrap_err(), RefreshError::WrongClient);

        let late = family
            .refresh(&request(&first), NOW + Duration::days(90))
            .unwrap();
        assert_eq!(late.result.unwrap_err(), RefreshError::Expired);

        let revoked = family.revoke(Revocation::Revoked);
        let outcome = revoked.refresh(&request(&first), NOW).unwrap();
        assert_eq!(outcome.result.unwrap_err(), RefreshError::Revoked);
    }

    #[test]
    fn retired_list_is_bounded() {
        let (mut token, mut family) = start();
        for _ in 0..MAX_RETIRED + 3 {
            let outcome = family.refresh(&request(&token), NOW).unwrap();
            token = outcome.result.unwrap().token;
            family = outcome.family;
        }
        assert_eq!(family.retired.len(), MAX_RETIRED);
    }
}
