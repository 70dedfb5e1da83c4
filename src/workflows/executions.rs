//! Executions: `execute_workflow` (runs in this process, waits a bounded time), and the
//! tools to follow and cancel them. The engine is `engine`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::definitions::load;
use super::engine;
use crate::access::delegation::{self, Cause};
use crate::error::ToolError;
use crate::jobs::queue::{lease, process_id};
use crate::mcp::shaping::{Reader, marker};
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

const MAX_WAIT_SECONDS: u32 = 120;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Workflows.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "execute_workflow",
                "Run a workflow",
                "Run a workflow as you; waits up to `wait_seconds`, then poll \
                 get_workflow_execution.\n\n\
                 A draft or active workflow runs with the input data given, with your permissions. \
                 Waits up to `wait_seconds` (default 30, at most 120) and returns the execution \
                 with its per-step log; if it is still running (or waiting for an approval), poll \
                 get_workflow_execution. Sends a progress notification per step when you give a \
                 progress token.",
                &["workflows:execute"],
                // Its steps may change or delete anything the caller may.
                Hints {
                    destructive: true,
                    ..Hints::CREATE
                },
            ),
            execute_workflow,
        ),
        tool(
            def(
                "list_workflow_executions",
                "List workflow executions",
                "List workflow executions, newest first; filter by workflow and status.\n\n\
                 Statuses: queued, running, waiting_approval, succeeded, failed, cancelled.",
                &["workflows:read"],
                Hints::READ,
            ),
            list_workflow_executions,
        ),
        tool(
            def(
                "get_workflow_execution",
                "Get a workflow execution",
                "Get an execution: status, input, output or error, and every step attempt.\n\n\
                 Each step attempt has its arguments after substitution, output, error and times.",
                &["workflows:read"],
                Hints::READ,
            ),
            get_workflow_execution,
        ),
        tool(
            def(
                "cancel_workflow_execution",
                "Cancel a workflow execution",
                "Stop an execution: a queued or waiting one at once, a running one before its \
                 next step.",
                &["workflows:execute"],
                Hints::SET,
            ),
            cancel_workflow_execution,
        ),
    ]
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Execution {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub workflow_name: String,
    pub workflow_version: i32,
    /// `queued`, `running`, `waiting_approval`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// `manual`, `event` or `schedule`.
    pub source: String,
    pub input: Value,
    /// The last step's output, once succeeded.
    pub output: Option<Value>,
    pub error: Option<String>,
    /// While `waiting_approval`: the pending action a person must decide.
    pub waiting_action_id: Option<Uuid>,
    pub started_by_name: String,
    /// Who it acts for (the identity first): whoever started it, the workflow's owner and
    /// last editor. Its steps may do only what all of them may.
    #[schemars(with = "Vec<crate::access::delegation::Member>")]
    pub acts_for: Value,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, workflow_id, workflow_name, workflow_version, status, source, input, \
     output, error, waiting_action_id, started_by_name, chain AS acts_for, created_at, \
     started_at, finished_at";

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct StepRun {
    pub step_index: i32,
    pub step_id: String,
    pub tool: String,
    pub attempt: i32,
    /// `running`, `succeeded`, `failed`, `skipped`, `waiting_approval` or `interrupted`.
    pub status: String,
    pub arguments: Option<Value>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecutionOut {
    pub execution: Execution,
    pub steps: Vec<StepRun>,
}

/// An execution the caller may read (its starter, owner, last editor, or an admin), as
/// the caller's policy shows it.
async fn load_execution(ctx: &ToolCtx, id: Uuid) -> Result<ExecutionOut, ToolError> {
    let pool = ctx.app.store.pool();
    let mut execution: Execution = delegation::select_readable(
        &format!("{COLUMNS} FROM workflow_executions"),
        &ctx.principal,
        id,
    )
    .build_query_as()
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?
    .ok_or_else(|| {
        ToolError::NotFound(format!(
            "no workflow execution {id} that this caller can see"
        ))
    })?;
    let mut steps: Vec<StepRun> = sqlx::query_as(
        "SELECT step_index, step_id, tool, attempt, status, arguments, output, error, started_at,
                finished_at
         FROM workflow_step_runs WHERE execution_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?;
    let reader = Reader::of(ctx).await?;
    let mut hidden = false;
    for step in &mut steps {
        if let Some(arguments) = &mut step.arguments {
            hidden |= reader.shape(&step.tool, arguments);
        }
        if let Some(output) = &mut step.output {
            hidden |= reader.shape(&step.tool, output);
        }
    }
    shape(&reader, &mut execution, hidden);
    Ok(ExecutionOut { execution, steps })
}

/// An execution's input and output as `reader` may see them: a triggered one's event by
/// the event's scope, the output (a step's) hidden when any step's data was.
fn shape(reader: &Reader, execution: &mut Execution, steps_hidden: bool) {
    if let Some(event) = execution.input.get_mut("event") {
        reader.shape_event(event);
    }
    if steps_hidden && let Some(output) = &mut execution.output {
        *output = marker("a step's data is not yours to read, and this output is a step's");
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteArgs {
    /// From list_workflows.
    pub workflow_id: Uuid,
    /// Read as `{{input.<name>}}`.
    #[serde(default)]
    pub input_data: Map<String, Value>,
    /// 0 to 120 seconds (default 30).
    ///
    /// How long to wait for the end.
    pub wait_seconds: Option<u32>,
}

async fn execute_workflow(ctx: ToolCtx, args: ExecuteArgs) -> Result<ExecutionOut, ToolError> {
    let wait = args.wait_seconds.unwrap_or(30);
    if wait > MAX_WAIT_SECONDS {
        return Err(ToolError::InvalidRequest(format!(
            "wait_seconds is 0 to {MAX_WAIT_SECONDS}"
        )));
    }
    let pool = ctx.app.store.pool();
    let principal = &ctx.principal;
    let workflow = load(pool, principal.tenant_id, args.workflow_id, false).await?;
    if workflow.status == "paused" {
        return Err(ToolError::Conflict(
            "the workflow is paused: set it to active (or draft) to run it".into(),
        ));
    }
    // Work started by work is one step deeper, and never starts a workflow of its own cause.
    let cause = Cause::started_by(principal)?;
    if cause.workflows.contains(&workflow.id) {
        return Err(ToolError::Forbidden(format!(
            "workflow `{}` is already running in the chain of work that makes this call",
            workflow.name
        )));
    }
    // It acts for the caller, and for its owner and last editor: never more than any may do.
    let chain = delegation::chain(principal, workflow.acts_for());
    let definition = json!({
        "trigger_type": workflow.trigger_type, "trigger_config": workflow.trigger_config,
        "variables": workflow.variables, "steps": workflow.steps,
    });
    // Claimed by this process from the start: it runs here, and progress reaches the caller.
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO workflow_executions (tenant_id, workflow_id, workflow_name, workflow_version,
             definition, input, status, source, started_by_kind, started_by_id, started_by_name,
             scopes, lease_owner, lease_until, started_at, chain, cause, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, 'running', 'manual', $7, $8, $9, $10, $11,
                 now() + make_interval(secs => $12), now(), $13, $14, $15)
         RETURNING id",
    )
    .bind(principal.tenant_id)
    .bind(workflow.id)
    .bind(&workflow.name)
    .bind(workflow.version)
    .bind(definition)
    .bind(Value::Object(args.input_data))
    .bind(principal.kind.as_str())
    .bind(principal.id)
    .bind(&principal.name)
    .bind(principal.scopes.names())
    .bind(process_id())
    .bind(lease().as_secs_f64())
    .bind(delegation::chain_json(&chain))
    .bind(cause.json())
    .bind(crate::telemetry::traceparent())
    .fetch_one(pool)
    .await
    .map_err(StoreError::from)?;
    let running = tokio::spawn(engine::run(ctx.app.clone(), id, ctx.progress.clone()));
    let _ = tokio::time::timeout(Duration::from_secs(u64::from(wait)), running).await;
    load_execution(&ctx, id).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Queued,
    Running,
    WaitingApproval,
    Succeeded,
    Failed,
    Cancelled,
}

impl ExecutionStatus {
    fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "queued",
            ExecutionStatus::Running => "running",
            ExecutionStatus::WaitingApproval => "waiting_approval",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only this workflow's.
    pub workflow_id: Option<Uuid>,
    /// Only in this status.
    pub status: Option<ExecutionStatus>,
    /// 1 to 100 (default 50).
    ///
    /// Items per page.
    pub limit: Option<u32>,
    /// From `next_cursor`.
    ///
    /// The one of the previous page; omit it for the first page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecutionList {
    pub executions: Vec<Execution>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_workflow_executions(
    ctx: ToolCtx,
    args: ListArgs,
) -> Result<ExecutionList, ToolError> {
    let page = PageArgs::of(args.limit, &args.cursor)?;
    let tenant = ctx.principal.tenant_id;
    let (executions, total) = fetch_page(
        ctx.app.store.pool(),
        COLUMNS,
        |q| {
            q.push(" FROM workflow_executions WHERE tenant_id = ")
                .push_bind(tenant);
            delegation::push_readable(q, &ctx.principal);
            if let Some(workflow) = args.workflow_id {
                q.push(" AND workflow_id = ").push_bind(workflow);
            }
            if let Some(status) = args.status {
                q.push(" AND status = ").push_bind(status.as_str());
            }
        },
        "created_at DESC, id",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    let reader = Reader::of(&ctx).await?;
    let mut executions: Vec<Execution> = executions;
    // A list does not carry the steps: an output is shown to readers of every step's data.
    let ids: Vec<Uuid> = executions.iter().map(|e| e.id).collect();
    let tools: Vec<(Uuid, Vec<String>)> = sqlx::query_as(
        "SELECT execution_id, array_agg(DISTINCT tool) FROM workflow_step_runs
         WHERE execution_id = ANY($1) GROUP BY execution_id",
    )
    .bind(&ids)
    .fetch_all(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?;
    for execution in &mut executions {
        let hidden = execution.output.is_some()
            && tools
                .iter()
                .find(|(id, _)| *id == execution.id)
                .is_some_and(|(_, names)| names.iter().any(|t| reader.hidden(t).is_some()));
        shape(&reader, execution, hidden);
    }
    Ok(ExecutionList {
        executions,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionIdArgs {
    /// From list_workflow_executions.
    pub execution_id: Uuid,
}

async fn get_workflow_execution(
    ctx: ToolCtx,
    args: ExecutionIdArgs,
) -> Result<ExecutionOut, ToolError> {
    load_execution(&ctx, args.execution_id).await
}

async fn cancel_workflow_execution(
    ctx: ToolCtx,
    args: ExecutionIdArgs,
) -> Result<ExecutionOut, ToolError> {
    // Only someone it acts for (its starter, the workflow's owner) or an admin stops it.
    let chain: Option<Value> = sqlx::query_scalar(
        "SELECT chain FROM workflow_executions WHERE tenant_id = $1 AND id = $2",
    )
    .bind(ctx.principal.tenant_id)
    .bind(args.execution_id)
    .fetch_optional(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?;
    let members = chain.map(|c| delegation::read_chain(&c));
    let Some(members) = members.filter(|m| delegation::may_read(&ctx.principal, m)) else {
        return Err(ToolError::NotFound(format!(
            "no workflow execution {} that this caller can see",
            args.execution_id
        )));
    };
    // Its starter, the workflow's owner or last editor (or an admin) may stop it.
    if !delegation::is_admin_person(&ctx.principal)
        && !members
            .iter()
            .any(|m| delegation::may_manage(&ctx.principal, Some(m), "").is_ok())
    {
        return Err(ToolError::Forbidden(format!(
            "only who execution {} acts for, or an admin, may cancel it",
            args.execution_id
        )));
    }
    let mut tx = ctx.begin().await?;
    let updated = sqlx::query(
        "UPDATE workflow_executions SET cancel_requested = true, updated_at = now(),
             status = CASE WHEN status IN ('queued', 'waiting_approval') THEN 'cancelled' ELSE status END,
             error = CASE WHEN status IN ('queued', 'waiting_approval') THEN 'cancelled on request' ELSE error END,
             finished_at = CASE WHEN status IN ('queued', 'waiting_approval') THEN now() ELSE finished_at END
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(ctx.principal.tenant_id)
    .bind(args.execution_id)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if updated.rows_affected() == 0 {
        return Err(ToolError::NotFound(format!(
            "no workflow execution {} in this tenant",
            args.execution_id
        )));
    }
    ctx.commit(tx).await?;
    load_execution(&ctx, args.execution_id).await
}
