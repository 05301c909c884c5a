//! The role of an organization in the exchange: a clinic prescribes and
//! orders, a pharmacy dispenses prescriptions, a laboratory returns results.
//! The role is part of the organization's identity and its trust entry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The role of an organization in the exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrgRole {
    /// Sends referrals, prescriptions and orders; the default.
    #[default]
    Clinic,
    /// Receives prescriptions and reports their dispensing back.
    Pharmacy,
    /// Receives orders and sends results to the ordering organization.
    Lab,
}

impl OrgRole {
    /// Returns the role as `ward serve --role` and trust entries spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clinic => "clinic",
            Self::Pharmacy => "pharmacy",
            Self::Lab => "lab",
        }
    }
}

impl fmt::Display for OrgRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrgRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "clinic" => Ok(Self::Clinic),
            "pharmacy" => Ok(Self::Pharmacy),
            "lab" => Ok(Self::Lab),
            other => Err(format!(
                "invalid organization role '{other}'; use clinic, pharmacy or lab"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_round_trips_through_text() {
        for role in [OrgRole::Clinic, OrgRole::Pharmacy, OrgRole::Lab] {
            assert_eq!(role.as_str().parse::<OrgRole>(), Ok(role));
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::Value::from(role.as_str())
            );
        }
    }

    #[test]
    fn unknown_role_is_rejected() {
        let error = "hospital".parse::<OrgRole>().unwrap_err();
        assert!(error.contains("hospital"), "{error}");
    }
}
