//! Running agents and reading what they did: `run_agent`, the run log
//! (`list_agent_runs`, `get_agent_run`), `get_agent_status` and `get_agent_analytics`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::callbacks::{self, Callback};
use super::config::{find, find_runnable};
use super::runner::{self, NewRun, Trigger};
use crate::access::Scopes;
use crate::access::delegation::{self, Cause};
use crate::error::ToolError;
use crate::mcp::shaping::{Reader, marker};
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::{ToolCtx, Transport};

const MAX_WAIT_SECONDS: u32 = 300;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Agents.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "run_agent",
                "Run an agent",
                "Run an agent now with a `prompt`; waits up to `wait_seconds`, then poll \
                 get_agent_run.\n\n\
                 Optional `input` data goes with the prompt. It runs as itself, with its own \
                 scopes and guardrails. Waits up to `wait_seconds` (default 60, at most 300) and \
                 returns the run; if still running, poll get_agent_run.",
                &["agents:execute"],
                // The agent may change anything its scopes allow, and calls its LLM provider.
                Hints {
                    destructive: true,
                    open_world: true,
                    ..Hints::CREATE
                },
            ),
            run_agent,
        ),
        tool(
            def(
                "list_agent_runs",
                "List agent runs",
                "List agent runs, newest first; filter by agent, user, type, source, trigger, status, \
                 time.\n\n\
                 Types: design, dynamic. Sources: stdio, http, schedule, workflow, agent. \
                 Statuses: queued, running, success, error, timeout. Trigger: who triggered them; \
                 `user`: the person who started them, directly or with an API key of theirs. A \
                 deleted agent's runs stay listed under its former id or name.",
                &["agents:read"],
                Hints::READ,
            ),
            list_agent_runs,
        ),
        tool(
            def(
                "get_agent_run",
                "Get an agent run",
                "Get one agent run: input, output, status, tool calls, tokens and transcript.\n\n\
                 In full: input, output, status, error, every tool call (arguments, result, \
                 duration), token usage, duration, the message transcript, its log and its \
                 callback deliveries.",
                &["agents:read"],
                Hints::READ,
            ),
            get_agent_run,
        ),
        tool(
            def(
                "get_agent_status",
                "Get an agent's status",
                "Get an agent's run counts, success rate, last run and error, and schedules.\n\n\
                 Execution count, success count and rate, last run and last error, runs in \
                 progress, paused or not, and its schedules with the next run.",
                &["agents:read"],
                Hints::READ,
            ),
            get_agent_status,
        ),
        tool(
            def(
                "get_agent_analytics",
                "Get an agent's analytics",
                "Get an agent's runs, success rate, durations, tokens and tool calls over \
                 `days`.\n\n\
                 Over the last `days` (default 30): runs and success rate per day (or hour), p50 \
                 and p95 duration, tokens, and tool calls per tool with their errors.",
                &["agents:read"],
                Hints::READ,
            ),
            get_agent_analytics,
        ),
    ]
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct AgentRun {
    pub id: Uuid,
    pub agent_id: Option<Uuid>,
    pub agent_name: String,
    /// `prompt` or `workflow`.
    pub agent_kind: String,
    /// `design` (the definition as designed) or `dynamic` (with runtime overrides).
    pub run_type: String,
    /// A source, e.g. `schedule`.
    ///
    /// `stdio`, `http`, `schedule`, `workflow` or `agent`.
    pub source: String,
    pub triggered_by_name: String,
    /// The person who started it.
    ///
    /// The user, the owner of the API key used, or a scheduled run's schedule creator; null
    /// when no person did (a run started by an agent's workflow).
    pub user_id: Option<Uuid>,
    pub schedule_id: Option<Uuid>,
    /// The run this one was chained on.
    pub parent_run_id: Option<Uuid>,
    pub prompt: String,
    pub input: Value,
    /// A status, e.g. `error`.
    ///
    /// `queued`, `running`, `success`, `error` or `timeout`.
    pub status: String,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub tool_call_count: i32,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub duration_ms: Option<i64>,
    /// Who it acts for: the agent, whoever started it, the definition's owner and last
    /// editor. Its tool calls may do only what all of them may.
    #[schemars(with = "Vec<crate::access::delegation::Member>")]
    pub acts_for: Value,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, agent_id, agent_name, agent_kind, run_type, source, triggered_by_name, \
     user_id, schedule_id, parent_run_id, prompt, input, status, output, error, tool_call_count, \
     prompt_tokens, completion_tokens, total_tokens, duration_ms, chain AS acts_for, created_at, \
     started_at, finished_at";

#[derive(Debug, Serialize, JsonSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: AgentRun,
    /// Every tool call: `{id, name, arguments, status, output | error, duration_ms}`.
    pub tool_calls: Value,
    /// The conversation with the model (prompt agents).
    pub transcript: Value,
    /// Timestamped events of the run.
    pub log: Value,
    /// The configuration the run used.
    pub config: Value,
    pub callbacks: Vec<Callback>,
}

