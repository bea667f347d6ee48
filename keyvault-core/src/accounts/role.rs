//! What an API token or a user may do.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

/// What an API token or a user may do (CONTRACT §4): `admin` ⊃ `operator` ⊃ `viewer`;
/// `verifier` may only verify keys and report usage, which `admin` and `operator` may also
/// do and `viewer` may not.
///
/// ```
/// use keyvault_core::{Need, Role};
///
/// let role: Role = "operator".parse()?;
/// assert!(role.allows(Need::Viewer) && role.allows(Need::Verify));
/// assert!(!role.allows(Need::Admin));
/// assert!("root".parse::<Role>().is_err());
/// # Ok::<(), keyvault_core::InvalidInput>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, API tokens and users included.
    Admin,
    /// Manage keys, read the audit log, verify keys.
    Operator,
    /// Read keys, statistics and metrics.
    Viewer,
    /// Verify keys and report usage only.
    Verifier,
}

/// The access an operation needs, checked with [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    /// Read keys, statistics and metrics.
    Viewer,
    /// Change keys, read the audit log.
    Operator,
    /// Manage API tokens and users.
    Admin,
    /// Verify keys and report usage.
    Verify,
}

impl Role {
    /// Every role, strongest first.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Viewer, Role::Verifier];

    /// The stored and serialised name: `admin`, `operator`, `viewer` or `verifier`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Verifier => "verifier",
        }
    }

    /// Whether this role grants `need`.
    pub const fn allows(self, need: Need) -> bool {
        use Role::*;
        match need {
            Need::Viewer => matches!(self, Admin | Operator | Viewer),
            Need::Operator => matches!(self, Admin | Operator),
            Need::Admin => matches!(self, Admin),
            Need::Verify => matches!(self, Admin | Operator | Verifier),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                InvalidInput::new("role", "must be one of admin, operator, viewer, verifier")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_verifiers_only_verify() {
        assert!(Role::Admin.allows(Need::Admin));
        assert!(!Role::Operator.allows(Need::Admin));
        assert!(Role::Operator.allows(Need::Viewer));
        assert!(!Role::Viewer.allows(Need::Operator));
        assert!(!Role::Viewer.allows(Need::Verify));
        assert!(Role::Verifier.allows(Need::Verify));
        assert!(!Role::Verifier.allows(Need::Viewer));
    }

    #[test]
    fn names_round_trip_and_unknown_ones_name_the_allowed_values() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(r.to_string(), r.as_str());
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(
                serde_json::from_value::<Role>(r.as_str().into()).unwrap(),
                r
            );
        }
        let e = "Admin".parse::<Role>().unwrap_err();
        assert_eq!(e.field, "role");
        assert!(
            e.message.contains("admin, operator, viewer, verifier"),
            "{e}"
        );
        assert!(serde_json::from_str::<Role>("\"root\"").is_err());
    }
}
