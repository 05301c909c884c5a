//! SMART App Launch scopes, v2 (`patient/Observation.rs?category=laboratory`)
//! and v1 (`user/Patient.read`), plus the non-resource scopes `openid`,
//! `fhirUser`, `profile`, `launch`, `launch/patient`, `launch/encounter`,
//! `offline_access` and `online_access`.
//!
//! v1 forms are mapped to v2 letters as the SMART App Launch 2.0 guide
//! does: `read` is `rs`, `write` is `cud` and `*` is `cruds`. A resource type
//! is checked only for its shape (an upper-case ASCII letter, then letters),
//! so a misspelled type parses but matches no resource.

use std::fmt;

/// Maximum length of one scope, in bytes.
pub const MAX_SCOPE_LEN: usize = 256;

/// Maximum number of scopes in one scope string.
pub const MAX_SCOPES: usize = 100;

/// Who a resource scope speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeContext {
    /// `patient/`: data of the patient in context.
    Patient,
    /// `user/`: what the signed-in user may see.
    User,
    /// `system/`: a backend service acting for itself.
    System,
}

/// One kind of access (a SMART v2 `cruds` letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `c`: create.
    Create,
    /// `r`: read and vread.
    Read,
    /// `u`: update and patch.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: search and history.
    Search,
}

impl Permission {
    /// Every permission, in `cruds` order.
    pub const ALL: [Permission; 5] = [
        Permission::Create,
        Permission::Read,
        Permission::Update,
        Permission::Delete,
        Permission::Search,
    ];

    /// The permission's letter.
    pub fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }

    fn bit(self) -> u8 {
        match self {
            Permission::Create => 1,
            Permission::Read => 2,
            Permission::Update => 4,
            Permission::Delete => 8,
            Permission::Search => 16,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Permission::Create => "create",
            Permission::Read => "read",
            Permission::Update => "update",
            Permission::Delete => "delete",
            Permission::Search => "search",
        };
        f.write_str(name)
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    /// No permission.
    pub const NONE: Self = Self(0);
    /// All five permissions.
    pub const ALL: Self = Self(31);

    /// Parses v2 letters, which must appear in `cruds` order, each at most
    /// once, at least one. Returns `None` otherwise.
    pub fn from_letters(letters: &str) -> Option<Self> {
        let mut bits = 0u8;
        let mut last = None;
        for ch in letters.chars() {
            let position = "cruds".find(ch)?;
            if last.is_some_and(|l| position <= l) {
                return None;
            }
            last = Some(position);
            let permission = Permission::ALL.get(position)?;
            bits |= permission.bit();
        }
        (bits != 0).then_some(Self(bits))
    }

    /// The set as a bit mask: c = 1, r = 2, u = 4, d = 8, s = 16.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set from a bit mask as returned by [`Permissions::bits`]; bits
    /// above 16 are dropped.
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & Self::ALL.0)
    }

    /// True when `permission` is in the set.
    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// True when every permission of `other` is in `self`.
    pub fn is_superset(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The intersection.
    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for permission in Permission::ALL {
            if self.contains(permission) {
                write!(f, "{}", permission.letter())?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({self})")
    }
}

/// A v2 search restriction: every `name=value` pair must match the
/// resource, as if added to a search.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchRestriction {
    /// The parameters, in scope order.
    pub params: Vec<(String, String)>,
}

impl SearchRestriction {
    fn parse(query: &str) -> Option<Self> {
        let mut params = Vec::new();
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=')?;
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'));
            if !name_ok || value.is_empty() || value.chars().any(char::is_whitespace) {
                return None;
            }
            params.push((name.to_owned(), value.to_owned()));
        }
        Some(Self { params })
    }
}

impl fmt::Display for SearchRestriction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.params.iter().enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

/// One clinical-data scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    /// The context.
    pub context: ScopeContext,
    /// The resource type, or `*`.
    pub resource_type: String,
    /// The granted permissions.
    pub permissions: Permissions,
    /// A v2 search restriction, if any.
    pub restriction: Option<SearchRestriction>,
}

