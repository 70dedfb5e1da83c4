//! The workflow engine. An execution is a row on a PostgreSQL queue: a process claims it
//! (`FOR UPDATE SKIP LOCKED`), holds a lease it renews while it works, and writes each step
//! attempt as it starts and ends. A process that dies leaves the execution to whichever
//! process claims it after the lease; it resumes at the first unfinished step, repeating an
//! interrupted step only when the step's tool is idempotent.
//!
//! Steps call tools through the same catalog and access layer as an MCP client, as the
//! principal who started the run, with that principal's permissions of the moment and
//! never more than it had when it started. A step held for approval pauses the execution
//! (`waiting_approval`) until the pending action is decided.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::expr::substitute;
use super::model::{Definition, Step, Then};
use crate::access::Scopes;
use crate::access::audit::{redact, redact_object};
use crate::access::delegation::{self, Cause};
use crate::access::principal::Principal;
use crate::app::App;
use crate::error::ToolError;
use crate::jobs::queue::{Queue, process_id};
use crate::mcp::call::{Call, invoke};
use crate::store::StoreError;
use crate::toolkit::context::{Progress, Transport};

pub const CHANNEL: &str = "agentcrm_workflows";

/// Executions, on the lease queue of all background work: four at once per process.
pub static QUEUE: Queue = Queue {
    table: "workflow_executions",
    channel: CHANNEL,
    parallel: 4,
    poll: Duration::from_secs(1),
};

#[derive(sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    tenant_id: Uuid,
    workflow_id: Uuid,
    definition: Value,
    input: Value,
    /// Everyone the execution acts for, the identity first.
    chain: Value,
    cause: Value,
    scopes: Vec<String>,
    next_step: i32,
    results: Value,
}

/// Runs an execution this process holds the lease of, until it ends, waits for an
/// approval, or the lease is lost.
pub async fn run(app: Arc<App>, id: Uuid, progress: Option<Progress>) {
    let heartbeat = QUEUE.heartbeat(&app, id);
    let lost = heartbeat.lost.clone();
    let span = tracing::info_span!("workflow.execution", execution = %id);
    let span = QUEUE.span(app.store.pool(), id, span).await;
    let driven = tracing::Instrument::instrument(drive(&app, id, progress, &lost), span).await;
    if let Err(error) = driven {
        tracing::error!(%error, execution = %id, "workflow execution stopped");
        let _ = finish(
            app.store.pool(),
            id,
            "failed",
            None,
            Some(error.to_string()),
        )
        .await;
    }
    drop(heartbeat);
}

async fn cancel_requested(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT cancel_requested FROM workflow_executions WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
}

#[derive(Debug, thiserror::Error)]
enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Stored(String),
}

impl From<sqlx::Error> for EngineError {
    fn from(error: sqlx::Error) -> EngineError {
        EngineError::Store(error.into())
    }
}

