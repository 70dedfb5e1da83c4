//! Agent schedules: five-field cron in an IANA time zone (croner, DST included), an
//! interval, one run at a time, or after another agent's run ends with a given status.
//! A due schedule's row is locked and its `next_run_at` moved past now by one process in
//! one transaction that also queues the run for that due time (unique per schedule and
//! due time), so each due time fires once however many processes look, and a window
//! missed while every process was down fires once, not once per missed tick.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::config::find_runnable;
use super::runner::{MAX_CHAIN_DEPTH, NewRun, Trigger, queue};
use crate::access::delegation::{self, Cause, Member};
use crate::app::App;
use crate::error::ToolError;
use crate::jobs::cron::{self, parse as parse_cron, timezone as parse_timezone};
use crate::jobs::outbound::check_url;
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

const MIN_INTERVAL_SECONDS: u32 = 60;
const MAX_SCHEDULES_PER_AGENT: i64 = 50;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Agents.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "schedule_agent",
                "Schedule an agent",
                "Run an agent by `cron`, every `interval_seconds`, once at `run_at`, or after \
                 another agent.\n\n\
                 `cron` (five fields: minute hour day-of-month month day-of-week) is read in \
                 `timezone` (IANA, default UTC); `interval_seconds` is 60 or more; `after_agent` \
                 runs it when that agent's run ends with `after_status` (success, error, timeout \
                 or any), and the run receives its output. `start_at` delays the first run. With \
                 `callback_url` and `callback_secret`, each run's result is POSTed there, signed \
                 with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, and retried \
                 with backoff.",
                &["agents:write"],
                Hints::CREATE,
            ),
            schedule_agent,
        ),
        tool(
            def(
                "list_schedules",
                "List agent schedules",
                "List your schedules (an admin: everyone's), optionally of one agent, with \
                 their next and last run.\n\n\
                 Callback secrets are never shown.",
                &["agents:read"],
                Hints::READ,
            ),
            list_schedules,
        ),
        tool(
            def(
                "update_schedule",
                "Update an agent schedule",
                "Change a schedule's timing, prompt, callback or `enabled`; its next run is \
                 replanned.\n\n\
                 `enabled: false` pauses it. Its next run is planned again from now.",
                &["agents:write"],
                Hints::SET,
            ),
            update_schedule,
        ),
        tool(
            def(
                "delete_schedule",
                "Delete an agent schedule",
                "Delete a schedule; runs it started keep their log.",
                &["agents:write"],
                Hints::REMOVE,
            ),
            delete_schedule,
        ),
    ]
}

/// When a schedule fires next, strictly after `after`.
#[derive(Debug, Clone)]
pub enum Timing {
    Cron { cron: Box<Cron>, timezone: Tz },
    Interval { seconds: u32, anchor: DateTime<Utc> },
    Once { at: DateTime<Utc> },
    After,
}

