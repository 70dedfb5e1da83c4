//! `export_customers` and `get_export`. An export is a background task on the lease queue
//! of all background work: it reads the customers the caller may export (tenant, row
//! conditions, the grants of `customers:read` and `customers:export`; an agent needs an
//! explicit `customers:export` grant) in id order, 500 at a time, each chunk written in
//! its own transaction fenced on the task's lease, so a process that dies leaves an export
//! that another takes up at its last chunk. Fields are the caller's: field rules apply as
//! in `get_customer`. The content is read in pages (`get_export`) or whole as the resource
//! `agentcrm://exports/{id}`, never as one large tool result. Exports expire after 7 days.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::bulk::{BulkFilter, QUEUE, Task, acting_again, fail_task, push_filter};
use super::customers::{COLUMNS, Customer, check_fields, shape};
use crate::access::Principal;
use crate::access::delegation;
use crate::access::policy::{Access, CUSTOMERS, Policy};
use crate::app::App;
use crate::error::ToolError;
use crate::jobs::queue::{lease, process_id};
use crate::store::StoreError;
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::{Progress, ToolCtx};

pub const KIND: &str = "export_customers";
const CHUNK_ROWS: i64 = 500;
/// Content up to this size comes back in the tool's answer; more is read in pages.
const INLINE_BYTES: usize = 32 * 1024;
/// A resource read of a whole export stops here (read larger ones in pages).
const MAX_RESOURCE_BYTES: i64 = 32 * 1024 * 1024;
const MAX_WAIT_SECONDS: u32 = 60;
pub const RESOURCE_PREFIX: &str = "agentcrm://exports/";

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Crm.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "export_customers",
                "Export customers",
                "Export customers as CSV or JSON Lines; runs in the background, read with \
                 get_export.\n\n\
                 Exports the customers you may export (agents need an explicit customers:export \
                 grant), with only the fields your field rules let you see, optionally \
                 narrowed by `filter` and `fields`. Waits up to `wait_seconds` (default 10); a \
                 small finished export comes back inline, a larger one is read in pages with \
                 get_export or whole as the resource agentcrm://exports/{export_id}. Exports \
                 expire after 7 days.",
                &["customers:export"],
                Hints {
                    read_only: false,
                    destructive: false,
                    idempotent: false,
                    open_world: false,
                },
            ),
            export_customers,
        ),
        tool(
            def(
                "get_export",
                "Get an export",
                "Get an export's status and one page of its content; pass `cursor` for the \
                 next.\n\n\
                 Pages follow the export's order (by customer id); a CSV export's header is \
                 on its first page. Only whoever made the export (and tenant admins) reads it.",
                &["customers:export"],
                Hints::READ,
            ),
            get_export,
        ),
    ]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header row (RFC 4180).
    #[default]
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    fn mime_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv",
            Format::Jsonl => "application/x-ndjson",
        }
    }
}