async fn drive(
    app: &Arc<App>,
    id: Uuid,
    progress: Option<Progress>,
    lost: &AtomicBool,
) -> Result<(), EngineError> {
    let pool = app.store.pool();
    let Some(mut exec): Option<Claimed> = sqlx::query_as(
        "SELECT id, tenant_id, workflow_id, definition, input, chain, cause, scopes, next_step,
                results
         FROM workflow_executions WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(process_id())
    .fetch_optional(pool)
    .await?
    else {
        return Ok(());
    };
    let definition: Definition = serde_json::from_value(exec.definition.clone())
        .map_err(|e| EngineError::Stored(format!("the stored definition does not read: {e}")))?;
    let total = definition.steps.len();
    while (exec.next_step as usize) < total {
        if lost.load(Ordering::SeqCst) {
            return Ok(());
        }
        if app.stopping.is_cancelled() {
            QUEUE.hand_back(pool, id).await;
            return Ok(());
        }
        if cancel_requested(pool, id).await? {
            finish(
                pool,
                id,
                "cancelled",
                None,
                Some("cancelled on request".into()),
            )
            .await?;
            return Ok(());
        }
        let index = exec.next_step as usize;
        let step = &definition.steps[index];
        if let Some(progress) = &progress {
            progress
                .report(
                    index as u64,
                    total as u64,
                    format!("step {} ({})", step.id, step.tool),
                )
                .await;
        }
        let context = json!({
            "input": exec.input,
            "vars": definition.variables,
            "steps": exec.results,
            "event": exec.input.get("event"),
        });
        let span = tracing::info_span!(
            "workflow.step",
            step = index,
            tool = %step.tool,
            otel.name = %format_args!("workflow.step {}", step.tool),
        );
        let outcome = tracing::Instrument::instrument(
            run_step(app, &exec, index, step, &context, lost),
            span,
        )
        .await?;
        let Some(outcome) = outcome else {
            return Ok(()); // waiting for approval, or the lease was lost
        };
        let (result, succeeded_run) = match outcome {
            Outcome::Recorded(result) => (result, None),
            Outcome::Succeeded { run_id, output } => (
                json!({ "status": "succeeded", "output": output }),
                Some(run_id),
            ),
        };
        let failed = result.get("status") == Some(&json!("failed"));
        if let Value::Object(results) = &mut exec.results {
            results.insert(step.id.clone(), result.clone());
        }
        exec.next_step += 1;
        // A step's success and the run's progress commit together, fenced on the lease: a
        // process killed between them would otherwise run the step again on resume.
        let advanced = sqlx::query(
            "WITH advanced AS (
                 UPDATE workflow_executions SET next_step = $3, results = $4, updated_at = now()
                 WHERE id = $1 AND lease_owner = $2 RETURNING id),
             recorded AS (
                 UPDATE workflow_step_runs SET status = 'succeeded', output = $6, finished_at = now()
                 WHERE id = $5 AND EXISTS (SELECT 1 FROM advanced))
             SELECT id FROM advanced",
        )
        .bind(id)
        .bind(process_id())
        .bind(exec.next_step)
        .bind(&exec.results)
        .bind(succeeded_run)
        .bind(result.get("output"))
        .fetch_optional(pool)
        .await?;
        if advanced.is_none() {
            return Ok(());
        }
        if failed && step.on_error.then == Then::Fail {
            let error = format!(
                "step {} (`{}`) failed: {}",
                step.id,
                step.tool,
                result["error"].as_str().unwrap_or("")
            );
            finish(pool, id, "failed", None, Some(error)).await?;
            return Ok(());
        }
    }
    // The output: the last step that produced one.
    let output = definition
        .steps
        .iter()
        .rev()
        .find_map(|s| exec.results.get(&s.id)?.get("output").cloned());
    if let Some(progress) = &progress {
        progress
            .report(total as u64, total as u64, "done".into())
            .await;
    }
    finish(pool, id, "succeeded", output, None).await?;
    Ok(())
}

/// What a step came to.
enum Outcome {
    /// Skipped, failed, or found done: its record is written.
    Recorded(Value),
    /// Its tool answered: recorded together with the run's progress.
    Succeeded { run_id: i64, output: Value },
}

