//! `search`: PostgreSQL full text over customers and interactions (generated tsvectors,
//! GIN indexes, `websearch_to_tsquery`), plus typo- and prefix-tolerant matching of names
//! and emails with pg_trgm; ranked, with a highlight.
//!
//! A caller with field rules on customers is matched and highlighted on its allowed fields
//! only: the text searched is then built from those fields at query time (the indexed
//! column covers every field, so it would match on hidden ones).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::customers::{COLUMNS, CUSTOMERS, Customer, check_fields, shape};
use super::interactions::Interaction;
use crate::access::Scopes;
use crate::access::policy::{Access, Policy, Shaped};
use crate::error::ToolError;
use crate::store::StoreError;
use crate::toolkit::catalog::{Hints, RegisteredTool, ToolDef, Toolset, tool};
use crate::toolkit::context::ToolCtx;

const MAX_RESULTS: u32 = 50;
/// Rows ranked per kind of match (full text, trigram), whatever the number matching.
const CANDIDATES: i64 = 200;
/// Trigram matching covers an email's local part, not its domain (migration 0015).
const EMAIL_LOCAL_PART: &str = "split_part(coalesce(c.email, ''), '@', 1)";

pub fn tools() -> Vec<RegisteredTool> {
    vec![tool(
        ToolDef {
            name: "search",
            title: "Search customers and interactions",
            description: "Search customers and interactions by words; ranked, with highlighted \
                matches.\n\n\
                Customers match on names, email, company, phone and assignee; interactions on \
                subject and notes. Words, phrases (\"…\"), alternatives (or) and exclusions \
                (-word); names and emails also match by prefix and with typos. Results are ranked \
                by `score` and carry a `highlight` with matches in <<…>>.",
            toolset: Toolset::Crm,
            scopes: &["search"],
            hints: Hints::READ,
        },
        search,
    )]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Customer,
    Interaction,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// 1 to 200 characters, web-search syntax.
    pub query: String,
    /// What to search (default: both).
    ///
    /// Within the caller's read scopes.
    pub types: Option<Vec<Kind>>,
    /// 1 to 50 (default 20).
    ///
    /// At most this many results.
    pub limit: Option<u32>,
    /// Only these customer fields (plus `id`).
    pub fields: Option<Vec<String>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Hit {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub id: Uuid,
    pub customer_id: Uuid,
    /// Higher is better; comparable within one answer.
    pub score: f32,
    /// The matching text with matches in <<…>>.
    pub highlight: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<Shaped<Customer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interaction: Option<Interaction>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchResults {
    pub results: Vec<Hit>,
}

/// The customer fields whose text is searched, in a fixed order.
const SEARCHED: [&str; 7] = [
    "first_name",
    "last_name",
    "email",
    "company",
    "phone",
    "assigned_to",
    "status",
];

/// The SQL text of the allowed searched fields, e.g. `coalesce(c.email, '') || ' ' || …`
/// (`text_of` gives each field's text).
fn allowed_text(policy: &Policy, fields: &[&str], text_of: fn(&str) -> String) -> String {
    let parts: Vec<String> = fields
        .iter()
        .filter(|f| policy.field_allowed(&CUSTOMERS, f))
        .map(|f| text_of(f))
        .collect();
    if parts.is_empty() {
        "''".into()
    } else {
        parts.join(" || ' ' || ")
    }
}

/// The expression of the prefix index (migration 0016), compared byte-wise so that the
/// range `[p, p || U+10FFFF)` holds exactly the full names starting with `p` in any locale.
const FULL_NAME_PREFIX: &str = "(lower(c.first_name || ' ' || c.last_name) COLLATE \"C\")";

/// The text names are matched on by prefix: a plain query (no quotes, `or` or `-word`,
/// whose meaning a prefix match would drop), with its spaces collapsed.
fn prefix_text(query: &str) -> Option<String> {
    let words: Vec<&str> = query.split_whitespace().collect();
    let plain = !query.contains('"')
        && words
            .iter()
            .all(|w| !w.starts_with('-') && !w.eq_ignore_ascii_case("or"));
    (plain && !words.is_empty()).then(|| words.join(" "))
}

fn field_text(field: &str) -> String {
    format!("coalesce(c.{field}, '')")
}

/// What trigrams match: the field, or for the email its local part (migration 0015).
fn trigram_text(field: &str) -> String {
    if field == "email" {
        EMAIL_LOCAL_PART.into()
    } else {
        field_text(field)
    }
}

async fn search(ctx: ToolCtx, args: SearchArgs) -> Result<SearchResults, ToolError> {
    let query = args.query.trim();
    if query.is_empty() || query.chars().count() > 200 {
        return Err(ToolError::InvalidRequest(
            "query must be 1 to 200 characters".into(),
        ));
    }
    check_fields(args.fields.as_deref())?;
    let limit = args.limit.unwrap_or(20);
    if !(1..=MAX_RESULTS).contains(&limit) {
        return Err(ToolError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_RESULTS}"
        )));
    }
    let wanted = |kind| args.types.as_ref().is_none_or(|t| t.contains(&kind));
    let may = |scope: &str| {
        ctx.principal
            .scopes
            .contains(Scopes::parse(&[scope]).unwrap_or_default())
    };
    let policy = ctx.policy().await?;
    let pool = ctx.app.store.pool();
    let mut results = Vec::new();

    if wanted(Kind::Customer) && may("customers:read") {
        let rows = policy.rows(&CUSTOMERS, Access::Read);
        let restricted = policy.field_rules.contains_key(CUSTOMERS.name);
        // The text matched and highlighted: every searched field, or only the allowed ones.
        let (vector, names, headline) = if restricted {
            let all = allowed_text(&policy, &SEARCHED, field_text);
            let names = allowed_text(&policy, &["first_name", "last_name", "email"], trigram_text);
            (
                format!("to_tsvector('simple', {all})"),
                format!("lower({names})"),
                all,
            )
        } else {
            (
                "c.search".to_owned(),
                format!("lower(c.first_name || ' ' || c.last_name || ' ' || {EMAIL_LOCAL_PART})"),
                "c.first_name || ' ' || c.last_name || ' ' || coalesce(c.email, '') || ' ' || coalesce(c.company, '')"
                    .to_owned(),
            )
        };
        // Full-text matches first; then full names starting with the query (a btree range, which
        // stop at CANDIDATES rows however common the name); trigram matches (typos) only
        // when both found fewer than asked for. Each side ranks at most CANDIDATES rows: a
        // word shared by a large part of the tenant is ranked among the first rows having it.
        let prefix = prefix_text(query).filter(|_| {
            ["first_name", "last_name"]
                .iter()
                .all(|f| policy.field_allowed(&CUSTOMERS, f))
        });
        let similarity = |sql: &mut QueryBuilder<Postgres>| {
            sql.push("word_similarity(lower(")
                .push_bind(query.to_owned())
                .push(format!("), {names})"));
        };
        let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(format!(
            "WITH fts AS (SELECT {COLUMNS}, \
             greatest(ts_rank_cd({vector}, websearch_to_tsquery('simple', "
        ));
        sql.push_bind(query.to_owned()).push(")), ");
        similarity(&mut sql);
        sql.push(")::float4 AS score");
        rows.push_from(&mut sql);
        sql.push(format!(" AND {vector} @@ websearch_to_tsquery('simple', "))
            .push_bind(query.to_owned())
            .push(") LIMIT ")
            .push_bind(CANDIDATES)
            .push("), pre AS (");
        match prefix {
            Some(prefix) => {
                sql.push(format!("SELECT {COLUMNS}, "));
                similarity(&mut sql);
                sql.push("::float4 AS score");
                rows.push_from(&mut sql);
                sql.push(" AND (SELECT count(*) FROM fts) < ")
                    .push_bind(i64::from(limit));
                sql.push(format!(" AND {FULL_NAME_PREFIX} >= (lower("))
                    .push_bind(prefix.clone())
                    .push(format!(") COLLATE \"C\") AND {FULL_NAME_PREFIX} < (lower("))
                    .push_bind(prefix)
                    .push(") || chr(1114111)) COLLATE \"C\" AND c.id NOT IN (SELECT id FROM fts) LIMIT ")
                    .push_bind(CANDIDATES);
            }
            None => {
                sql.push("SELECT * FROM fts WHERE false");
            }
        }
        sql.push(format!("), fuzzy AS (SELECT {COLUMNS}, "));
        similarity(&mut sql);
        sql.push("::float4 AS score");
        rows.push_from(&mut sql);
        sql.push(" AND (SELECT count(*) FROM fts) + (SELECT count(*) FROM pre) < ")
            .push_bind(i64::from(limit));
        sql.push(" AND lower(")
            .push_bind(query.to_owned())
            .push(format!(
                ") <% {names} AND c.id NOT IN (SELECT id FROM fts UNION ALL SELECT id FROM pre) LIMIT "
            ))
            .push_bind(CANDIDATES)
            .push(format!(
                ") SELECT c.*, ts_headline('simple', {headline}, websearch_to_tsquery('simple', "
            ))
            .push_bind(query.to_owned())
            .push(
                "), 'StartSel=<<, StopSel=>>, MaxFragments=2, HighlightAll=false') AS highlight \
                 FROM (SELECT * FROM fts UNION ALL SELECT * FROM pre UNION ALL SELECT * FROM fuzzy \
                 ORDER BY score DESC, id LIMIT ",
            )
            .push_bind(i64::from(limit))
            .push(") c ORDER BY score DESC, id");
        let rows: Vec<CustomerHit> = sql
            .build_query_as()
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?;
        for row in rows {
            results.push(Hit {
                kind: Kind::Customer,
                id: row.customer.id,
                customer_id: row.customer.id,
                score: row.score,
                highlight: row.highlight,
                customer: Some(shape(&policy, &row.customer, args.fields.as_deref())?),
                interaction: None,
            });
        }
    }

    if wanted(Kind::Interaction) && may("interactions:read") {
        let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT i.id, i.customer_id, i.type, i.direction, i.subject, i.notes, i.occurred_at, i.metadata, i.created_at, \
             ts_rank_cd(i.search, q.fts)::float4 AS score, \
             ts_headline('english', i.subject || ' ' || i.notes, q.fts, 'StartSel=<<, StopSel=>>, MaxFragments=2') AS highlight \
             FROM (SELECT websearch_to_tsquery('english', ",
        );
        sql.push_bind(query.to_owned())
            .push(") AS fts) q, interactions i");
        policy
            .rows(&CUSTOMERS, Access::Read)
            .push_join(&mut sql, "i", "customer_id");
        sql.push(" WHERE i.search @@ q.fts");
        sql.push(" ORDER BY score DESC, i.id LIMIT ")
            .push_bind(i64::from(limit));
        let rows: Vec<InteractionHit> = sql
            .build_query_as()
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?;
        for row in rows {
            results.push(Hit {
                kind: Kind::Interaction,
                id: row.interaction.id,
                customer_id: row.interaction.customer_id,
                score: row.score,
                highlight: row.highlight,
                customer: None,
                interaction: Some(row.interaction),
            });
        }
    }

    results.sort_by(|a, b| b.score.total_cmp(&a.score));
    results.truncate(limit as usize);
    Ok(SearchResults { results })
}

#[derive(sqlx::FromRow)]
struct CustomerHit {
    #[sqlx(flatten)]
    customer: Customer,
    score: f32,
    highlight: String,
}

#[derive(sqlx::FromRow)]
struct InteractionHit {
    #[sqlx(flatten)]
    interaction: Interaction,
    score: f32,
    highlight: String,
}
