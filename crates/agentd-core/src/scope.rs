//! Scopes: what a credential may do (DESIGN §3). A key carries a set of them;
//! every route names the one it needs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One permission. The wire name (`runs:read`) is the only spelling that
/// crosses a boundary: keys in the store, JWT claims, request bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    RunsRead,
    RunsWrite,
    /// See run inputs and metadata; without it they come back redacted.
    RunsReadInputs,
    SessionsRead,
    SessionsWrite,
    SignalsWrite,
    SandboxesRead,
    SandboxesWrite,
    /// Mint, list, rotate and revoke keys of the key's own tenant.
    KeysAdmin,
    AuditRead,
    /// The chat surface of seed 002 (`/api/chat`, `/ws/chat`).
    Chat,
}

impl Scope {
    pub const ALL: [Scope; 11] = [
        Scope::RunsRead,
        Scope::RunsWrite,
        Scope::RunsReadInputs,
        Scope::SessionsRead,
        Scope::SessionsWrite,
        Scope::SignalsWrite,
        Scope::SandboxesRead,
        Scope::SandboxesWrite,
        Scope::KeysAdmin,
        Scope::AuditRead,
        Scope::Chat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RunsRead => "runs:read",
            Scope::RunsWrite => "runs:write",
            Scope::RunsReadInputs => "runs:read_inputs",
            Scope::SessionsRead => "sessions:read",
            Scope::SessionsWrite => "sessions:write",
            Scope::SignalsWrite => "signals:write",
            Scope::SandboxesRead => "sandboxes:read",
            Scope::SandboxesWrite => "sandboxes:write",
            Scope::KeysAdmin => "keys:admin",
            Scope::AuditRead => "audit:read",
            Scope::Chat => "chat",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown scope {0:?}")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of scopes, copied freely: a bit per [`Scope`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u16);

impl Scopes {
    pub fn all() -> Scopes {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_subset_of(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Space- or comma-separated wire names (`"runs:read runs:write"`), as
    /// OAuth's `scope` claim and `AGENTD_*` variables spell them.
    pub fn parse_list(text: &str) -> Result<Scopes, UnknownScope> {
        text.split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(Scope::from_str)
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for Scopes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<Scope>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
        }
        assert!("runs:delete".parse::<Scope>().is_err());
    }

    #[test]
    fn sets_compare_by_inclusion() {
        let read: Scopes = [Scope::RunsRead].into_iter().collect();
        let rw = Scopes::parse_list("runs:read, runs:write").unwrap();
        assert!(read.is_subset_of(rw));
        assert!(!rw.is_subset_of(read));
        assert!(rw.is_subset_of(Scopes::all()));
        assert_eq!(
            serde_json::to_string(&rw).unwrap(),
            r#"["runs:read","runs:write"]"#
        );
        assert!(Scopes::parse_list("runs:read nope").is_err());
    }
}