impl Timing {
    /// The first due time after `after`, not before `start_at`.
    pub fn next_after(
        &self,
        after: DateTime<Utc>,
        start_at: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Timing::Cron { cron, timezone } => {
                // From just before the start, so a start on a matching minute fires then.
                let from = match start_at {
                    Some(start) if start > after => start - chrono::Duration::seconds(1),
                    _ => after,
                };
                cron::next_after(cron, *timezone, from)
            }
            Timing::Interval { seconds, anchor } => {
                let anchor = start_at.unwrap_or(*anchor);
                if anchor > after {
                    return Some(anchor);
                }
                let step = i64::from(*seconds);
                let elapsed = (after - anchor).num_seconds();
                Some(anchor + chrono::Duration::seconds((elapsed / step + 1) * step))
            }
            Timing::Once { at } => Some(*at),
            Timing::After => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Schedule {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub agent_name: String,
    /// `cron`, `interval`, `once` or `after`.
    pub kind: String,
    pub cron: Option<String>,
    pub timezone: String,
    pub interval_seconds: Option<i32>,
    pub run_at: Option<DateTime<Utc>>,
    pub start_at: Option<DateTime<Utc>>,
    pub after_agent_id: Option<Uuid>,
    pub after_agent_name: Option<String>,
    pub after_status: Option<String>,
    pub enabled: bool,
    pub prompt: String,
    pub callback_url: Option<String>,
    /// A callback secret is stored (it is never shown).
    pub has_callback_secret: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub created_by_name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "s.id, s.agent_id, a.name AS agent_name, s.kind, s.cron, s.timezone, \
     s.interval_seconds, s.run_at, s.start_at, s.after_agent_id, b.name AS after_agent_name, \
     s.after_status, s.enabled, s.prompt, s.callback_url, \
     s.callback_secret_encrypted IS NOT NULL AS has_callback_secret, s.next_run_at, \
     s.last_run_at, s.created_by_name, s.created_at, s.updated_at";
const FROM: &str = " FROM agent_schedules s JOIN agents a ON a.id = s.agent_id \
     LEFT JOIN agents b ON b.id = s.after_agent_id";

impl Schedule {
    fn timing(&self) -> Result<Timing, String> {
        timing(
            &self.kind,
            self.cron.as_deref(),
            &self.timezone,
            self.interval_seconds,
            self.run_at,
            self.created_at,
        )
    }
}

fn timing(
    kind: &str,
    cron: Option<&str>,
    timezone: &str,
    interval_seconds: Option<i32>,
    run_at: Option<DateTime<Utc>>,
    anchor: DateTime<Utc>,
) -> Result<Timing, String> {
    Ok(match kind {
        "cron" => Timing::Cron {
            cron: Box::new(parse_cron(cron.unwrap_or_default())?),
            timezone: parse_timezone(timezone)?,
        },
        "interval" => Timing::Interval {
            seconds: interval_seconds.unwrap_or(3600).max(1) as u32,
            anchor,
        },
        "once" => Timing::Once {
            at: run_at.ok_or("a one-off schedule needs run_at")?,
        },
        _ => Timing::After,
    })
}

async fn load(ctx: &ToolCtx, id: Uuid) -> Result<Schedule, ToolError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}{FROM} WHERE s.tenant_id = $1 AND s.id = $2"
    )))
    .bind(ctx.principal.tenant_id)
    .bind(id)
    .fetch_optional(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?
    .ok_or_else(|| ToolError::NotFound(format!("no schedule {id} in this tenant")))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleArgs {
    /// Agent to run (id or name).
    pub agent: String,
    /// Five-field cron.
    ///
    /// Minute hour day-of-month month day-of-week.
    pub cron: Option<String>,
    /// IANA time zone (default `UTC`).
    ///
    /// The time zone the cron is read in.
    pub timezone: Option<String>,
    /// Seconds between runs, 60 or more.
    pub interval_seconds: Option<u32>,
    /// Run once, at this time.
    pub run_at: Option<DateTime<Utc>>,
    /// After this agent's runs (id or name).
    ///
    /// Run when this agent's run ends, with `after_status`.
    pub after_agent: Option<String>,
    /// `success` (default), `error`, `timeout`, `any`.
    ///
    /// The status `after_agent`'s run must end with to start this one.
    pub after_status: Option<String>,
    /// No run before this time.
    pub start_at: Option<DateTime<Utc>>,
    /// Default true.
    pub enabled: Option<bool>,
    /// What each run is asked.
    #[serde(default)]
    pub prompt: String,
    /// Where results are POSTed.
    pub callback_url: Option<String>,
    /// Signs callbacks; 16+ characters.
    ///
    /// HMAC-SHA256. Never shown again.
    pub callback_secret: Option<String>,
}

struct Checked {
    kind: &'static str,
    timezone: String,
    after_agent_id: Option<Uuid>,
    after_status: Option<String>,
    callback_url: Option<String>,
}

fn exactly_one_timing(args: &ScheduleArgs) -> Result<&'static str, ToolError> {
    let given: Vec<&'static str> = [
        (args.cron.is_some(), "cron"),
        (args.interval_seconds.is_some(), "interval"),
        (args.run_at.is_some(), "once"),
        (args.after_agent.is_some(), "after"),
    ]
    .into_iter()
    .filter_map(|(set, kind)| set.then_some(kind))
    .collect();
    match given.as_slice() {
        [kind] => Ok(kind),
        _ => Err(ToolError::InvalidRequest(
            "give exactly one of cron, interval_seconds, run_at or after_agent".into(),
        )),
    }
}

