//! `bulk_update_customers` and `get_task`. Targets are chosen by ids or a filter, within
//! what the caller may see; changes run in batches, each its own transaction with its
//! events. Past a threshold the work becomes a background task; the call then waits a
//! while, reporting progress when the client gave a progress token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use super::customers::{CUSTOMERS, Status};
use crate::access::approval::Sensitive;
use crate::access::delegation::{self, Cause};
use crate::access::policy::{Access, Policy};
use crate::access::{Principal, Scopes};
use crate::app::App;
use crate::error::ToolError;
use crate::jobs::queue::{Queue, lease, process_id};
use crate::store::StoreError;
use crate::toolkit::catalog::{Hints, RegisteredTool, ToolDef, Toolset, tool};
use crate::toolkit::context::{Progress, ToolCtx};

const BATCH: usize = 1_000;
const PARALLEL_BATCHES: usize = 2;
/// Up to this many targets run inside the call; more become a background task.
const INLINE_MAX: usize = 1_000;
const MAX_IDS: usize = 10_000;
/// How long a call with a progress token waits for its background task.
const WAIT_WITH_PROGRESS: Duration = Duration::from_secs(30);

pub fn tools() -> Vec<RegisteredTool> {
    vec![
        tool(
            ToolDef {
                name: "bulk_update_customers",
                title: "Update many customers",
                description: "Set the status, assignee or tags of many customers at once; may run \
                    in the background.\n\n\
                    Choose them by `customer_ids` or by `filter`; tags are added or removed. \
                    Returns a task id and the records affected; large changes continue as a \
                    background task (see `get_task`), with progress notifications when the client \
                    sends a progress token.",
                toolset: Toolset::Crm,
                scopes: &["customers:write", "bulk"],
                hints: Hints::SET,
            },
            bulk_update_customers,
        ),
        tool(
            ToolDef {
                name: "get_task",
                title: "Get a task",
                description: "Get a background task's status, progress, and result or error.\n\n\
                    Status is `running`, `succeeded` or `failed`; progress is `done` of `total`. \
                    Only whoever started it (and tenant admins) reads it.",
                toolset: Toolset::Crm,
                scopes: &[],
                hints: Hints::READ,
            },
            get_task,
        ),
    ]
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    pub status: Option<Status>,
    /// Exact company name, any case.
    pub company: Option<String>,
    pub assigned_to: Option<String>,
    pub tag: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkChanges {
    pub status: Option<Status>,
    pub assigned_to: Option<String>,
    #[serde(default)]
    pub add_tags: Vec<String>,
    #[serde(default)]
    pub remove_tags: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkArgs {
    /// Up to 10,000 ids; or use `filter`.
    ///
    /// Customers chosen by id.
    pub customer_ids: Option<Vec<Uuid>>,
    /// Every customer matching.
    ///
    /// Within what the caller may see.
    pub filter: Option<BulkFilter>,
    /// The changes: status, assignee, tags.
    pub set: BulkChanges,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Task {
    pub id: Uuid,
    pub kind: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    pub total: i64,
    pub done: i64,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BulkOut {
    pub task: Task,
    /// Records matched (and, once the task succeeded, changed).
    pub affected: i64,
}

async fn bulk_update_customers(ctx: ToolCtx, args: BulkArgs) -> Result<BulkOut, ToolError> {
    let changes = &args.set;
    if changes.status.is_none()
        && changes.assigned_to.is_none()
        && changes.add_tags.is_empty()
        && changes.remove_tags.is_empty()
    {
        return Err(ToolError::InvalidRequest(
            "`set` changes nothing: give status, assigned_to, add_tags or remove_tags".into(),
        ));
    }
    let policy = ctx.policy().await?;
    let mut written = Vec::new();
    if changes.status.is_some() {
        written.push("status");
    }
    if changes.assigned_to.is_some() {
        written.push("assigned_to");
    }
    if !changes.add_tags.is_empty() || !changes.remove_tags.is_empty() {
        written.push("tags");
    }
    policy.check_write(&CUSTOMERS, written.iter().copied())?;
    // A change may not move rows outside the caller's conditions.
    let mut probe = serde_json::Map::new();
    if let Some(status) = changes.status {
        probe.insert("status".into(), json!(status.as_str()));
    }
    if let Some(assignee) = &changes.assigned_to {
        probe.insert("assigned_to".into(), json!(assignee));
    }
    let conditioned: Vec<String> = policy
        .conditions
        .get(CUSTOMERS.name)
        .into_iter()
        .flatten()
        .map(|c| c.field.clone())
        .filter(|f| probe.contains_key(f))
        .collect();
    if !conditioned.is_empty() {
        let only: serde_json::Map<String, Value> = probe
            .into_iter()
            .filter(|(k, _)| conditioned.contains(k))
            .collect();
        let mut limited = Policy::clone(&policy);
        if let Some(list) = limited.conditions.get_mut(CUSTOMERS.name) {
            list.retain(|c| only.contains_key(&c.field));
        }
        if !limited.row_allowed(&CUSTOMERS, &Value::Object(only)) {
            return Err(ToolError::Forbidden(
                "this change would move customers outside this caller's row conditions".into(),
            ));
        }
    }

    let ids = target_ids(ctx.app.store.pool(), &policy, &args).await?;
    let records = ids.len() as i64;
    let target = match &args.customer_ids {
        Some(_) => "listed by id".to_owned(),
        None => format!(
            "matching the filter {} when it was held; these records, not the filter again",
            ctx.arguments.get("filter").cloned().unwrap_or(json!({}))
        ),
    };
    // A held call is stored with the ids it matched now: approval acts on what the person
    // was shown, never on the filter resolved again later.
    let mut pinned = (*ctx.arguments).clone();
    pinned.remove("filter");
    pinned.insert("customer_ids".into(), json!(ids));
    ctx.approval_pinned(
        Sensitive::Bulk { records },
        format!(
            "Update {records} customers ({target}): set {}",
            ctx.arguments.get("set").cloned().unwrap_or(json!({}))
        ),
        pinned,
    )
    .await?;
    let pool = ctx.app.store.pool().clone();
    // Everything needed to go on is stored with the task: another process resumes it from
    // its last committed batch if this one dies.
    let task_id: Uuid = sqlx::query_scalar(
        "INSERT INTO tasks (tenant_id, kind, status, total, principal_id, lease_owner, lease_until,
             started_at, chain, cause, scopes, targets, changes, traceparent)
         VALUES ($1, 'bulk_update_customers', 'running', $2, $3, $4,
             now() + make_interval(secs => $5), now(), $6, $7, $8, $9, $10, $11)
         RETURNING id",
    )
    .bind(ctx.principal.tenant_id)
    .bind(ids.len() as i64)
    .bind(ctx.principal.id)
    .bind(process_id())
    .bind(lease().as_secs_f64())
    .bind(delegation::chain_json(&ctx.principal.members()))
    .bind(
        ctx.principal
            .delegation
            .as_ref()
            .map(|d| d.cause.json())
            .unwrap_or_else(|| json!({})),
    )
    .bind(ctx.principal.scopes.names())
    .bind(&ids)
    .bind(json!(changes))
    .bind(crate::telemetry::traceparent())
    .fetch_one(&pool)
    .await
    .map_err(StoreError::from)?;
    let affected = ids.len() as i64;
    let job = Job {
        app: ctx.app.clone(),
        principal: ctx.principal.clone(),
        policy: std::sync::Arc::unwrap_or_clone(policy),
        task_id,
        ids,
        batches_done: Vec::new(),
        changes: args.set,
        progress: ctx.progress.clone(),
    };
    if affected as usize <= INLINE_MAX {
        job.run().await;
    } else {
        let app = ctx.app.clone();
        let span = tracing::info_span!("task", task = %task_id);
        let handle = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _counted = app.background.enter();
                job.run().await;
            },
            span,
        ));
        if ctx.progress.is_some() {
            let _ = tokio::time::timeout(WAIT_WITH_PROGRESS, handle).await;
        }
    }
    let task = load_task(&pool, &ctx.principal, task_id).await?;
    Ok(BulkOut { task, affected })
}

