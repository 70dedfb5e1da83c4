//! Webhook subscriptions (`webhooks:manage`): which events of the tenant are POSTed where,
//! and the log of deliveries and their attempts. Delivery itself is `jobs::webhooks`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::secrets::random_bytes;
use crate::error::ToolError;
use crate::events::EVENT_TYPES;
use crate::jobs::outbound::check_url;
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

const SECRET_PREFIX: &str = "whsec_";
const MAX_WEBHOOKS: i64 = 100;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Crm.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "create_webhook",
                "Subscribe a URL to events",
                "POST this tenant's events to a URL, signed; returns the signing `secret` \
                 once.\n\n\
                 Events e.g. `customer.created`, or `*` for all. Each body is signed: \
                 `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>` with the `secret` \
                 returned here once; the body's `timestamp` (also in `X-Agentcrm-Timestamp`) lets \
                 the receiver refuse replays. Failed deliveries are retried with backoff; see \
                 `list_webhook_deliveries`.",
                &["webhooks:manage"],
                // It sends data to a place outside this server.
                Hints {
                    open_world: true,
                    ..Hints::CREATE
                },
            ),
            create_webhook,
        ),
        tool(
            def(
                "list_webhooks",
                "List webhooks",
                "List this tenant's webhook subscriptions (URL, events), newest first.\n\n\
                 Secrets are never shown.",
                &["webhooks:manage"],
                Hints::READ,
            ),
            list_webhooks,
        ),
        tool(
            def(
                "delete_webhook",
                "Delete a webhook",
                "Stop sending events to a webhook; its pending deliveries and delivery log go with it.",
                &["webhooks:manage"],
                Hints::REMOVE,
            ),
            delete_webhook,
        ),
        tool(
            def(
                "list_webhook_deliveries",
                "List webhook deliveries",
                "List webhook deliveries, newest first, with status and every attempt.\n\n\
                 Status: `pending`, `delivering`, `delivered` or `failed`; each attempt has its \
                 time, duration, HTTP status and error. Filter by webhook and status.",
                &["webhooks:manage"],
                Hints::READ,
            ),
            list_webhook_deliveries,
        ),
    ]
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    /// Event types sent, or `*` for all.
    pub events: Vec<String>,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

