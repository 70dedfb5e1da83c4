//! Which tools a caller sees. One function decides it, applying the rules in one fixed
//! order; listing and calling both go through it, so a tool that is not listed cannot be
//! called either.

use std::collections::BTreeSet;

use crate::access::{Principal, Scopes};
use crate::toolkit::catalog::{Catalog, RegisteredTool, ToolDef, Toolset};

/// Restrictions from configuration, optionally narrowed per request. Every field only
/// ever removes tools.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolFilter {
    /// `None`: every toolset.
    pub toolsets: Option<BTreeSet<Toolset>>,
    pub read_only: bool,
    /// `None`: every tool; otherwise only these names.
    pub tools: Option<BTreeSet<String>>,
    pub exclude: BTreeSet<String>,
    /// Compact mode: `tools/list` offers only the discovery tools, through which every
    /// other tool the filter allows is found and called.
    pub compact: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown toolset `{0}`; known toolsets: {known}", known = known_toolsets())]
    UnknownToolset(String),
    /// The name, where it was given, and the known names (the closest first).
    #[error("unknown tool `{0}` in {1}; known tools: {2}")]
    UnknownTool(String, &'static str, String),
}

/// Every tool name, those closest to `wrong` first (a typo is answered with its fix).
fn known_tools(catalog: &Catalog, wrong: &str) -> String {
    let mut names: Vec<&str> = catalog.iter().map(|t| t.def.name).collect();
    names.sort_by_key(|name| (distance(name, wrong).min(4), *name));
    names.join(", ")
}

/// Levenshtein distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut last = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(last + usize::from(ca != *cb));
            last = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn known_toolsets() -> String {
    Toolset::ALL.map(Toolset::name).join(", ")
}

impl ToolFilter {
    /// Builds a filter from configuration lists, refusing names the catalog does not know
    /// (a typo would otherwise silently hide or expose tools).
    pub fn from_lists(
        catalog: &Catalog,
        toolsets: &[String],
        read_only: bool,
        tools: &[String],
        exclude: &[String],
    ) -> Result<ToolFilter, FilterError> {
        let toolsets = parse_toolsets(toolsets)?;
        let known =
            |list: &[String], what: &'static str| -> Result<BTreeSet<String>, FilterError> {
                list.iter()
                    .map(|name| match catalog.get(name) {
                        Some(_) => Ok(name.clone()),
                        None => Err(FilterError::UnknownTool(
                            name.clone(),
                            what,
                            known_tools(catalog, name),
                        )),
                    })
                    .collect()
            };
        Ok(ToolFilter {
            toolsets,
            read_only,
            tools: if tools.is_empty() {
                None
            } else {
                Some(known(tools, "--tools")?)
            },
            exclude: known(exclude, "--exclude-tools")?,
            compact: false,
        })
    }

    /// Does this filter let `def` through? Order: toolset, read-only, allow-list, exclusions.
    /// In compact mode the discovery tools always pass: they are the way in.
    pub fn allows(&self, def: &ToolDef) -> bool {
        if self.compact && def.toolset == Toolset::Discovery {
            return true;
        }
        if let Some(toolsets) = &self.toolsets
            && !toolsets.contains(&def.toolset)
        {
            return false;
        }
        if self.read_only && !def.hints.read_only {
            return false;
        }
        if let Some(tools) = &self.tools
            && !tools.contains(def.name)
        {
            return false;
        }
        !self.exclude.contains(def.name)
    }

    /// The intersection of two filters: what both allow.
    pub fn narrow(&self, other: &ToolFilter) -> ToolFilter {
        fn meet<T: Ord + Clone>(
            a: &Option<BTreeSet<T>>,
            b: &Option<BTreeSet<T>>,
        ) -> Option<BTreeSet<T>> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
                (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                (None, None) => None,
            }
        }
        ToolFilter {
            toolsets: meet(&self.toolsets, &other.toolsets),
            read_only: self.read_only || other.read_only,
            tools: meet(&self.tools, &other.tools),
            exclude: self.exclude.union(&other.exclude).cloned().collect(),
            compact: self.compact || other.compact,
        }
    }

    /// Toolsets that still have at least one visible tool.
    pub fn enabled_toolsets(&self, catalog: &Catalog) -> Vec<Toolset> {
        let set: BTreeSet<Toolset> = configured(catalog, self).map(|t| t.def.toolset).collect();
        set.into_iter().collect()
    }
}

pub fn parse_toolsets(names: &[String]) -> Result<Option<BTreeSet<Toolset>>, FilterError> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(None);
    }
    names
        .iter()
        .map(|name| Toolset::parse(name).ok_or_else(|| FilterError::UnknownToolset(name.clone())))
        .collect::<Result<BTreeSet<_>, _>>()
        .map(Some)
}

