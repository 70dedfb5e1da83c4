//! The `connections` toolset: credentials for the outside services the server calls (LLM
//! providers, remote MCP servers, outgoing HTTP), encrypted at rest and never returned,
//! and the tool catalog that remote MCP servers' tools join.

pub mod catalog;
pub mod llm;
pub mod manage;
pub mod platforms;
pub mod remote;

use crate::toolkit::catalog::RegisteredTool;

pub fn tools() -> Vec<RegisteredTool> {
    let mut tools = manage::tools();
    tools.extend(catalog::tools());
    tools
}