const WEBHOOK_COLUMNS: &str = "id, url, events, description, created_at";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookArgs {
    /// The receiver's `https://…` URL.
    ///
    /// `http://…` is accepted too. No credentials in the URL.
    pub url: String,
    /// Event types, or `["*"]` for all.
    ///
    /// `customer.created`, `customer.updated`, `customer.deleted`, `interaction.created`,
    /// `handoff.created`, `handoff.decided`, `invoice.created`, `invoice.updated`,
    /// `workflow.execution.completed`, `agent.run.completed`.
    pub events: Vec<String>,
    /// What it is for.
    ///
    /// Up to 500 characters.
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CreatedWebhook {
    pub webhook: Webhook,
    /// The signing secret. Shown only now: store it with the receiver.
    pub secret: String,
}

async fn create_webhook(
    ctx: ToolCtx,
    args: CreateWebhookArgs,
) -> Result<CreatedWebhook, ToolError> {
    let Some(vault) = &ctx.app.vault else {
        return Err(ToolError::Forbidden(
            "this server has no encryption key for webhook secrets; the operator must set \
             AGENTCRM_ENCRYPTION_KEY (32+ characters, the same on every process)"
                .into(),
        ));
    };
    let url = check_url(&args.url, ctx.app.outbound).map_err(ToolError::InvalidRequest)?;
    let mut events: Vec<String> = args.events.iter().map(|e| e.trim().to_owned()).collect();
    events.sort();
    events.dedup();
    if events.is_empty() {
        return Err(ToolError::InvalidRequest(
            "name at least one event type, or `*` for every event".into(),
        ));
    }
    if let Some(unknown) = events
        .iter()
        .find(|e| *e != "*" && !EVENT_TYPES.contains(&e.as_str()))
    {
        return Err(ToolError::InvalidRequest(format!(
            "unknown event type `{unknown}`; known types: {}, or `*`",
            EVENT_TYPES.join(", ")
        )));
    }
    // A webhook reads events for whoever makes it: they must be able to read what each
    // carries (every delivery is checked again when it is sent).
    for event in &events {
        let types: Vec<&str> = if event == "*" {
            EVENT_TYPES.to_vec()
        } else {
            vec![event.as_str()]
        };
        if let Some(refusal) = types
            .iter()
            .find_map(|t| crate::events::read_refusal(&ctx.principal, t))
        {
            return Err(ToolError::Forbidden(refusal));
        }
    }
    // Events carry whole records: a caller limited to some fields, rows or objects (an
    // agent, or work done for one) would receive, through its webhook, what its policy hides.
    if ctx.policy().await?.is_restricted() {
        return Err(ToolError::Forbidden(
            "a caller limited by field rules, row conditions or object grants cannot subscribe \
             to events, which carry whole records; ask an admin to create the webhook"
                .into(),
        ));
    }
    if args.description.chars().count() > 500 {
        return Err(ToolError::InvalidRequest(
            "description is limited to 500 characters".into(),
        ));
    }
    let id = Uuid::new_v4();
    let secret = format!(
        "{SECRET_PREFIX}{}",
        hex::encode(random_bytes::<24>().as_slice())
    );
    let sealed = vault.seal(secret.as_bytes(), id.as_bytes());
    let pool = ctx.app.store.pool();
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    // One subscription list per tenant at a time, so the cap holds under concurrency.
    let count = crate::store::lock_and_count(&mut tx, ctx.principal.tenant_id, "webhooks").await?;
    if count >= MAX_WEBHOOKS {
        return Err(ToolError::Conflict(format!(
            "this tenant already has {MAX_WEBHOOKS} webhooks; delete one first"
        )));
    }
    let webhook: Webhook = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhooks (id, tenant_id, url, events, description, secret_encrypted, created_by_kind, created_by_id, acting)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {WEBHOOK_COLUMNS}"
    )))
    .bind(id)
    .bind(ctx.principal.tenant_id)
    .bind(url.as_str())
    .bind(&events)
    .bind(&args.description)
    .bind(sealed)
    .bind(ctx.principal.kind.as_str())
    .bind(ctx.principal.id)
    .bind(crate::access::delegation::chain_json(&ctx.principal.members()))
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    ctx.commit(tx).await?;
    Ok(CreatedWebhook { webhook, secret })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_webhooks(ctx: ToolCtx, args: PageArgs) -> Result<WebhookList, ToolError> {
    let page = args.page()?;
    let tenant = ctx.principal.tenant_id;
    let (webhooks, total) = fetch_page(
        ctx.app.store.pool(),
        WEBHOOK_COLUMNS,
        |q| {
            q.push(" FROM webhooks WHERE tenant_id = ")
                .push_bind(tenant);
        },
        "created_at DESC, id",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    Ok(WebhookList {
        webhooks,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookIdArgs {
    /// From list_webhooks.
    pub webhook_id: Uuid,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeletedWebhook {
    pub deleted: Uuid,
}

async fn delete_webhook(ctx: ToolCtx, args: WebhookIdArgs) -> Result<DeletedWebhook, ToolError> {
    let mut tx = ctx.begin().await?;
    let deleted: Option<Uuid> =
        sqlx::query_scalar("DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2 RETURNING id")
            .bind(ctx.principal.tenant_id)
            .bind(args.webhook_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    let deleted = deleted.ok_or_else(|| {
        ToolError::NotFound(format!("no webhook {} in this tenant", args.webhook_id))
    })?;
    ctx.commit(tx).await?;
    Ok(DeletedWebhook { deleted })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivering,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivering => "delivering",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDeliveriesArgs {
    /// Only this webhook's.
    pub webhook_id: Option<Uuid>,
    /// Only in this state.
    pub status: Option<DeliveryStatus>,
    /// 1 to 100 (default 50).
    ///
    /// Items per page.
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u32>,
    /// From `next_cursor`.
    ///
    /// The one of the previous page; omit it for the first page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: Uuid,
    pub event_id: i64,
    pub event_type: String,
    /// `pending`, `delivering`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i32,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Every attempt so far, oldest first.
    #[sqlx(json)]
    pub attempt_log: Vec<Attempt>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_webhook_deliveries(
    ctx: ToolCtx,
    args: ListDeliveriesArgs,
) -> Result<DeliveryList, ToolError> {
    let page = PageArgs::of(args.limit, &args.cursor)?;
    let tenant = ctx.principal.tenant_id;
    let (deliveries, total) = fetch_page(
        ctx.app.store.pool(),
        "d.id, d.webhook_id, d.event_id, d.event_type, d.status, d.attempts,
         CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
         d.last_error, d.created_at, d.finished_at,
         coalesce((SELECT jsonb_agg(jsonb_build_object('attempt', a.attempt, 'started_at', a.started_at,
                     'duration_ms', a.duration_ms, 'status_code', a.status_code, 'error', a.error)
                     ORDER BY a.attempt)
                   FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]') AS attempt_log",
        |q| {
            q.push(" FROM webhook_deliveries d WHERE d.tenant_id = ")
                .push_bind(tenant);
            if let Some(webhook) = args.webhook_id {
                q.push(" AND d.webhook_id = ").push_bind(webhook);
            }
            if let Some(status) = args.status {
                q.push(" AND d.status = ").push_bind(status.as_str());
            }
        },
        "d.id DESC",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    Ok(DeliveryList {
        deliveries,
        page: page.info(total),
    })
}