/// What an export was asked for: stored with its task, so another process can finish it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Params {
    format: Format,
    fields: Vec<String>,
    filter: BulkFilter,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportArgs {
    /// `csv` (default) or `jsonl`.
    #[serde(default)]
    pub format: Format,
    /// Only these fields, in this order.
    ///
    /// Default: every field you may see. `id` always comes first.
    pub fields: Option<Vec<String>>,
    /// Only customers matching.
    ///
    /// Within what you may export.
    pub filter: Option<BulkFilter>,
    /// 0 to 60 seconds (default 10).
    ///
    /// How long to wait for the export to finish.
    pub wait_seconds: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Export {
    pub export_id: Uuid,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// `csv` or `jsonl`.
    pub format: Format,
    pub mime_type: String,
    /// The columns, in order.
    pub fields: Vec<String>,
    /// Customers to export.
    pub total: i64,
    /// Customers exported so far.
    pub done: i64,
    pub bytes: i64,
    /// Pages to read with get_export.
    pub pages: i64,
    /// Read the whole export here (MCP resources/read).
    pub resource_uri: String,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExportOut {
    pub export: Export,
    /// The whole content, when the export has finished and is small (32 KB or less).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// The fields to export: those asked for (each one the caller may see), or every one it
/// may see; `id` first.
fn columns(policy: &Policy, asked: Option<&[String]>) -> Result<Vec<String>, ToolError> {
    check_fields(asked)?;
    let mut fields = vec!["id".to_owned()];
    match asked {
        Some(asked) => {
            for field in asked {
                if !policy.field_allowed(&CUSTOMERS, field) {
                    return Err(ToolError::Forbidden(format!(
                        "`{field}` is not a field you may read, so it cannot be exported"
                    )));
                }
                if !fields.contains(field) {
                    fields.push(field.clone());
                }
            }
        }
        None => fields.extend(
            CUSTOMERS
                .fields
                .iter()
                .filter(|f| **f != "id" && policy.field_allowed(&CUSTOMERS, f))
                .map(|f| (*f).to_owned()),
        ),
    }
    Ok(fields)
}

/// An agent (or work acting for one) exports only with an explicit grant: refused here with
/// the reason, rather than an empty export.
fn check_grant(policy: &Policy) -> Result<(), ToolError> {
    if policy.has_grant("customers:export") {
        return Ok(());
    }
    Err(ToolError::Forbidden(
        "exporting customers needs an explicit customers:export grant for agents (an admin \
         sets it with update_agent_permissions)"
            .into(),
    ))
}

async fn export_customers(ctx: ToolCtx, args: ExportArgs) -> Result<ExportOut, ToolError> {
    let wait = args.wait_seconds.unwrap_or(10);
    if wait > MAX_WAIT_SECONDS {
        return Err(ToolError::InvalidRequest(format!(
            "wait_seconds is 0 to {MAX_WAIT_SECONDS}"
        )));
    }
    let policy = ctx.policy().await?;
    check_grant(&policy)?;
    let params = Params {
        format: args.format,
        fields: columns(&policy, args.fields.as_deref())?,
        filter: args.filter.unwrap_or_default(),
    };
    let pool = ctx.app.store.pool();
    let mut count = policy.rows(&CUSTOMERS, Access::Export).select("count(*)");
    push_filter(&mut count, &policy, &params.filter)?;
    let total: i64 = count
        .build_query_scalar()
        .fetch_one(pool)
        .await
        .map_err(StoreError::from)?;
    let mut tx = ctx.begin().await?;
    let task_id: Uuid = sqlx::query_scalar(
        "INSERT INTO tasks (tenant_id, kind, status, total, principal_id, lease_owner,
             lease_until, started_at, chain, cause, scopes, changes, traceparent)
         VALUES ($1, $2, 'running', $3, $4, $5, now() + make_interval(secs => $6), now(), $7,
             $8, $9, $10, $11)
         RETURNING id",
    )
    .bind(ctx.principal.tenant_id)
    .bind(KIND)
    .bind(total)
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
    .bind(json!(params))
    .bind(crate::telemetry::traceparent())
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    ctx.commit(tx).await?;
    let job = Job {
        app: ctx.app.clone(),
        policy: std::sync::Arc::unwrap_or_clone(policy),
        task_id,
        params,
        total,
        progress: ctx.progress.clone(),
    };
    let app = ctx.app.clone();
    let span = tracing::info_span!("task", task = %task_id);
    let mut handle = tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _counted = app.background.enter();
            job.run().await;
        },
        span,
    ));
    let _ = tokio::time::timeout(Duration::from_secs(u64::from(wait)), &mut handle).await;
    let export = load(pool, &ctx.principal, task_id).await?;
    let content = if export.status == "succeeded" && export.bytes as usize <= INLINE_BYTES {
        Some(content(pool, task_id, 0, i32::MAX).await?)
    } else {
        None
    };
    Ok(ExportOut { export, content })
}

struct Job {
    app: Arc<App>,
    policy: Policy,
    task_id: Uuid,
    params: Params,
    total: i64,
    progress: Option<Progress>,
}

enum Step {
    Wrote,
    Finished,
    LeaseLost,
}

