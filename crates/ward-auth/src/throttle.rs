//! Sign-in throttling and temporary lockout.
//!
//! Two counters guard every password check: one per account and one per
//! source address. Each is a [`ThrottleState`] that the caller stores and
//! passes back with the current time; [`Throttle`] returns a [`Decision`]
//! before the check and a new state after it.
//!
//! After [`ThrottleConfig::free_failures`] failures each further attempt
//! waits `base_delay · 2^(n − free)`, capped at `max_delay`. At
//! `lock_threshold` failures the counter locks for `lock_duration`, which
//! doubles with each later lock up to `max_lock`. A success clears the
//! counter, and a counter with no failure for `forget_after` starts again
//! from zero, so no lock lasts longer than `max_lock` and an account is
//! never locked for good.
//!
//! An attacker who keeps failing from one address reaches that address's lock,
//! which is longer than the account's ([`ThrottleConfig::source`]), so
//! keeping a user locked out takes many addresses.
//!
//! The client gets the same response for a throttled, unknown or wrong
//! sign-in. [`crate::password::verify_account`] equalizes the time taken
//! for unknown users. Record the failure on both counters in every case.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// Tuning for one kind of counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed without any delay.
    pub free_failures: u32,
    /// Delay after the first failure beyond the free ones.
    pub base_delay: Duration,
    /// Maximum back-off delay.
    pub max_delay: Duration,
    /// Failures that lock the counter.
    pub lock_threshold: u32,
    /// Length of the first lock.
    pub lock_duration: Duration,
    /// Maximum lock length, reached by doubling.
    pub max_lock: Duration,
    /// Quiet time after which failures and past locks are forgotten.
    pub forget_after: Duration,
}

impl ThrottleConfig {
    /// Defaults for an account: delays from the 4th failure, a 15-minute
    /// lock after 10, doubling to at most 2 hours, forgotten after 24 quiet
    /// hours.
    pub const fn account() -> Self {
        Self {
            free_failures: 3,
            base_delay: Duration::seconds(1),
            max_delay: Duration::seconds(60),
            lock_threshold: 10,
            lock_duration: Duration::minutes(15),
            max_lock: Duration::hours(2),
            forget_after: Duration::hours(24),
        }
    }

    /// Defaults for a source address: more room for shared addresses (a
    /// hospital behind one NAT), 30 failures to lock, but locks that grow
    /// to 24 hours.
    pub const fn source() -> Self {
        Self {
            free_failures: 10,
            base_delay: Duration::seconds(1),
            max_delay: Duration::seconds(60),
            lock_threshold: 30,
            lock_duration: Duration::minutes(15),
            max_lock: Duration::hours(24),
            forget_after: Duration::hours(24),
        }
    }
}

/// The stored state of one counter. A missing row is
/// `ThrottleState::default()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleState {
    /// Failures since the last success, lock or reset.
    pub failures: u32,
    /// Time of the most recent failure.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_failure: Option<OffsetDateTime>,
    /// End of the current lock.
    #[serde(with = "time::serde::rfc3339::option")]
    pub locked_until: Option<OffsetDateTime>,
    /// Locks so far; each doubles the next lock.
    pub locks: u32,
}

/// Whether a sign-in attempt may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Check the credentials.
    Allow,
    /// Do not check them, and respond as for a failed sign-in.
    Deny {
        /// Why.
        reason: DenyReason,
        /// When the next attempt will be allowed.
        retry_at: OffsetDateTime,
    },
}

/// The reason an attempt was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The back-off delay since the last failure has not passed.
    BackOff,
    /// The counter is locked.
    Locked,
}

/// A throttle applying one [`ThrottleConfig`].
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    config: ThrottleConfig,
}

impl Throttle {
    /// Creates a throttle with `config`.
    pub const fn new(config: ThrottleConfig) -> Self {
        Self { config }
    }

    /// A throttle for accounts ([`ThrottleConfig::account`]).
    pub const fn account() -> Self {
        Self::new(ThrottleConfig::account())
    }

    /// A throttle for source addresses ([`ThrottleConfig::source`]).
    pub const fn source() -> Self {
        Self::new(ThrottleConfig::source())
    }

