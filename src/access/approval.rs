//! The approval hook (SPEC §4): which operations by agents wait for a person, and holding
//! them. A tool describes what it is about to do (`Sensitive`) just before it changes
//! anything; when the tenant's policy holds that for agents, the call is stored as a
//! pending action and answers `pending_approval` instead of running.
//!
//! Nothing an agent sends can skip the hold: the only way past it is the `approved_action`
//! of the call context, which `decide_pending_action` sets when a person approved.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ToolError;
use crate::store::StoreError;
use crate::toolkit::context::ToolCtx;

/// Which operations by agents are held for a person. Omitted fields take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// Hold `delete_customer`.
    ///
    /// Default true.
    #[serde(default = "yes")]
    pub hold_customer_deletes: bool,
    /// Hold bulk changes above this.
    ///
    /// Bulk changes of more than this many records are held (default 100; null: never).
    #[serde(default = "default_bulk")]
    pub bulk_records_over: Option<i64>,
    /// Hold invoices above this (minor units).
    ///
    /// In minor units of the invoice's currency (default 1000000, i.e. 10,000.00; null: never).
    #[serde(default = "default_invoice_total")]
    pub invoice_total_over: Option<i64>,
    /// Hold discounts over this %.
    ///
    /// Invoices, quotes and quote conversions with a discount over this percentage are held
    /// (default 20; null: never).
    #[serde(default = "default_discount")]
    pub discount_percent_over: Option<f64>,
    /// Tools always held for agents.
    ///
    /// More tools held whenever an agent calls them (e.g. `update_customer`). Only tools that
    /// change something, outside the handoff toolset.
    #[serde(default)]
    pub held_tools: Vec<String>,
    /// Confirm destructive calls.
    ///
    /// Destructive tools called by a person first ask that person to confirm in their client (MCP
    /// elicitation); a client that cannot ask gets a refusal instead of an unconfirmed run (default
    /// false).
    #[serde(default)]
    pub confirm_destructive: bool,
}

fn yes() -> bool {
    true
}
fn default_bulk() -> Option<i64> {
    Some(100)
}
fn default_invoice_total() -> Option<i64> {
    Some(1_000_000)
}
fn default_discount() -> Option<f64> {
    Some(20.0)
}

impl Default for ApprovalPolicy {
    fn default() -> ApprovalPolicy {
        ApprovalPolicy {
            hold_customer_deletes: true,
            bulk_records_over: default_bulk(),
            invoice_total_over: default_invoice_total(),
            discount_percent_over: default_discount(),
            held_tools: Vec::new(),
            confirm_destructive: false,
        }
    }
}

/// What a tool is about to do, as far as the approval policy is concerned.
#[derive(Debug, Clone)]
pub enum Sensitive {
    CustomerDelete,
    Bulk {
        records: i64,
    },
    /// An invoice (or a quote, with `total` of its lines) about to be created.
    Invoice {
        total: i64,
        currency: String,
        discount_bps: i64,
    },
    /// A quote about to be offered with this discount.
    Quote {
        discount_bps: i64,
    },
    /// A tool of the policy's `held_tools`.
    Listed,
}

