//! SMART on FHIR scopes: the v2 form (`patient/Observation.rs`,
//! `system/*.cruds`) and the v1 form (`user/Patient.read`, `system/*.*`),
//! and the check of an interaction against them.

use std::fmt;

/// Who a scope speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeContext {
    /// `patient/`: data of the patient in context.
    Patient,
    /// `user/`: what the user may see.
    User,
    /// `system/`: a backend service.
    System,
}

/// The kinds of access a scope grants (SMART v2 `cruds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `c`: create.
    Create,
    /// `r`: read and vread.
    Read,
    /// `u`: update.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: search and history.
    Search,
}

impl Permission {
    fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
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

/// One clinical-data scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    /// The context.
    pub context: ScopeContext,
    /// The resource type, or `*`.
    pub resource_type: String,
    /// The granted permissions, as `cruds` letters.
    pub permissions: String,
    /// A v2 search restriction such as `category=laboratory`, if any.
    pub restriction: Option<String>,
}

impl ResourceScope {
    /// Parses one scope; `None` for scopes that are not about resources
    /// (`openid`, `launch/patient`, `offline_access`) or malformed.
    pub fn parse(scope: &str) -> Option<Self> {
        let (context, rest) = scope.split_once('/')?;
        let context = match context {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            _ => return None,
        };
        let (rest, restriction) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q.to_owned())),
            None => (rest, None),
        };
        let (resource_type, access) = rest.split_once('.')?;
        if resource_type != "*" && !ward_fhir::definitions::is_resource_type(resource_type) {
            return None;
        }
        let permissions = match access {
            "read" => "rs".to_owned(),
            "write" => "cud".to_owned(),
            "*" => "cruds".to_owned(),
            letters => {
                // v2 letters must appear in c, r, u, d, s order, each once.
                let order = "cruds";
                let mut last = None;
                for ch in letters.chars() {
                    let pos = order.find(ch)?;
                    if last.is_some_and(|l| pos <= l) {
                        return None;
                    }
                    last = Some(pos);
                }
                if letters.is_empty() {
                    return None;
                }
                letters.to_owned()
            }
        };
        Some(Self {
            context,
            resource_type: resource_type.to_owned(),
            permissions,
            restriction,
        })
    }

    /// True when this scope grants `permission` on `resource_type`.
    pub fn allows(&self, resource_type: &str, permission: Permission) -> bool {
        (self.resource_type == "*" || self.resource_type == resource_type)
            && self.permissions.contains(permission.letter())
    }
}

/// The parsed scopes of a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    /// Every resource scope.
    pub resources: Vec<ResourceScope>,
    /// Every scope as granted, resource or not.
    pub raw: Vec<String>,
}

impl Scopes {
    /// Parses a space-separated scope string.
    pub fn parse(scope: &str) -> Self {
        let raw: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
        let resources = raw.iter().filter_map(|s| ResourceScope::parse(s)).collect();
        Self { resources, raw }
    }

    /// True when some scope grants `permission` on `resource_type` without
    /// a search restriction, for a caller with or without a patient in
    /// context.
    pub fn allows(&self, resource_type: &str, permission: Permission, has_patient: bool) -> bool {
        self.resources.iter().any(|s| {
            s.restriction.is_none()
                && (s.context != ScopeContext::Patient || has_patient)
                && s.allows(resource_type, permission)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_scope_parses() {
        let scope = ResourceScope::parse("patient/Observation.rs?category=laboratory").unwrap();
        assert_eq!(scope.context, ScopeContext::Patient);
        assert_eq!(scope.resource_type, "Observation");
        assert_eq!(scope.permissions, "rs");
        assert_eq!(scope.restriction.as_deref(), Some("category=laboratory"));
    }

    #[test]
    fn v1_scopes_map_to_letters() {
        assert_eq!(
            ResourceScope::parse("user/Patient.read")
                .unwrap()
                .permissions,
            "rs"
        );
        assert_eq!(
            ResourceScope::parse("user/Patient.write")
                .unwrap()
                .permissions,
            "cud"
        );
        assert_eq!(
            ResourceScope::parse("system/*.*").unwrap().permissions,
            "cruds"
        );
    }

    #[test]
    fn malformed_scopes_are_ignored() {
        for bad in [
            "system/*.sr",
            "system/*.cc",
            "system/*.x",
            "system/Nope.rs",
            "launch/patient",
            "openid",
            "system/*.",
        ] {
            assert!(ResourceScope::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn allows_checks_type_and_permission() {
        let scopes = Scopes::parse("system/Patient.rs openid");
        assert!(scopes.allows("Patient", Permission::Read, false));
        assert!(!scopes.allows("Patient", Permission::Create, false));
        assert!(!scopes.allows("Observation", Permission::Read, false));
    }

    #[test]
    fn patient_scope_needs_patient_context() {
        let scopes = Scopes::parse("patient/*.rs");
        assert!(!scopes.allows("Observation", Permission::Read, false));
        assert!(scopes.allows("Observation", Permission::Read, true));
    }
}