/// May `principal` use `tool`? It needs every scope the tool declares, and agents (an
/// agent anywhere in the chain a call acts for) never get tools reserved for humans.
pub fn permits(principal: &Principal, tool: &RegisteredTool) -> bool {
    principal.scopes.contains(tool.required) && !(tool.humans_only && principal.involves_agent())
}

/// Why a principal may not use a tool (`None` when [`permits`] holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Reserved for human administrators; no scope changes that for an agent.
    HumansOnly,
    /// The declared scopes the principal lacks.
    MissingScopes(Vec<&'static str>),
}

pub fn denial(principal: &Principal, tool: &RegisteredTool) -> Option<Denial> {
    if tool.humans_only && principal.involves_agent() {
        return Some(Denial::HumansOnly);
    }
    if principal.scopes.contains(tool.required) {
        return None;
    }
    let missing = tool
        .def
        .scopes
        .iter()
        .copied()
        .filter(|s| {
            !principal
                .scopes
                .contains(Scopes::parse(&[*s]).unwrap_or_default())
        })
        .collect();
    Some(Denial::MissingScopes(missing))
}

impl Denial {
    /// A sentence naming the tool and what is missing.
    pub fn describe(&self, tool: &str, principal: &str) -> String {
        match self {
            Denial::HumansOnly => {
                format!("`{tool}` is reserved for human administrators; agents cannot use it")
            }
            Denial::MissingScopes(missing) => format!(
                "`{tool}` needs the scope(s) {}, which {principal} does not hold",
                missing.join(", ")
            ),
        }
    }
}

/// The tools `filter` lets through, in catalog order (configuration and headers only).
pub fn configured<'a>(
    catalog: &'a Catalog,
    filter: &'a ToolFilter,
) -> impl Iterator<Item = &'a RegisteredTool> {
    catalog.iter().filter(move |t| filter.allows(&t.def))
}

/// The tools `principal` sees under `filter`: what `tools/list` answers.
pub fn visible<'a>(
    catalog: &'a Catalog,
    filter: &'a ToolFilter,
    principal: &'a Principal,
) -> impl Iterator<Item = &'a RegisteredTool> {
    configured(catalog, filter).filter(move |t| permits(principal, t))
}

/// What `tools/list` answers: the visible tools, or in compact mode the discovery tools.
pub fn listed<'a>(
    catalog: &'a Catalog,
    filter: &'a ToolFilter,
    principal: &'a Principal,
) -> impl Iterator<Item = &'a RegisteredTool> {
    visible(catalog, filter, principal)
        .filter(move |t| !filter.compact || t.def.toolset == Toolset::Discovery)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(catalog: &Catalog, filter: &ToolFilter) -> Vec<&'static str> {
        configured(catalog, filter).map(|t| t.def.name).collect()
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_rule_only_removes_tools() {
        let catalog = crate::catalog::builtin();
        let all = names(catalog, &ToolFilter::default());
        assert!(all.contains(&"whoami") && all.contains(&"server_info"));

        let only_whoami =
            ToolFilter::from_lists(catalog, &[], false, &list(&["whoami"]), &[]).unwrap();
        assert_eq!(names(catalog, &only_whoami), ["whoami"]);

        let without = ToolFilter::from_lists(catalog, &[], false, &[], &list(&["whoami"])).unwrap();
        assert!(!names(catalog, &without).contains(&"whoami"));

        let crm_only = ToolFilter::from_lists(catalog, &list(&["crm"]), false, &[], &[]).unwrap();
        assert!(!names(catalog, &crm_only).contains(&"whoami"));
    }

    #[test]
    fn narrowing_never_widens() {
        let catalog = crate::catalog::builtin();
        let config = ToolFilter::from_lists(catalog, &[], false, &list(&["whoami"]), &[]).unwrap();
        let request =
            ToolFilter::from_lists(catalog, &[], false, &list(&["server_info"]), &[]).unwrap();
        assert!(names(catalog, &config.narrow(&request)).is_empty());
        assert_eq!(
            names(catalog, &config.narrow(&ToolFilter::default())),
            ["whoami"]
        );
    }

    #[test]
    fn unknown_names_are_refused() {
        let catalog = crate::catalog::builtin();
        assert_eq!(
            ToolFilter::from_lists(catalog, &list(&["crms"]), false, &[], &[]),
            Err(FilterError::UnknownToolset("crms".into()))
        );
        let refused = ToolFilter::from_lists(catalog, &[], false, &list(&["whoamii"]), &[]);
        let Err(FilterError::UnknownTool(name, what, known)) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!((name.as_str(), what), ("whoamii", "--tools"));
        assert!(known.starts_with("whoami, "), "{known}");
        assert!(known.contains("list_customers"), "{known}");
    }
}