    /// Decides whether an attempt may run at `now`.
    pub fn check(&self, state: &ThrottleState, now: OffsetDateTime) -> Decision {
        let state = self.forget(state, now);
        if let Some(until) = state.locked_until
            && now < until
        {
            return Decision::Deny {
                reason: DenyReason::Locked,
                retry_at: until,
            };
        }
        if let Some(last) = state.last_failure {
            let retry_at = last.saturating_add(self.delay(state.failures));
            if now < retry_at {
                return Decision::Deny {
                    reason: DenyReason::BackOff,
                    retry_at,
                };
            }
        }
        Decision::Allow
    }

    /// Returns the state after a failed attempt at `now`.
    pub fn record_failure(&self, state: &ThrottleState, now: OffsetDateTime) -> ThrottleState {
        let mut next = self.forget(state, now);
        if next.locked_until.is_some_and(|until| now >= until) {
            // A lock that has run out starts a fresh round of failures.
            next.locked_until = None;
            next.failures = 0;
        }
        next.failures = next.failures.saturating_add(1);
        next.last_failure = Some(now);
        if next.failures >= self.config.lock_threshold && next.locked_until.is_none() {
            next.locked_until = Some(now.saturating_add(self.lock_length(next.locks)));
            next.locks = next.locks.saturating_add(1);
        }
        next
    }

    /// Returns the state after a successful sign-in: the counter is cleared.
    pub fn record_success(&self, _state: &ThrottleState) -> ThrottleState {
        ThrottleState::default()
    }

    /// Decides for an attempt that both counters guard: the later of the two
    /// denials wins.
    pub fn check_both(
        account: (&Throttle, &ThrottleState),
        source: (&Throttle, &ThrottleState),
        now: OffsetDateTime,
    ) -> Decision {
        let first = account.0.check(account.1, now);
        let second = source.0.check(source.1, now);
        match (first, second) {
            (Decision::Allow, other) | (other, Decision::Allow) => other,
            (
                Decision::Deny {
                    retry_at: a,
                    reason: ra,
                },
                Decision::Deny {
                    retry_at: b,
                    reason: rb,
                },
            ) => {
                if a >= b {
                    Decision::Deny {
                        reason: ra,
                        retry_at: a,
                    }
                } else {
                    Decision::Deny {
                        reason: rb,
                        retry_at: b,
                    }
                }
            }
        }
    }

    /// Clears a state whose last failure is older than `forget_after` and
    /// whose lock, if any, has ended.
    fn forget(&self, state: &ThrottleState, now: OffsetDateTime) -> ThrottleState {
        let quiet = state
            .last_failure
            .is_none_or(|last| now - last >= self.config.forget_after);
        let unlocked = state.locked_until.is_none_or(|until| now >= until);
        if quiet && unlocked {
            ThrottleState::default()
        } else {
            *state
        }
    }

    /// Returns the back-off delay after `failures` failures.
    fn delay(&self, failures: u32) -> Duration {
        let Some(excess) = failures.checked_sub(self.config.free_failures) else {
            return Duration::ZERO;
        };
        if excess == 0 {
            return Duration::ZERO;
        }
        doubled(self.config.base_delay, excess - 1, self.config.max_delay)
    }

    /// Returns the length of the lock after `previous_locks` earlier locks.
    fn lock_length(&self, previous_locks: u32) -> Duration {
        doubled(
            self.config.lock_duration,
            previous_locks,
            self.config.max_lock,
        )
    }
}