async fn check(
    ctx: &ToolCtx,
    args: &ScheduleArgs,
    kind: &'static str,
) -> Result<Checked, ToolError> {
    let bad = |m: String| ToolError::InvalidRequest(m);
    let timezone = args.timezone.clone().unwrap_or_else(|| "UTC".into());
    parse_timezone(&timezone).map_err(bad)?;
    if let Some(cron) = &args.cron {
        parse_cron(cron).map_err(bad)?;
    }
    if let Some(seconds) = args.interval_seconds
        && seconds < MIN_INTERVAL_SECONDS
    {
        return Err(bad(format!(
            "interval_seconds is at least {MIN_INTERVAL_SECONDS}"
        )));
    }
    if args.prompt.len() > 100_000 {
        return Err(bad("prompt is limited to 100,000 bytes".into()));
    }
    let (after_agent_id, after_status) = match &args.after_agent {
        Some(after) => {
            let (previous, _) =
                super::config::find(&ctx.app, ctx.principal.tenant_id, after).await?;
            // The chained run receives the previous run's output: whoever chains them must
            // be able to have run that agent too.
            delegation::may_run_as(
                &ctx.principal,
                crate::access::Scopes::parse(&previous.scopes)
                    .unwrap_or(crate::access::Scopes::EVERY),
                &previous.name,
            )?;
            let status = args
                .after_status
                .clone()
                .unwrap_or_else(|| "success".into());
            if !matches!(status.as_str(), "success" | "error" | "timeout" | "any") {
                return Err(bad("after_status is success, error, timeout or any".into()));
            }
            (Some(previous.id), Some(status))
        }
        None if args.after_status.is_some() => {
            return Err(bad("after_status goes with after_agent".into()));
        }
        None => (None, None),
    };
    let callback_url = match &args.callback_url {
        Some(url) => {
            let url =
                check_url(url, ctx.app.outbound).map_err(|e| bad(format!("callback_url: {e}")))?;
            match &args.callback_secret {
                Some(secret) if secret.chars().count() >= 16 => {}
                _ => {
                    return Err(bad(
                        "callback_url needs a callback_secret of 16 characters or more to sign \
                         with"
                            .into(),
                    ));
                }
            }
            if ctx.app.vault.is_none() {
                return Err(ToolError::Forbidden(
                    "this server has no encryption key for callback secrets; the operator must \
                     set AGENTCRM_ENCRYPTION_KEY"
                        .into(),
                ));
            }
            Some(url.to_string())
        }
        None if args.callback_secret.is_some() => {
            return Err(bad("callback_secret goes with callback_url".into()));
        }
        None => None,
    };
    Ok(Checked {
        kind,
        timezone,
        after_agent_id,
        after_status,
        callback_url,
    })
}