/// Narrows `query` (over customers `c`) to `filter`, refusing a filter on a field the
/// caller may not see (its matches would tell the field's values).
pub(crate) fn push_filter(
    query: &mut QueryBuilder<sqlx::Postgres>,
    policy: &Policy,
    filter: &BulkFilter,
) -> Result<(), ToolError> {
    let mut used = Vec::new();
    if let Some(status) = filter.status {
        used.push("status");
        query.push(" AND c.status = ").push_bind(status.as_str());
    }
    if let Some(company) = &filter.company {
        used.push("company");
        query
            .push(" AND lower(c.company) = lower(")
            .push_bind(company.clone())
            .push(")");
    }
    if let Some(assignee) = &filter.assigned_to {
        used.push("assigned_to");
        query
            .push(" AND c.assigned_to = ")
            .push_bind(assignee.clone());
    }
    if let Some(tag) = &filter.tag {
        used.push("tags");
        query
            .push(" AND ")
            .push_bind(tag.clone())
            .push(" = ANY(c.tags)");
    }
    policy
        .check_write(&CUSTOMERS, used.iter().copied())
        .map_err(|_| {
            ToolError::Forbidden("this caller may not filter on a field it cannot see".into())
        })
}

/// The ids to change, in id order, within the caller's tenant and conditions.
async fn target_ids(
    pool: &PgPool,
    policy: &Policy,
    args: &BulkArgs,
) -> Result<Vec<Uuid>, ToolError> {
    let mut query = policy.rows(&CUSTOMERS, Access::Write).select("c.id");
    match (&args.customer_ids, &args.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_IDS {
                return Err(ToolError::InvalidRequest(format!(
                    "give 1 to {MAX_IDS} customer_ids"
                )));
            }
            query
                .push(" AND c.id = ANY(")
                .push_bind(ids.clone())
                .push(")");
        }
        (None, Some(filter)) => push_filter(&mut query, policy, filter)?,
        _ => {
            return Err(ToolError::InvalidRequest(
                "give exactly one of customer_ids or filter".into(),
            ));
        }
    }
    query.push(" ORDER BY c.id");
    Ok(query
        .build_query_scalar()
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?)
}

