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

use super::customers::{CUSTOMERS, Status};
use crate::access::Principal;
use crate::access::approval::Sensitive;
use crate::access::policy::{Access, Policy};
use crate::error::ToolError;
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
                    Status is `running`, `succeeded` or `failed`; progress is `done` of `total`.",
                toolset: Toolset::Crm,
                scopes: &[],
                hints: Hints::READ,
            },
            get_task,
        ),
    ]
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    pub status: Option<Status>,
    /// Exact company name, any case.
    pub company: Option<String>,
    pub assigned_to: Option<String>,
    pub tag: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
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
        let mut limited = policy.clone();
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
    let task: Task = sqlx::query_as(
        "INSERT INTO tasks (tenant_id, kind, status, total, principal_id) VALUES ($1, 'bulk_update_customers', 'running', $2, $3)
         RETURNING id, kind, status, total, done, result, error, created_at, updated_at, finished_at",
    )
    .bind(ctx.principal.tenant_id)
    .bind(ids.len() as i64)
    .bind(ctx.principal.id)
    .fetch_one(&pool)
    .await
    .map_err(StoreError::from)?;
    let affected = ids.len() as i64;
    let job = Job {
        pool: pool.clone(),
        principal: ctx.principal.clone(),
        policy: policy.clone(),
        task_id: task.id,
        ids,
        status: changes.status.map(Status::as_str),
        assigned_to: changes.assigned_to.clone(),
        add_tags: changes.add_tags.clone(),
        remove_tags: changes.remove_tags.clone(),
        progress: ctx.progress.clone(),
    };
    if affected as usize <= INLINE_MAX {
        job.run().await;
    } else {
        let handle = tokio::spawn(job.run());
        if ctx.progress.is_some() {
            let _ = tokio::time::timeout(WAIT_WITH_PROGRESS, handle).await;
        }
    }
    let task = load_task(&pool, ctx.principal.tenant_id, task.id).await?;
    Ok(BulkOut { task, affected })
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
        (None, Some(filter)) => {
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
                    ToolError::Forbidden(
                        "this caller may not filter on a field it cannot see".into(),
                    )
                })?;
        }
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

struct Job {
    pool: PgPool,
    principal: Principal,
    policy: Policy,
    task_id: Uuid,
    ids: Vec<Uuid>,
    status: Option<&'static str>,
    assigned_to: Option<String>,
    add_tags: Vec<String>,
    remove_tags: Vec<String>,
    progress: Option<Progress>,
}

impl Job {
    async fn run(self) {
        use futures::StreamExt;
        let mut done: u64 = 0;
        // Batches touch disjoint rows: two at a time keep both cores of a small server busy.
        let total = self.ids.len() as u64;
        let job = std::sync::Arc::new(self);
        let chunks: Vec<Vec<Uuid>> = job.ids.chunks(BATCH).map(<[Uuid]>::to_vec).collect();
        let mut batches = futures::stream::iter(chunks)
            .map(|batch| {
                let job = job.clone();
                async move { (batch.len() as u64, job.apply(&batch).await) }
            })
            .buffer_unordered(PARALLEL_BATCHES);
        while let Some((size, outcome)) = batches.next().await {
            if let Err(error) = outcome {
                tracing::error!(%error, task = %job.task_id, "bulk update failed");
                let _ = sqlx::query(
                    "UPDATE tasks SET status = 'failed', error = $2, updated_at = now(), finished_at = now() WHERE id = $1",
                )
                .bind(job.task_id)
                .bind(format!("stopped after {done} of {total} customers: the database refused a batch"))
                .execute(&job.pool)
                .await;
                return;
            }
            done += size;
            let _ = sqlx::query("UPDATE tasks SET done = $2, updated_at = now() WHERE id = $1")
                .bind(job.task_id)
                .bind(done as i64)
                .execute(&job.pool)
                .await;
            if let Some(progress) = &job.progress {
                progress
                    .report(done, total, format!("{done} of {total} customers updated"))
                    .await;
            }
        }
        let _ = sqlx::query(
            "UPDATE tasks SET status = 'succeeded', result = $2, updated_at = now(), finished_at = now() WHERE id = $1",
        )
        .bind(job.task_id)
        .bind(json!({ "updated": done }))
        .execute(&job.pool)
        .await;
    }

    /// One batch in one transaction, with a `customer.updated` event per customer; the
    /// caller's policy still holds (a row moved out of it since is left alone).
    async fn apply(&self, batch: &[Uuid]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut query = QueryBuilder::new("WITH changed AS (");
        self.policy
            .rows(&CUSTOMERS, Access::Write)
            .push_update(&mut query, |set| {
                set.push("status = coalesce(")
                    .push_bind(self.status)
                    .push(", status), assigned_to = coalesce(")
                    .push_bind(self.assigned_to.clone())
                    .push(", assigned_to), tags = ARRAY(SELECT DISTINCT t FROM unnest(tags || ")
                    .push_bind(self.add_tags.clone())
                    .push("::text[]) AS t WHERE NOT (t = ANY(")
                    .push_bind(self.remove_tags.clone())
                    .push("::text[])) ORDER BY t), version = version + 1, updated_at = now()");
            });
        query
            .push(" AND c.id = ANY(")
            .push_bind(batch.to_vec())
            .push(
                ") RETURNING c.id, c.status, c.assigned_to, c.tags, c.version) \
                 INSERT INTO events (tenant_id, type, subject_id, payload, principal_kind, principal_id) \
                 SELECT ",
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
            .push(" FROM changed");
        query.build().execute(&mut *tx).await?;
        tx.commit().await
    }
}

async fn load_task(pool: &PgPool, tenant: Uuid, id: Uuid) -> Result<Task, ToolError> {
    sqlx::query_as(
        "SELECT id, kind, status, total, done, result, error, created_at, updated_at, finished_at
         FROM tasks WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?
    .ok_or_else(|| ToolError::NotFound(format!("no task {id} in this tenant")))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskArgs {
    pub task_id: Uuid,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskOut {
    pub task: Task,
}

async fn get_task(ctx: ToolCtx, args: TaskArgs) -> Result<TaskOut, ToolError> {
    Ok(TaskOut {
        task: load_task(ctx.app.store.pool(), ctx.principal.tenant_id, args.task_id).await?,
    })
}
