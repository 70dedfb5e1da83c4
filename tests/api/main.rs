//! Integration tests: the real `agentcrm` binary, spoken to over MCP (stdio and streamable
//! HTTP) by real clients, against real PostgreSQL.

mod abuse;
mod access;
mod agents;
mod catalog;
mod cli;
mod clients;
mod connections;
mod conversations;
mod crm;
mod delegation;
mod discovery;
mod durability;
mod embedded;
mod export;
mod fake_llm;
mod fake_mcp;
mod federation;
mod first_hour;
mod fuzz;
mod grants;
mod handoff;
mod helpers;
mod http;
mod matrix;
mod oauth;
mod operations;
mod policy;
mod ratelimit;
mod remote_clients;
mod resources;
mod signin;
mod stdio;
mod store;
mod webhooks;
mod workflows;