/// Bulk tasks, on the lease queue of all background work.
pub static QUEUE: Queue = Queue {
    table: "tasks",
    channel: CHANNEL,
    parallel: 2,
    poll: Duration::from_secs(2),
};
const CHANNEL: &str = "agentcrm_tasks";

/// The worker of a serving process: takes up tasks whose process stopped (their lease
/// expired or was handed back) where they stopped.
pub fn start(app: Arc<App>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    QUEUE.worker(app, shutdown, expire_exports, resume)
}

/// Every ten minutes, exports past their time go (from any process: the delete is safe to
/// repeat).
async fn expire_exports(app: Arc<App>) {
    use std::sync::atomic::AtomicI64;
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = Utc::now().timestamp();
    if now - LAST.load(Ordering::Relaxed) < 600 {
        return;
    }
    LAST.store(now, Ordering::Relaxed);
    match super::export::expire(app.store.pool()).await {
        Ok(0) => {}
        Ok(expired) => tracing::info!(expired, "expired exports deleted"),
        Err(error) => tracing::warn!(%error, "could not delete expired exports"),
    }
}

#[derive(sqlx::FromRow)]
struct Stored {
    tenant_id: Uuid,
    total: i64,
    done: i64,
    chain: Value,
    cause: Value,
    scopes: Vec<String>,
    targets: Vec<Uuid>,
    changes: Value,
    batches_done: Vec<i32>,
}

/// Goes on with a task this process claimed, as whoever it acts for now (never with more
/// than it had when it began); fails it, with its counts, when that is not possible.
/// Takes a task up again, in the trace of the call that started it.
async fn resume(app: Arc<App>, id: Uuid) {
    let span = tracing::info_span!("task", task = %id);
    let span = QUEUE.span(app.store.pool(), id, span).await;
    tracing::Instrument::instrument(resume_task(app, id), span).await
}