impl ApprovalPolicy {
    pub async fn load(pool: &PgPool, tenant_id: Uuid) -> Result<ApprovalPolicy, StoreError> {
        let stored: Option<Value> =
            sqlx::query_scalar("SELECT policy FROM approval_policies WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_optional(pool)
                .await?;
        // Stored policies were validated; one that no longer parses (a field removed in a
        // later version) falls back to the defaults, which hold more rather than less.
        Ok(stored
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default())
    }

    pub async fn save(&self, pool: &PgPool, tenant_id: Uuid, by: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO approval_policies (tenant_id, policy, updated_by_name) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET policy = EXCLUDED.policy,
                 updated_by_name = EXCLUDED.updated_by_name, updated_at = now()",
        )
        .bind(tenant_id)
        .bind(serde_json::to_value(self).unwrap_or_default())
        .bind(by)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Why this policy holds `operation`, or `None` when it may run.
    pub fn holds(&self, tool: &str, operation: &Sensitive) -> Option<String> {
        match operation {
            Sensitive::CustomerDelete => self
                .hold_customer_deletes
                .then(|| "the approval policy holds customer deletions by agents".to_owned()),
            Sensitive::Bulk { records } => {
                self.bulk_records_over
                    .filter(|max| records > max)
                    .map(|max| {
                        format!("bulk changes of more than {max} records are held ({records} here)")
                    })
            }
            Sensitive::Quote { discount_bps } => self.discount(*discount_bps),
            Sensitive::Invoice {
                total,
                currency,
                discount_bps,
            } => {
                if let Some(reason) = self.discount(*discount_bps) {
                    return Some(reason);
                }
                self.invoice_total_over
                    .filter(|max| total > max)
                    .map(|max| {
                        format!(
                            "invoices over {} {currency} are held ({} {currency} here)",
                            minor(max),
                            minor(*total)
                        )
                    })
            }
            Sensitive::Listed => self
                .held_tools
                .iter()
                .any(|t| t == tool)
                .then(|| format!("the approval policy holds every `{tool}` call by agents")),
        }
    }
}

impl ApprovalPolicy {
    fn discount(&self, bps: i64) -> Option<String> {
        let percent = bps as f64 / 100.0;
        self.discount_percent_over
            .filter(|max| percent > *max)
            .map(|max| format!("discounts over {max} % are held ({percent} % here)"))
    }
}

/// Minor units as a decimal amount with two places (the common case; the currency is named).
fn minor(amount: i64) -> String {
    format!("{}.{:02}", amount / 100, (amount % 100).abs())
}

/// The customer a held action is about, shown to the person deciding.
pub struct About {
    pub customer_id: Uuid,
    pub customer_name: String,
}

impl ToolCtx {
    /// The approval hook. Call it after validating the call and before changing anything,
    /// outside any transaction holding row locks: `Ok(())` means go ahead; a held call gets
    /// `ToolError::PendingApproval`, and the arguments it was called with are stored to run
    /// as they are once approved.
    pub async fn approval(
        &self,
        operation: Sensitive,
        summary: impl Into<String>,
        about: Option<About>,
    ) -> Result<(), ToolError> {
        match self.held(&operation).await? {
            None => Ok(()),
            Some(reason) => Err(self.hold(&reason, &summary.into(), about).await),
        }
    }

    /// The first half of [`ToolCtx::approval`], for a tool that must first end its
    /// transaction: why the operation is held, if it is.
    pub async fn held(&self, operation: &Sensitive) -> Result<Option<String>, ToolError> {
        // Operations by agents are held: an agent is the caller or in the chain it acts for.
        if !self.principal.involves_agent() || self.approved_action.is_some() {
            return Ok(None);
        }
        let policy = ApprovalPolicy::load(self.app.store.pool(), self.principal.tenant_id).await?;
        Ok(policy.holds(self.tool, operation))
    }

    /// [`ToolCtx::approval`] for a call whose targets were resolved from a filter: what is
    /// stored (and run once approved) is `pinned`, the call with the targets shown to the
    /// person deciding, never the filter resolved again later.
    pub async fn approval_pinned(
        &self,
        operation: Sensitive,
        summary: impl Into<String>,
        pinned: serde_json::Map<String, Value>,
    ) -> Result<(), ToolError> {
        match self.held(&operation).await? {
            None => Ok(()),
            Some(reason) => {
                let arguments = Value::Object(pinned);
                Err(self
                    .hold_arguments(&reason, &summary.into(), None, arguments)
                    .await)
            }
        }
    }

    /// The second half: stores the call as a pending action and returns the answer to give.
    pub async fn hold(&self, reason: &str, summary: &str, about: Option<About>) -> ToolError {
        let arguments = Value::Object((*self.arguments).clone());
        self.hold_arguments(reason, summary, about, arguments).await
    }