/// Runs one step with its retries; `None` when the execution must stop here for now.
async fn run_step(
    app: &Arc<App>,
    exec: &Claimed,
    index: usize,
    step: &Step,
    context: &Value,
    lost: &AtomicBool,
) -> Result<Option<Outcome>, EngineError> {
    let pool = app.store.pool();
    let tool = app.catalog.get(&step.tool);
    // A step left running by a process that died: interrupted, unless its tool's writes
    // committed (marked in their transaction), which makes it done, with its output lost.
    // Or one recorded as succeeded whose run did not advance (left so by an earlier version,
    // which wrote the two apart): done, not run again.
    let (interrupted, done): (Option<i64>, Option<Value>) = sqlx::query_as(
        "WITH interrupted AS (
             UPDATE workflow_step_runs SET finished_at = now(),
                 status = CASE WHEN committed_at IS NULL THEN 'interrupted' ELSE 'succeeded' END,
                 error = CASE WHEN committed_at IS NULL
                     THEN 'its process stopped before it recorded an outcome'
                     ELSE 'its writes committed; its process stopped before it recorded the output'
                 END
             WHERE execution_id = $1 AND step_index = $2 AND status = 'running'
             RETURNING id, committed_at IS NOT NULL AS committed)
         SELECT (SELECT id FROM interrupted WHERE NOT committed LIMIT 1),
                coalesce(
                    (SELECT coalesce(output, 'null'::jsonb) FROM workflow_step_runs
                     WHERE execution_id = $1 AND step_index = $2 AND status = 'succeeded'
                     ORDER BY id DESC LIMIT 1),
                    (SELECT 'null'::jsonb FROM interrupted WHERE committed LIMIT 1))",
    )
    .bind(exec.id)
    .bind(index as i32)
    .fetch_one(pool)
    .await?;
    if let Some(output) = done {
        return Ok(Some(Outcome::Recorded(
            json!({ "status": "succeeded", "output": output }),
        )));
    }
    // Without the mark, a sealed tool's writes did not commit: running it again is safe.
    if interrupted.is_some() && !tool.is_some_and(|t| t.def.hints.idempotent || t.sealed) {
        let error = format!(
            "step {} (`{}`) was running when its process stopped, and `{}` is not safe to \
             repeat: check whether it took effect",
            step.id, step.tool, step.tool
        );
        finish(pool, exec.id, "failed", None, Some(error)).await?;
        return Ok(None);
    }
    if let Some(condition) = &step.condition
        && !condition.evaluate(context).result
    {
        record_skipped(pool, exec.id, index, step).await?;
        return Ok(Some(Outcome::Recorded(json!({ "status": "skipped" }))));
    }
    let (arguments, _) = substitute(&step.arguments, context);
    let attempts = step.on_error.retries + 1;
    let mut last_error = String::new();
    for attempt in 1..=attempts {
        if lost.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if attempt > 1 && cancel_requested(pool, exec.id).await? {
            finish(
                pool,
                exec.id,
                "cancelled",
                None,
                Some("cancelled on request".into()),
            )
            .await?;
            return Ok(None);
        }
        let run_id: i64 = sqlx::query_scalar(
            "INSERT INTO workflow_step_runs (execution_id, step_index, step_id, tool, attempt, status, arguments)
             SELECT $1, $2, $3, $4, $5, 'running', $6 FROM workflow_executions
             WHERE id = $1 AND lease_owner = $7 RETURNING id",
        )
        .bind(exec.id)
        .bind(index as i32)
        .bind(&step.id)
        .bind(&step.tool)
        .bind(attempt as i32)
        .bind(redact_object(&arguments))
        .bind(process_id())
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| EngineError::Stored("lease lost".into()))?;
        match call(app, exec, step, &arguments, run_id).await {
            Ok(output) => {
                // Stored and passed on: values of secret-named keys never are.
                let output = redact(&output);
                return Ok(Some(Outcome::Succeeded { run_id, output }));
            }
            Err(ToolError::PendingApproval { action_id, .. }) => {
                let waiting = Some(json!({ "action_id": action_id }));
                if end_attempt(pool, run_id, "waiting_approval", waiting.as_ref(), None).await? {
                    sqlx::query(
                        "UPDATE workflow_executions SET status = 'waiting_approval',
                             waiting_action_id = $2, lease_owner = NULL, lease_until = NULL,
                             updated_at = now()
                         WHERE id = $1 AND lease_owner = $3",
                    )
                    .bind(exec.id)
                    .bind(action_id)
                    .bind(process_id())
                    .execute(pool)
                    .await?;
                }
                return Ok(None);
            }
            Err(error) => {
                last_error = error.to_body("").error_description;
                if !end_attempt(pool, run_id, "failed", None, Some(&last_error)).await? {
                    return Ok(None); // the lease was lost: another process has the run
                }
                if attempt < attempts {
                    let wait = step
                        .on_error
                        .backoff_ms
                        .saturating_mul(1 << (attempt - 1).min(16));
                    tokio::time::sleep(Duration::from_millis(wait.min(600_000))).await;
                }
            }
        }
    }
    Ok(Some(Outcome::Recorded(
        json!({ "status": "failed", "error": last_error }),
    )))
}

