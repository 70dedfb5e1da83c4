//! The approval queue: agent calls held by the approval policy (`access::approval`), and
//! the decision of a person. Approving runs the stored call as the agent, with the agent's
//! permissions of that moment, exactly once: the move to `approved` is one conditional
//! UPDATE, so of two people approving at once only one runs it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{Entry, notify_changed};
use crate::access::audit::redact;
use crate::access::delegation::{self, Cause, Member};
use crate::access::principal::{PrincipalKind, Role};
use crate::access::{Principal, Scopes};
use crate::app::App;
use crate::error::ToolError;
use crate::events;
use crate::mcp::call::{Call, invoke};
use crate::mcp::shaping::Reader;
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::{ToolCtx, Transport};

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Handoff.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "list_pending_actions",
                "List held agent actions",
                "List agent calls held for approval (open ones by default); agents see their \
                 own.\n\n\
                 The approval queue: agent calls held by the tenant's approval policy, with the \
                 action (tool), customer, agent, summary, request time and state (pending, \
                 escalated, approved, rejected, executed, failed). Open ones (pending, escalated) \
                 unless `state` says otherwise.",
                &["handoff"],
                Hints::READ,
            ),
            list_pending_actions,
        ),
        tool(
            def(
                "get_pending_action",
                "Get a held agent action",
                "Get a held action, its decision and, once it ran, its result or error.\n\n\
                 With its arguments and why it was held. Agents see their own, whatever their \
                 scopes: this is how an agent learns the outcome. Others need `handoff`.",
                &[],
                Hints::READ,
            ),
            get_pending_action,
        ),
        tool(
            def(
                "decide_pending_action",
                "Decide a held agent action",
                "Approve, reject or escalate an agent's held call (people only, never agents).\n\n\
                 For people with handoff:decide. Approve runs the held call now, as the agent, \
                 with the agent's permissions re-checked; the action ends `executed` with its \
                 result or `failed` with the reason. Reject: nothing runs. Escalate: an admin \
                 decides. A note is kept in the history.",
                &["handoff:decide"],
                // Approving runs a held call, which may delete.
                Hints {
                    destructive: true,
                    ..Hints::CREATE
                },
            ),
            decide_pending_action,
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    Pending,
    Escalated,
    Approved,
    Rejected,
    Executed,
    Failed,
}