    async fn hold_arguments(
        &self,
        reason: &str,
        summary: &str,
        about: Option<About>,
        arguments: Value,
    ) -> ToolError {
        let pool = self.app.store.pool();
        let action_id = match store_hold(pool, self, summary, reason, about, arguments).await {
            Ok(id) => id,
            Err(error) => return error.into(),
        };
        ToolError::PendingApproval {
            action_id,
            message: format!(
                "Held for approval: {reason}. Nothing has changed. A person with handoff:decide \
                 will approve or reject pending action {action_id}; follow it with \
                 get_pending_action (or the resource agentcrm://pending-actions/{action_id}). \
                 Approval runs this call as you, with your permissions at that moment."
            ),
        }
    }
}

/// Stores the held call and its `handoff.created` event in one transaction.
async fn store_hold(
    pool: &PgPool,
    ctx: &ToolCtx,
    summary: &str,
    reason: &str,
    about: Option<About>,
    arguments: Value,
) -> Result<Uuid, StoreError> {
    let principal = &ctx.principal;
    // The agent whose call it is (the first of the chain), and the chain approval runs for.
    let members = principal.members();
    let (agent_id, agent_name) = principal
        .chain_agent()
        .map_or((principal.id, principal.name.clone()), |a| {
            (Some(a.id), a.name)
        });
    let (customer_id, customer_name) = about
        .map(|a| (Some(a.customer_id), Some(a.customer_name)))
        .unwrap_or_default();
    let mut tx = pool.begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO pending_actions (tenant_id, tool, arguments, summary, hold_reason, customer_id,
             customer_name, agent_id, agent_name, scopes, history, chain)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                 jsonb_build_array(jsonb_build_object('at', now(), 'by', $9::text, 'action', 'held',
                                                      'state', 'pending', 'note', $5::text)),
                 $11)
         RETURNING id",
    )
    .bind(principal.tenant_id)
    .bind(ctx.tool)
    .bind(arguments)
    .bind(summary)
    .bind(reason)
    .bind(customer_id)
    .bind(&customer_name)
    .bind(agent_id)
    .bind(&agent_name)
    .bind(principal.scopes.names())
    .bind(crate::access::delegation::chain_json(&members))
    .fetch_one(&mut *tx)
    .await?;
    crate::events::emit(
        &mut tx,
        principal,
        "handoff.created",
        id,
        json!({
            "kind": "pending_action",
            "pending_action": {
                "id": id, "tool": ctx.tool, "summary": summary, "hold_reason": reason,
                "customer_id": customer_id, "customer_name": customer_name,
                "agent_id": agent_id, "agent_name": agent_name, "state": "pending",
            }
        }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(action = %id, tool = ctx.tool, "agent call held for approval");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_holds_what_spec_section_4_names_and_nothing_else() {
        let policy = ApprovalPolicy::default();
        let holds = |op: Sensitive| policy.holds("some_tool", &op);
        assert!(holds(Sensitive::CustomerDelete).is_some());
        assert!(holds(Sensitive::Bulk { records: 100 }).is_none());
        assert!(holds(Sensitive::Bulk { records: 101 }).is_some());
        let invoice = |total, discount_bps| Sensitive::Invoice {
            total,
            currency: "EUR".into(),
            discount_bps,
        };
        assert!(holds(invoice(1_000_000, 2000)).is_none(), "at the limits");
        let over = holds(invoice(1_000_001, 0)).unwrap();
        assert!(over.contains("10000.00 EUR"), "{over}");
        assert!(holds(invoice(100, 2001)).unwrap().contains("20.01 %"));
        assert!(holds(Sensitive::Quote { discount_bps: 2500 }).is_some());
        assert!(holds(Sensitive::Listed).is_none());
        let never: ApprovalPolicy = serde_json::from_value(serde_json::json!({
            "hold_customer_deletes": false, "bulk_records_over": null,
            "invoice_total_over": null, "discount_percent_over": null,
            "held_tools": ["some_tool"],
        }))
        .unwrap();
        assert!(never.holds("x", &Sensitive::CustomerDelete).is_none());
        assert!(
            never
                .holds("x", &Sensitive::Bulk { records: i64::MAX })
                .is_none()
        );
        assert!(never.holds("x", &invoice(i64::MAX, 10_000)).is_none());
        assert!(never.holds("some_tool", &Sensitive::Listed).is_some());
    }
}
