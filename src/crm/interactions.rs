//! Interactions (emails, calls, meetings, chats, texts, notes) and annotations on a
//! customer. Both are reachable only through a customer the caller may see: the
//! customers' row conditions apply to them too.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::customers::{CUSTOMERS, find};
use crate::access::policy::{Access, Policy};
use crate::error::ToolError;
use crate::events;
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, check_stored_json, tool};
use crate::toolkit::context::ToolCtx;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Crm.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "log_interaction",
                "Log an interaction",
                "Record an email, call, meeting, chat, SMS or note with a customer.\n\n\
                 With its direction, subject, notes, when it happened, and metadata such as \
                 sentiment, duration or resolution.",
                &["interactions:write"],
                Hints::CREATE,
            ),
            log_interaction,
        )
        .sealed(),
        tool(
            def(
                "list_interactions",
                "List interactions",
                "List interactions, most recent first; filter by customer, type, direction, \
                 time.\n\n\
                 Of one customer, or of every customer the caller can see; the time range is on \
                 when they occurred.",
                &["interactions:read"],
                Hints::READ,
            ),
            list_interactions,
        ),
        tool(
            def(
                "add_annotation",
                "Annotate a customer",
                "Pin a note to a customer, with optional tags; it records who wrote it.",
                &["interactions:write"],
                Hints::CREATE,
            ),
            add_annotation,
        )
        .sealed(),
        tool(
            def(
                "list_annotations",
                "List annotations",
                "List the notes pinned to a customer, newest first.",
                &["interactions:read"],
                Hints::READ,
            ),
            list_annotations,
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InteractionType {
    Email,
    Call,
    Meeting,
    Chat,
    Sms,
    Note,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

fn type_name(t: InteractionType) -> &'static str {
    match t {
        InteractionType::Email => "email",
        InteractionType::Call => "call",
        InteractionType::Meeting => "meeting",
        InteractionType::Chat => "chat",
        InteractionType::Sms => "sms",
        InteractionType::Note => "note",
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Interaction {
    pub id: Uuid,
    pub customer_id: Uuid,
    /// `email`, `call`, `meeting`, `chat`, `sms` or `note`.
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
    pub subject: String,
    pub notes: String,
    pub occurred_at: DateTime<Utc>,
    /// e.g. `{"sentiment": "positive", "duration_seconds": 300, "resolution": "resolved"}`.
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
}

const INTERACTION_COLUMNS: &str = "i.id, i.customer_id, i.type, i.direction, i.subject, i.notes, i.occurred_at, i.metadata, i.created_at";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogArgs {
    /// From list_customers or search.
    pub customer_id: Uuid,
    /// What kind of contact.
    #[serde(rename = "type")]
    pub kind: InteractionType,
    /// `inbound` if the customer reached out.
    pub direction: Option<Direction>,
    /// Up to 500 characters.
    #[serde(default)]
    pub subject: String,
    /// Up to 20,000 characters.
    #[serde(default)]
    pub notes: String,
    /// When it happened (default: now).
    pub occurred_at: Option<DateTime<Utc>>,
    /// JSON object: sentiment, duration, …
    ///
    /// Sentiment, duration, resolution or anything else.
    pub metadata: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InteractionOut {
    pub interaction: Interaction,
}

fn check_error(error: sqlx::Error) -> ToolError {
    if let sqlx::Error::Database(db) = &error
        && db.is_check_violation()
    {
        return ToolError::InvalidRequest(
            "a text is too long (subject 500, notes 20,000, annotation 10,000 characters)".into(),
        );
    }
    StoreError::from(error).into()
}

async fn log_interaction(ctx: ToolCtx, args: LogArgs) -> Result<InteractionOut, ToolError> {
    if let Some(metadata) = &args.metadata {
        check_stored_json("metadata", metadata)?;
    }
    let policy = ctx.policy().await?;
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    // The customer must be one the caller can see; locking it keeps it from vanishing.
    let customer = find(&mut *tx, &policy, Access::Read, args.customer_id, true).await?;
    let interaction: Interaction = sqlx::query_as(
        "INSERT INTO interactions AS i (tenant_id, customer_id, type, direction, subject, notes, occurred_at,
                                        metadata, created_by_kind, created_by_id)
         VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $8, $9, $10)
         RETURNING i.id, i.customer_id, i.type, i.direction, i.subject, i.notes, i.occurred_at, i.metadata, i.created_at",
    )
    .bind(ctx.principal.tenant_id)
    .bind(customer.id)
    .bind(type_name(args.kind))
    .bind(args.direction.map(direction_name))
    .bind(&args.subject)
    .bind(&args.notes)
    .bind(args.occurred_at)
    .bind(Value::Object(args.metadata.unwrap_or_default()))
    .bind(ctx.principal.kind.as_str())
    .bind(ctx.principal.id)
    .fetch_one(&mut *tx)
    .await
    .map_err(check_error)?;
    let payload = json!({ "interaction": interaction });
    events::emit(
        &mut tx,
        &ctx.principal,
        "interaction.created",
        interaction.id,
        payload,
    )
    .await?;
    ctx.commit(tx).await?;
    Ok(InteractionOut { interaction })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInteractionsArgs {
    /// Only this customer's.
    ///
    /// Default: every customer the caller can see.
    pub customer_id: Option<Uuid>,
    /// Only this kind.
    #[serde(rename = "type")]
    pub kind: Option<InteractionType>,
    /// Only this direction.
    pub direction: Option<Direction>,
    /// Occurred at or after.
    ///
    /// RFC 3339.
    pub since: Option<DateTime<Utc>>,
    /// Occurred before.
    ///
    /// RFC 3339.
    pub until: Option<DateTime<Utc>>,
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
pub struct InteractionList {
    pub interactions: Vec<Interaction>,
    #[serde(flatten)]
    pub page: PageInfo,
}

/// Interactions joined to the customers the caller may see, then the filters in order.
fn push_interaction_filters(
    args: &ListInteractionsArgs,
    policy: &Policy,
    query: &mut QueryBuilder<Postgres>,
) {
    query.push(" FROM interactions i");
    policy
        .rows(&CUSTOMERS, Access::Read)
        .push_join(query, "i", "customer_id");
    query.push(" WHERE true");
    if let Some(customer) = args.customer_id {
        query.push(" AND i.customer_id = ").push_bind(customer);
    }
    if let Some(kind) = args.kind {
        query.push(" AND i.type = ").push_bind(type_name(kind));
    }
    if let Some(direction) = args.direction {
        query
            .push(" AND i.direction = ")
            .push_bind(direction_name(direction));
    }
    if let Some(since) = args.since {
        query.push(" AND i.occurred_at >= ").push_bind(since);
    }
    if let Some(until) = args.until {
        query.push(" AND i.occurred_at < ").push_bind(until);
    }
}

async fn list_interactions(
    ctx: ToolCtx,
    args: ListInteractionsArgs,
) -> Result<InteractionList, ToolError> {
    let page = PageArgs::of(args.limit, &args.cursor)?;
    let policy = ctx.policy().await?;
    let pool = ctx.app.store.pool();
    if let Some(customer) = args.customer_id {
        find(pool, &policy, Access::Read, customer, false).await?;
    }
    let from = |q: &mut QueryBuilder<Postgres>| push_interaction_filters(&args, &policy, q);
    let (interactions, total) = fetch_page(
        pool,
        INTERACTION_COLUMNS,
        from,
        "i.occurred_at DESC, i.id DESC",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    Ok(InteractionList {
        interactions,
        page: page.info(total),
    })
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Annotation {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub text: String,
    pub tags: Vec<String>,
    /// Who wrote it: `user`, `agent`, `api_key` or `local_owner`, and their name.
    pub created_by_kind: Option<String>,
    pub created_by_name: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnotateArgs {
    /// From list_customers or search.
    pub customer_id: Uuid,
    /// 1 to 10,000 characters.
    pub text: String,
    /// Labels for the note.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AnnotationOut {
    pub annotation: Annotation,
}

async fn add_annotation(ctx: ToolCtx, args: AnnotateArgs) -> Result<AnnotationOut, ToolError> {
    if args.text.trim().is_empty() {
        return Err(ToolError::InvalidRequest("text must not be empty".into()));
    }
    let policy = ctx.policy().await?;
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let customer = find(&mut *tx, &policy, Access::Read, args.customer_id, true).await?;
    let annotation: Annotation = sqlx::query_as(
        "INSERT INTO annotations (tenant_id, customer_id, text, tags, created_by_kind, created_by_id, created_by_name)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id, customer_id, text, tags, created_by_kind, created_by_name, created_at",
    )
    .bind(ctx.principal.tenant_id)
    .bind(customer.id)
    .bind(&args.text)
    .bind(&args.tags)
    .bind(ctx.principal.kind.as_str())
    .bind(ctx.principal.id)
    .bind(&ctx.principal.name)
    .fetch_one(&mut *tx)
    .await
    .map_err(check_error)?;
    ctx.commit(tx).await?;
    Ok(AnnotationOut { annotation })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListAnnotationsArgs {
    /// From list_customers or search.
    pub customer_id: Uuid,
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
pub struct AnnotationList {
    pub annotations: Vec<Annotation>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_annotations(
    ctx: ToolCtx,
    args: ListAnnotationsArgs,
) -> Result<AnnotationList, ToolError> {
    let page = PageArgs::of(args.limit, &args.cursor)?;
    let policy = ctx.policy().await?;
    let pool = ctx.app.store.pool();
    let customer = find(pool, &policy, Access::Read, args.customer_id, false).await?;
    let annotations: Vec<Annotation> = sqlx::query_as(
        "SELECT id, customer_id, text, tags, created_by_kind, created_by_name, created_at FROM annotations
         WHERE tenant_id = $1 AND customer_id = $2 ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4",
    )
    .bind(ctx.principal.tenant_id)
    .bind(customer.id)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM annotations WHERE tenant_id = $1 AND customer_id = $2",
    )
    .bind(ctx.principal.tenant_id)
    .bind(customer.id)
    .fetch_one(pool)
    .await
    .map_err(StoreError::from)?;
    Ok(AnnotationList {
        annotations,
        page: page.info(total),
    })
}