/// One call of a step's tool for the execution's chain, as it stands now.
async fn call(
    app: &Arc<App>,
    exec: &Claimed,
    step: &Step,
    arguments: &Map<String, Value>,
    attempt: i64,
) -> Result<Value, ToolError> {
    let principal = principal_now(app.store.pool(), exec).await?;
    invoke(
        app,
        Call::on_behalf(
            app,
            principal,
            Transport::Workflow,
            &step.tool,
            arguments.clone(),
            "Workflow step",
        )
        .with_timeout(step.timeout())
        .for_step(attempt, process_id()),
    )
    .await
}

/// Who the execution acts for, now: everyone in its chain still there and enabled, with
/// the intersection of their permissions of this moment, and never more than it had when
/// it started. Its steps' events carry it as their cause.
async fn principal_now(pool: &PgPool, exec: &Claimed) -> Result<Principal, ToolError> {
    let started_with = Scopes::parse(&exec.scopes).unwrap_or(Scopes::NONE);
    let mut cause = Cause::read(&exec.cause);
    if !cause.workflows.contains(&exec.workflow_id) {
        cause.workflows.push(exec.workflow_id);
    }
    let members = delegation::read_chain(&exec.chain);
    let mut principal = delegation::resolve(pool, exec.tenant_id, &members, cause).await?;
    principal.scopes = principal.scopes.intersect(started_with);
    Ok(principal)
}

/// A step whose condition did not hold (fenced on the lease, like every attempt).
async fn record_skipped(
    pool: &PgPool,
    execution: Uuid,
    index: usize,
    step: &Step,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workflow_step_runs (execution_id, step_index, step_id, tool, attempt, status,
             finished_at)
         SELECT $1, $2, $3, $4, 1, 'skipped', now() FROM workflow_executions
         WHERE id = $1 AND lease_owner = $5",
    )
    .bind(execution)
    .bind(index as i32)
    .bind(&step.id)
    .bind(&step.tool)
    .bind(process_id())
    .execute(pool)
    .await?;
    Ok(())
}

/// Records how an attempt ended, fenced on the lease: `false` when another process holds
/// the execution now (this one then writes nothing more to it).
async fn end_attempt(
    pool: &PgPool,
    run_id: i64,
    status: &str,
    output: Option<&Value>,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let ended = sqlx::query(
        "UPDATE workflow_step_runs r SET status = $2, output = $3, error = $4, finished_at = now()
         FROM workflow_executions e
         WHERE r.id = $1 AND e.id = r.execution_id AND e.lease_owner = $5",
    )
    .bind(run_id)
    .bind(status)
    .bind(output)
    .bind(error)
    .bind(process_id())
    .execute(pool)
    .await?;
    Ok(ended.rows_affected() == 1)
}