impl Job {
    /// Writes the chunks not yet written, under the task's lease; stops at a chunk boundary
    /// when the process shuts down, handing the lease back.
    async fn run(self) {
        let heartbeat = QUEUE.heartbeat(&self.app, self.task_id);
        let pool = self.app.store.pool().clone();
        loop {
            if heartbeat.lost.load(Ordering::SeqCst) {
                return;
            }
            if self.app.stopping.is_cancelled() {
                QUEUE.hand_back(&pool, self.task_id).await;
                return;
            }
            match self.step(&pool).await {
                Ok(Step::Wrote) => {}
                Ok(Step::Finished) | Ok(Step::LeaseLost) => break,
                Err(error) => {
                    self.app.store.observe(&error);
                    tracing::error!(%error, task = %self.task_id, "export failed");
                    let why = "the database refused a chunk of the export";
                    fail_task(&pool, self.task_id, why).await;
                    return;
                }
            }
        }
        drop(heartbeat);
    }

    /// The next chunk after the last one written, in one transaction with the task's
    /// progress; or the end of the export.
    async fn step(&self, pool: &PgPool) -> Result<Step, sqlx::Error> {
        let last: Option<(i32, Uuid)> = sqlx::query_as(
            "SELECT seq, last_id FROM export_chunks WHERE task_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(self.task_id)
        .fetch_optional(pool)
        .await?;
        let mut tx = pool.begin().await?;
        let (seq, text, rows, last_id) = match last {
            // The CSV header is a chunk of its own: chunks then all hold rows only.
            None => {
                let header = match self.params.format {
                    Format::Csv => csv_line(self.params.fields.iter().map(|f| f.as_str())),
                    Format::Jsonl => String::new(),
                };
                (0, header, 0, Uuid::nil())
            }
            Some((seq, after)) => {
                let mut query = self.policy.rows(&CUSTOMERS, Access::Export).select(COLUMNS);
                push_filter(&mut query, &self.policy, &self.params.filter)
                    .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
                query
                    .push(" AND c.id > ")
                    .push_bind(after)
                    .push(" ORDER BY c.id LIMIT ")
                    .push_bind(CHUNK_ROWS);
                let found: Vec<Customer> = query.build_query_as().fetch_all(&mut *tx).await?;
                let Some(last) = found.last().map(|c| c.id) else {
                    let finished = sqlx::query(
                        "UPDATE tasks SET status = 'succeeded', updated_at = now(),
                             result = jsonb_build_object('exported', done),
                             finished_at = now(), lease_owner = NULL, lease_until = NULL
                         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                    )
                    .bind(self.task_id)
                    .bind(process_id())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(if finished.rows_affected() == 1 {
                        Step::Finished
                    } else {
                        Step::LeaseLost
                    });
                };
                let mut text = String::new();
                for customer in &found {
                    let shaped = shape(&self.policy, customer, None)
                        .map_err(|e| sqlx::Error::Protocol(e.to_string()))
                        .and_then(|s| {
                            serde_json::to_value(s).map_err(|e| sqlx::Error::Decode(e.into()))
                        })?;
                    text.push_str(&self.line(&shaped));
                }
                (seq + 1, text, found.len() as i32, last)
            }
        };
        let recorded = sqlx::query(
            "UPDATE tasks SET done = done + $3, updated_at = now()
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
        )
        .bind(self.task_id)
        .bind(process_id())
        .bind(i64::from(rows))
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(Step::LeaseLost);
        }
        sqlx::query(
            "INSERT INTO export_chunks (task_id, seq, last_id, rows, content)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(self.task_id)
        .bind(seq)
        .bind(last_id)
        .bind(rows)
        .bind(&text)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(progress) = &self.progress
            && rows > 0
        {
            let done: i64 = sqlx::query_scalar("SELECT done FROM tasks WHERE id = $1")
                .bind(self.task_id)
                .fetch_one(pool)
                .await?;
            progress
                .report(
                    done as u64,
                    self.total.max(done) as u64,
                    format!("{done} of {} customers exported", self.total),
                )
                .await;
        }
        Ok(Step::Wrote)
    }

    /// One customer as a line of the export, with only the export's fields.
    fn line(&self, shaped: &Value) -> String {
        let fields = &self.params.fields;
        match self.params.format {
            Format::Jsonl => {
                let mut object = Map::new();
                for field in fields {
                    if let Some(value) = shaped.get(field) {
                        object.insert(field.clone(), value.clone());
                    }
                }
                let mut line = Value::Object(object).to_string();
                line.push('\n');
                line
            }
            Format::Csv => csv_line(
                fields
                    .iter()
                    .map(|f| cell(shaped.get(f).unwrap_or(&Value::Null)))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str),
            ),
        }
    }
}