async fn detail(ctx: &ToolCtx, id: Uuid) -> Result<RunDetail, ToolError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        run: AgentRun,
        tool_calls: Value,
        transcript: Value,
        log: Value,
        config: Value,
    }
    let mut row: Row = delegation::select_readable(
        &format!("{COLUMNS}, tool_calls, transcript, log, config FROM agent_runs"),
        &ctx.principal,
        id,
    )
    .build_query_as()
    .fetch_optional(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?
    .ok_or_else(|| ToolError::NotFound(format!("no agent run {id} that this caller can see")))?;
    // Its data was read for the run's chain: shown as the reader's own policy allows.
    let reader = Reader::of(ctx).await?;
    let mut hidden = false;
    let mut tool_calls = row.tool_calls;
    if let Value::Array(calls) = &mut tool_calls {
        for call in calls {
            if let Value::Object(call) = call {
                call.remove("result_text");
                let name = call
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                for key in ["arguments", "output"] {
                    if let Some(value) = call.get_mut(key) {
                        hidden |= reader.shape(&name, value);
                    }
                }
            }
        }
    }
    let mut transcript = row.transcript;
    if hidden {
        // The model read what the tools answered: what it said holds the same data.
        transcript = marker("tool results in this transcript are not yours to read");
        if row.run.output.is_some() {
            row.run.output = Some(marker(
                "the run read data that is not yours to read, and its output may repeat it",
            ));
        }
    }
    Ok(RunDetail {
        callbacks: callbacks::of_run(&ctx.app, ctx.principal.tenant_id, id).await?,
        run: row.run,
        tool_calls,
        transcript,
        log: row.log,
        config: row.config,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// Agent id or name.
    pub agent: String,
    /// What the agent is asked.
    #[serde(default)]
    pub prompt: String,
    /// Data for the prompt.
    ///
    /// A workflow agent's workflow input.
    #[serde(default)]
    pub input: Map<String, Value>,
    /// 0 to 300 seconds (default 60).
    ///
    /// How long to wait for the end.
    pub wait_seconds: Option<u32>,
}

async fn run_agent(ctx: ToolCtx, args: RunArgs) -> Result<RunDetail, ToolError> {
    let wait = args.wait_seconds.unwrap_or(60);
    if wait > MAX_WAIT_SECONDS {
        return Err(ToolError::InvalidRequest(format!(
            "wait_seconds is 0 to {MAX_WAIT_SECONDS}"
        )));
    }
    if args.prompt.len() > 100_000 {
        return Err(ToolError::InvalidRequest(
            "prompt is limited to 100,000 bytes".into(),
        ));
    }
    let tenant = ctx.principal.tenant_id;
    let (agent, runnable) = find_runnable(&ctx.app, tenant, &args.agent).await?;
    if ctx.principal.is_agent() && ctx.principal.id == Some(agent.id) {
        return Err(ToolError::Forbidden(
            "an agent cannot start a run of itself".into(),
        ));
    }
    // Runs started from inside agent runs (a workflow agent's workflow) could start each
    // other without end; agents chain through schedules, whose chains are bounded.
    if ctx.principal.is_agent()
        && matches!(
            ctx.transport,
            Transport::Workflow | Transport::Agent | Transport::Conversation
        )
    {
        return Err(ToolError::Forbidden(
            "a workflow or run acting as an agent cannot start agent runs; chain agents with \
             schedule_agent (after_agent)"
                .into(),
        ));
    }
    delegation::may_run_as(
        &ctx.principal,
        Scopes::parse(&agent.scopes).unwrap_or(Scopes::EVERY),
        &agent.name,
    )?;
    let cause = Cause::started_by(&ctx.principal)?;
    if !agent.enabled {
        return Err(ToolError::Conflict(format!(
            "agent `{}` is disabled (enable_agent)",
            agent.name
        )));
    }
    if runnable.paused {
        return Err(ToolError::Conflict(format!(
            "agent `{}` is paused (resume_agent)",
            agent.name
        )));
    }
    if !runnable.effective()?.enabled {
        return Err(ToolError::Conflict(format!(
            "agent `{}` is disabled in its configuration (set_agent_config enabled: true)",
            agent.name
        )));
    }
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let id = runner::queue(
        &mut tx,
        NewRun {
            agent: &agent,
            runnable: &runnable,
            trigger: Trigger::by(&ctx.principal, ctx.transport),
            prompt: args.prompt,
            input: Value::Object(args.input),
            schedule_id: None,
            due_at: None,
            parent_run_id: None,
            chain_depth: 0,
            // The run acts for whoever started it too: never more than they may do.
            acts_for: ctx.principal.members(),
            cause,
            claim: true,
        },
    )
    .await?
    .ok_or_else(|| ToolError::Internal("the run was not queued".into()))?;
    ctx.commit(tx).await?;
    // Runs apart from this call: a caller that goes away does not cut the run short.
    let mut handle = tokio::spawn(runner::run(ctx.app.clone(), id));
    let _ = tokio::time::timeout(Duration::from_secs(u64::from(wait)), &mut handle).await;
    detail(&ctx, id).await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunIdArgs {
    /// From run_agent or list_agent_runs.
    pub run_id: Uuid,
}

async fn get_agent_run(ctx: ToolCtx, args: RunIdArgs) -> Result<RunDetail, ToolError> {
    detail(&ctx, args.run_id).await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Agent id or name.
    ///
    /// A deleted agent's runs too, by its former id or name.
    pub agent: Option<String>,
    /// User id or email of who started them.
    ///
    /// A user's own runs and those started through their API keys.
    pub user: Option<String>,
    /// `design` or `dynamic`.
    pub run_type: Option<String>,
    /// A source, e.g. `schedule`.
    ///
    /// `stdio`, `http`, `schedule`, `workflow` or `agent`.
    pub source: Option<String>,
    /// Name or id of who triggered them.
    ///
    /// A name, or a user, agent or schedule id.
    pub triggered_by: Option<String>,
    /// A status, e.g. `error`.
    ///
    /// `queued`, `running`, `success`, `error` or `timeout`.
    pub status: Option<String>,
    /// Started at or after.
    ///
    /// RFC 3339.
    pub from: Option<DateTime<Utc>>,
    /// Started before.
    ///
    /// RFC 3339.
    pub to: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RunList {
    pub runs: Vec<AgentRun>,
    #[serde(flatten)]
    pub page: PageInfo,
}

fn one_of(field: &str, value: &Option<String>, allowed: &[&str]) -> Result<(), ToolError> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => Err(ToolError::InvalidRequest(format!(
            "{field} is one of {}",
            allowed.join(", ")
        ))),
        _ => Ok(()),
    }
}

enum AgentFilter {
    Id(Uuid),
    /// Runs of a deleted agent that went by this name.
    DeletedName(String),
}

/// An agent by id or name, or a deleted one whose runs are still in the log.
async fn agent_filter(ctx: &ToolCtx, agent: &str) -> Result<AgentFilter, ToolError> {
    match find(&ctx.app, ctx.principal.tenant_id, agent).await {
        Ok((found, _)) => Ok(AgentFilter::Id(found.id)),
        Err(ToolError::NotFound(message)) => match Uuid::parse_str(agent) {
            Ok(id) => Ok(AgentFilter::Id(id)),
            Err(_) if agent.len() <= 200 => Ok(AgentFilter::DeletedName(agent.to_owned())),
            Err(_) => Err(ToolError::NotFound(message)),
        },
        Err(other) => Err(other),
    }
}

/// A user of this tenant by id or email.
async fn user_filter(ctx: &ToolCtx, user: &str) -> Result<Uuid, ToolError> {
    let id = Uuid::parse_str(user).ok();
    let found: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM users WHERE tenant_id = $1 AND (id = $2 OR lower(email) = lower($3))",
    )
    .bind(ctx.principal.tenant_id)
    .bind(id)
    .bind(user)
    .fetch_optional(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?;
    // A deleted user's id still finds their runs.
    found
        .or(id)
        .ok_or_else(|| ToolError::NotFound(format!("no user `{user}` in this tenant")))
}

async fn list_agent_runs(ctx: ToolCtx, args: ListArgs) -> Result<RunList, ToolError> {
    let page = args.page.page()?;
    one_of("run_type", &args.run_type, &["design", "dynamic"])?;
    one_of(
        "source",
        &args.source,
        &["stdio", "http", "schedule", "workflow", "agent"],
    )?;
    one_of(
        "status",
        &args.status,
        &["queued", "running", "success", "error", "timeout"],
    )?;
    let tenant = ctx.principal.tenant_id;
    let agent = match &args.agent {
        Some(agent) => Some(agent_filter(&ctx, agent).await?),
        None => None,
    };
    let user = match &args.user {
        Some(user) => Some(user_filter(&ctx, user).await?),
        None => None,
    };
    let (runs, total) = fetch_page(
        ctx.app.store.pool(),
        COLUMNS,
        |q| {
            q.push(" FROM agent_runs WHERE tenant_id = ")
                .push_bind(tenant);
            delegation::push_readable(q, &ctx.principal);
            match &agent {
                Some(AgentFilter::Id(id)) => {
                    q.push(" AND agent_ref = ").push_bind(*id);
                }
                Some(AgentFilter::DeletedName(name)) => {
                    q.push(" AND agent_id IS NULL AND agent_name = ")
                        .push_bind(name.clone());
                }
                None => {}
            }
            if let Some(user) = user {
                q.push(" AND user_id = ").push_bind(user);
            }
            if let Some(v) = &args.run_type {
                q.push(" AND run_type = ").push_bind(v.clone());
            }
            if let Some(v) = &args.source {
                q.push(" AND source = ").push_bind(v.clone());
            }
            if let Some(v) = &args.status {
                q.push(" AND status = ").push_bind(v.clone());
            }
            if let Some(who) = &args.triggered_by {
                match Uuid::parse_str(who) {
                    Ok(id) => q.push(" AND triggered_by_id = ").push_bind(id),
                    Err(_) => q.push(" AND triggered_by_name = ").push_bind(who.clone()),
                };
            }
            if let Some(from) = args.from {
                q.push(" AND created_at >= ").push_bind(from);
            }
            if let Some(to) = args.to {
                q.push(" AND created_at < ").push_bind(to);
            }
        },
        "created_at DESC, id DESC",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    let mut runs: Vec<AgentRun> = runs;
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let tools: Vec<(Uuid, Vec<String>)> = sqlx::query_as(
        "SELECT id, array(SELECT DISTINCT c->>'name' FROM jsonb_array_elements(tool_calls) c
                          WHERE c->>'name' IS NOT NULL)
         FROM agent_runs WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?;
    let reader = Reader::of(&ctx).await?;
    for run in &mut runs {
        let unreadable = tools
            .iter()
            .find(|(id, _)| *id == run.id)
            .is_some_and(|(_, names)| names.iter().any(|n| reader.hidden(n).is_some()));
        if unreadable && run.output.is_some() {
            run.output = Some(marker(
                "the run read data that is not yours to read, and its output may repeat it",
            ));
        }
    }
    Ok(RunList {
        runs,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentArgs {
    /// Agent id or name.
    pub agent: String,
}

#[derive(Debug, Serialize, JsonSchema, sqlx::FromRow)]
pub struct ScheduleBrief {
    pub id: Uuid,
    pub kind: String,
    pub enabled: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentStatus {
    pub agent_id: Uuid,
    pub name: String,
    pub enabled: bool,
    pub paused: bool,
    pub execution_count: i64,
    pub success_count: i64,
    pub error_count: i64,
    pub timeout_count: i64,
    /// Successes over finished runs, 0 to 1; none before the first finished run.
    pub success_rate: Option<f64>,
    pub running: i64,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_status: Option<String>,
    pub last_error: Option<String>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub schedules: Vec<ScheduleBrief>,
}

async fn get_agent_status(ctx: ToolCtx, args: AgentArgs) -> Result<AgentStatus, ToolError> {
    let tenant = ctx.principal.tenant_id;
    let (agent, runnable) = find_runnable(&ctx.app, tenant, &args.agent).await?;
    let pool = ctx.app.store.pool();
    let (executions, successes, errors, timeouts, running): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status IN ('success', 'error', 'timeout')),
                    count(*) FILTER (WHERE status = 'success'),
                    count(*) FILTER (WHERE status = 'error'),
                    count(*) FILTER (WHERE status = 'timeout'),
                    count(*) FILTER (WHERE status IN ('queued', 'running'))
             FROM agent_runs WHERE tenant_id = $1 AND agent_id = $2",
        )
        .bind(tenant)
        .bind(agent.id)
        .fetch_one(pool)
        .await
        .map_err(StoreError::from)?;
    let last: Option<(DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT created_at, status FROM agent_runs WHERE tenant_id = $1 AND agent_id = $2
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(agent.id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?;
    let last_error: Option<String> = sqlx::query_scalar(
        "SELECT error FROM agent_runs WHERE tenant_id = $1 AND agent_id = $2 AND error IS NOT NULL
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(agent.id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?;
    let schedules: Vec<ScheduleBrief> = sqlx::query_as(
        "SELECT id, kind, enabled, next_run_at, last_run_at FROM agent_schedules
         WHERE tenant_id = $1 AND agent_id = $2 ORDER BY created_at",
    )
    .bind(tenant)
    .bind(agent.id)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?;
    let next_run_at = if runnable.paused {
        None
    } else {
        schedules
            .iter()
            .filter(|s| s.enabled)
            .filter_map(|s| s.next_run_at)
            .min()
    };
    Ok(AgentStatus {
        agent_id: agent.id,
        name: agent.name,
        enabled: agent.enabled && runnable.effective()?.enabled,
        paused: runnable.paused,
        execution_count: executions,
        success_count: successes,
        error_count: errors,
        timeout_count: timeouts,
        success_rate: (executions > 0).then(|| successes as f64 / executions as f64),
        running,
        last_run_at: last.as_ref().map(|l| l.0),
        last_status: last.map(|l| l.1),
        last_error,
        next_run_at,
        schedules,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsArgs {
    /// Agent id or name.
    pub agent: String,
    /// 1 to 365 days back (default 30).
    ///
    /// Days back from now.
    pub days: Option<u32>,
    /// `day` (default) or `hour`.
    pub bucket: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub runs: i64,
    pub successes: i64,
    pub success_rate: Option<f64>,
    pub p50_duration_ms: Option<f64>,
    pub p95_duration_ms: Option<f64>,
    pub total_tokens: i64,
    pub tool_calls: i64,
}

#[derive(Debug, Serialize, JsonSchema, sqlx::FromRow)]
pub struct ToolUse {
    pub tool: String,
    pub calls: i64,
    pub errors: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Analytics {
    pub agent_id: Uuid,
    pub name: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The whole period.
    pub totals: Bucket,
    pub series: Vec<Bucket>,
    pub tools: Vec<ToolUse>,
}

const BUCKET_COLUMNS: &str = "count(*) AS runs,
     count(*) FILTER (WHERE status = 'success') AS successes,
     (count(*) FILTER (WHERE status = 'success'))::float8
         / nullif(count(*) FILTER (WHERE status IN ('success', 'error', 'timeout')), 0) AS success_rate,
     percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_duration_ms,
     percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms,
     coalesce(sum(total_tokens), 0)::bigint AS total_tokens,
     coalesce(sum(tool_call_count), 0)::bigint AS tool_calls";

async fn get_agent_analytics(ctx: ToolCtx, args: AnalyticsArgs) -> Result<Analytics, ToolError> {
    let days = args.days.unwrap_or(30);
    if !(1..=365).contains(&days) {
        return Err(ToolError::InvalidRequest("days is 1 to 365".into()));
    }
    let bucket = args.bucket.unwrap_or_else(|| "day".into());
    if !matches!(bucket.as_str(), "day" | "hour") {
        return Err(ToolError::InvalidRequest("bucket is day or hour".into()));
    }
    let tenant = ctx.principal.tenant_id;
    let (agent, _) = find(&ctx.app, tenant, &args.agent).await?;
    let pool = ctx.app.store.pool();
    let to = Utc::now();
    let from = to - chrono::Duration::days(i64::from(days));
    let series: Vec<Bucket> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT date_trunc($4, created_at) AS start, {BUCKET_COLUMNS}
         FROM agent_runs WHERE tenant_id = $1 AND agent_id = $2 AND created_at >= $3
         GROUP BY 1 ORDER BY 1"
    )))
    .bind(tenant)
    .bind(agent.id)
    .bind(from)
    .bind(&bucket)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?;
    let totals: Bucket = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT $3::timestamptz AS start, {BUCKET_COLUMNS}
         FROM agent_runs WHERE tenant_id = $1 AND agent_id = $2 AND created_at >= $3"
    )))
    .bind(tenant)
    .bind(agent.id)
    .bind(from)
    .fetch_one(pool)
    .await
    .map_err(StoreError::from)?;
    let tools: Vec<ToolUse> = sqlx::query_as(
        "SELECT c->>'name' AS tool, count(*) AS calls,
                count(*) FILTER (WHERE c->>'status' <> 'ok') AS errors
         FROM agent_runs r CROSS JOIN LATERAL jsonb_array_elements(r.tool_calls) c
         WHERE r.tenant_id = $1 AND r.agent_id = $2 AND r.created_at >= $3
         GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .bind(tenant)
    .bind(agent.id)
    .bind(from)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?;
    Ok(Analytics {
        agent_id: agent.id,
        name: agent.name,
        from,
        to,
        totals,
        series,
        tools,
    })
}