/// `base · 2^exponent`, capped at `cap` without overflowing.
fn doubled(base: Duration, exponent: u32, cap: Duration) -> Duration {
    let factor = 2i32.checked_pow(exponent.min(30)).unwrap_or(i32::MAX);
    base.checked_mul(factor).map_or(cap, |d| d.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2025-03-01 08:00 UTC);

    fn fail_times(throttle: &Throttle, times: u32, start: OffsetDateTime) -> ThrottleState {
        let mut state = ThrottleState::default();
        let mut now = start;
        for _ in 0..times {
            // Wait out any back-off so each failure counts.
            if let Decision::Deny { retry_at, .. } = throttle.check(&state, now) {
                now = retry_at;
            }
            state = throttle.record_failure(&state, now);
        }
        state
    }

    #[test]
    fn fresh_state_is_allowed() {
        let throttle = Throttle::account();
        assert_eq!(
            throttle.check(&ThrottleState::default(), T0),
            Decision::Allow
        );
    }

    #[test]
    fn free_failures_have_no_delay() {
        let throttle = Throttle::account();
        let state = fail_times(&throttle, 3, T0);
        assert_eq!(state.failures, 3);
        assert_eq!(throttle.check(&state, T0), Decision::Allow);
    }

    #[test]
    fn back_off_doubles() {
        let throttle = Throttle::account();
        let state = fail_times(&throttle, 4, T0);
        let last = state.last_failure.unwrap();
        assert_eq!(
            throttle.check(&state, last),
            Decision::Deny {
                reason: DenyReason::BackOff,
                retry_at: last + Duration::seconds(1)
            }
        );
        let state = throttle.record_failure(&state, last + Duration::seconds(1));
        let last = state.last_failure.unwrap();
        assert_eq!(
            throttle.check(&state, last),
            Decision::Deny {
                reason: DenyReason::BackOff,
                retry_at: last + Duration::seconds(2)
            }
        );
        assert_eq!(
            throttle.check(&state, last + Duration::seconds(2)),
            Decision::Allow
        );
    }

    #[test]
    fn ten_failures_lock_fifteen_minutes() {
        let throttle = Throttle::account();
        let state = fail_times(&throttle, 10, T0);
        let last = state.last_failure.unwrap();
        assert_eq!(state.locked_until, Some(last + Duration::minutes(15)));
        assert_eq!(
            throttle.check(&state, last + Duration::minutes(14)),
            Decision::Deny {
                reason: DenyReason::Locked,
                retry_at: last + Duration::minutes(15)
            }
        );
    }

    #[test]
    fn lock_expires() {
        let throttle = Throttle::account();
        let state = fail_times(&throttle, 10, T0);
        let until = state.locked_until.unwrap();
        assert_eq!(throttle.check(&state, until), Decision::Allow);
        // The first failure after the lock starts a new round.
        let after = throttle.record_failure(&state, until);
        assert_eq!(after.failures, 1);
        assert_eq!(after.locked_until, None);
        assert_eq!(throttle.check(&after, until), Decision::Allow);
    }

    #[test]
    fn repeated_locks_double_up_to_cap() {
        let throttle = Throttle::account();
        let mut state = ThrottleState::default();
        let mut now = T0;
        let mut lengths = Vec::new();
        for _ in 0..6 {
            loop {
                if let Decision::Deny { retry_at, .. } = throttle.check(&state, now) {
                    now = retry_at;
                }
                state = throttle.record_failure(&state, now);
                if let Some(until) = state.locked_until {
                    lengths.push(until - now);
                    now = until;
                    break;
                }
            }
        }
        assert_eq!(
            lengths,
            [15, 30, 60, 120, 120, 120].map(|m| Duration::minutes(m))
        );
    }

    #[test]
    fn quiet_period_forgets() {
        let throttle = Throttle::account();
        let state = fail_times(&throttle, 10, T0);
        let later = state.locked_until.unwrap() + Duration::hours(24);
        let next = throttle.record_failure(&state, later);
        assert_eq!(next.failures, 1);
        assert_eq!(next.locks, 0);
    }

    #[test]
    fn failures_during_lock_do_not_extend_it() {
        let throttle = Throttle::account();
        let state = fail_times(&throttle, 10, T0);
        let until = state.locked_until;
        let next = throttle.record_failure(&state, T0 + Duration::minutes(1));
        assert_eq!(next.locked_until, until);
    }

    #[test]
    fn success_clears() {
        let throttle = Throttle::account();
        let state = fail_times(&throttle, 5, T0);
        assert_eq!(throttle.record_success(&state), ThrottleState::default());
    }

    #[test]
    fn source_lock_outlasts_account_lock() {
        let source = Throttle::source();
        let account = Throttle::account();
        let account_state = fail_times(&account, 10, T0);
        let source_state = fail_times(&source, 30, T0);
        let now = account_state.locked_until.unwrap();
        let decision =
            Throttle::check_both((&account, &account_state), (&source, &source_state), now);
        assert_eq!(
            decision,
            Decision::Deny {
                reason: DenyReason::Locked,
                retry_at: source_state.locked_until.unwrap()
            }
        );
    }

    #[test]
    fn state_round_trips_json() {
        let throttle = Throttle::account();
        let state = fail_times(&throttle, 10, T0);
        let json = serde_json::to_string(&state).unwrap();
        let back: ThrottleState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
    }
}
