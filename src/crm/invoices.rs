//! Products and invoices. Money is integer minor units with an ISO 4217 currency; line
//! amounts, subtotal, discount and total are computed here, never taken from the caller.
//! Invoices move draft → sent → paid, or to void from draft or sent; nothing else.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::customers::{CUSTOMERS, display_name, find};
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
                "list_products",
                "List products",
                "List this tenant's products, active ones first, with unit price and currency.\n\n\
                 Unit prices are in minor units.",
                &["invoices:read"],
                Hints::READ,
            ),
            list_products,
        ),
        tool(
            def(
                "create_product",
                "Create a product",
                "Add a product with a unit price in minor units and a currency.\n\n\
                 Minor units are e.g. cents. An SKU, if given, is unique.",
                &["invoices:write"],
                Hints::CREATE,
            ),
            create_product,
        )
        .sealed(),
        tool(
            def(
                "update_product",
                "Update a product",
                "Change a product's name, description, price or whether it is active.",
                &["invoices:write"],
                Hints::SET,
            ),
            update_product,
        )
        .sealed(),
        tool(
            def(
                "create_invoice",
                "Create an invoice",
                "Create a draft invoice for a customer from line items; amounts in minor \
                 units.\n\n\
                 Each line is a product, or a description and unit price, with a quantity; an \
                 optional discount percentage and due date. Amounts are computed by the server in \
                 minor units, tax-free.",
                &["invoices:write"],
                Hints::CREATE,
            ),
            create_invoice,
        ),
        tool(
            def(
                "list_invoices",
                "List invoices",
                "List invoices, newest first; filter by customer and status.",
                &["invoices:read"],
                Hints::READ,
            ),
            list_invoices,
        ),
        tool(
            def(
                "get_invoice",
                "Get an invoice",
                "Get one invoice with its line items and totals.",
                &["invoices:read"],
                Hints::READ,
            ),
            get_invoice,
        ),
        tool(
            def(
                "update_invoice_status",
                "Change an invoice's status",
                "Move an invoice draft → sent → paid, or void a draft or sent invoice.\n\n\
                 Other moves (e.g. a paid invoice back to draft) are refused.",
                &["invoices:write"],
                Hints::SET,
            ),
            update_invoice_status,
        ),
    ]
}

pub(crate) fn currency(code: &str) -> Result<String, ToolError> {
    let code = code.trim().to_ascii_uppercase();
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(code)
    } else {
        Err(ToolError::InvalidRequest(
            "currency must be a three-letter ISO 4217 code, e.g. EUR".into(),
        ))
    }
}

pub(crate) fn db_error(error: sqlx::Error, what: &str) -> ToolError {
    if let sqlx::Error::Database(db) = &error {
        if db.is_unique_violation() {
            return ToolError::Conflict(format!("{what} already exists"));
        }
        if db.is_check_violation() {
            return ToolError::InvalidRequest(
                "a value is out of range (lengths, amounts, quantities)".into(),
            );
        }
    }
    StoreError::from(error).into()
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Product {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub sku: Option<String>,
    /// In minor units of `currency` (e.g. cents).
    pub unit_price: i64,
    pub currency: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const PRODUCT_COLUMNS: &str =
    "id, name, description, sku, unit_price, currency, active, created_at, updated_at";

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProductList {
    pub products: Vec<Product>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_products(ctx: ToolCtx, args: PageArgs) -> Result<ProductList, ToolError> {
    let page = args.page()?;
    let pool = ctx.app.store.pool();
    let products = sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE tenant_id = $1 ORDER BY active DESC, name, id LIMIT $2 OFFSET $3"
    )))
    .bind(ctx.principal.tenant_id)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)?;
    let total = sqlx::query_scalar("SELECT count(*) FROM products WHERE tenant_id = $1")
        .bind(ctx.principal.tenant_id)
        .fetch_one(pool)
        .await
        .map_err(StoreError::from)?;
    Ok(ProductList {
        products,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProductArgs {
    /// Shown on invoice lines.
    ///
    /// 1 to 200 characters.
    pub name: String,
    /// Free text.
    ///
    /// Up to 5,000 characters.
    #[serde(default)]
    pub description: String,
    /// Stock code, unique in the tenant.
    pub sku: Option<String>,
    /// In minor units.
    ///
    /// E.g. 1999 for 19.99.
    pub unit_price: i64,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProductOut {
    pub product: Product,
}

async fn create_product(ctx: ToolCtx, args: CreateProductArgs) -> Result<ProductOut, ToolError> {
    let currency = currency(&args.currency)?;
    let mut tx = ctx.begin().await?;
    let product = sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO products (tenant_id, name, description, sku, unit_price, currency)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {PRODUCT_COLUMNS}"
    )))
    .bind(ctx.principal.tenant_id)
    .bind(&args.name)
    .bind(&args.description)
    .bind(&args.sku)
    .bind(args.unit_price)
    .bind(currency)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| db_error(e, "a product with that SKU"))?;
    ctx.commit(tx).await?;
    Ok(ProductOut { product })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProductArgs {
    /// From list_products.
    pub product_id: Uuid,
    /// Shown on invoice lines.
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// In minor units.
    pub unit_price: Option<i64>,
    /// Whether it is still offered.
    ///
    /// Inactive products are listed last.
    pub active: Option<bool>,
}

