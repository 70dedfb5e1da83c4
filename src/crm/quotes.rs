//! Quotes: priced like invoices (same lines, totals and discount rules), edited while a
//! draft, sent, accepted or rejected, and converted into exactly one invoice.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::customers::{CUSTOMERS, display_name, find};
use super::invoices::{
    Draft, InvoiceLine, InvoiceOut, Line, LineArgs, LineTable, currency, db_error, discount_bps,
    insert_invoice, insert_lines, load_invoice, resolve_lines, totals,
};
use crate::access::approval::{About, Sensitive};
use crate::access::policy::{Access, Policy};
use crate::error::ToolError;
use crate::events;
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Crm.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "create_quote",
                "Create a quote",
                "Create a draft quote for a customer from line items; priced like an invoice.\n\n\
                 With an optional discount percentage and validity date.",
                &["invoices:write"],
                Hints::CREATE,
            ),
            create_quote,
        ),
        tool(
            def(
                "list_quotes",
                "List quotes",
                "List quotes, newest first; filter by customer and status.",
                &["invoices:read"],
                Hints::READ,
            ),
            list_quotes,
        ),
        tool(
            def(
                "get_quote",
                "Get a quote",
                "Get one quote with its line items and totals.",
                &["invoices:read"],
                Hints::READ,
            ),
            get_quote,
        ),
        tool(
            def(
                "update_quote",
                "Update a quote",
                "Edit a draft quote, or move it draft → sent → accepted or rejected.\n\n\
                 Only a draft's lines, discount, validity or notes change. A draft may be rejected \
                 too.",
                &["invoices:write"],
                Hints::SET,
            ),
            update_quote,
        ),
        tool(
            def(
                "convert_quote_to_invoice",
                "Convert a quote to an invoice",
                "Turn an accepted quote into a draft invoice; a quote converts only once.\n\n\
                 The invoice has the quote's lines and discount. Converting again is refused and \
                 names the invoice.",
                &["invoices:write"],
                Hints::CREATE,
            ),
            convert_quote_to_invoice,
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuoteStatus {
    Draft,
    Sent,
    Accepted,
    Rejected,
}

impl QuoteStatus {
    fn as_str(self) -> &'static str {
        match self {
            QuoteStatus::Draft => "draft",
            QuoteStatus::Sent => "sent",
            QuoteStatus::Accepted => "accepted",
            QuoteStatus::Rejected => "rejected",
        }
    }

    fn may_become(from: &str, to: QuoteStatus) -> bool {
        matches!(
            (from, to),
            ("draft", QuoteStatus::Sent)
                | ("sent", QuoteStatus::Accepted)
                | ("draft" | "sent", QuoteStatus::Rejected)
        )
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Quote {
    pub id: Uuid,
    pub customer_id: Uuid,
    /// A status, e.g. `sent`.
    ///
    /// `draft`, `sent`, `accepted`, `rejected` or `converted`.
    pub status: String,
    pub currency: String,
    pub subtotal: i64,
    pub discount_bps: i32,
    pub discount: i64,
    pub total: i64,
    pub valid_until: Option<NaiveDate>,
    pub notes: String,
    /// The invoice it became, once converted.
    pub invoice_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub lines: Vec<InvoiceLine>,
}

const QUOTE_COLUMNS: &str = "q.id, q.customer_id, q.status, q.currency, q.subtotal, q.discount_bps, q.discount, \
    q.total, q.valid_until, q.notes, q.invoice_id, q.created_at, q.updated_at";

#[derive(Debug, Serialize, JsonSchema)]
pub struct QuoteOut {
    pub quote: Quote,
}

async fn load_quote(
    conn: &mut sqlx::PgConnection,
    policy: &Policy,
    id: Uuid,
    for_update: bool,
) -> Result<Quote, ToolError> {
    let mut query = QueryBuilder::new(format!("SELECT {QUOTE_COLUMNS} FROM quotes q"));
    policy
        .rows(&CUSTOMERS, Access::Read)
        .push_join(&mut query, "q", "customer_id");
    query.push(" WHERE q.id = ").push_bind(id);
    if for_update {
        query.push(" FOR UPDATE OF q");
    }
    let mut quote: Quote = query
        .build_query_as()
        .fetch_optional(&mut *conn)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ToolError::NotFound(format!("no quote {id} that this caller can see")))?;
    quote.lines = sqlx::query_as(
        "SELECT position, product_id, description, quantity, unit_price, amount FROM quote_lines
         WHERE quote_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::from)?;
    Ok(quote)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateQuoteArgs {
    /// From list_customers or search.
    pub customer_id: Uuid,
    /// ISO 4217.
    pub currency: String,
    /// 1 to 100 lines.
    pub lines: Vec<LineArgs>,
    /// 0 to 100, at most two decimals.
    pub discount_percent: Option<f64>,
    /// Last day the offer holds.
    pub valid_until: Option<NaiveDate>,
    /// Free text.
    ///
    /// Up to 5,000 characters.
    #[serde(default)]
    pub notes: String,
}

async fn create_quote(ctx: ToolCtx, args: CreateQuoteArgs) -> Result<QuoteOut, ToolError> {
    let currency = currency(&args.currency)?;
    let bps = discount_bps(args.discount_percent)?;
    let policy = ctx.policy().await?;
    let tenant = ctx.principal.tenant_id;
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let customer = find(&mut *tx, &policy, Access::Read, args.customer_id, true).await?;
    let lines = resolve_lines(&mut tx, tenant, &currency, &args.lines).await?;
    let (subtotal, discount, total) = totals(&lines, bps);
    if let Some(reason) = ctx.held(&Sensitive::Quote { discount_bps: bps }).await? {
        tx.rollback().await.map_err(StoreError::from)?;
        let name = display_name(&policy, &customer);
        let summary = format!(
            "Quote {name} {}.{:02} {currency} with a discount of {} %",
            total / 100,
            total % 100,
            bps as f64 / 100.0
        );
        let about = About {
            customer_id: customer.id,
            customer_name: name,
        };
        return Err(ctx.hold(&reason, &summary, Some(about)).await);
    }
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO quotes (tenant_id, customer_id, currency, subtotal, discount_bps, discount, total, valid_until, notes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(tenant)
    .bind(customer.id)
    .bind(&currency)
    .bind(subtotal)
    .bind(bps as i32)
    .bind(discount)
    .bind(total)
    .bind(args.valid_until)
    .bind(&args.notes)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| db_error(e, "that quote"))?;
    insert_lines(&mut tx, LineTable::Quote, tenant, id, &lines).await?;
    let quote = load_quote(&mut tx, &policy, id, false).await?;
    ctx.commit(tx).await?;
    Ok(QuoteOut { quote })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuotesArgs {
    /// Only this customer's.
    pub customer_id: Option<Uuid>,
    /// A status, e.g. `sent`.
    ///
    /// `draft`, `sent`, `accepted`, `rejected` or `converted`.
    pub status: Option<String>,
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
pub struct QuoteList {
    /// Without line items (see `get_quote`).
    pub quotes: Vec<Quote>,
    #[serde(flatten)]
    pub page: PageInfo,
}

fn push_quote_filters(args: &ListQuotesArgs, policy: &Policy, query: &mut QueryBuilder<Postgres>) {
    query.push(" FROM quotes q");
    policy
        .rows(&CUSTOMERS, Access::Read)
        .push_join(query, "q", "customer_id");
    query.push(" WHERE true");
    if let Some(customer) = args.customer_id {
        query.push(" AND q.customer_id = ").push_bind(customer);
    }
    if let Some(status) = &args.status {
        query.push(" AND q.status = ").push_bind(status.clone());
    }
}

async fn list_quotes(ctx: ToolCtx, args: ListQuotesArgs) -> Result<QuoteList, ToolError> {
    if let Some(status) = &args.status
        && !["draft", "sent", "accepted", "rejected", "converted"].contains(&status.as_str())
    {
        return Err(ToolError::InvalidRequest(format!(
            "unknown quote status `{status}`"
        )));
    }
    let page = PageArgs::of(args.limit, &args.cursor)?;
    let policy = ctx.policy().await?;
    let from = |q: &mut QueryBuilder<Postgres>| push_quote_filters(&args, &policy, q);
    let (quotes, total) = fetch_page(
        ctx.app.store.pool(),
        QUOTE_COLUMNS,
        from,
        "q.created_at DESC, q.id DESC",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    Ok(QuoteList {
        quotes,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteIdArgs {
    /// From list_quotes.
    pub quote_id: Uuid,
}

async fn get_quote(ctx: ToolCtx, args: QuoteIdArgs) -> Result<QuoteOut, ToolError> {
    let policy = ctx.policy().await?;
    let mut conn = ctx
        .app
        .store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::from)?;
    let quote = load_quote(&mut conn, &policy, args.quote_id, false).await?;
    Ok(QuoteOut { quote })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateQuoteArgs {
    /// From list_quotes.
    pub quote_id: Uuid,
    /// The new status.
    ///
    /// draft → sent → accepted; a draft or sent quote may be rejected.
    pub status: Option<QuoteStatus>,
    /// Every line (drafts only).
    ///
    /// Replaces every line.
    pub lines: Option<Vec<LineArgs>>,
    /// Drafts only.
    pub discount_percent: Option<f64>,
    /// Last day the offer holds.
    pub valid_until: Option<NaiveDate>,
    /// Free text.
    ///
    /// Up to 5,000 characters.
    pub notes: Option<String>,
}

async fn update_quote(ctx: ToolCtx, args: UpdateQuoteArgs) -> Result<QuoteOut, ToolError> {
    let policy = ctx.policy().await?;
    let tenant = ctx.principal.tenant_id;
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let current = load_quote(&mut tx, &policy, args.quote_id, true).await?;
    let repricing = args.lines.is_some() || args.discount_percent.is_some();
    if repricing && current.status != "draft" {
        return Err(ToolError::Conflict(format!(
            "the quote is {}; only a draft's lines and discount can change",
            current.status
        )));
    }
    if let Some(status) = args.status
        && status.as_str() != current.status
        && !QuoteStatus::may_become(&current.status, status)
    {
        return Err(ToolError::Conflict(format!(
            "a quote cannot go from {} to {} (draft → sent → accepted or rejected)",
            current.status,
            status.as_str()
        )));
    }
    if repricing {
        let bps = match args.discount_percent {
            Some(p) => discount_bps(Some(p))?,
            None => i64::from(current.discount_bps),
        };
        if bps > i64::from(current.discount_bps)
            && let Some(reason) = ctx.held(&Sensitive::Quote { discount_bps: bps }).await?
        {
            tx.rollback().await.map_err(StoreError::from)?;
            let summary = format!(
                "Raise the discount of quote {} from {} % to {} %",
                current.id,
                f64::from(current.discount_bps) / 100.0,
                bps as f64 / 100.0
            );
            return Err(ctx.hold(&reason, &summary, None).await);
        }
        let lines: Vec<Line> = match &args.lines {
            Some(lines) => resolve_lines(&mut tx, tenant, &current.currency, lines).await?,
            None => sqlx::query_as(
                "SELECT position, product_id, description, quantity, unit_price, amount FROM quote_lines
                 WHERE quote_id = $1 ORDER BY position",
            )
            .bind(current.id)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::from)?,
        };
        if args.lines.is_some() {
            sqlx::query("DELETE FROM quote_lines WHERE tenant_id = $1 AND quote_id = $2")
                .bind(tenant)
                .bind(current.id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            insert_lines(&mut tx, LineTable::Quote, tenant, current.id, &lines).await?;
        }
        let (subtotal, discount, total) = totals(&lines, bps);
        sqlx::query("UPDATE quotes SET subtotal = $3, discount_bps = $4, discount = $5, total = $6 WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(current.id)
            .bind(subtotal)
            .bind(bps as i32)
            .bind(discount)
            .bind(total)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    }
    sqlx::query(
        "UPDATE quotes SET status = coalesce($3, status), valid_until = coalesce($4, valid_until),
                notes = coalesce($5, notes), updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(current.id)
    .bind(args.status.map(QuoteStatus::as_str))
    .bind(args.valid_until)
    .bind(&args.notes)
    .execute(&mut *tx)
    .await
    .map_err(|e| db_error(e, "that quote"))?;
    let quote = load_quote(&mut tx, &policy, current.id, false).await?;
    ctx.commit(tx).await?;
    Ok(QuoteOut { quote })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConvertArgs {
    /// An accepted quote's id.
    pub quote_id: Uuid,
    /// The invoice's due date.
    pub due_date: Option<NaiveDate>,
}

async fn convert_quote_to_invoice(
    ctx: ToolCtx,
    args: ConvertArgs,
) -> Result<InvoiceOut, ToolError> {
    let policy = ctx.policy().await?;
    let tenant = ctx.principal.tenant_id;
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    // Locked: two conversions at once make one invoice, and the second is told which.
    let quote = load_quote(&mut tx, &policy, args.quote_id, true).await?;
    match (quote.status.as_str(), quote.invoice_id) {
        ("accepted", None) => {}
        (_, Some(invoice)) => {
            return Err(ToolError::Conflict(format!(
                "the quote was already converted into invoice {invoice}"
            )));
        }
        (status, None) => {
            return Err(ToolError::Conflict(format!(
                "only an accepted quote converts; this one is {status}"
            )));
        }
    }
    let operation = Sensitive::Invoice {
        total: quote.total,
        currency: quote.currency.clone(),
        discount_bps: i64::from(quote.discount_bps),
    };
    if let Some(reason) = ctx.held(&operation).await? {
        tx.rollback().await.map_err(StoreError::from)?;
        let customer = find(
            ctx.app.store.pool(),
            &policy,
            Access::Read,
            quote.customer_id,
            false,
        )
        .await?;
        let name = display_name(&policy, &customer);
        let summary = format!(
            "Convert quote {} into an invoice for {name}: {}.{:02} {}{}",
            quote.id,
            quote.total / 100,
            quote.total % 100,
            quote.currency,
            if quote.discount_bps > 0 {
                format!(", discount {} %", f64::from(quote.discount_bps) / 100.0)
            } else {
                String::new()
            }
        );
        let about = About {
            customer_id: customer.id,
            customer_name: name,
        };
        return Err(ctx.hold(&reason, &summary, Some(about)).await);
    }
    let lines: Vec<Line> = sqlx::query_as(
        "SELECT position, product_id, description, quantity, unit_price, amount FROM quote_lines
         WHERE quote_id = $1 ORDER BY position",
    )
    .bind(quote.id)
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let draft = Draft {
        customer_id: quote.customer_id,
        currency: quote.currency.clone(),
        lines,
        discount_bps: i64::from(quote.discount_bps),
        due_date: args.due_date,
        notes: quote.notes.clone(),
    };
    let invoice_id = insert_invoice(&mut tx, tenant, &draft).await?;
    sqlx::query("UPDATE quotes SET status = 'converted', invoice_id = $3, updated_at = now() WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(quote.id)
        .bind(invoice_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    let invoice = load_invoice(&mut tx, &policy, invoice_id, false).await?;
    let payload = json!({ "invoice": invoice, "quote_id": quote.id });
    events::emit(
        &mut tx,
        &ctx.principal,
        "invoice.created",
        invoice_id,
        payload,
    )
    .await?;
    ctx.commit(tx).await?;
    Ok(InvoiceOut { invoice })
}
