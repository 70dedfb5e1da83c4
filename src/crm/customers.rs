//! Customers: list, get, create, update (optimistic concurrency) and delete, every query
//! shaped by the caller's policy (tenant, row conditions, field rules, grants).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::access::approval::{About, Sensitive};
use crate::access::policy::{Access, Policy, Shaped};
use crate::error::ToolError;
use crate::events;
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, check_stored_json, tool};
use crate::toolkit::context::ToolCtx;

pub use crate::access::policy::CUSTOMERS;

pub(crate) const COLUMNS: &str = "c.id, c.first_name, c.last_name, c.email, c.phone, c.company, c.status, \
    c.assigned_to, c.tags, c.custom_fields, c.version, c.created_at, c.updated_at";

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Crm.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "list_customers",
                "List customers",
                "List customers, filtered and sorted; paginated.\n\n\
                 Newest first by default. Filter by status, company, assignee, tag and creation \
                 time; sort with `order_by`; trim each record to `fields`. Pass `next_cursor` back \
                 as `cursor` for the next page.",
                &["customers:read"],
                Hints::READ,
            ),
            list_customers,
        ),
        tool(
            def(
                "get_customer",
                "Get a customer",
                "Get one customer by id, with every field the caller may see (or only `fields`).",
                &["customers:read"],
                Hints::READ,
            ),
            get_customer,
        ),
        tool(
            def(
                "create_customer",
                "Create a customer",
                "Create a customer; an email already used in the tenant is refused \
                 (`conflict`).\n\n\
                 Emails are unique within the tenant. Returns the new record with its `version`.",
                &["customers:write"],
                Hints::CREATE,
            ),
            create_customer,
        )
        .sealed(),
        tool(
            def(
                "update_customer",
                "Update a customer",
                "Change some fields of a customer; pass the `version` you read (a stale one is \
                 refused with `conflict`).\n\n\
                 Only the fields given change. If the record changed since you read it, nothing is \
                 written and the answer is `conflict` with the current version.",
                &["customers:write"],
                Hints::CREATE,
            ),
            update_customer,
        )
        .sealed(),
        tool(
            def(
                "delete_customer",
                "Delete a customer",
                "Delete a customer and everything recorded about it; may be held for approval.\n\n\
                 Agents need an explicit grant, and the tenant's approval policy may hold the \
                 deletion for a human.",
                &["customers:delete"],
                Hints::REMOVE,
            ),
            delete_customer,
        )
        .sealed(),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Lead,
    Prospect,
    HotLead,
    Customer,
    Inactive,
    Churned,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Lead => "lead",
            Status::Prospect => "prospect",
            Status::HotLead => "hot_lead",
            Status::Customer => "customer",
            Status::Inactive => "inactive",
            Status::Churned => "churned",
        }
    }
}

/// A customer record. Fields the caller may not see, or did not ask for with `fields`,
/// are left out, and so are empty optional ones.
#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Customer {
    pub id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    /// `lead`, `prospect`, `hot_lead`, `customer`, `inactive` or `churned`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Who owns the relationship (a person or team name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Free-form JSON object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_fields: Option<Value>,
    /// Increases with every update; pass it to `update_customer`.
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Field names a caller can list in `fields`, filter on or sort by.
const FIELDS: &[&str] = CUSTOMERS.fields;

/// The record as this caller may see it, trimmed to `fields` when given.
pub(crate) fn shape(
    policy: &Policy,
    customer: &Customer,
    fields: Option<&[String]>,
) -> Result<Shaped<Customer>, ToolError> {
    let mut value =
        serde_json::to_value(customer).map_err(|e| ToolError::Internal(e.to_string()))?;
    policy.redact(&CUSTOMERS, &mut value);
    if let (Some(fields), Value::Object(map)) = (fields, &mut value) {
        map.retain(|key, _| key == "id" || fields.iter().any(|f| f == key));
    }
    Ok(Shaped::new(value))
}

