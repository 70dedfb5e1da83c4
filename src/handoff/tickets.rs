//! Handoff tickets: an agent (or a person) asks for a person, about a customer or not.
//! Agents see the tickets they opened; people with `handoff` see the tenant's.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{Entry, notify_changed};
use crate::access::Principal;
use crate::access::policy::Access;
use crate::access::principal::Role;
use crate::crm::customers::{display_name, find};
use crate::error::ToolError;
use crate::events;
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Handoff.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "request_handoff",
                "Ask for a person",
                "Escalate to a person: open a handoff ticket, then follow it with get_handoff.\n\n\
                 With a reason, a priority (low, normal, high, urgent) and context, optionally \
                 about a customer. Returns the ticket.",
                &["handoff"],
                Hints::CREATE,
            ),
            request_handoff,
        ),
        tool(
            def(
                "get_handoff",
                "Get a handoff ticket",
                "Get a handoff ticket with its state, assignee, notes and history.\n\n\
                 States: pending, approved, rejected, escalated. Agents see the tickets they \
                 opened.",
                &["handoff"],
                Hints::READ,
            ),
            get_handoff,
        ),
        tool(
            def(
                "list_handoffs",
                "List handoff tickets",
                "List handoff tickets, newest first; agents see the tickets they opened.\n\n\
                 Filter by state, priority, customer or assignee.",
                &["handoff"],
                Hints::READ,
            ),
            list_handoffs,
        ),
        tool(
            def(
                "update_handoff",
                "Work on a handoff ticket",
                "Assign, annotate or decide a handoff ticket (people with handoff:decide).\n\n\
                 Decide it approved, rejected or escalated. An escalated ticket is decided by an \
                 admin.",
                &["handoff:decide"],
                Hints::CREATE,
            ),
            update_handoff,
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

impl Priority {
    fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    Pending,
    Approved,
    Rejected,
    Escalated,
}

impl TicketState {
    fn as_str(self) -> &'static str {
        match self {
            TicketState::Pending => "pending",
            TicketState::Approved => "approved",
            TicketState::Rejected => "rejected",
            TicketState::Escalated => "escalated",
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Handoff {
    pub id: Uuid,
    /// Absent when the ticket is about no customer, or the customer was deleted.
    pub customer_id: Option<Uuid>,
    pub customer_name: Option<String>,
    pub reason: String,
    /// `low`, `normal`, `high` or `urgent`.
    pub priority: String,
    pub context: String,
    /// `pending`, `approved`, `rejected` or `escalated`.
    pub state: String,
    /// `agent`, `user`, `api_key` or `local_owner`.
    pub requested_by_kind: String,
    pub requested_by_id: Option<Uuid>,
    pub requested_by_name: String,
    pub assignee_id: Option<Uuid>,
    pub assignee_name: Option<String>,
    /// What happened, oldest first: `{at, by, action, state, note}`.
    #[schemars(with = "Vec<Entry>")]
    pub history: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, customer_id, customer_name, reason, priority, context, state, \
     requested_by_kind, requested_by_id, requested_by_name, assignee_id, assignee_name, history, \
     created_at, updated_at";

#[derive(Debug, Serialize, JsonSchema)]
pub struct HandoffOut {
    pub handoff: Handoff,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestArgs {
    /// The customer it is about.
    ///
    /// If any.
    pub customer_id: Option<Uuid>,
    /// Why a person is needed.
    ///
    /// 1 to 2,000 characters.
    pub reason: String,
    /// Default `normal`.
    pub priority: Option<Priority>,
    /// What the person should know.
    ///
    /// Up to 20,000 characters.
    #[serde(default)]
    pub context: String,
}

async fn request_handoff(ctx: ToolCtx, args: RequestArgs) -> Result<HandoffOut, ToolError> {
    let reason = args.reason.trim();
    if reason.is_empty() || reason.chars().count() > 2000 {
        return Err(ToolError::InvalidRequest(
            "reason must be 1 to 2,000 characters".into(),
        ));
    }
    if args.context.chars().count() > 20_000 {
        return Err(ToolError::InvalidRequest(
            "context must be at most 20,000 characters".into(),
        ));
    }
    let pool = ctx.app.store.pool();
    let customer = match args.customer_id {
        Some(id) => {
            let policy = ctx.policy().await?;
            let customer = find(pool, &policy, Access::Read, id, false).await?;
            Some((customer.id, display_name(&policy, &customer)))
        }
        None => None,
    };
    let principal = &ctx.principal;
    let priority = args.priority.unwrap_or(Priority::Normal);
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let handoff: Handoff = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO handoffs (tenant_id, customer_id, customer_name, reason, priority, context,
             requested_by_kind, requested_by_id, requested_by_name, history)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                 jsonb_build_array(jsonb_build_object('at', now(), 'by', $9::text,
                     'action', 'requested', 'state', 'pending', 'note', $4::text)))
         RETURNING {COLUMNS}"
    )))
    .bind(principal.tenant_id)
    .bind(customer.as_ref().map(|c| c.0))
    .bind(customer.as_ref().map(|c| c.1.clone()))
    .bind(reason)
    .bind(priority.as_str())
    .bind(&args.context)
    .bind(principal.kind.as_str())
    .bind(principal.id)
    .bind(&principal.name)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    events::emit(
        &mut tx,
        principal,
        "handoff.created",
        handoff.id,
        json!({ "kind": "ticket", "handoff": handoff }),
    )
    .await?;
    ctx.commit(tx).await?;
    Ok(HandoffOut { handoff })
}

/// Agents see only what they asked for, and so does work done for a chain with an agent in
/// it (a person's workflow or run whose steps an agent wrote, or whose tools an agent picks):
/// what that agent asked for, since its policy never covered other tickets' customers.
fn push_visibility(query: &mut QueryBuilder<Postgres>, principal: &Principal) {
    query
        .push(" WHERE tenant_id = ")
        .push_bind(principal.tenant_id);
    if let Some(agent) = principal.chain_agent() {
        query.push(" AND requested_by_id = ").push_bind(agent.id);
    }
}

async fn load(
    executor: impl sqlx::PgExecutor<'_>,
    principal: &Principal,
    id: Uuid,
    for_update: bool,
) -> Result<Handoff, ToolError> {
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM handoffs"));
    push_visibility(&mut query, principal);
    query.push(" AND id = ").push_bind(id);
    if for_update {
        query.push(" FOR UPDATE");
    }
    query
        .build_query_as()
        .fetch_optional(executor)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| {
            ToolError::NotFound(format!("no handoff ticket {id} that this caller can see"))
        })
}

