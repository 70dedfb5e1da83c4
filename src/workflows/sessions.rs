//! Workflows from what was done: the tool calls of an MCP session (read from the audit
//! trail, which records every call with its session) and `extract_workflow`, which turns
//! chosen calls into a workflow whose chosen literal fields become inputs.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::definitions::{CreateArgs, Workflow, insert};
use super::model::{ErrorPolicy, Step, Trigger};
use crate::error::ToolError;
use crate::store::StoreError;
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

const MAX_CALLS: i64 = 200;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Workflows.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "list_session_tool_calls",
                "List a session's tool calls",
                "List an MCP session's successful tool calls: the material for \
                 extract_workflow.\n\n\
                 Oldest first (default: this session), with their arguments (secrets redacted). \
                 Your own calls (an admin: anyone's).",
                &["workflows:read"],
                Hints::READ,
            ),
            list_session_tool_calls,
        ),
        tool(
            def(
                "extract_workflow",
                "Turn a session's calls into a workflow",
                "Save chosen calls of a session as a draft workflow, one step per call.\n\n\
                 Steps get ids s1, s2, … in the order the calls were made. Each of \
                 `parameterize_fields` (`s1.email`, `s2.set.status`) becomes \
                 `{{input.<last part>}}`; the answer lists the inputs with the values they had, to \
                 run it again with new ones.",
                &["workflows:write"],
                Hints::CREATE,
            ),
            extract_workflow,
        ),
    ]
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct ToolCall {
    /// Pass in `selected_step_ids` to extract it.
    pub id: String,
    pub at: DateTime<Utc>,
    pub tool: String,
    pub arguments: Value,
    pub principal_name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// MCP session id (default: this one).
    ///
    /// See whoami; default: the session of this call.
    pub session_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CallList {
    pub session_id: String,
    pub calls: Vec<ToolCall>,
}

fn session(ctx: &ToolCtx, given: Option<String>) -> Result<String, ToolError> {
    given.or_else(|| ctx.session_id.clone()).ok_or_else(|| {
        ToolError::InvalidRequest(
            "this call has no MCP session (protocol 2026-07-28 is sessionless): give a \
             session_id"
                .into(),
        )
    })
}

/// The calls of a session: a session belongs to whoever opened it, so anyone else (an
/// admin person, who holds every scope, excepted) sees only their own calls in it.
async fn calls(ctx: &ToolCtx, session_id: &str) -> Result<Vec<ToolCall>, ToolError> {
    // A session's calls are its caller's: work done on someone's behalf would read them as
    // its first member alone.
    if ctx.principal.delegation.is_some() {
        return Err(ToolError::Forbidden(
            "a session's calls are read by whoever made them, at their own client, not by \
             work done on someone's behalf"
                .into(),
        ));
    }
    let own_only = !crate::access::delegation::is_admin_person(&ctx.principal);
    let calls: Vec<ToolCall> = sqlx::query_as(
        "SELECT id::text AS id, at, action AS tool, coalesce(arguments, '{}') AS arguments, principal_name
         FROM audit_events
         WHERE tenant_id = $1 AND session_id = $2 AND kind = 'tool' AND outcome = 'ok'
           AND action NOT IN ('list_session_tool_calls', 'extract_workflow')
           AND (NOT $3 OR principal_id = $4)
         ORDER BY id LIMIT $5",
    )
    .bind(ctx.principal.tenant_id)
    .bind(session_id)
    .bind(own_only)
    .bind(ctx.principal.id)
    .bind(MAX_CALLS)
    .fetch_all(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(calls)
}

async fn list_session_tool_calls(ctx: ToolCtx, args: ListArgs) -> Result<CallList, ToolError> {
    let session_id = session(&ctx, args.session_id)?;
    let calls = calls(&ctx, &session_id).await?;
    Ok(CallList { session_id, calls })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractArgs {
    /// Unique in the tenant.
    pub workflow_name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Default: this session.
    pub session_id: Option<String>,
    /// Call ids to use (default: all).
    ///
    /// Ids from list_session_tool_calls, in any order; default: every call of the session.
    pub selected_step_ids: Option<Vec<String>>,
    /// Inputs to make, e.g. `s1.email`.
    ///
    /// `<step id>.<argument path>` fields to turn into inputs.
    #[serde(default)]
    pub parameterize_fields: Vec<String>,
    /// How it starts (default `manual`).
    #[serde(default)]
    pub trigger_type: Trigger,
    /// `{interval_seconds}`, `{cron, timezone}` or `{event}`.
    ///
    /// As in create_workflow.
    #[serde(default)]
    pub trigger_config: Map<String, Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Extracted {
    pub workflow: Workflow,
    /// Each input the workflow takes, with the value it had in the session.
    pub inputs: Map<String, Value>,
}

async fn extract_workflow(ctx: ToolCtx, args: ExtractArgs) -> Result<Extracted, ToolError> {
    let session_id = session(&ctx, args.session_id)?;
    let mut calls = calls(&ctx, &session_id).await?;
    if let Some(chosen) = &args.selected_step_ids {
        for id in chosen {
            if !calls.iter().any(|c| &c.id == id) {
                return Err(ToolError::NotFound(format!(
                    "no call {id} in session {session_id} that this caller can see"
                )));
            }
        }
        calls.retain(|c| chosen.contains(&c.id));
    }
    if calls.is_empty() {
        return Err(ToolError::InvalidRequest(format!(
            "session {session_id} has no successful tool calls to extract"
        )));
    }
    let mut steps: Vec<Step> = calls
        .iter()
        .enumerate()
        .map(|(i, call)| Step {
            id: format!("s{}", i + 1),
            tool: call.tool.clone(),
            arguments: call.arguments.as_object().cloned().unwrap_or_default(),
            condition: None,
            on_error: ErrorPolicy::default(),
            timeout_seconds: None,
        })
        .collect();
    let mut inputs = Map::new();
    for field in &args.parameterize_fields {
        let (step_id, path) = field.split_once('.').ok_or_else(|| {
            ToolError::InvalidRequest(format!(
                "parameterize_fields: `{field}` is not `<step id>.<argument path>`"
            ))
        })?;
        let step = steps.iter_mut().find(|s| s.id == step_id).ok_or_else(|| {
            ToolError::InvalidRequest(format!("parameterize_fields: no step `{step_id}`"))
        })?;
        let name = path.rsplit('.').next().unwrap_or(path).to_owned();
        let name = if inputs.contains_key(&name) {
            format!("{step_id}_{}", path.replace('.', "_"))
        } else {
            name
        };
        let mut arguments = Value::Object(std::mem::take(&mut step.arguments));
        let slot = path
            .split('.')
            .try_fold(&mut arguments, |value, segment| match value {
                Value::Object(map) => map.get_mut(segment),
                Value::Array(items) => items.get_mut(segment.parse::<usize>().ok()?),
                _ => None,
            });
        let Some(slot) = slot else {
            return Err(ToolError::InvalidRequest(format!(
                "parameterize_fields: step {step_id} has no argument `{path}`"
            )));
        };
        inputs.insert(name.clone(), slot.take());
        *slot = json!(format!("{{{{input.{name}}}}}"));
        step.arguments = arguments.as_object().cloned().unwrap_or_default();
    }
    let workflow = insert(
        &ctx,
        CreateArgs {
            name: args.workflow_name,
            description: args.description,
            status: None,
            trigger_type: args.trigger_type,
            trigger_config: args.trigger_config,
            variables: Map::new(),
            steps,
            workflow_metadata: [("extracted_from_session".to_owned(), json!(session_id))]
                .into_iter()
                .collect(),
        },
    )
    .await?;
    Ok(Extracted { workflow, inputs })
}
