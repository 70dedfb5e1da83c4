//! Tool calls the server makes on a principal's behalf, without a client on the line:
//! workflow steps and prompt agents' tool calls. They pass the same checks as a client's
//! call (the tool filter, scopes, the approval hook, the held-tools gate) and are audited
//! the same way; remote MCP tools of the tenant's catalog are called here too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::JsonObject;
use serde_json::Value;

use super::context::{ToolCtx, Transport};
use super::filter::denial;
use crate::access::Principal;
use crate::access::approval::{ApprovalPolicy, Sensitive};
use crate::access::audit::{AuditEvent, redact_object};
use crate::access::ratelimit::Class;
use crate::app::App;
use crate::connections::catalog as remote_catalog;
use crate::error::ToolError;

/// A call to make: who, through what, which tool, with what.
pub struct Invocation<'a> {
    pub principal: &'a Principal,
    pub transport: Transport,
    pub tool: &'a str,
    pub arguments: &'a JsonObject,
    /// The call fails (as `internal`, naming the limit) when it takes longer.
    pub timeout: Duration,
    /// Why the call is made, for a held call's summary (e.g. "Workflow step").
    pub purpose: &'a str,
}

/// Counts a call against the caller's rate limits: every call, plus the search and bulk
/// classes for tools that need those scopes.
pub async fn admit(app: &App, principal: &Principal, scopes: &[&str]) -> Result<(), ToolError> {
    let mut classes = vec![Class::Calls];
    for (scope, class) in [("search", Class::Search), ("bulk", Class::Bulk)] {
        if scopes.contains(&scope) {
            classes.push(class);
        }
    }
    match app.limiter.check(principal, &classes).await? {
        Ok(()) => Ok(()),
        Err(limited) => Err(ToolError::RateLimited(
            format!(
                "Rate limit reached ({} class): {} may make at most {} calls per {} s. \
                 Retry in {} s.",
                limited.class.name(),
                principal.name,
                limited.limit.max,
                limited.limit.window_seconds,
                limited.retry_after
            ),
            limited.retry_after,
        )),
    }
}

/// Runs the call and records it in the audit trail.
pub async fn invoke(app: &Arc<App>, call: Invocation<'_>) -> Result<Value, ToolError> {
    let request_id = uuid::Uuid::now_v7().to_string();
    let started = Instant::now();
    let outcome = if remote_catalog::is_remote(call.tool) {
        match admit(app, call.principal, &[]).await {
            Ok(()) => {
                remote_catalog::call(app, call.principal, call.tool, call.arguments, call.timeout)
                    .await
            }
            Err(limited) => Err(limited),
        }
    } else {
        builtin(app, &call, &request_id).await
    };
    let mut audit = AuditEvent::by(call.principal, "tool", call.tool, "ok");
    audit.arguments = Some(redact_object(call.arguments));
    audit.transport = Some(call.transport.as_str());
    audit.request_id = Some(request_id);
    audit.duration_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    if let Err(error) = &outcome {
        audit.outcome = match error {
            ToolError::PendingApproval { .. } => "held",
            ToolError::Store(_) | ToolError::Internal(_) => "error",
            _ => "refused",
        };
        audit.error_code = serde_json::to_value(error.code())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
    }
    app.audit.record(audit).await;
    outcome
}

async fn builtin(
    app: &Arc<App>,
    call: &Invocation<'_>,
    request_id: &str,
) -> Result<Value, ToolError> {
    let principal = call.principal;
    let tool = app
        .catalog
        .get(call.tool)
        .filter(|t| app.filter.allows(&t.def))
        .ok_or_else(|| {
            ToolError::Forbidden(format!("`{}` is not available on this server", call.tool))
        })?;
    if let Some(denied) = denial(principal, tool) {
        return Err(ToolError::Forbidden(
            denied.describe(tool.def.name, &principal.name),
        ));
    }
    tool.validate(call.arguments)?;
    // The caller's rate limits hold for calls made on its behalf too.
    admit(app, principal, tool.def.scopes).await?;
    let ctx = ToolCtx {
        app: app.clone(),
        transport: call.transport,
        principal: principal.clone(),
        request_id: request_id.to_owned(),
        session_id: None,
        filter: app.filter.clone(),
        progress: None,
        tool: tool.def.name,
        arguments: Arc::new(call.arguments.clone()),
        approved_action: None,
        client: None,
    };
    // The same holds as a call from a client: listed tools for agents; and no destructive
    // call by a person runs unconfirmed where the tenant wants it confirmed.
    if !tool.def.hints.read_only {
        if principal.is_agent() {
            if let Some(reason) = ctx.held(&Sensitive::Listed).await? {
                let summary = format!("{}: call `{}`", call.purpose, tool.def.name);
                return Err(ctx.hold(&reason, &summary, None).await);
            }
        } else if tool.def.hints.destructive
            && ApprovalPolicy::load(app.store.pool(), principal.tenant_id)
                .await?
                .confirm_destructive
        {
            return Err(ToolError::Forbidden(format!(
                "`{}` needs a person's confirmation in their client, which {} cannot ask for",
                tool.def.name,
                call.transport.describe()
            )));
        }
    }
    match tokio::time::timeout(call.timeout, tool.call(ctx, call.arguments.clone())).await {
        Ok(result) => result,
        Err(_) => Err(ToolError::Internal(format!(
            "`{}` took longer than {} s",
            tool.def.name,
            call.timeout.as_secs()
        ))),
    }
}