impl ResourceScope {
    /// True when this scope grants `permission` on `resource_type`,
    /// ignoring context and restriction.
    pub fn allows(&self, resource_type: &str, permission: Permission) -> bool {
        (self.resource_type == "*" || self.resource_type == resource_type)
            && self.permissions.contains(permission)
    }

    /// True when `self` grants at least what `narrower` does.
    pub fn covers(&self, narrower: &ResourceScope) -> bool {
        self.context == narrower.context
            && (self.resource_type == "*" || self.resource_type == narrower.resource_type)
            && self.permissions.is_superset(narrower.permissions)
            && (self.restriction.is_none() || self.restriction == narrower.restriction)
    }
}

/// The reason a scope did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// Longer than [`MAX_SCOPE_LEN`].
    #[error("scope longer than {MAX_SCOPE_LEN} characters")]
    TooLong,
    /// The resource type is neither `*` nor shaped like a FHIR type.
    #[error("invalid resource type in scope")]
    ResourceType,
    /// The part after the dot is neither v2 letters nor `read`, `write`,
    /// `*`.
    #[error("invalid permissions in scope")]
    Permissions,
    /// The `?` restriction is not `name=value` pairs, or follows a v1 form.
    #[error("invalid search restriction in scope")]
    Restriction,
    /// The scope has a `patient/`, `user/` or `system/` prefix but no dot.
    #[error("resource scope without permissions")]
    MissingPermissions,
}

/// One parsed scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A clinical-data scope.
    Resource(ResourceScope),
    /// `openid`.
    OpenId,
    /// `fhirUser`.
    FhirUser,
    /// `profile` (SMART v1 clients ask for it beside `openid`).
    Profile,
    /// `launch`: an EHR launch.
    Launch,
    /// `launch/patient`: pick a patient during a standalone launch.
    LaunchPatient,
    /// `launch/encounter`: pick an encounter during a standalone launch.
    LaunchEncounter,
    /// `offline_access`: a refresh token that outlives the session.
    OfflineAccess,
    /// `online_access`: a refresh token bound to the session.
    OnlineAccess,
    /// A scope this crate does not interpret, kept as it was.
    Other(String),
}

impl Scope {
    /// Parses one scope.
    ///
    /// # Errors
    ///
    /// A [`ScopeError`] for a malformed resource scope or an over-long
    /// scope. Unknown scopes without a resource prefix are
    /// [`Scope::Other`].
    pub fn parse(scope: &str) -> Result<Self, ScopeError> {
        if scope.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong);
        }
        let simple = match scope {
            "openid" => Some(Scope::OpenId),
            "fhirUser" => Some(Scope::FhirUser),
            "profile" => Some(Scope::Profile),
            "launch" => Some(Scope::Launch),
            "launch/patient" => Some(Scope::LaunchPatient),
            "launch/encounter" => Some(Scope::LaunchEncounter),
            "offline_access" => Some(Scope::OfflineAccess),
            "online_access" => Some(Scope::OnlineAccess),
            _ => None,
        };
        if let Some(simple) = simple {
            return Ok(simple);
        }
        let Some((prefix, rest)) = scope.split_once('/') else {
            return Ok(Scope::Other(scope.to_owned()));
        };
        let context = match prefix {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            _ => return Ok(Scope::Other(scope.to_owned())),
        };
        parse_resource(context, rest).map(Scope::Resource)
    }

    /// The resource scope, if this is one.
    pub fn as_resource(&self) -> Option<&ResourceScope> {
        match self {
            Scope::Resource(r) => Some(r),
            _ => None,
        }
    }
}

fn parse_resource(context: ScopeContext, rest: &str) -> Result<ResourceScope, ScopeError> {
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (resource_type, access) = rest.split_once('.').ok_or(ScopeError::MissingPermissions)?;
    if resource_type != "*" && !is_resource_type_shape(resource_type) {
        return Err(ScopeError::ResourceType);
    }
    let (permissions, v1) = match access {
        "read" => (Permissions::from_letters("rs"), true),
        "write" => (Permissions::from_letters("cud"), true),
        "*" => (Some(Permissions::ALL), true),
        letters => (Permissions::from_letters(letters), false),
    };
    let permissions = permissions.ok_or(ScopeError::Permissions)?;
    let restriction = match query {
        None => None,
        Some(_) if v1 => return Err(ScopeError::Restriction),
        Some(q) => Some(SearchRestriction::parse(q).ok_or(ScopeError::Restriction)?),
    };
    Ok(ResourceScope {
        context,
        resource_type: resource_type.to_owned(),
        permissions,
        restriction,
    })
}