async fn resume_task(app: Arc<App>, id: Uuid) {
    let pool = app.store.pool();
    let kind: Option<String> = sqlx::query_scalar("SELECT kind FROM tasks WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap_or_default();
    if kind.as_deref() == Some(super::export::KIND) {
        return super::export::resume(app, id).await;
    }
    let stored: Option<Stored> = match sqlx::query_as(
        "UPDATE tasks SET resumed = resumed + 1, updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'
         RETURNING tenant_id, total, done, chain, cause, scopes, targets, changes, batches_done",
    )
    .bind(id)
    .bind(process_id())
    .fetch_optional(pool)
    .await
    {
        Ok(stored) => stored,
        Err(error) => {
            app.store.observe(&error);
            tracing::warn!(%error, task = %id, "could not read a task to resume");
            return;
        }
    };
    let Some(stored) = stored else { return };
    tracing::info!(task = %id, done = stored.done, total = stored.total, "resuming a task");
    let members = delegation::read_chain(&stored.chain);
    let job = async {
        if members.is_empty() || stored.targets.is_empty() {
            return Err(
                "it was begun by an earlier version that did not store what resuming needs"
                    .to_owned(),
            );
        }
        let changes: BulkChanges = serde_json::from_value(stored.changes.clone())
            .map_err(|e| format!("its stored changes do not read: {e}"))?;
        let (principal, policy) = acting_again(
            pool,
            stored.tenant_id,
            &members,
            &stored.cause,
            &stored.scopes,
            &["customers:write", "bulk"],
        )
        .await?;
        Ok(Job {
            app: app.clone(),
            principal,
            policy,
            task_id: id,
            ids: stored.targets.clone(),
            batches_done: stored.batches_done.clone(),
            changes,
            progress: None,
        })
    };
    match job.await {
        Ok(job) => job.run().await,
        Err(why) => {
            let error = format!(
                "stopped after {} of {} customers when its process stopped, and cannot be \
                 resumed: {why}",
                stored.done, stored.total
            );
            fail_task(pool, id, &error).await;
        }
    }
}

/// Who a task taken up again acts for now, never with more than when it began: its chain
/// resolved as it stands, narrowed to the scopes it began with, still holding `needed`;
/// and their policy. The reason, when it cannot go on.
pub(crate) async fn acting_again(
    pool: &PgPool,
    tenant_id: Uuid,
    members: &[delegation::Member],
    cause: &Value,
    began_with: &[String],
    needed: &[&str],
) -> Result<(Principal, Policy), String> {
    let mut principal = delegation::resolve(pool, tenant_id, members, Cause::read(cause))
        .await
        .map_err(|e| e.to_string())?;
    principal.scopes = principal
        .scopes
        .intersect(Scopes::parse(began_with).unwrap_or(Scopes::NONE));
    if !principal
        .scopes
        .contains(Scopes::parse(needed).unwrap_or(Scopes::EVERY))
    {
        return Err(format!(
            "whoever it acts for no longer holds {}",
            needed.join(" and ")
        ));
    }
    let policy = Policy::load(pool, &principal)
        .await
        .map_err(|e| e.to_string())?;
    Ok((principal, policy))
}

/// Ends a task this process holds as failed, saying why (nothing, if another holds it).
pub(crate) async fn fail_task(pool: &PgPool, id: Uuid, error: &str) {
    let failed = sqlx::query(
        "UPDATE tasks SET status = 'failed', error = $3, updated_at = now(),
             finished_at = now(), lease_owner = NULL, lease_until = NULL
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(process_id())
    .bind(error)
    .execute(pool)
    .await;
    if let Err(error) = failed {
        tracing::warn!(%error, task = %id, "could not record a task's failure");
    }
}

struct Job {
    app: Arc<App>,
    principal: Principal,
    policy: Policy,
    task_id: Uuid,
    ids: Vec<Uuid>,
    /// Batches (by index) committed before this process took the task up.
    batches_done: Vec<i32>,
    changes: BulkChanges,
    progress: Option<Progress>,
}

/// How a batch ended.
enum Batch {
    Applied,
    /// Another process holds the task now: this one stops writing to it.
    LeaseLost,
}

impl Job {
    /// Runs the batches not yet committed, under the task's lease, two at a time (batches
    /// touch disjoint rows: two keep both cores of a small server busy). Stops at a batch
    /// boundary when the process shuts down, handing the lease back.
    async fn run(self) {
        use futures::StreamExt;
        let heartbeat = QUEUE.heartbeat(&self.app, self.task_id);
        let lost = heartbeat.lost.clone();
        let total = self.ids.len() as u64;
        let job = Arc::new(self);
        let pool = job.app.store.pool().clone();
        let mut done = (job.batches_done.len() * BATCH).min(job.ids.len()) as u64;
        let chunks: Vec<(i32, Vec<Uuid>)> = job
            .ids
            .chunks(BATCH)
            .enumerate()
            .map(|(index, ids)| (index as i32, ids.to_vec()))
            .filter(|(index, _)| !job.batches_done.contains(index))
            .collect();
        // The last batch may be short: count what committed from the rows, not the sizes.
        done = done.min(total - chunks.iter().map(|(_, ids)| ids.len() as u64).sum::<u64>());
        let mut batches = futures::stream::iter(chunks)
            .map(|(index, batch)| {
                let job = job.clone();
                let lost = lost.clone();
                async move {
                    if lost.load(Ordering::SeqCst) {
                        return (0, Ok(Batch::LeaseLost));
                    }
                    if job.app.stopping.is_cancelled() {
                        return (0, Ok(Batch::LeaseLost));
                    }
                    (batch.len() as u64, job.apply(index, &batch).await)
                }
            })
            .buffer_unordered(PARALLEL_BATCHES);
        let mut stopped = false;
        while let Some((size, outcome)) = batches.next().await {
            match outcome {
                Ok(Batch::Applied) => done += size,
                Ok(Batch::LeaseLost) => {
                    stopped = true;
                    continue;
                }
                Err(error) => {
                    job.app.store.observe(&error);
                    tracing::error!(%error, task = %job.task_id, "bulk update failed");
                    let error = format!(
                        "stopped after {done} of {total} customers: the database refused a batch"
                    );
                    fail_task(&pool, job.task_id, &error).await;
                    return;
                }
            }
            if let Some(progress) = &job.progress {
                progress
                    .report(done, total, format!("{done} of {total} customers updated"))
                    .await;
            }
        }
        if stopped {
            if job.app.stopping.is_cancelled() && !lost.load(Ordering::SeqCst) {
                QUEUE.hand_back(&pool, job.task_id).await;
            }
            return;
        }
        let _ = sqlx::query(
            "UPDATE tasks SET status = 'succeeded', result = jsonb_build_object('updated', done),
                 updated_at = now(), finished_at = now(), lease_owner = NULL, lease_until = NULL
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
        )
        .bind(job.task_id)
        .bind(process_id())
        .execute(&pool)
        .await;
        drop(heartbeat);
    }

    /// One batch in one transaction, with a `customer.updated` event per customer and the
    /// task's progress, fenced on the task's lease; the caller's policy still holds (a row
    /// moved out of it since is left alone).
    async fn apply(&self, index: i32, batch: &[Uuid]) -> Result<Batch, sqlx::Error> {
        let mut tx = self.app.store.pool().begin().await?;
        let mut query = QueryBuilder::new("WITH changed AS (");
        let changes = &self.changes;
        self.policy
            .rows(&CUSTOMERS, Access::Write)
            .push_update(&mut query, |set| {
                set.push("status = coalesce(")
                    .push_bind(changes.status.map(Status::as_str))
                    .push(", status), assigned_to = coalesce(")
                    .push_bind(changes.assigned_to.clone())
                    .push(", assigned_to), tags = ARRAY(SELECT DISTINCT t FROM unnest(tags || ")
                    .push_bind(changes.add_tags.clone())
                    .push("::text[]) AS t WHERE NOT (t = ANY(")
                    .push_bind(changes.remove_tags.clone())
                    .push("::text[])) ORDER BY t), version = version + 1, updated_at = now()");
            });
        query
            .push(" AND c.id = ANY(")
            .push_bind(batch.to_vec())
            .push(
                ") RETURNING c.id, c.status, c.assigned_to, c.tags, c.version) \
                 INSERT INTO events (tenant_id, type, subject_id, payload, principal_kind, principal_id, \
                 traceparent) SELECT ",
            )
            .push_bind(self.principal.tenant_id)
            .push(
                ", 'customer.updated', id, \
                 jsonb_build_object('customer', jsonb_build_object('id', id, 'status', status, \
                 'assigned_to', assigned_to, 'tags', tags, 'version', version), 'bulk', true), ",
            )
            .push_bind(self.principal.kind.as_str())
            .push(", ")
            .push_bind(self.principal.id)
            .push(", ")
            .push_bind(crate::telemetry::traceparent())
            .push(" FROM changed");
        query.build().execute(&mut *tx).await?;
        let recorded = sqlx::query(
            "UPDATE tasks SET done = done + $4, batches_done = batches_done || $3,
                 updated_at = now()
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'
               AND NOT ($3 = ANY(batches_done))",
        )
        .bind(self.task_id)
        .bind(process_id())
        .bind(index)
        .bind(batch.len() as i64)
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(Batch::LeaseLost);
        }
        tx.commit().await?;
        Ok(Batch::Applied)
    }
}

/// A task of `principal`'s (or any, for a tenant admin): its counts say how many records
/// matched someone else's filter, which is not everyone's to know.
async fn load_task(pool: &PgPool, principal: &Principal, id: Uuid) -> Result<Task, ToolError> {
    sqlx::query_as(
        "SELECT id, kind, status, total, done, result, error, created_at, updated_at, finished_at
         FROM tasks WHERE tenant_id = $1 AND id = $2 AND (principal_id = $3 OR $4)",
    )
    .bind(principal.tenant_id)
    .bind(id)
    .bind(principal.id)
    .bind(delegation::is_admin_person(principal))
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?
    .ok_or_else(|| ToolError::NotFound(format!("no task {id} of yours")))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskArgs {
    /// From bulk_update_customers or export_customers.
    pub task_id: Uuid,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskOut {
    pub task: Task,
}

async fn get_task(ctx: ToolCtx, args: TaskArgs) -> Result<TaskOut, ToolError> {
    Ok(TaskOut {
        task: load_task(ctx.app.store.pool(), &ctx.principal, args.task_id).await?,
    })
}