impl ActionState {
    fn as_str(self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::Escalated => "escalated",
            ActionState::Approved => "approved",
            ActionState::Rejected => "rejected",
            ActionState::Executed => "executed",
            ActionState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct PendingAction {
    pub id: Uuid,
    /// The tool held, e.g. `delete_customer`.
    pub action_type: String,
    /// The arguments it was called with; approval runs it with exactly these.
    pub arguments: Value,
    /// What it would do, for the person deciding.
    pub summary: String,
    /// The rule of the approval policy that held it.
    pub hold_reason: String,
    pub customer_id: Option<Uuid>,
    pub customer_name: Option<String>,
    pub agent_id: Option<Uuid>,
    pub agent_name: String,
    /// `pending`, `escalated`, `approved` (running), `rejected`, `executed` or `failed`.
    pub state: String,
    pub requested_at: DateTime<Utc>,
    pub decided_by_name: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision_note: Option<String>,
    /// What the call returned, once `executed`.
    pub result: Option<Value>,
    /// Why it did not run, once `failed`.
    pub error: Option<String>,
    pub executed_at: Option<DateTime<Utc>>,
    #[schemars(with = "Vec<Entry>")]
    pub history: Value,
}

const COLUMNS: &str = "id, tool AS action_type, arguments, summary, hold_reason, customer_id, \
     customer_name, agent_id, agent_name, state, created_at AS requested_at, decided_by_name, \
     decided_at, decision_note, result, error, executed_at, history";

#[derive(Debug, Serialize, JsonSchema)]
pub struct PendingActionOut {
    pub pending_action: PendingAction,
}

/// Agents see only their own held calls, and so does work done for a chain with an agent
/// in it: the calls held for that agent (the chain's first, as they are stored).
fn push_visibility(query: &mut QueryBuilder<Postgres>, principal: &Principal) {
    query
        .push(" WHERE tenant_id = ")
        .push_bind(principal.tenant_id);
    if let Some(agent) = principal.chain_agent() {
        query.push(" AND agent_id = ").push_bind(agent.id);
    }
}

/// An action as `principal` may see it (for the resource `agentcrm://pending-actions/{id}`).
pub async fn visible(
    pool: &PgPool,
    principal: &Principal,
    id: Uuid,
) -> Result<PendingAction, ToolError> {
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM pending_actions"));
    push_visibility(&mut query, principal);
    query.push(" AND id = ").push_bind(id);
    query
        .build_query_as()
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
        .map(shown)
        .ok_or_else(|| {
            ToolError::NotFound(format!("no pending action {id} that this caller can see"))
        })
}

/// As shown to anyone: values of secret-named keys in the arguments are redacted (the
/// stored arguments stay whole, to run as called).
fn shown(mut action: PendingAction) -> PendingAction {
    action.arguments = redact(&action.arguments);
    action
}

/// A held call's arguments and result as the reader's own permissions show them (the agent
/// whose call it was sees what it sent).
fn shape(reader: &Reader, action: &mut PendingAction) {
    if reader.is(action.agent_id) {
        return;
    }
    reader.shape(&action.action_type, &mut action.arguments);
    if let Some(result) = &mut action.result {
        reader.shape(&action.action_type, result);
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionIdArgs {
    /// From list_pending_actions.
    pub action_id: Uuid,
}

async fn get_pending_action(
    ctx: ToolCtx,
    args: ActionIdArgs,
) -> Result<PendingActionOut, ToolError> {
    // The agent whose call was held follows it up whatever its scopes (the held answer
    // told it to); anyone else reads the approval queue with `handoff`.
    let handoff = Scopes::parse(&["handoff"]).unwrap_or(Scopes::EVERY);
    if !ctx.principal.is_agent() && !ctx.principal.scopes.contains(handoff) {
        return Err(ToolError::Forbidden(
            "reading held actions needs the `handoff` scope (an agent reads its own without it)"
                .into(),
        ));
    }
    let mut pending_action = visible(ctx.app.store.pool(), &ctx.principal, args.action_id).await?;
    // An agent reads what it sent as it sent it (and without loading anyone's policy).
    if ctx.principal.id != pending_action.agent_id {
        shape(&Reader::of(&ctx).await?, &mut pending_action);
    }
    Ok(PendingActionOut { pending_action })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Default: the open ones.
    ///
    /// The open ones are `pending` and `escalated`.
    pub state: Option<ActionState>,
    /// Only this agent's actions.
    pub agent_id: Option<Uuid>,
    /// Only about this customer.
    pub customer_id: Option<Uuid>,
    /// Only this tool.
    ///
    /// E.g. `delete_customer`.
    pub action_type: Option<String>,
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
pub struct PendingActionList {
    pub pending_actions: Vec<PendingAction>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_pending_actions(
    ctx: ToolCtx,
    args: ListArgs,
) -> Result<PendingActionList, ToolError> {
    let page = PageArgs::of(args.limit, &args.cursor)?;
    let principal = &ctx.principal;
    let (pending_actions, total) = fetch_page(
        ctx.app.store.pool(),
        COLUMNS,
        |q| {
            q.push(" FROM pending_actions");
            push_visibility(q, principal);
            match args.state {
                Some(state) => {
                    q.push(" AND state = ").push_bind(state.as_str());
                }
                None => {
                    q.push(" AND state IN ('pending', 'escalated')");
                }
            }
            if let Some(agent) = args.agent_id {
                q.push(" AND agent_id = ").push_bind(agent);
            }
            if let Some(customer) = args.customer_id {
                q.push(" AND customer_id = ").push_bind(customer);
            }
            if let Some(tool) = &args.action_type {
                q.push(" AND tool = ").push_bind(tool.clone());
            }
        },
        "created_at DESC, id",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    let reader = Reader::of(&ctx).await?;
    Ok(PendingActionList {
        pending_actions: pending_actions
            .into_iter()
            .map(|action| {
                let mut action = shown(action);
                shape(&reader, &mut action);
                action
            })
            .collect(),
        page: page.info(total),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run the held call now, as the agent.
    Approve,
    /// Do not run it.
    Reject,
    /// Leave it to an admin.
    Escalate,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideArgs {
    /// From list_pending_actions.
    pub action_id: Uuid,
    /// What to do with the held call.
    pub decision: Decision,
    /// Why; shown to the agent.
    ///
    /// Up to 5,000 characters; kept in the history and shown to the agent.
    pub note: Option<String>,
}

async fn decide_pending_action(
    ctx: ToolCtx,
    args: DecideArgs,
) -> Result<PendingActionOut, ToolError> {
    let note = args
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.chars().count() > 5000) {
        return Err(ToolError::InvalidRequest(
            "note must be at most 5,000 characters".into(),
        ));
    }
    let pool = ctx.app.store.pool();
    let principal = &ctx.principal;
    let is_admin = principal.role == Some(Role::Admin);
    let (state, action) = match args.decision {
        Decision::Approve => ("approved", "approved"),
        Decision::Reject => ("rejected", "rejected"),
        Decision::Escalate => ("escalated", "escalated"),
    };
    // Open actions only; an escalated one is an admin's to decide, and escalating twice
    // changes nothing.
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let decided: Option<PendingAction> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE pending_actions SET state = $3, decided_by_id = $4, decided_by_name = $5,
             decided_at = now(), decision_note = $6, updated_at = now(),
             history = history || jsonb_build_array(jsonb_build_object('at', now(), 'by', $5::text,
                 'action', $7::text, 'state', $3::text, 'note', $6::text))
         WHERE tenant_id = $1 AND id = $2
           AND (state = 'pending' OR (state = 'escalated' AND $8 AND $3 <> 'escalated'))
         RETURNING {COLUMNS}"
    )))
    .bind(principal.tenant_id)
    .bind(args.action_id)
    .bind(state)
    .bind(principal.id)
    .bind(&principal.name)
    .bind(note)
    .bind(action)
    .bind(is_admin)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let Some(decided) = decided else {
        drop(tx);
        return Err(why_not(pool, principal, args.action_id, is_admin).await);
    };
    if args.decision != Decision::Approve {
        let decided = shown(decided);
        events::emit(
            &mut tx,
            principal,
            "handoff.decided",
            decided.id,
            json!({ "kind": "pending_action", "pending_action": decided }),
        )
        .await?;
        notify_changed(&mut tx, super::resources::action_uri(decided.id)).await?;
        ctx.commit(tx).await?;
        return Ok(PendingActionOut {
            pending_action: decided,
        });
    }
    ctx.commit(tx).await?;
    // Run it in a task of its own: a caller that goes away does not cut it half-way.
    let app = ctx.app.clone();
    let decider = principal.clone();
    let run = tokio::spawn(async move {
        let outcome = execute(&app, decider.tenant_id, &decided).await;
        record_outcome(&app, &decider, decided.id, outcome).await
    });
    let pending_action = run
        .await
        .map_err(|e| ToolError::Internal(format!("the approved action's task failed: {e}")))??;
    Ok(PendingActionOut { pending_action })
}

/// Why an action could not be decided, in words the person can act on.
async fn why_not(pool: &PgPool, principal: &Principal, id: Uuid, is_admin: bool) -> ToolError {
    match visible(pool, principal, id).await {
        Err(error) => error,
        Ok(action) if action.state == "escalated" && !is_admin => ToolError::Forbidden(format!(
            "pending action {id} was escalated: an admin decides it"
        )),
        Ok(action) if action.state == "escalated" => {
            ToolError::Conflict(format!("pending action {id} is already escalated"))
        }
        Ok(action) => ToolError::Conflict(format!(
            "pending action {id} was already decided: it is {} (by {} at {})",
            action.state,
            action.decided_by_name.as_deref().unwrap_or("someone"),
            action
                .decided_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        )),
    }
}

/// Runs an approved action as its agent, as it stands now: the agent must still exist, be
/// enabled and hold the tool's scopes (never more than the held call had); the tool itself
/// re-applies the agent's field rules, conditions and grants.
/// Runs an approved call through the one call path, for the chain it was held for (the
/// agent first), with everyone's permissions of this moment and never more than it had
/// when it was held.
async fn execute(app: &Arc<App>, tenant_id: Uuid, action: &PendingAction) -> Result<Value, String> {
    let pool = app.store.pool();
    let (held_scopes, chain): (Vec<String>, Value) = sqlx::query_as(
        "SELECT scopes, chain FROM pending_actions WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant_id)
    .bind(action.id)
    .fetch_one(pool)
    .await
    .map_err(|e| format!("the database refused: {e}"))?;
    let mut members = delegation::read_chain(&chain);
    if members.is_empty() {
        let agent_id = action
            .agent_id
            .ok_or_else(|| format!("the agent {} was deleted", action.agent_name))?;
        members.push(Member {
            kind: PrincipalKind::Agent,
            id: agent_id,
            name: action.agent_name.clone(),
            person: None,
        });
    }
    let mut principal = delegation::resolve(pool, tenant_id, &members, Cause::default())
        .await
        .map_err(|e| e.to_body("").error_description)?;
    principal.scopes = principal
        .scopes
        .intersect(Scopes::parse(&held_scopes).unwrap_or(Scopes::NONE));
    // Calls that carry secrets are never held (their answers would be stored): refused
    // here too, whatever the row says.
    if crate::toolkit::catalog::handles_secrets(&action.action_type) {
        return Err(format!(
            "`{}` carries a secret and is never run from a held call",
            action.action_type
        ));
    }
    let Value::Object(arguments) = action.arguments.clone() else {
        return Err("the stored arguments are not an object".into());
    };
    let mut call = Call::on_behalf(
        app,
        principal,
        Transport::Approval,
        &action.action_type,
        arguments,
        "Approved action",
    );
    call.approved_action = Some(action.id);
    let request_id = call.request_id.clone();
    invoke(app, call)
        .await
        .map_err(|error| error.to_body(&request_id).error_description)
}

async fn record_outcome(
    app: &Arc<App>,
    decider: &Principal,
    id: Uuid,
    outcome: Result<Value, String>,
) -> Result<PendingAction, ToolError> {
    let (state, result, error) = match outcome {
        Ok(result) => ("executed", Some(result), None),
        Err(error) => ("failed", None, Some(error)),
    };
    let pool = app.store.pool();
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let action: PendingAction = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE pending_actions SET state = $2, result = $3, error = $4, executed_at = now(),
             updated_at = now(),
             history = history || jsonb_build_array(jsonb_build_object('at', now(), 'by', 'agentcrm',
                 'action', $2::text, 'state', $2::text, 'note', $4::text))
         WHERE tenant_id = $5 AND id = $1 AND state = 'approved' RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(state)
    .bind(&result)
    .bind(&error)
    .bind(decider.tenant_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let action = shown(action);
    events::emit(
        &mut tx,
        decider,
        "handoff.decided",
        id,
        json!({ "kind": "pending_action", "pending_action": action }),
    )
    .await?;
    notify_changed(&mut tx, super::resources::action_uri(id)).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(action)
}

/// An approved action whose run recorded no outcome this long after approval: the process
/// running it stopped. Tool calls take seconds (long work becomes a background task).
const ORPHANED_AFTER_SECS: i64 = 600;
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Ends orphaned approved actions as `failed`, saying why, so nobody waits on them forever
/// (with the `handoff.decided` event and the resource update). Every serving process runs
/// it; the UPDATE makes each action end once.
pub fn start_sweeper(
    pool: PgPool,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(error) = sweep(&pool).await {
                tracing::warn!(%error, "could not end orphaned approved actions");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    })
}

async fn sweep(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let ended: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "UPDATE pending_actions SET state = 'failed', executed_at = now(), updated_at = now(),
             error = 'the server running it stopped before it recorded an outcome; check whether \
                      it took effect before asking for it again',
             history = history || jsonb_build_array(jsonb_build_object('at', now(),
                 'by', 'agentcrm', 'action', 'failed', 'state', 'failed',
                 'note', 'no outcome recorded'))
         WHERE state = 'approved' AND decided_at < now() - make_interval(secs => $1)
         RETURNING tenant_id, id",
    )
    .bind(ORPHANED_AFTER_SECS as f64)
    .fetch_all(&mut *tx)
    .await?;
    for (tenant_id, id) in &ended {
        let action: PendingAction = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM pending_actions WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(tenant_id)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let action = shown(action);
        sqlx::query(
            "INSERT INTO events (tenant_id, type, subject_id, payload, principal_kind)
             VALUES ($1, 'handoff.decided', $2, $3, 'system')",
        )
        .bind(tenant_id)
        .bind(id)
        .bind(json!({ "kind": "pending_action", "pending_action": action }))
        .execute(&mut *tx)
        .await?;
        notify_changed(&mut tx, super::resources::action_uri(*id)).await?;
    }
    tx.commit().await?;
    if !ended.is_empty() {
        tracing::warn!(
            count = ended.len(),
            "approved actions ended as failed: no outcome was recorded"
        );
    }
    Ok(())
}