fn is_resource_type_shape(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
}

/// The parsed scopes of a request or token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    /// The scopes that parsed, in request order, without duplicates.
    pub scopes: Vec<Scope>,
    /// The text of each scope in `scopes`, in the same order.
    pub raw: Vec<String>,
    /// Scopes that did not parse, or came after the first [`MAX_SCOPES`].
    pub rejected: Vec<String>,
}

impl Scopes {
    /// Parses a space-separated scope string. Malformed scopes go to
    /// `rejected` rather than failing the whole string, because OAuth lets
    /// the server grant less than the client asked for.
    pub fn parse(scope: &str) -> Self {
        let mut out = Self::default();
        for item in scope.split_ascii_whitespace() {
            if out.raw.iter().any(|r| r == item) {
                continue;
            }
            if out.raw.len() >= MAX_SCOPES {
                out.rejected.push(truncated(item));
                continue;
            }
            match Scope::parse(item) {
                Ok(parsed) => {
                    out.scopes.push(parsed);
                    out.raw.push(item.to_owned());
                }
                Err(_) => out.rejected.push(truncated(item)),
            }
        }
        out
    }

    /// True when `scope` is present.
    pub fn contains(&self, scope: &Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// The resource scopes.
    pub fn resources(&self) -> impl Iterator<Item = &ResourceScope> {
        self.scopes.iter().filter_map(Scope::as_resource)
    }

    /// True when every scope in `requested` is granted by `self`: the same
    /// non-resource scope, or a resource scope that covers it. This is the
    /// check for a refresh request that may narrow, but not widen, the
    /// original grant. A `requested` with rejected scopes is never covered.
    pub fn covers(&self, requested: &Scopes) -> bool {
        requested.rejected.is_empty()
            && requested.scopes.iter().all(|scope| match scope {
                Scope::Resource(narrower) => self.resources().any(|r| r.covers(narrower)),
                other => self.contains(other),
            })
    }

    /// The scopes of `requested` that `self` covers, as a scope string: what
    /// a client may be granted when `self` is what it is allowed.
    pub fn grantable(&self, requested: &Scopes) -> Scopes {
        let mut out = Scopes::default();
        for (scope, raw) in requested.scopes.iter().zip(&requested.raw) {
            let allowed = match scope {
                Scope::Resource(narrower) => self.resources().any(|r| r.covers(narrower)),
                other => self.contains(other),
            };
            if allowed {
                out.scopes.push(scope.clone());
                out.raw.push(raw.clone());
            }
        }
        out
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw.join(" "))
    }
}