async fn schedule_agent(ctx: ToolCtx, args: ScheduleArgs) -> Result<Schedule, ToolError> {
    let kind = exactly_one_timing(&args)?;
    let (agent, _) = find_runnable(&ctx.app, ctx.principal.tenant_id, &args.agent).await?;
    delegation::may_run_as(
        &ctx.principal,
        crate::access::Scopes::parse(&agent.scopes).unwrap_or(crate::access::Scopes::EVERY),
        &agent.name,
    )?;
    let checked = check(&ctx, &args, kind).await?;
    let id = Uuid::new_v4();
    let now = Utc::now();
    let timing = timing(
        checked.kind,
        args.cron.as_deref(),
        &checked.timezone,
        args.interval_seconds.map(|s| s as i32),
        args.run_at,
        now,
    )
    .map_err(ToolError::InvalidRequest)?;
    let next = match timing {
        // A first interval run waits one interval (or for start_at).
        Timing::Interval { seconds, .. } => Some(
            args.start_at
                .unwrap_or(now + chrono::Duration::seconds(i64::from(seconds))),
        ),
        other => other.next_after(now, args.start_at),
    };
    let sealed = match (&args.callback_secret, &ctx.app.vault) {
        (Some(secret), Some(vault)) if checked.callback_url.is_some() => {
            Some(vault.seal(secret.as_bytes(), id.as_bytes()))
        }
        _ => None,
    };
    let pool = ctx.app.store.pool();
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    sqlx::query("SELECT id FROM agents WHERE id = $1 FOR NO KEY UPDATE")
        .bind(agent.id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_schedules WHERE agent_id = $1")
        .bind(agent.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    if count >= MAX_SCHEDULES_PER_AGENT {
        return Err(ToolError::Conflict(format!(
            "agent `{}` already has {MAX_SCHEDULES_PER_AGENT} schedules",
            agent.name
        )));
    }
    sqlx::query(
        "INSERT INTO agent_schedules (id, tenant_id, agent_id, kind, cron, timezone,
             interval_seconds, run_at, start_at, after_agent_id, after_status, enabled, prompt,
             callback_url, callback_secret_encrypted, next_run_at, created_by_kind,
             created_by_id, created_by_name, created_at, updated_at, creator)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, $19, $20, $20, $21)",
    )
    .bind(id)
    .bind(ctx.principal.tenant_id)
    .bind(agent.id)
    .bind(checked.kind)
    .bind(&args.cron)
    .bind(&checked.timezone)
    .bind(args.interval_seconds.map(|s| s as i32))
    .bind(args.run_at)
    .bind(args.start_at)
    .bind(checked.after_agent_id)
    .bind(&checked.after_status)
    .bind(args.enabled.unwrap_or(true))
    .bind(&args.prompt)
    .bind(&checked.callback_url)
    .bind(sealed)
    .bind(next)
    .bind(ctx.principal.kind.as_str())
    .bind(ctx.principal.id)
    .bind(&ctx.principal.name)
    .bind(now)
    .bind(serde_json::to_value(Member::of(&ctx.principal)).unwrap_or_default())
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    ctx.commit(tx).await?;
    load(&ctx, id).await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only this agent's (id or name).
    pub agent: Option<String>,
    #[serde(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_schedules(ctx: ToolCtx, args: ListArgs) -> Result<ScheduleList, ToolError> {
    let page = args.page.page()?;
    let agent = match &args.agent {
        Some(agent) => Some(
            super::config::find(&ctx.app, ctx.principal.tenant_id, agent)
                .await?
                .0
                .id,
        ),
        None => None,
    };
    let tenant = ctx.principal.tenant_id;
    let (schedules, total) = fetch_page(
        ctx.app.store.pool(),
        COLUMNS,
        |q| {
            q.push(FROM).push(" WHERE s.tenant_id = ").push_bind(tenant);
            if let Some(agent) = agent {
                q.push(" AND s.agent_id = ").push_bind(agent);
            }
            // A schedule's prompt and callback URL are its maker's: admins see every one.
            delegation::push_readable_in(q, &ctx.principal, "jsonb_build_array(s.creator)");
        },
        "s.created_at DESC, s.id",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    Ok(ScheduleList {
        schedules,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateArgs {
    /// From list_schedules.
    pub schedule_id: Uuid,
    /// Five-field cron (cron schedules).
    ///
    /// Minute hour day-of-month month day-of-week. A schedule keeps its kind of timing; to
    /// change it, delete the schedule and schedule the agent again.
    pub cron: Option<String>,
    /// IANA time zone (cron schedules).
    pub timezone: Option<String>,
    /// 60 or more (interval schedules).
    pub interval_seconds: Option<u32>,
    /// New time (one-off schedules).
    pub run_at: Option<DateTime<Utc>>,
    /// No run before this time.
    pub start_at: Option<DateTime<Utc>>,
    /// `success`, `error`, `timeout`, `any`.
    ///
    /// Schedules after another agent: the status its run must end with.
    pub after_status: Option<String>,
    /// `false` pauses it.
    pub enabled: Option<bool>,
    /// What each run is asked.
    pub prompt: Option<String>,
    /// `""` removes the callback.
    pub callback_url: Option<String>,
    /// Signs callbacks; 16+ characters.
    ///
    /// HMAC-SHA256; never shown again. Give it again with a new `callback_url`.
    pub callback_secret: Option<String>,
}

/// Only a schedule's creator (or an admin) changes or deletes it.
async fn may_change(ctx: &ToolCtx, id: Uuid) -> Result<(), ToolError> {
    let creator: Option<Option<Value>> =
        sqlx::query_scalar("SELECT creator FROM agent_schedules WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.principal.tenant_id)
            .bind(id)
            .fetch_optional(ctx.app.store.pool())
            .await
            .map_err(StoreError::from)?;
    let Some(creator) = creator else {
        return Err(ToolError::NotFound(format!(
            "no schedule {id} in this tenant"
        )));
    };
    let creator = creator.and_then(|v| serde_json::from_value::<Member>(v).ok());
    delegation::may_manage(&ctx.principal, creator.as_ref(), &format!("schedule {id}"))
}

async fn update_schedule(ctx: ToolCtx, args: UpdateArgs) -> Result<Schedule, ToolError> {
    may_change(&ctx, args.schedule_id).await?;
    let current = load(&ctx, args.schedule_id).await?;
    let bad = ToolError::InvalidRequest;
    // Timing fields must fit the schedule's kind; changing kind is a new schedule.
    let fits = match current.kind.as_str() {
        "cron" => {
            args.interval_seconds.is_none() && args.run_at.is_none() && args.after_status.is_none()
        }
        "interval" => {
            args.cron.is_none()
                && args.run_at.is_none()
                && args.after_status.is_none()
                && args.timezone.is_none()
        }
        "once" => {
            args.cron.is_none()
                && args.interval_seconds.is_none()
                && args.after_status.is_none()
                && args.timezone.is_none()
        }
        _ => {
            args.cron.is_none()
                && args.interval_seconds.is_none()
                && args.run_at.is_none()
                && args.timezone.is_none()
        }
    };
    if !fits {
        return Err(bad(format!(
            "a {} schedule takes no other kind of timing; delete it and schedule again",
            current.kind
        )));
    }
    let remove_callback = args.callback_url.as_deref() == Some("");
    let merged = ScheduleArgs {
        agent: current.agent_id.to_string(),
        cron: args.cron.clone().or(current.cron.clone()),
        timezone: args.timezone.clone().or(Some(current.timezone.clone())),
        interval_seconds: args
            .interval_seconds
            .or(current.interval_seconds.map(|s| s as u32)),
        run_at: args.run_at.or(current.run_at),
        after_agent: current.after_agent_id.map(|a| a.to_string()),
        after_status: args.after_status.clone().or(current.after_status.clone()),
        start_at: args.start_at.or(current.start_at),
        enabled: args.enabled,
        prompt: args
            .prompt
            .clone()
            .unwrap_or_else(|| current.prompt.clone()),
        callback_url: if remove_callback {
            None
        } else {
            args.callback_url.clone()
        },
        callback_secret: if remove_callback {
            None
        } else {
            args.callback_secret.clone()
        },
    };
    // A new secret alone keeps the URL; a new URL needs its secret again.
    let mut to_check = merged;
    if to_check.callback_url.is_none() && to_check.callback_secret.is_some() {
        to_check.callback_url = current.callback_url.clone();
        if to_check.callback_url.is_none() {
            return Err(bad("callback_secret goes with callback_url".into()));
        }
    }
    let kind = exactly_one_timing(&to_check)?;
    let checked = check(&ctx, &to_check, kind).await?;
    let timing = timing(
        kind,
        to_check.cron.as_deref(),
        &checked.timezone,
        to_check.interval_seconds.map(|s| s as i32),
        to_check.run_at,
        current.created_at,
    )
    .map_err(bad)?;
    let now = Utc::now();
    // A one-off that already ran stays done unless given a new time.
    let next = if kind == "once" && args.run_at.is_none() {
        current.next_run_at
    } else {
        timing.next_after(now, to_check.start_at)
    };
    let (set_callback, sealed) = match (&to_check.callback_secret, &ctx.app.vault) {
        (Some(secret), Some(vault)) => (
            true,
            Some(vault.seal(secret.as_bytes(), current.id.as_bytes())),
        ),
        _ => (remove_callback, None),
    };
    let mut tx = ctx.begin().await?;
    sqlx::query(
        "UPDATE agent_schedules SET cron = $3, timezone = $4, interval_seconds = $5, run_at = $6,
             start_at = $7, after_status = $8, enabled = coalesce($9, enabled), prompt = $10,
             callback_url = CASE WHEN $11 THEN $12 ELSE callback_url END,
             callback_secret_encrypted = CASE WHEN $11 THEN $13 ELSE callback_secret_encrypted END,
             next_run_at = $14, updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(ctx.principal.tenant_id)
    .bind(current.id)
    .bind(&to_check.cron)
    .bind(&checked.timezone)
    .bind(to_check.interval_seconds.map(|s| s as i32))
    .bind(to_check.run_at)
    .bind(to_check.start_at)
    .bind(&checked.after_status)
    .bind(args.enabled)
    .bind(&to_check.prompt)
    .bind(set_callback)
    .bind(&checked.callback_url)
    .bind(sealed)
    .bind(next)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    ctx.commit(tx).await?;
    load(&ctx, current.id).await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleIdArgs {
    /// From list_schedules.
    pub schedule_id: Uuid,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub deleted: Uuid,
}

async fn delete_schedule(ctx: ToolCtx, args: ScheduleIdArgs) -> Result<Deleted, ToolError> {
    may_change(&ctx, args.schedule_id).await?;
    let mut tx = ctx.begin().await?;
    let deleted: Option<Uuid> = sqlx::query_scalar(
        "DELETE FROM agent_schedules WHERE tenant_id = $1 AND id = $2 RETURNING id",
    )
    .bind(ctx.principal.tenant_id)
    .bind(args.schedule_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let deleted = deleted.ok_or_else(|| {
        ToolError::NotFound(format!("no schedule {} in this tenant", args.schedule_id))
    })?;
    ctx.commit(tx).await?;
    Ok(Deleted { deleted })
}

/// The next due time of every schedule of `agent_id`, as planned now (resume_agent).
pub async fn replan(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
) -> Result<(), ToolError> {
    let schedules: Vec<Schedule> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}{FROM} WHERE s.tenant_id = $1 AND s.agent_id = $2 AND s.kind IN ('cron', 'interval')"
    )))
    .bind(tenant_id)
    .bind(agent_id)
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let now = Utc::now();
    for schedule in schedules {
        let Ok(timing) = schedule.timing() else {
            continue;
        };
        sqlx::query("UPDATE agent_schedules SET next_run_at = $2 WHERE id = $1")
            .bind(schedule.id)
            .bind(timing.next_after(now, schedule.start_at))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    tenant_id: Uuid,
    agent_id: Uuid,
    kind: String,
    cron: Option<String>,
    timezone: String,
    interval_seconds: Option<i32>,
    run_at: Option<DateTime<Utc>>,
    start_at: Option<DateTime<Utc>>,
    prompt: String,
    next_run_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    created_by_name: String,
    creator: Option<Value>,
}

/// A schedule's creator as the chain member its runs act for (none when unknown: such a
/// run acts for nobody and does not run).
fn creator_members(creator: &Option<Value>) -> Vec<Member> {
    match creator
        .as_ref()
        .map(|v| serde_json::from_value::<Member>(v.clone()))
    {
        Some(Ok(member)) => vec![member],
        _ => vec![Member {
            kind: crate::access::PrincipalKind::User,
            id: Uuid::nil(),
            name: "the schedule's creator".into(),
            person: None,
        }],
    }
}

/// Queues the run of every due schedule, once per due time.
pub async fn fire_due(app: &App) -> Result<(), ToolError> {
    let pool = app.store.pool();
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let due: Vec<Due> = sqlx::query_as(
        "SELECT id, tenant_id, agent_id, kind, cron, timezone, interval_seconds, run_at, start_at,
                prompt, next_run_at, created_at, created_by_name, creator
         FROM agent_schedules
         WHERE enabled AND next_run_at <= now() AND kind <> 'after'
         ORDER BY next_run_at LIMIT 50
         FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if due.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    for schedule in due {
        let next = match timing(
            &schedule.kind,
            schedule.cron.as_deref(),
            &schedule.timezone,
            schedule.interval_seconds,
            schedule.run_at,
            schedule.created_at,
        ) {
            Ok(Timing::Once { .. }) | Ok(Timing::After) => None,
            // However many due times were missed, the next is after now: one run for them.
            Ok(timing) => timing.next_after(now, schedule.start_at),
            Err(error) => {
                tracing::warn!(schedule = %schedule.id, %error, "agent schedule cannot be read; disabled");
                None
            }
        };
        sqlx::query("UPDATE agent_schedules SET next_run_at = $2 WHERE id = $1")
            .bind(schedule.id)
            .bind(next)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let found = find_runnable(app, schedule.tenant_id, &schedule.agent_id.to_string()).await;
        let (agent, runnable) = match found {
            Ok(found) => found,
            Err(error) => {
                tracing::info!(schedule = %schedule.id, %error, "scheduled agent cannot run");
                continue;
            }
        };
        if runnable.paused {
            continue; // paused: the due time passes without a run
        }
        let trigger = Trigger {
            source: "schedule",
            kind: Some("schedule".into()),
            id: Some(schedule.id),
            name: schedule.created_by_name.clone(),
        };
        queue(
            &mut tx,
            NewRun {
                agent: &agent,
                runnable: &runnable,
                trigger,
                prompt: schedule.prompt.clone(),
                input: json!({ "due_at": schedule.next_run_at }),
                schedule_id: Some(schedule.id),
                due_at: Some(schedule.next_run_at),
                parent_run_id: None,
                chain_depth: 0,
                acts_for: creator_members(&schedule.creator),
                cause: Cause::default(),
                claim: false,
            },
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Queues the runs chained on a run of `agent_id` that ended with `status` (in the
/// transaction that ends it, so they are queued exactly once).
pub async fn chain(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
    run_id: Uuid,
    status: &str,
    previous: &Value,
    depth: i32,
) -> Result<(), ToolError> {
    #[derive(sqlx::FromRow)]
    struct Chained {
        id: Uuid,
        agent_id: Uuid,
        prompt: String,
        creator: Option<Value>,
    }
    let chained: Vec<Chained> = sqlx::query_as(
        "SELECT s.id, s.agent_id, s.prompt, s.creator FROM agent_schedules s
         WHERE s.tenant_id = $1 AND s.kind = 'after' AND s.after_agent_id = $2 AND s.enabled
           AND (s.after_status = $3 OR s.after_status = 'any')",
    )
    .bind(tenant_id)
    .bind(agent_id)
    .bind(status)
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if chained.is_empty() {
        return Ok(());
    }
    if depth + 1 > MAX_CHAIN_DEPTH {
        tracing::warn!(run = %run_id, "agent chain stopped: {MAX_CHAIN_DEPTH} chained runs in a row");
        return Ok(());
    }
    // Whom the previous run was done for: a schedule's creator who was not among them
    // hears that it ended, not what it said.
    let ran_for: Option<Value> = sqlx::query_scalar("SELECT chain FROM agent_runs WHERE id = $1")
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    let ran_for = ran_for
        .as_ref()
        .map(delegation::read_chain)
        .unwrap_or_default();
    for schedule in chained {
        let agent: Option<crate::access::store::Agent> = sqlx::query_as(
            "SELECT id, tenant_id, name, description, client_id, kind, enabled, scopes, created_at
             FROM agents WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(schedule.agent_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let Some(agent) = agent else { continue };
        let runnable: Option<super::config::Runnable> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM agent_runnables WHERE agent_id = $1",
                super::config::RUNNABLE_COLUMNS
            )))
            .bind(agent.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let Some(runnable) = runnable.filter(|r| !r.paused) else {
            continue;
        };
        if !agent.enabled {
            continue;
        }
        let previous_agent = previous["agent"].as_str().unwrap_or_default().to_owned();
        let creators = creator_members(&schedule.creator);
        let previous = if delegation::members_may_read(&creators, &ran_for) {
            previous.clone()
        } else {
            json!({
                "run_id": previous["run_id"],
                "agent_id": previous["agent_id"],
                "agent": previous["agent"],
                "status": previous["status"],
                "output": crate::mcp::shaping::marker(
                    "the previous run was done for others than this schedule's creator"
                ),
            })
        };
        queue(
            &mut *tx,
            NewRun {
                agent: &agent,
                runnable: &runnable,
                trigger: Trigger {
                    source: "agent",
                    kind: Some("agent".into()),
                    id: Some(agent_id),
                    name: previous_agent,
                },
                prompt: schedule.prompt,
                input: json!({ "previous": previous }),
                schedule_id: Some(schedule.id),
                due_at: None,
                parent_run_id: Some(run_id),
                chain_depth: depth + 1,
                acts_for: creators,
                cause: Cause {
                    depth: 0,
                    ..Cause::default()
                },
                claim: false,
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn missed_windows_give_one_next_time_after_now() {
        let every_5 = Timing::Cron {
            cron: Box::new(parse_cron("*/5 * * * *").unwrap()),
            timezone: parse_timezone("UTC").unwrap(),
        };
        // Down for hours: the next due time is the first after now, not a backlog.
        assert_eq!(
            every_5.next_after(utc("2026-05-01T12:02:00Z"), None),
            Some(utc("2026-05-01T12:05:00Z"))
        );
        let interval = Timing::Interval {
            seconds: 600,
            anchor: utc("2026-05-01T09:00:00Z"),
        };
        assert_eq!(
            interval.next_after(utc("2026-05-01T12:02:00Z"), None),
            Some(utc("2026-05-01T12:10:00Z"))
        );
    }

    #[test]
    fn start_at_delays_the_first_run() {
        let daily = Timing::Cron {
            cron: Box::new(parse_cron("0 9 * * *").unwrap()),
            timezone: parse_timezone("Europe/Paris").unwrap(),
        };
        assert_eq!(
            daily.next_after(
                utc("2026-05-01T00:00:00Z"),
                Some(utc("2026-05-10T07:00:00Z"))
            ),
            Some(utc("2026-05-10T07:00:00Z"))
        );
    }
}