async fn finish(
    pool: &PgPool,
    id: Uuid,
    status: &str,
    output: Option<Value>,
    error: Option<String>,
) -> Result<(), sqlx::Error> {
    // Subscribers of the execution's resource learn of its end in the same statement.
    sqlx::query(
        "WITH done AS (
             UPDATE workflow_executions SET status = $2, output = $3, error = $4,
                 finished_at = now(), updated_at = now(), lease_owner = NULL, lease_until = NULL
             WHERE id = $1 AND lease_owner = $5
               AND status NOT IN ('succeeded', 'failed', 'cancelled')
             RETURNING id)
         SELECT pg_notify($6, $7) FROM done",
    )
    .bind(id)
    .bind(status)
    .bind(output)
    .bind(error)
    .bind(process_id())
    .bind(crate::handoff::resources::CHANNEL)
    .bind(crate::mcp::resources::execution_uri(id))
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Decided {
    id: Uuid,
    definition: Value,
    next_step: i32,
    state: String,
    result: Option<Value>,
    error: Option<String>,
}

/// Executions waiting on a pending action that was decided: the step takes the action's
/// outcome, and the execution is queued to go on.
async fn resume_decided(pool: &PgPool) -> Result<(), sqlx::Error> {
    let decided: Vec<Decided> = sqlx::query_as(
        "SELECT e.id, e.definition, e.next_step, a.state, a.result, a.error
         FROM workflow_executions e JOIN pending_actions a ON a.id = e.waiting_action_id
         WHERE e.status = 'waiting_approval' AND a.state IN ('executed', 'failed', 'rejected')
         LIMIT 50",
    )
    .fetch_all(pool)
    .await?;
    for Decided {
        id,
        definition,
        next_step,
        state,
        result,
        error,
    } in decided
    {
        let Ok(definition) = serde_json::from_value::<Definition>(definition) else {
            continue;
        };
        let Some(step) = definition.steps.get(next_step as usize) else {
            continue;
        };
        let (entry, run_status, run_error) = match state.as_str() {
            "executed" => (
                json!({ "status": "succeeded", "output": result }),
                "succeeded",
                None,
            ),
            other => {
                let why = match other {
                    "rejected" => "a person rejected the held call".to_owned(),
                    _ => error.unwrap_or_else(|| "the approved call failed".into()),
                };
                (
                    json!({ "status": "failed", "error": why }),
                    "failed",
                    Some(why),
                )
            }
        };
        let stop = run_status == "failed" && step.on_error.then == Then::Fail;
        let mut tx = pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE workflow_executions SET
                 results = results || jsonb_build_object($2::text, $3::jsonb),
                 next_step = next_step + 1, waiting_action_id = NULL, updated_at = now(),
                 status = CASE WHEN $4 THEN 'failed' ELSE 'queued' END,
                 error = CASE WHEN $4 THEN $5 ELSE error END,
                 finished_at = CASE WHEN $4 THEN now() ELSE NULL END
             WHERE id = $1 AND status = 'waiting_approval'",
        )
        .bind(id)
        .bind(&step.id)
        .bind(&entry)
        .bind(stop)
        .bind(format!(
            "step {} (`{}`) failed: {}",
            step.id,
            step.tool,
            run_error.as_deref().unwrap_or("")
        ))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 1 {
            sqlx::query(
                "UPDATE workflow_step_runs SET status = $3, output = $4, error = $5, finished_at = now()
                 WHERE execution_id = $1 AND step_index = $2 AND status = 'waiting_approval'",
            )
            .bind(id)
            .bind(next_step)
            .bind(run_status)
            .bind(entry.get("output"))
            .bind(run_error)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// The worker of a serving process: resumes decided executions, starts event-triggered
/// ones, and runs due executions, up to `PARALLEL` at once.
pub fn start(app: Arc<App>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    QUEUE.worker(
        app,
        shutdown,
        |app| async move {
            let pool = app.store.pool();
            if let Err(error) = resume_decided(pool).await {
                tracing::warn!(%error, "workflow executions: could not resume decided ones");
            }
            if let Err(error) = super::schedule::fire_due(pool).await {
                tracing::warn!(%error, "workflow executions: could not start scheduled ones");
            }
            if let Err(error) = super::triggers::on_events(&app).await {
                tracing::warn!(%error, "workflow executions: could not read events");
            }
        },
        |app, id| run(app, id, None),
    )
}