/// A ticket as `principal` may see it (for the resource `agentcrm://handoffs/{id}` too).
pub async fn visible(
    pool: &sqlx::PgPool,
    principal: &Principal,
    id: Uuid,
) -> Result<Handoff, ToolError> {
    load(pool, principal, id, false).await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffIdArgs {
    /// From list_handoffs.
    pub handoff_id: Uuid,
}

async fn get_handoff(ctx: ToolCtx, args: HandoffIdArgs) -> Result<HandoffOut, ToolError> {
    Ok(HandoffOut {
        handoff: load(ctx.app.store.pool(), &ctx.principal, args.handoff_id, false).await?,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only in this state.
    pub state: Option<TicketState>,
    /// Only this priority.
    pub priority: Option<Priority>,
    /// Only about this customer.
    pub customer_id: Option<Uuid>,
    /// Assigned to this user.
    pub assignee_id: Option<Uuid>,
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
pub struct HandoffList {
    pub handoffs: Vec<Handoff>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_handoffs(ctx: ToolCtx, args: ListArgs) -> Result<HandoffList, ToolError> {
    let page = PageArgs::of(args.limit, &args.cursor)?;
    let principal = &ctx.principal;
    let (handoffs, total) = fetch_page(
        ctx.app.store.pool(),
        COLUMNS,
        |q| {
            q.push(" FROM handoffs");
            push_visibility(q, principal);
            if let Some(state) = args.state {
                q.push(" AND state = ").push_bind(state.as_str());
            }
            if let Some(priority) = args.priority {
                q.push(" AND priority = ").push_bind(priority.as_str());
            }
            if let Some(customer) = args.customer_id {
                q.push(" AND customer_id = ").push_bind(customer);
            }
            if let Some(assignee) = args.assignee_id {
                q.push(" AND assignee_id = ").push_bind(assignee);
            }
        },
        "created_at DESC, id",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    Ok(HandoffList {
        handoffs,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateArgs {
    /// From list_handoffs.
    pub handoff_id: Uuid,
    /// The decision, or `pending`.
    ///
    /// Decide the ticket, or put it back to `pending`.
    pub state: Option<TicketState>,
    /// Assign to this user.
    ///
    /// A user of the tenant.
    pub assignee_id: Option<Uuid>,
    /// Remove the assignee.
    #[serde(default)]
    pub unassign: bool,
    /// A note for the history.
    ///
    /// Up to 5,000 characters.
    pub note: Option<String>,
}

async fn update_handoff(ctx: ToolCtx, args: UpdateArgs) -> Result<HandoffOut, ToolError> {
    if args.state.is_none() && args.assignee_id.is_none() && !args.unassign && args.note.is_none() {
        return Err(ToolError::InvalidRequest(
            "give a state, an assignee_id, unassign or a note".into(),
        ));
    }
    if args.unassign && args.assignee_id.is_some() {
        return Err(ToolError::InvalidRequest(
            "give assignee_id or unassign, not both".into(),
        ));
    }
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
    let assignee = match args.assignee_id {
        Some(id) => Some(
            crate::access::store::get_user(pool, principal.tenant_id, id)
                .await?
                .ok_or_else(|| ToolError::NotFound(format!("no user {id} in this tenant")))?,
        ),
        None => None,
    };
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let current = load(&mut *tx, principal, args.handoff_id, true).await?;
    if let Some(state) = args.state
        && current.state == "escalated"
        && state != TicketState::Escalated
        && principal.role != Some(Role::Admin)
    {
        return Err(ToolError::Forbidden(
            "this ticket was escalated: an admin decides it".into(),
        ));
    }
    let mut entries = Vec::new();
    if let Some(user) = &assignee {
        entries.push(("assigned", Some(format!("to {}", user.name))));
    }
    if args.unassign {
        entries.push(("unassigned", None));
    }
    let decided = args
        .state
        .filter(|s| s.as_str() != current.state)
        .map(TicketState::as_str);
    if let Some(state) = decided {
        entries.push((state, None));
    }
    if let Some(note) = note {
        entries.push(("note", Some(note.to_owned())));
    }
    let state = decided.unwrap_or(&current.state).to_owned();
    let history: Vec<Value> = entries
        .into_iter()
        .map(|(action, note)| {
            json!({ "at": Utc::now(), "by": principal.name, "action": action, "state": state, "note": note })
        })
        .collect();
    let (assignee_id, assignee_name) = match (&assignee, args.unassign) {
        (Some(user), _) => (Some(user.id), Some(user.name.clone())),
        (None, true) => (None, None),
        (None, false) => (current.assignee_id, current.assignee_name.clone()),
    };
    let handoff: Handoff = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE handoffs SET state = $3, assignee_id = $4, assignee_name = $5,
             history = history || $6::jsonb, updated_at = now()
         WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
    )))
    .bind(principal.tenant_id)
    .bind(current.id)
    .bind(&state)
    .bind(assignee_id)
    .bind(&assignee_name)
    .bind(Value::Array(history))
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if decided.is_some() {
        events::emit(
            &mut tx,
            principal,
            "handoff.decided",
            handoff.id,
            json!({ "kind": "ticket", "handoff": handoff }),
        )
        .await?;
    }
    notify_changed(&mut tx, super::resources::handoff_uri(handoff.id)).await?;
    ctx.commit(tx).await?;
    Ok(HandoffOut { handoff })
}
