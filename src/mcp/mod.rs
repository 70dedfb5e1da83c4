//! The MCP layer: tool catalog, filtering, the shared handler and both transports.

pub mod call;
pub mod confirm;
pub mod discovery;
pub mod docs;
pub mod http;
pub mod prompts;
pub mod resources;
pub mod server;
pub mod shaping;
pub mod stdio;
