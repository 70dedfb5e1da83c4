//! What a tool handler learns about the call it serves.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;
use uuid::Uuid;

use super::filter::ToolFilter;
use crate::app::App;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Stdio,
    Http,
}

/// Who is calling. The access layer adds agents, users and API keys; until then the
/// only principal is the local owner, a human admin of the local tenant.
#[derive(Debug, Clone)]
pub enum Principal {
    LocalOwner { tenant_id: Uuid },
}

impl Principal {
    pub fn tenant_id(&self) -> Uuid {
        match self {
            Principal::LocalOwner { tenant_id } => *tenant_id,
        }
    }
}

#[derive(Clone)]
pub struct ToolCtx {
    pub app: Arc<App>,
    pub transport: Transport,
    pub principal: Principal,
    /// Unique per tool call; returned in errors and logged, so a report can be traced.
    pub request_id: String,
    /// The MCP session, on HTTP sessions of protocol versions that have them.
    pub session_id: Option<String>,
    /// The filter in force for this request (configuration narrowed by request headers).
    pub filter: Arc<ToolFilter>,
}