async fn update_product(ctx: ToolCtx, args: UpdateProductArgs) -> Result<ProductOut, ToolError> {
    let mut tx = ctx.begin().await?;
    let product = sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
        "UPDATE products SET name = coalesce($3, name), description = coalesce($4, description),
                unit_price = coalesce($5, unit_price), active = coalesce($6, active), updated_at = now()
         WHERE tenant_id = $1 AND id = $2 RETURNING {PRODUCT_COLUMNS}"
    )))
    .bind(ctx.principal.tenant_id)
    .bind(args.product_id)
    .bind(&args.name)
    .bind(&args.description)
    .bind(args.unit_price)
    .bind(args.active)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| db_error(e, "that product"))?
    .ok_or_else(|| ToolError::NotFound(format!("no product {} in this tenant", args.product_id)))?;
    ctx.commit(tx).await?;
    Ok(ProductOut { product })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Draft,
    Sent,
    Paid,
    Void,
}

impl InvoiceStatus {
    fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Sent => "sent",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
        }
    }

    /// The status flow: draft → sent → paid; draft or sent → void.
    fn may_become(from: &str, to: InvoiceStatus) -> bool {
        matches!(
            (from, to),
            ("draft", InvoiceStatus::Sent)
                | ("sent", InvoiceStatus::Paid)
                | ("draft" | "sent", InvoiceStatus::Void)
        )
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct InvoiceLine {
    pub position: i32,
    pub product_id: Option<Uuid>,
    pub description: String,
    pub quantity: i32,
    /// Minor units.
    pub unit_price: i64,
    /// quantity × unit_price, minor units.
    pub amount: i64,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Invoice {
    pub id: Uuid,
    pub customer_id: Uuid,
    /// `draft`, `sent`, `paid` or `void`.
    pub status: String,
    pub currency: String,
    /// Sum of line amounts, minor units.
    pub subtotal: i64,
    /// Discount in basis points (1250 = 12.5 %).
    pub discount_bps: i32,
    /// Discount amount, minor units.
    pub discount: i64,
    /// subtotal − discount, minor units (tax-free).
    pub total: i64,
    pub due_date: Option<NaiveDate>,
    pub notes: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    #[sqlx(skip)]
    pub lines: Vec<InvoiceLine>,
}

const INVOICE_COLUMNS: &str = "v.id, v.customer_id, v.status, v.currency, v.subtotal, v.discount_bps, v.discount, \
    v.total, v.due_date, v.notes, v.created_at, v.updated_at, v.sent_at, v.paid_at, v.voided_at";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineArgs {
    /// A product (name, price).
    ///
    /// A product of this tenant; its name and price are used unless given here.
    pub product_id: Option<Uuid>,
    pub description: Option<String>,
    /// 1 to 1,000,000 (default 1).
    pub quantity: Option<i32>,
    /// Minor units (if no product).
    ///
    /// Required without a product.
    pub unit_price: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvoiceArgs {
    /// From list_customers or search.
    pub customer_id: Uuid,
    /// ISO 4217 code.
    ///
    /// Every product used must be priced in it.
    pub currency: String,
    /// 1 to 100 lines.
    pub lines: Vec<LineArgs>,
    /// 0 to 100, two decimals at most.
    ///
    /// E.g. 12.5.
    pub discount_percent: Option<f64>,
    /// Payment due date.
    pub due_date: Option<NaiveDate>,
    /// Free text.
    ///
    /// Up to 5,000 characters.
    #[serde(default)]
    pub notes: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InvoiceOut {
    pub invoice: Invoice,
}

/// Invoices are reachable through customers the caller may see.
pub(crate) async fn load_invoice(
    conn: &mut sqlx::PgConnection,
    policy: &Policy,
    id: Uuid,
    for_update: bool,
) -> Result<Invoice, ToolError> {
    let mut query = QueryBuilder::new(format!("SELECT {INVOICE_COLUMNS} FROM invoices v"));
    policy
        .rows(&CUSTOMERS, Access::Read)
        .push_join(&mut query, "v", "customer_id");
    query.push(" WHERE v.id = ").push_bind(id);
    if for_update {
        query.push(" FOR UPDATE OF v");
    }
    let mut invoice: Invoice = query
        .build_query_as()
        .fetch_optional(&mut *conn)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ToolError::NotFound(format!("no invoice {id} that this caller can see")))?;
    invoice.lines = sqlx::query_as(
        "SELECT position, product_id, description, quantity, unit_price, amount FROM invoice_lines
         WHERE invoice_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::from)?;
    Ok(invoice)
}

async fn create_invoice(ctx: ToolCtx, args: CreateInvoiceArgs) -> Result<InvoiceOut, ToolError> {
    let currency = currency(&args.currency)?;
    let discount_bps = discount_bps(args.discount_percent)?;
    let policy = ctx.policy().await?;
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let customer = find(&mut *tx, &policy, Access::Read, args.customer_id, true).await?;
    let lines = resolve_lines(&mut tx, ctx.principal.tenant_id, &currency, &args.lines).await?;
    let draft = Draft {
        customer_id: customer.id,
        currency,
        lines,
        discount_bps,
        due_date: args.due_date,
        notes: args.notes,
    };
    let (_, _, total) = totals(&draft.lines, draft.discount_bps);
    let operation = Sensitive::Invoice {
        total,
        currency: draft.currency.clone(),
        discount_bps,
    };
    if let Some(reason) = ctx.held(&operation).await? {
        // The transaction's row locks would block the pending action's own writes.
        tx.rollback().await.map_err(StoreError::from)?;
        let name = display_name(&policy, &customer);
        let summary = invoice_summary(&name, total, &draft.currency, &draft.lines, discount_bps);
        let about = About {
            customer_id: customer.id,
            customer_name: name,
        };
        return Err(ctx.hold(&reason, &summary, Some(about)).await);
    }
    let id = insert_invoice(&mut tx, ctx.principal.tenant_id, &draft).await?;
    let invoice = load_invoice(&mut tx, &policy, id, false).await?;
    events::emit(
        &mut tx,
        &ctx.principal,
        "invoice.created",
        id,
        json!({ "invoice": invoice }),
    )
    .await?;
    ctx.commit(tx).await?;
    Ok(InvoiceOut { invoice })
}

/// What a held invoice is, for the person deciding.
pub(crate) fn invoice_summary(
    customer: &str,
    total: i64,
    currency: &str,
    lines: &[Line],
    discount_bps: i64,
) -> String {
    format!(
        "Invoice {customer} for {}.{:02} {currency} ({} line{}{})",
        total / 100,
        total % 100,
        lines.len(),
        if lines.len() == 1 { "" } else { "s" },
        if discount_bps > 0 {
            format!(", discount {} %", discount_bps as f64 / 100.0)
        } else {
            String::new()
        }
    )
}

/// `discount_percent` (0 to 100, two decimals at most) as basis points.
pub(crate) fn discount_bps(percent: Option<f64>) -> Result<i64, ToolError> {
    match percent {
        None => Ok(0),
        Some(p) if (0.0..=100.0).contains(&p) && ((p * 100.0).round() - p * 100.0).abs() < 1e-6 => {
            Ok((p * 100.0).round() as i64)
        }
        Some(_) => Err(ToolError::InvalidRequest(
            "discount_percent is 0 to 100 with at most two decimals".into(),
        )),
    }
}

/// A resolved line item: amounts computed, product looked up.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Line {
    pub position: i32,
    pub product_id: Option<Uuid>,
    pub description: String,
    pub quantity: i32,
    pub unit_price: i64,
    pub amount: i64,
}

/// Resolves line arguments against the tenant's products, before anything is written.
pub(crate) async fn resolve_lines(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    currency: &str,
    args: &[LineArgs],
) -> Result<Vec<Line>, ToolError> {
    if args.is_empty() || args.len() > 100 {
        return Err(ToolError::InvalidRequest("give 1 to 100 lines".into()));
    }
    let mut lines = Vec::with_capacity(args.len());
    for (index, line) in args.iter().enumerate() {
        let position = index as i32 + 1;
        let quantity = line.quantity.unwrap_or(1);
        if !(1..=1_000_000).contains(&quantity) {
            return Err(ToolError::InvalidRequest(format!(
                "line {position}: quantity is 1 to 1,000,000"
            )));
        }
        let (description, unit_price) = match line.product_id {
            Some(product_id) => {
                let product: Option<(String, i64, String)> =
                    sqlx::query_as("SELECT name, unit_price, currency FROM products WHERE tenant_id = $1 AND id = $2")
                        .bind(tenant)
                        .bind(product_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(StoreError::from)?;
                let (name, price, product_currency) = product.ok_or_else(|| {
                    ToolError::NotFound(format!(
                        "line {position}: no product {product_id} in this tenant"
                    ))
                })?;
                if product_currency != currency && line.unit_price.is_none() {
                    return Err(ToolError::InvalidRequest(format!(
                        "line {position}: the product is priced in {product_currency}, not {currency}"
                    )));
                }
                (
                    line.description.clone().unwrap_or(name),
                    line.unit_price.unwrap_or(price),
                )
            }
            None => match (&line.description, line.unit_price) {
                (Some(d), Some(p)) => (d.clone(), p),
                _ => {
                    return Err(ToolError::InvalidRequest(format!(
                        "line {position}: give a product_id, or a description and a unit_price"
                    )));
                }
            },
        };
        if !(0..=100_000_000_000).contains(&unit_price) {
            return Err(ToolError::InvalidRequest(format!(
                "line {position}: unit_price is out of range"
            )));
        }
        lines.push(Line {
            position,
            product_id: line.product_id,
            description,
            quantity,
            unit_price,
            amount: unit_price * i64::from(quantity),
        });
    }
    Ok(lines)
}

/// (subtotal, discount, total) in minor units; the discount is rounded half up.
pub(crate) fn totals(lines: &[Line], discount_bps: i64) -> (i64, i64, i64) {
    let subtotal: i64 = lines.iter().map(|l| l.amount).sum();
    let discount = (subtotal * discount_bps + 5_000) / 10_000;
    (subtotal, discount, subtotal - discount)
}

/// Where line items live: one fixed statement per table.
#[derive(Clone, Copy)]
pub(crate) enum LineTable {
    Invoice,
    Quote,
}

pub(crate) async fn insert_lines(
    tx: &mut sqlx::PgConnection,
    table: LineTable,
    tenant: Uuid,
    parent: Uuid,
    lines: &[Line],
) -> Result<(), ToolError> {
    let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(match table {
        LineTable::Invoice => "INSERT INTO invoice_lines (tenant_id, invoice_id, ",
        LineTable::Quote => "INSERT INTO quote_lines (tenant_id, quote_id, ",
    });
    insert.push("position, product_id, description, quantity, unit_price, amount) ");
    insert.push_values(lines, |mut row, line| {
        row.push_bind(tenant)
            .push_bind(parent)
            .push_bind(line.position)
            .push_bind(line.product_id)
            .push_bind(line.description.clone())
            .push_bind(line.quantity)
            .push_bind(line.unit_price)
            .push_bind(line.amount);
    });
    insert
        .build()
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "that line"))?;
    Ok(())
}

/// What an invoice is made of (from arguments, or from an accepted quote).
pub(crate) struct Draft {
    pub customer_id: Uuid,
    pub currency: String,
    pub lines: Vec<Line>,
    pub discount_bps: i64,
    pub due_date: Option<NaiveDate>,
    pub notes: String,
}

/// Writes a draft invoice and its lines; returns its id.
pub(crate) async fn insert_invoice(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    draft: &Draft,
) -> Result<Uuid, ToolError> {
    let (subtotal, discount, total) = totals(&draft.lines, draft.discount_bps);
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO invoices (tenant_id, customer_id, currency, subtotal, discount_bps, discount, total, due_date, notes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(tenant)
    .bind(draft.customer_id)
    .bind(&draft.currency)
    .bind(subtotal)
    .bind(draft.discount_bps as i32)
    .bind(discount)
    .bind(total)
    .bind(draft.due_date)
    .bind(&draft.notes)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| db_error(e, "that invoice"))?;
    insert_lines(tx, LineTable::Invoice, tenant, id, &draft.lines).await?;
    Ok(id)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInvoicesArgs {
    /// Only this customer's.
    pub customer_id: Option<Uuid>,
    /// Only in this status.
    pub status: Option<InvoiceStatus>,
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
pub struct InvoiceList {
    /// Without line items (see `get_invoice`).
    pub invoices: Vec<Invoice>,
    #[serde(flatten)]
    pub page: PageInfo,
}

fn push_invoice_filters(
    args: &ListInvoicesArgs,
    policy: &Policy,
    query: &mut QueryBuilder<Postgres>,
) {
    query.push(" FROM invoices v");
    policy
        .rows(&CUSTOMERS, Access::Read)
        .push_join(query, "v", "customer_id");
    query.push(" WHERE true");
    if let Some(customer) = args.customer_id {
        query.push(" AND v.customer_id = ").push_bind(customer);
    }
    if let Some(status) = args.status {
        query.push(" AND v.status = ").push_bind(status.as_str());
    }
}

async fn list_invoices(ctx: ToolCtx, args: ListInvoicesArgs) -> Result<InvoiceList, ToolError> {
    let page = PageArgs::of(args.limit, &args.cursor)?;
    let policy = ctx.policy().await?;
    let from = |q: &mut QueryBuilder<Postgres>| push_invoice_filters(&args, &policy, q);
    let (invoices, total) = fetch_page(
        ctx.app.store.pool(),
        INVOICE_COLUMNS,
        from,
        "v.created_at DESC, v.id DESC",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    Ok(InvoiceList {
        invoices,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceIdArgs {
    /// From list_invoices.
    pub invoice_id: Uuid,
}

async fn get_invoice(ctx: ToolCtx, args: InvoiceIdArgs) -> Result<InvoiceOut, ToolError> {
    let policy = ctx.policy().await?;
    let mut conn = ctx
        .app
        .store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::from)?;
    let invoice = load_invoice(&mut conn, &policy, args.invoice_id, false).await?;
    Ok(InvoiceOut { invoice })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusArgs {
    /// From list_invoices.
    pub invoice_id: Uuid,
    /// The new status.
    ///
    /// draft → sent → paid; a draft or sent invoice may be voided.
    pub status: InvoiceStatus,
}

async fn update_invoice_status(ctx: ToolCtx, args: StatusArgs) -> Result<InvoiceOut, ToolError> {
    let policy = ctx.policy().await?;
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let current = load_invoice(&mut tx, &policy, args.invoice_id, true).await?;
    if current.status == args.status.as_str() {
        return Ok(InvoiceOut { invoice: current });
    }
    if !InvoiceStatus::may_become(&current.status, args.status) {
        return Err(ToolError::Conflict(format!(
            "an invoice cannot go from {} to {} (draft → sent → paid; draft or sent → void)",
            current.status,
            args.status.as_str()
        )));
    }
    let stamp = match args.status {
        InvoiceStatus::Sent => "sent_at",
        InvoiceStatus::Paid => "paid_at",
        InvoiceStatus::Void => "voided_at",
        InvoiceStatus::Draft => "updated_at",
    };
    let mut update = QueryBuilder::new("UPDATE invoices SET status = ");
    update.push_bind(args.status.as_str());
    update.push(format!(
        ", updated_at = now(), {stamp} = now() WHERE tenant_id = "
    ));
    update
        .push_bind(ctx.principal.tenant_id)
        .push(" AND id = ")
        .push_bind(args.invoice_id);
    update
        .build()
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    let invoice = load_invoice(&mut tx, &policy, args.invoice_id, false).await?;
    let payload = json!({ "invoice": invoice, "previous_status": current.status });
    events::emit(
        &mut tx,
        &ctx.principal,
        "invoice.updated",
        invoice.id,
        payload,
    )
    .await?;
    ctx.commit(tx).await?;
    Ok(InvoiceOut { invoice })
}
