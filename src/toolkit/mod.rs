//! The tool kit every toolset builds on: a tool's declaration (`catalog`: toolset, scopes,
//! annotations, the typed handler), what its handler learns about the call (`context`),
//! which tools a caller sees (`filter`) and the lean form `tools/list` gives (`listing`).
//! Domains import it; it imports no domain. The catalog of every tool is assembled at the
//! root (`crate::catalog`), and the MCP layer (`crate::mcp`) serves it.

pub mod catalog;
pub mod context;
pub mod data;
pub mod filter;
pub mod listing;
