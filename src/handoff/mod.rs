//! The `handoff` toolset (SPEC §4): tickets asking for a person, and the approval queue of
//! agent calls the tenant's approval policy holds (the hook itself is `access::approval`).

pub mod actions;
pub mod resources;
pub mod tickets;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use crate::toolkit::catalog::RegisteredTool;

pub fn tools() -> Vec<RegisteredTool> {
    let mut tools = tickets::tools();
    tools.extend(actions::tools());
    tools
}

/// One line of a ticket's or an action's history.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Entry {
    pub at: DateTime<Utc>,
    /// Who: a person's or agent's name, or `agentcrm` for the server.
    pub by: String,
    /// `requested`, `held`, `assigned`, `unassigned`, `note`, or the state decided.
    pub action: String,
    /// The state after this entry.
    pub state: String,
    pub note: Option<String>,
}

pub(crate) use crate::mcp::resources::notify_changed;
