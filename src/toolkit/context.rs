//! What a tool handler learns about the call it serves.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;

use super::filter::ToolFilter;
use crate::access::Principal;
use crate::access::policy::Policy;
use crate::app::App;
use crate::error::ToolError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Stdio,
    Http,
    /// A step of a workflow execution.
    Workflow,
    /// A tool call of a prompt agent's run.
    Agent,
    /// A held call, run once a person approved it.
    Approval,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Http => "http",
            Transport::Workflow => "workflow",
            Transport::Agent => "agent",
            Transport::Approval => "approval",
        }
    }

    /// Who is on the other end, in a sentence.
    pub fn describe(self) -> &'static str {
        match self {
            Transport::Stdio | Transport::Http => "this client",
            Transport::Workflow => "a workflow run",
            Transport::Agent => "an agent run",
            Transport::Approval => "an approved action",
        }
    }
}

impl ToolCtx {
    /// The caller's field rules, row conditions and grants, for the policy API.
    pub async fn policy(&self) -> Result<Policy, ToolError> {
        Ok(Policy::load(self.app.store.pool(), &self.principal).await?)
    }
}

#[derive(Clone)]
pub struct ToolCtx {
    pub app: Arc<App>,
    pub transport: Transport,
    /// Who is calling; every query a tool makes is scoped by `principal.tenant_id`.
    pub principal: Principal,
    /// Unique per tool call; returned in errors and logged, so a report can be traced.
    pub request_id: String,
    /// The MCP session, on HTTP sessions of protocol versions that have them.
    pub session_id: Option<String>,
    /// The filter in force for this request (configuration narrowed by request headers).
    pub filter: Arc<ToolFilter>,
    /// Where to send progress notifications, when the client asked for them.
    pub progress: Option<Progress>,
    /// The tool being called and its arguments as sent: what the approval hook stores.
    pub tool: &'static str,
    pub arguments: Arc<rmcp::model::JsonObject>,
    /// Set only by `decide_pending_action` when it runs an approved action: the approval
    /// hook lets that one call through. No argument of a call can set it.
    pub approved_action: Option<uuid::Uuid>,
    /// The client on the other end, for tools that ask it something (sampling); absent in
    /// workflow runs and approved actions.
    pub client: Option<ClientSide>,
}

/// What a tool may ask of the calling client.
#[derive(Clone)]
pub struct ClientSide {
    pub peer: rmcp::Peer<rmcp::RoleServer>,
    /// Protocol 2026-07-28: questions go back as an input-required result, and their
    /// answers come with the next call (`answers`).
    pub modern: bool,
    pub capabilities: Option<rmcp::model::ClientCapabilities>,
    pub answers: Option<rmcp::model::InputResponses>,
}

/// A client's progress token and the connection to notify it on.
#[derive(Clone)]
pub struct Progress {
    pub peer: rmcp::Peer<rmcp::RoleServer>,
    pub token: rmcp::model::ProgressToken,
}

impl Progress {
    /// Best effort: a client that went away does not fail the work.
    pub async fn report(&self, done: u64, total: u64, message: String) {
        let mut param =
            rmcp::model::ProgressNotificationParam::new(self.token.clone(), done as f64)
                .with_total(total as f64);
        param.message = Some(message);
        if let Err(error) = self.peer.notify_progress(param).await {
            tracing::debug!(%error, "progress notification not delivered");
        }
    }
}
