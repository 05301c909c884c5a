//! Parsing and validation of the TOML policy file.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use time::Duration;
use toml::Spanned;

use super::{BreakGlassPolicy, Policy, Relationship, Role, RolePolicy};
use crate::scopes::Permissions;

/// The policy file format this crate reads.
pub const SUPPORTED_VERSION: i64 = 1;

/// Maximum break-the-glass duration a policy may set, in minutes.
const MAX_BREAK_GLASS_MINUTES: i64 = 24 * 60;

/// Maximum policy file size, in bytes.
const MAX_POLICY_LEN: usize = 1024 * 1024;

/// A policy file that cannot be used, with the line where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy line {line}: {message}")]
pub struct PolicyError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<i64>,
    break_glass: Spanned<RawBreakGlass>,
    #[serde(default)]
    roles: BTreeMap<Spanned<String>, Spanned<RawRole>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakGlass {
    max_duration_minutes: Spanned<i64>,
    permissions: Spanned<String>,
    overrides_consent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    relationship: Spanned<String>,
    break_glass: Spanned<bool>,
    #[serde(default)]
    resources: BTreeMap<Spanned<String>, Spanned<String>>,
}

/// Parses and validates a policy; see [`Policy::load`].
pub(super) fn load(text: &str) -> Result<Policy, PolicyError> {
    if text.len() > MAX_POLICY_LEN {
        return Err(PolicyError {
            line: 1,
            message: format!("the policy is larger than {MAX_POLICY_LEN} bytes"),
        });
    }
    let at = |span: std::ops::Range<usize>, message: String| PolicyError {
        line: line_of(text, span.start),
        message,
    };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError {
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        message: e.message().trim().to_owned(),
    })?;

    if *raw.version.get_ref() != SUPPORTED_VERSION {
        return Err(at(
            raw.version.span(),
            format!(
                "unsupported version {}, expected {SUPPORTED_VERSION}",
                raw.version.get_ref()
            ),
        ));
    }

    let break_glass = break_glass(raw.break_glass.get_ref(), &at)?;
    let mut roles = HashMap::new();
    for (name, role) in &raw.roles {
        let parsed = Role::parse(name.get_ref())
            .ok_or_else(|| at(name.span(), format!("unknown role {:?}", name.get_ref())))?;
        roles.insert(parsed, role_policy(parsed, role.get_ref(), &at)?);
    }
    Ok(Policy {
        version: 1,
        break_glass,
        roles,
    })
}

fn break_glass(
    raw: &RawBreakGlass,
    at: &impl Fn(std::ops::Range<usize>, String) -> PolicyError,
) -> Result<BreakGlassPolicy, PolicyError> {
    let minutes = *raw.max_duration_minutes.get_ref();
    if !(1..=MAX_BREAK_GLASS_MINUTES).contains(&minutes) {
        return Err(at(
            raw.max_duration_minutes.span(),
            format!("max_duration_minutes must be 1 to {MAX_BREAK_GLASS_MINUTES}, not {minutes}"),
        ));
    }
    Ok(BreakGlassPolicy {
        max_duration: Duration::minutes(minutes),
        permissions: letters(&raw.permissions, at)?,
        overrides_consent: raw.overrides_consent,
    })
}

fn role_policy(
    role: Role,
    raw: &RawRole,
    at: &impl Fn(std::ops::Range<usize>, String) -> PolicyError,
) -> Result<RolePolicy, PolicyError> {
    let relationship = match raw.relationship.get_ref().as_str() {
        "care-team" => Relationship::CareTeam,
        "self" => Relationship::SelfOnly,
        "none" => Relationship::None,
        other => {
            return Err(at(
                raw.relationship.span(),
                format!("relationship must be \"care-team\", \"self\" or \"none\", not {other:?}"),
            ));
        }
    };
    // A patient role without "self" would open every record to patients.
    if role == Role::Patient && relationship != Relationship::SelfOnly {
        return Err(at(
            raw.relationship.span(),
            "the patient role must have relationship = \"self\"".to_owned(),
        ));
    }
    if role == Role::Patient && *raw.break_glass.get_ref() {
        return Err(at(
            raw.break_glass.span(),
            "the patient role cannot use break-the-glass".to_owned(),
        ));
    }

    let mut resources = BTreeMap::new();
    for (resource_type, permissions) in &raw.resources {
        let name = resource_type.get_ref();
        if name != "*" && !is_resource_type_shape(name) {
            return Err(at(
                resource_type.span(),
                format!("{name:?} is not a resource type or \"*\""),
            ));
        }
        resources.insert(name.clone(), letters(permissions, at)?);
    }
    Ok(RolePolicy {
        relationship,
        break_glass: *raw.break_glass.get_ref(),
        resources,
    })
}

fn letters(
    value: &Spanned<String>,
    at: &impl Fn(std::ops::Range<usize>, String) -> PolicyError,
) -> Result<Permissions, PolicyError> {
    if value.get_ref() == "*" {
        return Ok(Permissions::ALL);
    }
    Permissions::from_letters(value.get_ref()).ok_or_else(|| {
        at(
            value.span(),
            format!(
                "{:?} must be cruds letters in that order, or \"*\"",
                value.get_ref()
            ),
        )
    })
}

fn is_resource_type_shape(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
}

/// The 1-based line containing byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()
        .get(..end)
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
        + 1
}
