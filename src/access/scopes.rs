//! Scopes are `resource:action` pairs (SPEC §1), held as a bit set so the per-request tool
//! filter costs a few instructions per tool.

use std::fmt;

/// Every scope, in a fixed order (the bit index).
pub const ALL: [&str; 24] = [
    "customers:read",
    "customers:write",
    "customers:delete",
    "customers:export",
    "interactions:read",
    "interactions:write",
    "search",
    "bulk",
    "reports",
    "handoff",
    "handoff:decide",
    "invoices:read",
    "invoices:write",
    "workflows:read",
    "workflows:write",
    "workflows:execute",
    "agents:read",
    "agents:write",
    "agents:execute",
    "connections:read",
    "connections:write",
    "webhooks:manage",
    "audit:read",
    "admin",
];

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown scope `{0}`; known scopes: {known}", known = ALL.join(", "))]
pub struct UnknownScope(pub String);

impl Scopes {
    pub const NONE: Scopes = Scopes(0);
    pub const EVERY: Scopes = Scopes((1 << ALL.len()) - 1);

    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Scopes, UnknownScope> {
        names.iter().try_fold(Scopes::NONE, |set, name| {
            let name = name.as_ref().trim();
            ALL.iter()
                .position(|s| *s == name)
                .map(|bit| Scopes(set.0 | 1 << bit))
                .ok_or_else(|| UnknownScope(name.to_owned()))
        })
    }

    pub fn contains(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersect(self, other: Scopes) -> Scopes {
        Scopes(self.0 & other.0)
    }

    pub fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }

    /// The scopes of `self` that `other` lacks.
    pub fn without(self, other: Scopes) -> Scopes {
        Scopes(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn names(self) -> Vec<&'static str> {
        ALL.iter()
            .enumerate()
            .filter(|(bit, _)| self.0 & 1 << bit != 0)
            .map(|(_, name)| *name)
            .collect()
    }

    /// Names for storage: always in catalog order, never a caller's spelling.
    pub fn to_strings(self) -> Vec<String> {
        self.names().into_iter().map(str::to_owned).collect()
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contain() {
        let read = Scopes::parse(&["customers:read"]).unwrap();
        let both = Scopes::parse(&["customers:read", "search"]).unwrap();
        assert!(both.contains(read) && !read.contains(both));
        assert!(Scopes::EVERY.contains(both));
        assert_eq!(both.names(), ["customers:read", "search"]);
        assert_eq!(
            Scopes::parse(&["customers:reed"]),
            Err(UnknownScope("customers:reed".into()))
        );
        assert_eq!(Scopes::EVERY.names().len(), ALL.len());
    }
}