pub(crate) fn check_fields(fields: Option<&[String]>) -> Result<(), ToolError> {
    for field in fields.into_iter().flatten() {
        if !FIELDS.contains(&field.as_str()) {
            return Err(ToolError::InvalidRequest(format!(
                "unknown field `{field}`; known fields: {}",
                FIELDS.join(", ")
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderBy {
    /// Newest first (the default).
    #[default]
    CreatedDesc,
    CreatedAsc,
    UpdatedDesc,
    LastNameAsc,
    CompanyAsc,
}

impl OrderBy {
    /// The SQL of each order: a fixed whitelist, never the caller's text.
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            OrderBy::CreatedDesc => ("created_at", " ORDER BY c.created_at DESC, c.id DESC"),
            OrderBy::CreatedAsc => ("created_at", " ORDER BY c.created_at, c.id"),
            OrderBy::UpdatedDesc => ("updated_at", " ORDER BY c.updated_at DESC, c.id DESC"),
            OrderBy::LastNameAsc => ("last_name", " ORDER BY lower(c.last_name), c.id"),
            OrderBy::CompanyAsc => ("company", " ORDER BY lower(c.company) NULLS LAST, c.id"),
        }
    }

    /// Its name in keyset cursors.
    fn tag(self) -> &'static str {
        match self {
            OrderBy::CreatedDesc => "cd",
            OrderBy::CreatedAsc => "ca",
            OrderBy::UpdatedDesc => "ud",
            OrderBy::LastNameAsc => "ln",
            OrderBy::CompanyAsc => "co",
        }
    }

    /// The text a keyset cursor keeps for the orders by name (times come from the row).
    fn key_sql(self) -> &'static str {
        match self {
            OrderBy::LastNameAsc => "lower(c.last_name)",
            OrderBy::CompanyAsc => "lower(c.company)",
            _ => "NULL::text",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only in this status.
    pub status: Option<Status>,
    /// Exact company name, any case.
    pub company: Option<String>,
    /// Exact owner name.
    ///
    /// A person or team name, as in a customer's `assigned_to`.
    pub assigned_to: Option<String>,
    /// With this tag.
    pub tag: Option<String>,
    /// Created at or after.
    ///
    /// RFC 3339.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    ///
    /// RFC 3339.
    pub created_before: Option<DateTime<Utc>>,
    /// Sort order (default newest first).
    #[serde(default)]
    pub order_by: OrderBy,
    /// Only these fields (plus `id`).
    pub fields: Option<Vec<String>>,
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
pub struct CustomerList {
    pub customers: Vec<Shaped<Customer>>,
    #[serde(flatten)]
    pub page: PageInfo,
}

/// Filters in one fixed order; a filter on a field the caller may not see is refused, or
/// its answers would reveal the field.
fn push_filters(
    args: &ListArgs,
    policy: &Policy,
    query: &mut QueryBuilder<Postgres>,
) -> Result<(), ToolError> {
    let mut used = Vec::new();
    if let Some(status) = args.status {
        used.push("status");
        query.push(" AND c.status = ").push_bind(status.as_str());
    }
    if let Some(company) = &args.company {
        used.push("company");
        query
            .push(" AND lower(c.company) = lower(")
            .push_bind(company.clone())
            .push(")");
    }
    if let Some(assignee) = &args.assigned_to {
        used.push("assigned_to");
        query
            .push(" AND c.assigned_to = ")
            .push_bind(assignee.clone());
    }
    if let Some(tag) = &args.tag {
        used.push("tags");
        query
            .push(" AND ")
            .push_bind(tag.clone())
            .push(" = ANY(c.tags)");
    }
    if let Some(after) = args.created_after {
        query.push(" AND c.created_at >= ").push_bind(after);
    }
    if let Some(before) = args.created_before {
        query.push(" AND c.created_at < ").push_bind(before);
    }
    used.push(args.order_by.sql().0);
    policy
        .check_write(&CUSTOMERS, used.iter().copied())
        .map_err(|_| {
            ToolError::Forbidden(
                "this caller may not filter or sort on a field it cannot see".into(),
            )
        })
}

async fn list_customers(ctx: ToolCtx, args: ListArgs) -> Result<CustomerList, ToolError> {
    let (limit, from) = Position::of(&args)?;
    check_fields(args.fields.as_deref())?;
    let policy = ctx.policy().await?;
    let pool = ctx.app.store.pool();

    let rows = policy.rows(&CUSTOMERS, Access::Read);
    let order = args.order_by.sql().1;
    let mut query = rows.select(&format!(
        "{COLUMNS}, {} AS sort_key",
        args.order_by.key_sql()
    ));
    push_filters(&args, &policy, &mut query)?;
    match &from {
        Position::Offset(_) => {}
        Position::After(after) => after.push_after(&mut query),
    }
    query.push(order).push(" LIMIT ").push_bind(limit + 1);
    if let Position::Offset(offset) = from {
        query.push(" OFFSET ").push_bind(offset);
    }

    // The total: from the per-status counts when the listing narrows by status alone,
    // else counted. Run beside the page, on a connection of its own.
    let narrowed_beyond_status = args.company.is_some()
        || args.assigned_to.is_some()
        || args.tag.is_some()
        || args.created_after.is_some()
        || args.created_before.is_some();
    let mut count = match (!narrowed_beyond_status)
        .then(|| rows.counted(args.status.map(Status::as_str)))
        .flatten()
    {
        Some(counted) => counted,
        None => {
            let mut count = rows.select("count(*)");
            push_filters(&args, &policy, &mut count)?;
            count
        }
    };
    let (mut found, total): (Vec<Keyed>, i64) = tokio::try_join!(
        query.build_query_as().fetch_all(pool),
        count.build_query_scalar().fetch_one(pool),
    )
    .map_err(StoreError::from)?;

    let has_more = found.len() as i64 > limit;
    found.truncate(limit as usize);
    let next_cursor = has_more
        .then(|| {
            found
                .last()
                .map(|last| After::of(args.order_by, last).cursor())
        })
        .flatten();
    let customers = found
        .iter()
        .map(|k| shape(&policy, &k.customer, args.fields.as_deref()))
        .collect::<Result<_, _>>()?;
    Ok(CustomerList {
        customers,
        page: PageInfo {
            total,
            has_more,
            next_cursor,
        },
    })
}

/// A listed customer and the value it was sorted by (as the database compares it).
#[derive(sqlx::FromRow)]
struct Keyed {
    #[sqlx(flatten)]
    customer: Customer,
    sort_key: Option<String>,
}

/// Where a page of `list_customers` starts: after the last customer of the previous page
/// (keyset: the same cost on page 1 and page 10,000, and no customer skipped or repeated
/// when others are added meanwhile), or at an offset (cursors issued before keysets).
enum Position {
    Offset(i64),
    After(After),
}

impl Position {
    fn of(args: &ListArgs) -> Result<(i64, Position), ToolError> {
        let keyset = args
            .cursor
            .as_deref()
            .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|text| text.starts_with("k|"));
        match keyset {
            Some(text) => {
                let page = PageArgs::of(args.limit, &None)?;
                let after = After::parse(&text, args.order_by)?;
                Ok((page.limit, Position::After(after)))
            }
            None => {
                let page = PageArgs::of(args.limit, &args.cursor)?;
                Ok((page.limit, Position::Offset(page.offset)))
            }
        }
    }
}

/// The sort position of the last customer of a page.
struct After {
    order: OrderBy,
    id: Uuid,
    /// Microseconds since the epoch, for the orders by time.
    at: i64,
    /// The sort text, for the orders by name (`None`: no company, sorted last).
    text: Option<String>,
}

impl After {
    fn of(order: OrderBy, last: &Keyed) -> After {
        let c = &last.customer;
        let at = match order {
            OrderBy::UpdatedDesc => c.updated_at,
            _ => c.created_at,
        };
        After {
            order,
            id: c.id,
            at: at.timestamp_micros(),
            text: last.sort_key.clone(),
        }
    }

    fn cursor(&self) -> String {
        let text = match &self.text {
            Some(text) => format!("v{text}"),
            None => "n".to_owned(),
        };
        URL_SAFE_NO_PAD.encode(format!(
            "k|{}|{}|{}|{text}",
            self.order.tag(),
            self.id,
            self.at
        ))
    }

    fn parse(text: &str, order: OrderBy) -> Result<After, ToolError> {
        let bad = || {
            ToolError::InvalidRequest(
                "cursor is not one this server issued for this order_by; omit it to start \
                 from the first page"
                    .into(),
            )
        };
        let mut parts = text.splitn(5, '|').skip(1);
        // A cursor of another order would skip or repeat customers.
        if parts.next() != Some(order.tag()) {
            return Err(bad());
        }
        let id = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let at = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let text = match parts.next() {
            Some("n") => None,
            Some(value) => Some(value.strip_prefix('v').ok_or_else(bad)?.to_owned()),
            None => return Err(bad()),
        };
        Ok(After {
            order,
            id,
            at,
            text,
        })
    }

    /// ` AND <rows after this one in order>`.
    fn push_after(&self, query: &mut QueryBuilder<Postgres>) {
        let at = DateTime::<Utc>::from_timestamp_micros(self.at).unwrap_or_default();
        match (self.order, &self.text) {
            (OrderBy::CreatedDesc, _) => {
                query.push(" AND (c.created_at, c.id) < (").push_bind(at);
            }
            (OrderBy::CreatedAsc, _) => {
                query.push(" AND (c.created_at, c.id) > (").push_bind(at);
            }
            (OrderBy::UpdatedDesc, _) => {
                query.push(" AND (c.updated_at, c.id) < (").push_bind(at);
            }
            (OrderBy::LastNameAsc, text) => {
                query
                    .push(" AND (lower(c.last_name), c.id) > (")
                    .push_bind(text.clone().unwrap_or_default());
            }
            (OrderBy::CompanyAsc, Some(text)) => {
                query
                    .push(" AND (lower(c.company) > ")
                    .push_bind(text.clone())
                    .push(" OR c.company IS NULL OR (lower(c.company) = ")
                    .push_bind(text.clone())
                    .push(" AND c.id > ")
                    .push_bind(self.id)
                    .push("))");
                return;
            }
            (OrderBy::CompanyAsc, None) => {
                query
                    .push(" AND c.company IS NULL AND c.id > ")
                    .push_bind(self.id);
                return;
            }
        }
        query.push(", ").push_bind(self.id).push(")");
    }
}

/// How a customer is named to people (e.g. in the approval queue), from the fields
/// `policy` lets its holder see.
pub(crate) fn display_name(policy: &Policy, customer: &Customer) -> String {
    let visible = |field: &str, value: &Option<String>| {
        value
            .as_deref()
            .filter(|v| policy.field_allowed(&CUSTOMERS, field) && !v.is_empty())
            .map(str::to_owned)
    };
    let parts: Vec<String> = [
        visible("first_name", &customer.first_name),
        visible("last_name", &customer.last_name),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        format!("customer {}", customer.id)
    } else {
        parts.join(" ")
    }
}

/// One customer the caller may use for `access` (its tenant, its conditions, the grants
/// in play), optionally locked. Whatever touches a customer finds it here first.
pub(crate) async fn find<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    policy: &Policy,
    access: Access,
    id: Uuid,
    for_update: bool,
) -> Result<Customer, ToolError> {
    let mut query = policy.rows(&CUSTOMERS, access).select(COLUMNS);
    query.push(" AND c.id = ").push_bind(id);
    if for_update {
        query.push(" FOR UPDATE");
    }
    query
        .build_query_as()
        .fetch_optional(executor)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| not_found(id))
}

fn not_found(id: Uuid) -> ToolError {
    ToolError::NotFound(format!("no customer {id} that this caller can see"))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetArgs {
    /// From list_customers or search.
    pub customer_id: Uuid,
    /// Only these fields (plus `id`).
    pub fields: Option<Vec<String>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CustomerOut {
    pub customer: Shaped<Customer>,
}

async fn get_customer(ctx: ToolCtx, args: GetArgs) -> Result<CustomerOut, ToolError> {
    check_fields(args.fields.as_deref())?;
    let policy = ctx.policy().await?;
    let customer = find(
        ctx.app.store.pool(),
        &policy,
        Access::Read,
        args.customer_id,
        false,
    )
    .await?;
    Ok(CustomerOut {
        customer: shape(&policy, &customer, args.fields.as_deref())?,
    })
}

/// One `@` between a local part and a dotted domain, no spaces: the shape of an address,
/// not proof that it exists.
fn email_shape(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    (3..=320).contains(&email.chars().count())
        && !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

/// Writable fields, shared by create and update.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerFields {
    /// A new customer needs a name or an email.
    #[schemars(length(max = 200))]
    pub first_name: Option<String>,
    /// Family name.
    #[schemars(length(max = 200))]
    pub last_name: Option<String>,
    /// Unique in the tenant.
    #[schemars(length(min = 3, max = 320))]
    pub email: Option<String>,
    /// Any format.
    #[schemars(length(max = 50))]
    pub phone: Option<String>,
    /// Their organisation.
    #[schemars(length(max = 200))]
    pub company: Option<String>,
    /// Pipeline stage (default `lead`).
    pub status: Option<Status>,
    /// Owner: a person or team name.
    #[schemars(length(max = 200))]
    pub assigned_to: Option<String>,
    /// Labels (an update replaces them all).
    pub tags: Option<Vec<String>>,
    /// Your own fields.
    ///
    /// A JSON object of your own fields.
    pub custom_fields: Option<serde_json::Map<String, Value>>,
}

impl CustomerFields {
    /// (field, bound value) for every field given, in a fixed order.
    fn given(&self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let mut put = |name, value: Option<Value>| {
            if let Some(v) = value {
                out.push((name, v));
            }
        };
        put("first_name", self.first_name.clone().map(Value::String));
        put("last_name", self.last_name.clone().map(Value::String));
        put(
            "email",
            self.email
                .clone()
                .map(|e| Value::String(e.trim().to_owned())),
        );
        put("phone", self.phone.clone().map(Value::String));
        put("company", self.company.clone().map(Value::String));
        put(
            "status",
            self.status.map(|s| Value::String(s.as_str().into())),
        );
        put("assigned_to", self.assigned_to.clone().map(Value::String));
        put(
            "tags",
            self.tags
                .clone()
                .map(|t| t.into_iter().map(Value::String).collect()),
        );
        put(
            "custom_fields",
            self.custom_fields.clone().map(Value::Object),
        );
        out
    }
}

fn push_value(query: &mut QueryBuilder<Postgres>, value: Value) {
    match value {
        Value::String(s) => query.push_bind(s),
        Value::Array(items) => query.push_bind(
            items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect::<Vec<String>>(),
        ),
        other => query.push_bind(other),
    };
}

/// Database refusals a caller can act on. A duplicate email is named only when the
/// caller can see the customer that has it: for anyone else, the answer must not tell
/// that a customer outside their conditions or grants exists (nor anything about it).
async fn write_error(
    ctx: &ToolCtx,
    policy: &Policy,
    error: sqlx::Error,
    email: Option<&str>,
) -> ToolError {
    if let sqlx::Error::Database(db) = &error {
        if db.is_unique_violation() {
            let email = email.unwrap_or_default();
            let mut visible = policy.rows(&CUSTOMERS, Access::Read).select("count(*)");
            visible
                .push(" AND lower(c.email) = lower(")
                .push_bind(email.to_owned())
                .push(")");
            let seen: Result<i64, _> = visible
                .build_query_scalar()
                .fetch_one(ctx.app.store.pool())
                .await;
            return match seen {
                Ok(n) if n > 0 => ToolError::Conflict(format!(
                    "a customer with email {email} already exists in this tenant"
                )),
                Ok(_) => ToolError::Forbidden(
                    "this caller may not use that email for a customer; use another".into(),
                ),
                Err(error) => StoreError::from(error).into(),
            };
        }
        if db.is_check_violation() {
            return ToolError::InvalidRequest(
                "a value is out of range: names and company up to 200 characters, email 3 to 320, phone up to 50".into(),
            );
        }
    }
    StoreError::from(error).into()
}

impl CustomerFields {
    /// What the database would refuse with a less helpful message, named by field.
    fn check_sizes(&self) -> Result<(), ToolError> {
        for (field, value, max) in [
            ("first_name", &self.first_name, 200),
            ("last_name", &self.last_name, 200),
            ("phone", &self.phone, 50),
            ("company", &self.company, 200),
            ("assigned_to", &self.assigned_to, 200),
        ] {
            if let Some(value) = value
                && value.chars().count() > max
            {
                return Err(ToolError::InvalidRequest(format!(
                    "`{field}` is at most {max} characters"
                )));
            }
        }
        if let Some(email) = &self.email
            && !email_shape(email.trim())
        {
            return Err(ToolError::InvalidRequest(format!(
                "`email` must be an address such as ana@example.com (3 to 320 characters), \
                 not `{}`",
                email.chars().take(80).collect::<String>()
            )));
        }
        match &self.custom_fields {
            Some(fields) => check_stored_json("custom_fields", fields),
            None => Ok(()),
        }
    }

    /// A new customer is someone: a name or an email.
    fn check_identifies(&self) -> Result<(), ToolError> {
        let given = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
        if given(&self.first_name) || given(&self.last_name) || given(&self.email) {
            Ok(())
        } else {
            Err(ToolError::InvalidRequest(
                "a customer needs a `first_name`, a `last_name` or an `email`".into(),
            ))
        }
    }
}

async fn create_customer(ctx: ToolCtx, args: CustomerFields) -> Result<CustomerOut, ToolError> {
    args.check_identifies()?;
    args.check_sizes()?;
    let policy = ctx.policy().await?;
    let given = args.given();
    policy.check_write(&CUSTOMERS, given.iter().map(|(f, _)| *f))?;
    let mut row: serde_json::Map<String, Value> = given
        .iter()
        .cloned()
        .map(|(f, v)| (f.to_owned(), v))
        .collect();
    row.entry("status")
        .or_insert_with(|| Value::String("lead".into()));
    if !policy.row_allowed(&CUSTOMERS, &Value::Object(row)) {
        return Err(ToolError::Forbidden(
            "this caller may only create customers matching its row conditions".into(),
        ));
    }
    let mut query = QueryBuilder::new("INSERT INTO customers (tenant_id");
    for (field, _) in &given {
        query.push(", ").push(*field);
    }
    query.push(") VALUES (").push_bind(ctx.principal.tenant_id);
    for (_, value) in given {
        query.push(", ");
        push_value(&mut query, value);
    }
    query.push(format!(") RETURNING {}", COLUMNS.replace("c.", "")));
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let customer: Customer = match query.build_query_as().fetch_one(&mut *tx).await {
        Ok(customer) => customer,
        Err(error) => {
            return Err(
                write_error(&ctx, &policy, error, args.email.as_deref().map(str::trim)).await,
            );
        }
    };
    let payload = json!({ "customer": customer });
    events::emit(
        &mut tx,
        &ctx.principal,
        "customer.created",
        customer.id,
        payload,
    )
    .await?;
    ctx.commit(tx).await?;
    Ok(CustomerOut {
        customer: shape(&policy, &customer, None)?,
    })
}

// No `deny_unknown_fields` here: serde cannot combine it with `flatten`; the flattened
// `CustomerFields` refuses unknown fields itself.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct UpdateArgs {
    /// From list_customers or search.
    pub customer_id: Uuid,
    /// The `version` you read.
    ///
    /// The update is refused if the record changed since.
    pub version: i32,
    #[serde(flatten)]
    pub fields: CustomerFields,
}

async fn update_customer(ctx: ToolCtx, args: UpdateArgs) -> Result<CustomerOut, ToolError> {
    args.fields.check_sizes()?;
    let policy = ctx.policy().await?;
    let given = args.fields.given();
    if given.is_empty() {
        return Err(ToolError::InvalidRequest(
            "give at least one field to change".into(),
        ));
    }
    policy.check_write(&CUSTOMERS, given.iter().map(|(f, _)| *f))?;
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let current = find(&mut *tx, &policy, Access::Write, args.customer_id, true).await?;
    if current.version != args.version {
        return Err(ToolError::Conflict(format!(
            "customer {} changed since version {} (now version {}); read it again and retry",
            args.customer_id, args.version, current.version
        )));
    }
    let mut after =
        serde_json::to_value(&current).map_err(|e| ToolError::Internal(e.to_string()))?;
    if let Value::Object(map) = &mut after {
        for (field, value) in &given {
            map.insert((*field).to_owned(), value.clone());
        }
    }
    if !policy.row_allowed(&CUSTOMERS, &after) {
        return Err(ToolError::Forbidden(
            "this change would move the customer outside this caller's row conditions".into(),
        ));
    }
    let changed: Vec<&str> = given.iter().map(|(f, _)| *f).collect();
    let mut query = QueryBuilder::new("");
    policy
        .rows(&CUSTOMERS, Access::Write)
        .push_update(&mut query, |set| {
            set.push("version = version + 1, updated_at = now()");
            for (field, value) in given {
                set.push(", ").push(field).push(" = ");
                push_value(set, value);
            }
        });
    query.push(" AND c.id = ").push_bind(args.customer_id);
    query.push(format!(" RETURNING {COLUMNS}"));
    let customer: Customer = match query.build_query_as().fetch_one(&mut *tx).await {
        Ok(customer) => customer,
        Err(error) => {
            return Err(write_error(
                &ctx,
                &policy,
                error,
                args.fields.email.as_deref().map(str::trim),
            )
            .await);
        }
    };
    let payload = json!({ "customer": customer, "changed": changed });
    events::emit(
        &mut tx,
        &ctx.principal,
        "customer.updated",
        customer.id,
        payload,
    )
    .await?;
    crate::mcp::resources::notify_changed(
        &mut tx,
        crate::mcp::resources::customer_uri(customer.id),
    )
    .await?;
    ctx.commit(tx).await?;
    Ok(CustomerOut {
        customer: shape(&policy, &customer, None)?,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteArgs {
    /// From list_customers or search.
    pub customer_id: Uuid,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub customer_id: Uuid,
    pub deleted: bool,
}

async fn delete_customer(ctx: ToolCtx, args: DeleteArgs) -> Result<Deleted, ToolError> {
    let policy = ctx.policy().await?;
    let rows = policy.rows(&CUSTOMERS, Access::Delete);
    rows.check_object(args.customer_id)?;
    let customer = find(
        ctx.app.store.pool(),
        &policy,
        Access::Delete,
        args.customer_id,
        false,
    )
    .await?;
    let name = display_name(&policy, &customer);
    ctx.approval(
        Sensitive::CustomerDelete,
        format!(
            "Delete customer {name} ({}) with its interactions and annotations",
            customer.id
        ),
        Some(About {
            customer_id: customer.id,
            customer_name: name,
        }),
    )
    .await?;
    let mut query = rows.delete();
    query.push(" AND c.id = ").push_bind(args.customer_id);
    query.push(" RETURNING c.id");
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let deleted: Option<Uuid> = query
        .build_query_scalar()
        .fetch_optional(&mut *tx)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => ToolError::Conflict(
                "this customer has invoices, which are kept: void them, but the customer stays"
                    .into(),
            ),
            _ => StoreError::from(error).into(),
        })?;
    let customer_id = deleted.ok_or_else(|| not_found(args.customer_id))?;
    let payload = json!({ "customer_id": customer_id });
    events::emit(
        &mut tx,
        &ctx.principal,
        "customer.deleted",
        customer_id,
        payload,
    )
    .await?;
    crate::mcp::resources::notify_changed(
        &mut tx,
        crate::mcp::resources::customer_uri(customer_id),
    )
    .await?;
    ctx.commit(tx).await?;
    Ok(Deleted {
        customer_id,
        deleted: true,
    })
}