/// A value as CSV cell text: lists of text joined with `;`, other structures as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(";"),
        other => other.to_string(),
    }
}

/// One CSV record (RFC 4180): quoted where needed, and a cell that a spreadsheet would run
/// as a formula (`=`, `@`, a tab or a carriage return first; `+` or `-` first in anything
/// but a number or phone number) is prefixed with `'`, so opening an export runs nothing a
/// customer's record put there.
fn csv_line<'a>(cells: impl Iterator<Item = &'a str>) -> String {
    let mut line = String::new();
    for (index, raw) in cells.enumerate() {
        if index > 0 {
            line.push(',');
        }
        let formula = match raw.chars().next() {
            Some('=' | '@' | '\t' | '\r') => true,
            Some('+' | '-') => !raw
                .chars()
                .all(|c| c.is_ascii_digit() || " ()+-./x".contains(c)),
            _ => false,
        };
        let text = if formula {
            format!("'{raw}")
        } else {
            raw.to_owned()
        };
        if text.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&text.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&text);
        }
    }
    line.push_str("\r\n");
    line
}

/// The worker's side: an export whose process stopped, taken up at its last chunk as
/// whoever it acts for now (never with more than it had when it began).
pub(crate) async fn resume(app: Arc<App>, id: Uuid) {
    #[derive(sqlx::FromRow)]
    struct Stored {
        tenant_id: Uuid,
        total: i64,
        chain: Value,
        cause: Value,
        scopes: Vec<String>,
        changes: Value,
    }
    let pool = app.store.pool();
    let stored: Option<Stored> = match sqlx::query_as(
        "UPDATE tasks SET resumed = resumed + 1, updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'
         RETURNING tenant_id, total, chain, cause, scopes, changes",
    )
    .bind(id)
    .bind(process_id())
    .fetch_optional(pool)
    .await
    {
        Ok(stored) => stored,
        Err(error) => {
            app.store.observe(&error);
            tracing::warn!(%error, task = %id, "could not read an export to resume");
            return;
        }
    };
    let Some(stored) = stored else { return };
    tracing::info!(task = %id, "resuming an export");
    let job = async {
        let params: Params = serde_json::from_value(stored.changes.clone())
            .map_err(|e| format!("its stored parameters do not read: {e}"))?;
        let members = delegation::read_chain(&stored.chain);
        let (_, policy) = acting_again(
            pool,
            stored.tenant_id,
            &members,
            &stored.cause,
            &stored.scopes,
            &["customers:export"],
        )
        .await?;
        check_grant(&policy).map_err(|e| e.to_string())?;
        // Fields taken away since are not exported.
        columns(&policy, Some(&params.fields[1..])).map_err(|e| e.to_string())?;
        Ok::<_, String>(Job {
            app: app.clone(),
            policy,
            task_id: id,
            params,
            total: stored.total,
            progress: None,
        })
    };
    match job.await {
        Ok(job) => job.run().await,
        Err(why) => {
            let error =
                format!("the export stopped when its process stopped, and cannot go on: {why}");
            fail_task(pool, id, &error).await;
        }
    }
}

/// Exports past their 7 days, and their content.
pub(crate) async fn expire(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM tasks WHERE kind = $1 AND created_at < now() - interval '7 days'
             AND status <> 'running'",
    )
    .bind(KIND)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The export `id` if `principal` may read it: whoever made it, or a tenant admin.
