//! Process-wide state shared by both transports.

use std::sync::Arc;

use crate::access::Principal;
use crate::access::audit::AuditLog;
use crate::access::cache::AuthCache;
use crate::access::ratelimit::RateLimiter;
use crate::access::tokens::TokenKeys;
use crate::access::vault::Vault;
use crate::jobs::outbound::OutboundOptions;
use crate::store::Store;
use crate::toolkit::catalog::Catalog;
use crate::toolkit::filter::ToolFilter;

pub struct App {
    pub store: Store,
    pub catalog: &'static Catalog,
    /// The tools configuration enables; requests can only narrow it.
    pub filter: Arc<ToolFilter>,
    /// `tools/list` gives full definitions (output schemas included) instead of lean ones.
    pub list_output_schemas: bool,
    pub audit: AuditLog,
    pub limiter: RateLimiter,
    /// Resolved credentials, emptied whenever any process changes one.
    pub auth_cache: AuthCache,
    /// On the embedded default, callers without credentials act as the local owner (on
    /// stdio, and on HTTP bound to loopback). `None` everywhere else.
    pub local_owner: Option<Principal>,
    /// Signing keys for OAuth access tokens (HTTP only; `None` when not configured).
    pub tokens: Option<TokenKeys>,
    /// Encrypts secrets the server reads back (webhook secrets); `None` when no key is set.
    pub vault: Option<Vault>,
    /// What outgoing calls (webhook deliveries) may reach.
    pub outbound: OutboundOptions,
    /// The HTTP clients of outgoing calls, built on first use.
    pub clients: crate::jobs::outbound::Clients,
    /// Clients subscribed to resources (pending actions, handoff tickets) in this process.
    pub subscriptions: crate::handoff::resources::Subscriptions,
    /// Clients' calls in flight in this process.
    pub inflight: crate::mcp::call::InFlight,
    /// Background work (workflow executions, agent runs, bulk tasks) running in this process.
    pub background: crate::mcp::call::InFlight,
    /// Cancelled when the process starts shutting down: background work stops at its next
    /// boundary and hands its lease back.
    pub stopping: tokio_util::sync::CancellationToken,
}

impl App {
    /// The client for outgoing calls to addresses callers chose.
    pub fn http(&self) -> Result<reqwest::Client, crate::error::ToolError> {
        self.clients
            .standard(self.outbound)
            .map_err(|e| crate::error::ToolError::Internal(format!("no outgoing HTTP client: {e}")))
    }

    /// The same, with room for an LLM provider's slower answers.
    pub fn llm_http(&self) -> Result<reqwest::Client, crate::error::ToolError> {
        self.clients
            .llm(self.outbound)
            .map_err(|e| crate::error::ToolError::Internal(format!("no outgoing HTTP client: {e}")))
    }
}
