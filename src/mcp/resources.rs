//! MCP resources: a customer, a workflow execution, an agent run, a held action, a
//! handoff ticket and a customer export, each read (as JSON, an export as its text) by calling its `get_…` tool through the access layer
//! (the same scopes, field rules, row conditions and audit as the tool), and subscribable
//! where its state changes (a change commits `NOTIFY agentcrm_resources` with its URI; see
//! `handoff::resources::Subscriptions`).

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{Resource, ResourceTemplate};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::call::{Call, invoke};
use crate::access::Principal;
use crate::app::App;
use crate::error::ToolError;
use crate::toolkit::context::Transport;
use crate::toolkit::filter::{ToolFilter, visible};

/// One kind of resource.
pub struct Kind {
    pub prefix: &'static str,
    pub template: &'static str,
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// The tool that reads one, and its id argument.
    pub tool: &'static str,
    pub id_argument: &'static str,
    /// The key of the tool's answer that holds the resource, if it wraps it.
    pub unwrap: Option<&'static str>,
    /// The resource is text, not JSON: its tool takes `whole: true` and answers the text
    /// as `content`, its MIME type as `export.mime_type`.
    pub text: bool,
    pub mime_type: &'static str,
}

pub const KINDS: [Kind; 6] = [
    Kind {
        prefix: "agentcrm://customers/",
        template: "agentcrm://customers/{customer_id}",
        name: "customer",
        title: "A customer",
        description: "A customer record as get_customer returns it (your field rules apply); \
                      subscribe to learn of updates and deletion.",
        tool: "get_customer",
        id_argument: "customer_id",
        unwrap: Some("customer"),
        text: false,
        mime_type: "application/json",
    },
    Kind {
        prefix: "agentcrm://workflow-executions/",
        template: "agentcrm://workflow-executions/{execution_id}",
        name: "workflow-execution",
        title: "A workflow execution",
        description: "An execution with its per-step log, as get_workflow_execution returns it; \
                      subscribe to follow its status.",
        tool: "get_workflow_execution",
        id_argument: "execution_id",
        unwrap: None,
        text: false,
        mime_type: "application/json",
    },
    Kind {
        prefix: "agentcrm://agent-runs/",
        template: "agentcrm://agent-runs/{run_id}",
        name: "agent-run",
        title: "An agent run",
        description: "An agent run with its tool calls, tokens and log, as get_agent_run returns \
                      it; subscribe to learn when it ends.",
        tool: "get_agent_run",
        id_argument: "run_id",
        unwrap: None,
        text: false,
        mime_type: "application/json",
    },
    Kind {
        prefix: "agentcrm://pending-actions/",
        template: "agentcrm://pending-actions/{action_id}",
        name: "pending-action",
        title: "A held agent action",
        description: "A call held for approval, as get_pending_action returns it; subscribe to \
                      learn of its decision and outcome.",
        tool: "get_pending_action",
        id_argument: "action_id",
        unwrap: Some("pending_action"),
        text: false,
        mime_type: "application/json",
    },
    Kind {
        prefix: "agentcrm://handoffs/",
        template: "agentcrm://handoffs/{handoff_id}",
        name: "handoff",
        title: "A handoff ticket",
        description: "A handoff ticket, as get_handoff returns it; subscribe to follow it.",
        tool: "get_handoff",
        id_argument: "handoff_id",
        unwrap: Some("handoff"),
        text: false,
        mime_type: "application/json",
    },
    Kind {
        prefix: crate::crm::export::RESOURCE_PREFIX,
        template: "agentcrm://exports/{export_id}",
        name: "export",
        title: "A customer export",
        description: "A finished export_customers export, whole: CSV (text/csv) or JSON Lines \
                      (application/x-ndjson). Up to 32 MB; larger ones are read in pages with \
                      get_export.",
        tool: "get_export",
        id_argument: "export_id",
        unwrap: None,
        text: true,
        mime_type: "text/csv",
    },
];

pub fn uri(kind: &Kind, id: Uuid) -> String {
    format!("{}{id}", kind.prefix)
}

pub fn customer_uri(id: Uuid) -> String {
    uri(&KINDS[0], id)
}

pub fn execution_uri(id: Uuid) -> String {
    uri(&KINDS[1], id)
}

pub fn run_uri(id: Uuid) -> String {
    uri(&KINDS[2], id)
}

pub fn parse(uri: &str) -> Option<(&'static Kind, Uuid)> {
    KINDS.iter().find_map(|kind| {
        let id = uri.strip_prefix(kind.prefix)?.parse().ok()?;
        Some((kind, id))
    })
}

/// The templates of the kinds `principal` may read under `filter`.
pub fn templates(app: &App, principal: &Principal, filter: &ToolFilter) -> Vec<ResourceTemplate> {
    let readable: Vec<&str> = visible(app.catalog, filter, principal)
        .map(|t| t.def.name)
        .collect();
    KINDS
        .iter()
        .filter(|k| readable.contains(&k.tool))
        .map(|k| {
            ResourceTemplate::new(k.template, k.name)
                .with_title(k.title)
                .with_description(k.description)
                .with_mime_type(k.mime_type)
        })
        .collect()
}

/// What `resources/list` shows: the caller's open held actions and handoff tickets.
pub async fn listed(app: &App, principal: &Principal) -> Result<Vec<Resource>, ToolError> {
    crate::handoff::resources::open_items(app.store.pool(), principal).await
}

/// The resource's JSON, read with `principal`'s permissions through its tool, under the
/// request's `filter` (a tool a request narrowed away is not read through either).
pub async fn read(
    app: &Arc<App>,
    principal: &Principal,
    transport: Transport,
    filter: &Arc<ToolFilter>,
    uri: &str,
) -> Result<Value, ToolError> {
    let Some((kind, id)) = parse(uri) else {
        return Err(ToolError::NotFound(format!(
            "no resource {uri}: this server has {}",
            KINDS.map(|k| k.template).join(", ")
        )));
    };
    let mut arguments = Map::new();
    arguments.insert(kind.id_argument.into(), Value::String(id.to_string()));
    if kind.text {
        arguments.insert("whole".into(), Value::Bool(true));
    }
    let value = invoke(
        app,
        Call::on_behalf(
            app,
            principal.clone(),
            transport,
            kind.tool,
            arguments,
            "Resource read",
        )
        .with_timeout(Duration::from_secs(30))
        .with_filter(filter.clone()),
    )
    .await?;
    Ok(match kind.unwrap {
        Some(key) => value.get(key).cloned().unwrap_or(value),
        None => value,
    })
}

/// Tells subscribers of `uri`, in every process, once the transaction commits.
pub async fn notify_changed(
    tx: &mut sqlx::PgConnection,
    uri: String,
) -> Result<(), crate::store::StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(crate::handoff::resources::CHANNEL)
        .bind(uri)
        .execute(tx)
        .await?;
    Ok(())
}
