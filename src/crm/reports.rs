//! `generate_report`: aggregates as structured rows with totals. Each report also needs
//! the read scope of what it counts, and counts only what the caller may see.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};

use super::customers::CUSTOMERS;
use crate::access::Scopes;
use crate::access::policy::Access;
use crate::error::ToolError;
use crate::store::StoreError;
use crate::toolkit::catalog::{Hints, RegisteredTool, ToolDef, Toolset, tool};
use crate::toolkit::context::ToolCtx;

pub fn tools() -> Vec<RegisteredTool> {
    vec![tool(
        ToolDef {
            name: "generate_report",
            title: "Generate a report",
            description: "Aggregate the tenant's data: `pipeline`, `interactions`, \
                `agent_activity` or `revenue`.\n\n\
                `pipeline`: customers by status; `interactions`: by type, direction and sentiment \
                over a period; `agent_activity`: tool calls by agent over a period, with refusals \
                and errors; `revenue`: invoiced, paid and outstanding by month and currency, in \
                minor units. Each report also needs the read scope of what it counts.",
            toolset: Toolset::Crm,
            scopes: &["reports"],
            hints: Hints::READ,
        },
        generate_report,
    )]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    Pipeline,
    Interactions,
    AgentActivity,
    Revenue,
}

impl ReportKind {
    fn scope(self) -> &'static str {
        match self {
            ReportKind::Pipeline => "customers:read",
            ReportKind::Interactions => "interactions:read",
            ReportKind::AgentActivity => "audit:read",
            ReportKind::Revenue => "invoices:read",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportArgs {
    /// Which report.
    pub report: ReportKind,
    /// Period start.
    ///
    /// Default: 30 days before `until` (revenue: 12 months).
    pub since: Option<DateTime<Utc>>,
    /// Period end, exclusive (default: now).
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReportRow {
    /// What the row counts, e.g. `{"status": "hot_lead"}` or `{"month": "2026-11", "currency": "EUR"}`.
    pub labels: BTreeMap<String, String>,
    /// The counts or amounts (minor units) of the row.
    pub metrics: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Report {
    pub report: ReportKind,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub rows: Vec<ReportRow>,
    /// Metrics summed over every row (amounts only within one currency make sense).
    pub totals: BTreeMap<String, i64>,
}

fn row(labels: &[(&str, String)], metrics: &[(&str, i64)]) -> ReportRow {
    ReportRow {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    }
}

async fn generate_report(ctx: ToolCtx, args: ReportArgs) -> Result<Report, ToolError> {
    let scope = args.report.scope();
    if !ctx
        .principal
        .scopes
        .contains(Scopes::parse(&[scope]).unwrap_or_default())
    {
        return Err(ToolError::Forbidden(format!(
            "the {:?} report also needs the `{scope}` scope",
            args.report
        )));
    }
    let until = args.until.unwrap_or_else(Utc::now);
    let default_days = if args.report == ReportKind::Revenue {
        365
    } else {
        30
    };
    let since = args.since.unwrap_or(until - Duration::days(default_days));
    if since >= until {
        return Err(ToolError::InvalidRequest(
            "since must be before until".into(),
        ));
    }
    let policy = ctx.policy().await?;
    let pool = ctx.app.store.pool();
    let tenant = ctx.principal.tenant_id;
    let rows = match args.report {
        ReportKind::Pipeline => {
            policy.check_write(&CUSTOMERS, ["status"]).map_err(|_| {
                ToolError::Forbidden(
                    "the pipeline groups by status, a field this caller cannot see".into(),
                )
            })?;
            let mut q: QueryBuilder<Postgres> = policy
                .rows(&CUSTOMERS, Access::Read)
                .select("c.status, count(*)");
            q.push(" GROUP BY c.status ORDER BY count(*) DESC, c.status");
            let found: Vec<(String, i64)> = q
                .build_query_as()
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)?;
            found
                .into_iter()
                .map(|(status, n)| row(&[("status", status)], &[("customers", n)]))
                .collect()
        }
        ReportKind::Interactions => {
            let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
                "SELECT i.type, coalesce(i.direction, 'none'), coalesce(i.metadata->>'sentiment', 'unknown'), count(*) \
                 FROM interactions i",
            );
            policy
                .rows(&CUSTOMERS, Access::Read)
                .push_join(&mut q, "i", "customer_id");
            q.push(" WHERE i.occurred_at >= ").push_bind(since);
            q.push(" AND i.occurred_at < ").push_bind(until);
            q.push(" GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3");
            let found: Vec<(String, String, String, i64)> = q
                .build_query_as()
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)?;
            found
                .into_iter()
                .map(|(kind, direction, sentiment, n)| {
                    row(
                        &[
                            ("type", kind),
                            ("direction", direction),
                            ("sentiment", sentiment),
                        ],
                        &[("interactions", n)],
                    )
                })
                .collect()
        }
        ReportKind::AgentActivity => {
            let found: Vec<(String, i64, i64, i64)> = sqlx::query_as(
                "SELECT coalesce(principal_name, principal_id::text), count(*),
                        count(*) FILTER (WHERE outcome = 'refused'), count(*) FILTER (WHERE outcome = 'error')
                 FROM audit_events
                 WHERE tenant_id = $1 AND kind = 'tool' AND principal_kind = 'agent' AND at >= $2 AND at < $3
                 GROUP BY 1 ORDER BY 2 DESC, 1",
            )
            .bind(tenant)
            .bind(since)
            .bind(until)
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?;
            found
                .into_iter()
                .map(|(agent, calls, refused, errors)| {
                    row(
                        &[("agent", agent)],
                        &[("calls", calls), ("refused", refused), ("errors", errors)],
                    )
                })
                .collect()
        }
        ReportKind::Revenue => {
            let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
                "SELECT to_char(date_trunc('month', v.created_at), 'YYYY-MM'), v.currency, \
                 coalesce(sum(v.total) FILTER (WHERE v.status <> 'void'), 0)::bigint, \
                 coalesce(sum(v.total) FILTER (WHERE v.status = 'paid'), 0)::bigint, \
                 coalesce(sum(v.total) FILTER (WHERE v.status = 'sent'), 0)::bigint \
                 FROM invoices v",
            );
            policy
                .rows(&CUSTOMERS, Access::Read)
                .push_join(&mut q, "v", "customer_id");
            q.push(" WHERE v.created_at >= ").push_bind(since);
            q.push(" AND v.created_at < ").push_bind(until);
            q.push(" GROUP BY 1, 2 ORDER BY 1, 2");
            let found: Vec<(String, String, i64, i64, i64)> = q
                .build_query_as()
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)?;
            found
                .into_iter()
                .map(|(month, currency, invoiced, paid, outstanding)| {
                    row(
                        &[("month", month), ("currency", currency)],
                        &[
                            ("invoiced", invoiced),
                            ("paid", paid),
                            ("outstanding", outstanding),
                        ],
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let mut totals = BTreeMap::new();
    for r in &rows {
        for (metric, value) in &r.metrics {
            *totals.entry(metric.clone()).or_insert(0) += value;
        }
    }
    Ok(Report {
        report: args.report,
        since,
        until,
        rows,
        totals,
    })
}