async fn load(pool: &PgPool, principal: &Principal, id: Uuid) -> Result<Export, ToolError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        task: Task,
        principal_id: Option<Uuid>,
        changes: Value,
        bytes: i64,
        pages: i64,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT t.id, t.kind, t.status, t.total, t.done, t.result, t.error, t.created_at,
                t.updated_at, t.finished_at, t.principal_id, t.changes,
                coalesce((SELECT sum(octet_length(content)) FROM export_chunks
                          WHERE task_id = t.id), 0)::bigint AS bytes,
                (SELECT count(*) FROM export_chunks WHERE task_id = t.id) AS pages
         FROM tasks t WHERE t.tenant_id = $1 AND t.id = $2 AND t.kind = $3",
    )
    .bind(principal.tenant_id)
    .bind(id)
    .bind(KIND)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?;
    let not_found = || ToolError::NotFound(format!("no export {id} that this caller can read"));
    let row = row.ok_or_else(not_found)?;
    // Its maker's: work done on someone's behalf reads it only if every member of its chain
    // is the maker (a member's step, run by an admin, is not the admin).
    let mine = row.principal_id.is_some()
        && principal
            .members()
            .iter()
            .all(|m| Some(m.id) == row.principal_id);
    if !mine && !delegation::is_admin_person(principal) {
        return Err(not_found());
    }
    let params: Params = serde_json::from_value(row.changes)
        .map_err(|e| ToolError::Internal(format!("stored export parameters: {e}")))?;
    Ok(Export {
        export_id: row.task.id,
        status: row.task.status,
        format: params.format,
        mime_type: params.format.mime_type().to_owned(),
        fields: params.fields,
        total: row.task.total,
        done: row.task.done,
        bytes: row.bytes,
        pages: row.pages,
        resource_uri: format!("{RESOURCE_PREFIX}{id}"),
        error: row.task.error,
        created_at: row.task.created_at,
        finished_at: row.task.finished_at,
    })
}

/// The chunks `from..until` of an export, as one text.
async fn content(pool: &PgPool, id: Uuid, from: i32, until: i32) -> Result<String, ToolError> {
    let parts: Vec<String> = sqlx::query_scalar(
        "SELECT content FROM export_chunks WHERE task_id = $1 AND seq >= $2 AND seq < $3
         ORDER BY seq",
    )
    .bind(id)
    .bind(from)
    .bind(until)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?;
    Ok(parts.concat())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetArgs {
    /// From export_customers.
    pub export_id: Uuid,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// The whole content at once (for resource reads).
    ///
    /// Up to 32 MB; larger exports are read in pages.
    #[serde(default)]
    pub whole: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExportPage {
    pub export: Export,
    /// This page of the content (up to 500 customers; a CSV's header on the first page).
    pub content: String,
    /// Pass as `cursor` for the next page; null on the last page written so far.
    pub next_cursor: Option<String>,
}

async fn get_export(ctx: ToolCtx, args: GetArgs) -> Result<ExportPage, ToolError> {
    let pool = ctx.app.store.pool();
    let export = load(pool, &ctx.principal, args.export_id).await?;
    if args.whole {
        if export.status != "succeeded" {
            return Err(ToolError::Conflict(format!(
                "export {} is {}: read it whole once it has succeeded",
                export.export_id, export.status
            )));
        }
        if export.bytes > MAX_RESOURCE_BYTES {
            return Err(ToolError::InvalidRequest(format!(
                "export {} holds {} bytes, more than a whole read returns ({MAX_RESOURCE_BYTES}); \
                 read it in pages with get_export",
                export.export_id, export.bytes
            )));
        }
        let content = content(pool, export.export_id, 0, i32::MAX).await?;
        return Ok(ExportPage {
            export,
            content,
            next_cursor: None,
        });
    }
    // The CSV header chunk goes with the first page of rows.
    let first: i32 = match &args.cursor {
        None => 0,
        Some(cursor) => cursor
            .parse()
            .ok()
            .filter(|page| *page > 0)
            .ok_or_else(|| ToolError::InvalidRequest("cursor is not one get_export gave".into()))?,
    };
    let until = if first == 0 { 2 } else { first + 1 };
    let content = content(pool, export.export_id, first, until).await?;
    let next = i64::from(until) < export.pages || export.status == "running";
    Ok(ExportPage {
        next_cursor: next.then(|| until.to_string()),
        export,
        content,
    })
}
