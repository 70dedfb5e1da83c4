//! `get_approval_policy` and `set_approval_policy`: which operations by agents this
//! tenant holds for a person (the hook is `access::approval`).

use schemars::JsonSchema;
use serde::Serialize;

use super::ADMIN;
use crate::access::approval::ApprovalPolicy;
use crate::error::ToolError;
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, handles_secrets, tool};
use crate::toolkit::context::ToolCtx;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Admin.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "get_approval_policy",
                "Get the approval policy",
                "Show which operations by agents this tenant holds for a person's approval.\n\n\
                 Customer deletions, bulk changes over a number of records, invoices over an \
                 amount, discounts over a percentage, further tools always held, and whether \
                 people confirm destructive tools in their client.",
                ADMIN,
                Hints::READ,
            ),
            get_approval_policy,
        ),
        tool(
            def(
                "set_approval_policy",
                "Set the approval policy",
                "Replace this tenant's approval policy; omitted fields go back to their \
                 defaults.\n\n\
                 The defaults: customer deletions held, bulk over 100 records, invoices over \
                 10,000.00, discounts over 20 %, no further tools, no in-client confirmation. Held \
                 agent calls wait in list_pending_actions for decide_pending_action.",
                ADMIN,
                Hints::SET,
            ),
            set_approval_policy,
        ),
    ]
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PolicyOut {
    pub approval_policy: ApprovalPolicy,
}

async fn get_approval_policy(
    ctx: ToolCtx,
    _args: crate::account::NoArgs,
) -> Result<PolicyOut, ToolError> {
    Ok(PolicyOut {
        approval_policy: ApprovalPolicy::load(ctx.app.store.pool(), ctx.principal.tenant_id)
            .await?,
    })
}

async fn set_approval_policy(ctx: ToolCtx, policy: ApprovalPolicy) -> Result<PolicyOut, ToolError> {
    for (name, value) in [
        ("bulk_records_over", policy.bulk_records_over),
        ("invoice_total_over", policy.invoice_total_over),
    ] {
        if value.is_some_and(|v| v < 0) {
            return Err(ToolError::InvalidRequest(format!(
                "{name} must be 0 or more (or null to never hold)"
            )));
        }
    }
    if policy
        .discount_percent_over
        .is_some_and(|p| !(0.0..=100.0).contains(&p))
    {
        return Err(ToolError::InvalidRequest(
            "discount_percent_over must be 0 to 100 (or null to never hold)".into(),
        ));
    }
    if policy.held_tools.len() > 200 {
        return Err(ToolError::InvalidRequest(
            "held_tools names at most 200 tools".into(),
        ));
    }
    for name in &policy.held_tools {
        let tool = crate::catalog::builtin().get(name).ok_or_else(|| {
            ToolError::InvalidRequest(format!("held_tools: there is no tool `{name}`"))
        })?;
        if tool.def.hints.read_only
            || tool.def.toolset == Toolset::Handoff
            || tool.humans_only
            || handles_secrets(name)
        {
            return Err(ToolError::InvalidRequest(format!(
                "held_tools: `{name}` cannot be held (only tools agents may call that change \
                 something, outside the handoff toolset, and whose arguments and answer hold no secret)"
            )));
        }
    }
    let mut policy = policy;
    policy.held_tools.sort();
    policy.held_tools.dedup();
    policy
        .save(
            ctx.app.store.pool(),
            ctx.principal.tenant_id,
            &ctx.principal.name,
        )
        .await?;
    Ok(PolicyOut {
        approval_policy: policy,
    })
}
