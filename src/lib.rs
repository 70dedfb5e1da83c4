//! agentcrm: an MCP server exposing CRM, workflow, handoff and agent operations as typed,
//! scoped tools over stdio and streamable HTTP, on PostgreSQL.

pub mod access;
pub mod account;
pub mod admin;
pub mod agents;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod connections;
pub mod crm;
pub mod error;
pub mod events;
pub mod handoff;
pub mod jobs;
pub mod mcp;
pub mod metrics;
pub mod signin;
pub mod store;
pub mod telemetry;
pub mod toolkit;
pub mod workflows;
