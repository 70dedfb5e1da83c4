//! What stands between an admitted call and its handler, besides scopes and rate limits:
//! - for agents, the tools the tenant's approval policy holds whenever an agent calls them;
//! - for people, when the tenant asks for it, confirmation of destructive tools in their
//!   own client (MCP elicitation). A client that cannot ask gets a refusal: a destructive
//!   call never runs unconfirmed because the client could not show the question.

use std::time::Duration;

use rmcp::model::{
    ElicitRequest, ElicitRequestParams, ElicitResult, ElicitationAction, ElicitationSchema,
    InputRequest, InputRequests, InputRequiredResult, JsonObject,
};
use serde_json::Value;

use crate::access::approval::{ApprovalPolicy, Sensitive};
use crate::error::ToolError;
use crate::toolkit::catalog::{RegisteredTool, Toolset};
use crate::toolkit::context::{ClientSide, ToolCtx};

/// The key of the confirmation question in an input-required result and its answer.
const CONFIRM: &str = "agentcrm_confirm";
/// How long a person has to answer a confirmation asked on an open session.
const ASK_TIMEOUT: Duration = Duration::from_secs(300);

pub enum Gate {
    Run,
    /// Ask the caller first (protocol 2026-07-28: the client retries with the answer).
    Ask(InputRequiredResult),
}

/// The holds and confirmations in front of a call's handler. `purpose` names the path in a
/// held call's summary.
pub async fn gate(
    ctx: &ToolCtx,
    tool: &RegisteredTool,
    args: &JsonObject,
    purpose: &str,
) -> Result<Gate, ToolError> {
    let hints = tool.def.hints;
    if hints.read_only || tool.def.toolset == Toolset::Handoff {
        return Ok(Gate::Run);
    }
    // Agents' calls (an agent anywhere in the chain) in the policy's held tools.
    if ctx.principal.involves_agent() {
        let Some(reason) = ctx.held(&Sensitive::Listed).await? else {
            return Ok(Gate::Run);
        };
        tool.validate(args)?;
        let summary = format!("{purpose}: call `{}` with {}", tool.def.name, shown(args));
        return Err(ctx.hold(&reason, &summary, None).await);
    }
    if !hints.destructive {
        return Ok(Gate::Run);
    }
    let policy = ApprovalPolicy::load(ctx.app.store.pool(), ctx.principal.tenant_id).await?;
    if !policy.confirm_destructive {
        return Ok(Gate::Run);
    }
    tool.validate(args)?;
    let name = tool.def.name;
    let Some(client) = ctx
        .client
        .as_ref()
        .filter(|_| ctx.principal.delegation.is_none())
    else {
        return Err(ToolError::Forbidden(format!(
            "`{name}` needs a person's confirmation in their client, which {} cannot ask for",
            ctx.transport.describe()
        )));
    };
    if let Some(answer) = client.answers.as_ref().and_then(|a| a.get(CONFIRM)) {
        let answer = serde_json::from_value::<ElicitResult>(answer.clone()).map_err(|e| {
            ToolError::InvalidRequest(format!("the confirmation answer is malformed: {e}"))
        })?;
        return judge(name, answer);
    }
    if !supports_form(client) {
        return Err(ToolError::Forbidden(format!(
            "`{name}` needs your confirmation (this tenant's approval policy sets \
             confirm_destructive), and this client cannot ask for it: it does not support MCP \
             elicitation. Nothing was done. Use a client that supports elicitation, or ask an \
             admin to change the policy."
        )));
    }
    let question = ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: format!(
            "Confirm: run `{name}` with {}? It cannot be undone. Set confirm to true to go ahead.",
            shown(args)
        ),
        requested_schema: ElicitationSchema::builder()
            .required_bool("confirm")
            .build()
            .map_err(|e| ToolError::Internal(format!("confirmation schema: {e}")))?,
    };
    if client.modern {
        let mut requests = InputRequests::new();
        requests.insert(
            CONFIRM.into(),
            InputRequest::Elicitation(ElicitRequest::new(question)),
        );
        return Ok(Gate::Ask(InputRequiredResult::new(Some(requests), None)));
    }
    let asked = tokio::time::timeout(ASK_TIMEOUT, client.peer.create_elicitation(question)).await;
    match asked {
        Ok(Ok(answer)) => judge(name, answer),
        Ok(Err(error)) => Err(ToolError::Forbidden(format!(
            "`{name}` needs your confirmation and it could not be asked ({error}). Nothing was \
             done."
        ))),
        Err(_) => Err(ToolError::Forbidden(format!(
            "`{name}` was not confirmed within {} s. Nothing was done.",
            ASK_TIMEOUT.as_secs()
        ))),
    }
}

fn judge(name: &str, answer: ElicitResult) -> Result<Gate, ToolError> {
    let confirmed = answer.action == ElicitationAction::Accept
        && answer
            .content
            .as_ref()
            .and_then(|c| c.get("confirm"))
            .and_then(Value::as_bool)
            == Some(true);
    if confirmed {
        Ok(Gate::Run)
    } else {
        Err(ToolError::Forbidden(format!(
            "`{name}` was not confirmed. Nothing was done."
        )))
    }
}

/// Whether the client takes form elicitation: declared in `_meta` (2026-07-28) or at
/// `initialize`. A declaration naming no mode means form.
fn supports_form(client: &ClientSide) -> bool {
    client
        .capabilities
        .as_ref()
        .and_then(|c| c.elicitation.as_ref())
        .is_some_and(|e| e.form.is_some() || e.url.is_none())
}

/// Arguments as shown to a person, cut to a readable length.
fn shown(args: &JsonObject) -> String {
    let text = crate::access::audit::redact_object(args).to_string();
    if text.chars().count() > 600 {
        format!("{}…", text.chars().take(600).collect::<String>())
    } else {
        text
    }
}