/// Keeps rejected scopes short enough to log.
fn truncated(scope: &str) -> String {
    scope.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(scope: &str) -> ResourceScope {
        match Scope::parse(scope).unwrap() {
            Scope::Resource(r) => r,
            other => panic!("{scope} parsed as {other:?}"),
        }
    }

    #[test]
    fn v2_scope_with_restriction_parses() {
        let scope = resource("patient/Observation.rs?category=laboratory&status=final");
        assert_eq!(scope.context, ScopeContext::Patient);
        assert_eq!(scope.resource_type, "Observation");
        assert_eq!(scope.permissions.to_string(), "rs");
        let restriction = scope.restriction.unwrap();
        assert_eq!(
            restriction.params,
            [
                ("category".to_owned(), "laboratory".to_owned()),
                ("status".to_owned(), "final".to_owned())
            ]
        );
        assert_eq!(restriction.to_string(), "category=laboratory&status=final");
    }

    #[test]
    fn restriction_accepts_token_with_system() {
        let scope = resource(
            "user/Condition.rs?category=http://terminology.hl7.org/CodeSystem/condition-category|encounter-diagnosis",
        );
        assert_eq!(scope.restriction.unwrap().params.len(), 1);
    }

    #[test]
    fn v1_scopes_map_to_letters() {
        assert_eq!(resource("user/Patient.read").permissions.to_string(), "rs");
        assert_eq!(
            resource("user/Patient.write").permissions.to_string(),
            "cud"
        );
        assert_eq!(resource("system/*.*").permissions.to_string(), "cruds");
    }

    #[test]
    fn non_resource_scopes_parse() {
        let scopes = Scopes::parse(
            "openid fhirUser profile launch launch/patient launch/encounter offline_access online_access custom:thing",
        );
        assert_eq!(
            scopes.scopes,
            [
                Scope::OpenId,
                Scope::FhirUser,
                Scope::Profile,
                Scope::Launch,
                Scope::LaunchPatient,
                Scope::LaunchEncounter,
                Scope::OfflineAccess,
                Scope::OnlineAccess,
                Scope::Other("custom:thing".into()),
            ]
        );
        assert!(scopes.rejected.is_empty());
    }

    #[test]
    fn malformed_scopes_are_rejected() {
        let cases = [
            ("system/*.sr", ScopeError::Permissions),
            ("system/*.cc", ScopeError::Permissions),
            ("system/*.x", ScopeError::Permissions),
            ("system/*.", ScopeError::Permissions),
            ("user/observation.rs", ScopeError::ResourceType),
            ("user/Obs3rvation.rs", ScopeError::ResourceType),
            ("user/Patient", ScopeError::MissingPermissions),
            ("user/Patient.read?name=x", ScopeError::Restriction),
            ("user/Patient.rs?name", ScopeError::Restriction),
            ("user/Patient.rs?=x", ScopeError::Restriction),
            ("user/Patient.rs?name=", ScopeError::Restriction),
        ];
        for (scope, expected) in cases {
            assert_eq!(Scope::parse(scope), Err(expected), "{scope}");
        }
        let long = format!("user/{}.rs", "A".repeat(MAX_SCOPE_LEN));
        assert_eq!(Scope::parse(&long), Err(ScopeError::TooLong));
    }

    #[test]
    fn parse_collects_rejected_and_dedupes() {
        let scopes = Scopes::parse("openid  openid user/Bad.zz patient/Patient.r");
        assert_eq!(scopes.raw, ["openid", "patient/Patient.r"]);
        assert_eq!(scopes.rejected, ["user/Bad.zz"]);
    }

    #[test]
    fn parse_caps_scope_count() {
        let many: Vec<String> = (0..MAX_SCOPES + 5).map(|i| format!("x{i}")).collect();
        let scopes = Scopes::parse(&many.join(" "));
        assert_eq!(scopes.scopes.len(), MAX_SCOPES);
        assert_eq!(scopes.rejected.len(), 5);
    }

    #[test]
    fn covers_allows_narrowing() {
        let granted = Scopes::parse("openid patient/Observation.rs user/*.cruds offline_access");
        for narrower in [
            "openid",
            "patient/Observation.r",
            "patient/Observation.rs?category=vital-signs",
            "user/Patient.r offline_access",
            "",
        ] {
            assert!(granted.covers(&Scopes::parse(narrower)), "{narrower}");
        }
    }

    #[test]
    fn covers_rejects_widening() {
        let granted = Scopes::parse("openid patient/Observation.rs?category=laboratory");
        for wider in [
            "patient/Observation.rs",
            "patient/Observation.rs?category=vital-signs",
            "patient/Observation.crs?category=laboratory",
            "user/Observation.rs?category=laboratory",
            "patient/Condition.rs",
            "fhirUser",
            "patient/Observation.zz",
        ] {
            assert!(!granted.covers(&Scopes::parse(wider)), "{wider}");
        }
    }

    #[test]
    fn grantable_keeps_allowed_subset() {
        let allowed = Scopes::parse("openid fhirUser launch/patient patient/*.rs");
        let requested =
            Scopes::parse("openid patient/Observation.rs patient/Observation.c offline_access");
        assert_eq!(
            allowed.grantable(&requested).to_string(),
            "openid patient/Observation.rs"
        );
    }
}
