//! Identifiers. Generated ids are ULIDs behind a type prefix (`run_…`, `ses_…`):
//! unique without coordination between nodes, and sortable by creation time.

use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The one authorization boundary (DESIGN §2). Every stored object carries one
/// and every store method takes one, so a query can never forget to filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// The tenant the admin token acts on when no `x-agentd-tenant` is sent.
    pub fn default_tenant() -> Self {
        TenantId("default".to_owned())
    }

    /// Tenant names are path- and header-safe: 1–64 of `[A-Za-z0-9_.-]`.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        ok.then(|| TenantId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One generator per process so ids minted in the same millisecond still sort
/// in creation order (the session queue relies on it).
static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

/// A new id `<prefix>_<ulid>`, monotonic within this process.
pub fn new_id(prefix: &str) -> String {
    let mut guard = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let generator = guard.get_or_insert_with(ulid::Generator::new);
    let ulid = generator.generate().unwrap_or_else(|_| ulid::Ulid::new());
    format!("{prefix}_{}", ulid.to_string().to_ascii_lowercase())
}

/// Client-chosen ids (sessions, `"demo"`) must be safe in a URL path segment.
pub fn is_valid_client_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_creation_order() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("run")).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn tenant_names_are_restricted() {
        assert!(TenantId::parse("acme-1").is_some());
        assert!(TenantId::parse("").is_none());
        assert!(TenantId::parse("a/b").is_none());
        assert!(TenantId::parse(&"x".repeat(65)).is_none());
    }
}
