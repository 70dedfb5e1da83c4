//! The one path of every tool call: a client's `tools/call` (and `run_tool`, unwrapped to
//! the call it names), a workflow step, a prompt agent's tool call, an approved action's
//! execution, and the reads behind resources, prompts and completion. It admits, checks,
//! holds, runs and audits, in that order; no caller has checks of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{InputRequiredResult, JsonObject};
use serde_json::Value;
use tracing::Instrument;

use super::confirm::{Gate, gate};
use crate::access::Principal;
use crate::access::audit::{AuditEvent, redact_object};
use crate::access::ratelimit::{Class, QuotaSlot};
use crate::app::App;
use crate::connections::catalog as remote_catalog;
use crate::error::{ErrorCode, ToolError};
use crate::toolkit::catalog::RegisteredTool;
use crate::toolkit::context::{ClientSide, Progress, Seal, ToolCtx, Transport};
use crate::toolkit::filter::{ToolFilter, denial};

/// A call to make: who, through what, which tool, with what.
pub struct Call {
    pub principal: Principal,
    pub transport: Transport,
    pub tool: String,
    pub arguments: JsonObject,
    /// The filter in force (configuration, narrowed by a request's headers).
    pub filter: Arc<ToolFilter>,
    pub request_id: String,
    pub session_id: Option<String>,
    pub progress: Option<Progress>,
    /// The client on the line: only a client's own call has one. Work done on someone's
    /// behalf has nobody to ask.
    pub client: Option<ClientSide>,
    /// The call fails (as `internal`, naming the limit) when it takes longer.
    pub timeout: Option<Duration>,
    /// Why the call is made, for a held call's summary (e.g. "Workflow step").
    pub purpose: &'static str,
    /// Set only when a person approved this held call: the approval hook lets it through.
    pub approved_action: Option<uuid::Uuid>,
    /// A workflow step attempt and the lease holder it runs under: the tool's writes
    /// commit with the attempt's mark, fenced on the lease.
    pub step: Option<(i64, uuid::Uuid)>,
    /// An HTTP request's rate-limit headers wait here for the call's count.
    pub quota: Option<QuotaSlot>,
    /// Where the call's span joins a trace.
    pub trace: crate::telemetry::Parent,
}

impl Call {
    /// A call made on a principal's behalf, without a client on the line.
    pub fn on_behalf(
        app: &App,
        principal: Principal,
        transport: Transport,
        tool: &str,
        arguments: JsonObject,
        purpose: &'static str,
    ) -> Call {
        Call {
            principal,
            transport,
            tool: tool.to_owned(),
            arguments,
            filter: app.filter.clone(),
            request_id: uuid::Uuid::now_v7().to_string(),
            session_id: None,
            progress: None,
            client: None,
            timeout: None,
            purpose,
            approved_action: None,
            step: None,
            quota: None,
            trace: crate::telemetry::Parent::default(),
        }
    }

    /// Under a request's narrowed filter instead of the configured one.
    pub fn with_filter(mut self, filter: Arc<ToolFilter>) -> Call {
        self.filter = filter;
        self
    }

    pub fn with_timeout(mut self, limit: Duration) -> Call {
        self.timeout = Some(limit);
        self
    }

    pub fn for_step(mut self, attempt: i64, lease_owner: uuid::Uuid) -> Call {
        self.step = Some((attempt, lease_owner));
        self
    }
}

/// What a call produced: its result, or a question for the caller first.
pub enum Done {
    Value(Value),
    Ask(InputRequiredResult),
}

#[derive(Debug)]
pub enum CallError {
    /// No such tool, or not one this caller's filter lets through.
    UnknownTool(String),
    Tool(ToolError),
}

impl From<CallError> for ToolError {
    fn from(error: CallError) -> ToolError {
        match error {
            CallError::UnknownTool(name) => {
                ToolError::Forbidden(format!("`{name}` is not available on this server"))
            }
            CallError::Tool(error) => error,
        }
    }
}

/// Counts a call against the caller's rate limits: every call, plus the search and bulk
/// classes for tools that need those scopes.
/// The quota the call left goes to `slot` (an HTTP request's headers).
pub async fn admit(
    app: &App,
    principal: &Principal,
    scopes: &[&str],
    slot: Option<&QuotaSlot>,
) -> Result<(), ToolError> {
    let mut classes = vec![Class::Calls];
    for (scope, class) in [("search", Class::Search), ("bulk", Class::Bulk)] {
        if scopes.contains(&scope) {
            classes.push(class);
        }
    }
    let checked = app.limiter.check(principal, &classes).await?;
    if let Some(slot) = slot {
        slot.fill(match &checked {
            Ok(quota) => *quota,
            Err(limited) => limited.quota(),
        });
    }
    match checked {
        Ok(_) => Ok(()),
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

/// A call made on someone's behalf, as a plain result (a question cannot be asked).
pub async fn invoke(app: &Arc<App>, call: Call) -> Result<Value, ToolError> {
    match perform(app, call).await? {
        Done::Value(value) => Ok(value),
        Done::Ask(_) => Err(ToolError::Forbidden(
            "this call needs a person's answer, and nobody is there to ask".into(),
        )),
    }
}

/// Admits, checks, holds, runs and audits one call. The answer waits for its audit record:
/// none is lost once the caller has it.
/// Clients' calls in flight in this process: a stdio server whose client hung up waits for
/// them (and their audit records) before it exits.
#[derive(Default)]
pub struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One call in flight, until dropped.
pub struct InFlightGuard<'a>(&'a InFlight);

impl InFlight {
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlightGuard(self)
    }

    /// Waits until no call is in flight, or `deadline` passes; says whether it drained.
    pub async fn drained(&self, deadline: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let idle = self.idle.notified();
            if self.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                return false;
            }
        }
    }
}

impl InFlight {
    fn leave(&self) {
        if self.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A client's request in flight until its response is delivered (an HTTP response body
/// that streams the answer): counted with the calls, so a draining server ends sessions
/// only once their answers went out.
pub struct Delivering(Arc<App>);

impl Delivering {
    pub fn enter(app: Arc<App>) -> Delivering {
        app.inflight
            .count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Delivering(app)
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        self.0.inflight.leave();
    }
}

pub async fn perform(app: &Arc<App>, call: Call) -> Result<Done, CallError> {
    // Known to fail: answered at once, not after the pool's timeout. Not audited one by one
    // (the audit trail is in the same database); the outage's count is logged when it ends.
    if let Some(down) = app.store.unavailable() {
        return Err(CallError::Tool(ToolError::database_down(down)));
    }
    let _in_flight = call.client.is_some().then(|| app.inflight.enter());
    let mut audit = AuditEvent::by(&call.principal, "tool", call.tool.as_str(), "ok");
    audit.arguments = Some(redact_object(&call.arguments));
    audit.transport = Some(call.transport.as_str());
    audit.session_id = call.session_id.clone();
    audit.request_id = Some(call.request_id.clone());
    let started = Instant::now();
    // Bounded metric labels: the tool's name comes from the caller.
    let label: &'static str = if call.client.is_none() && remote_catalog::is_remote(&call.tool) {
        "remote"
    } else {
        app.catalog
            .get(&call.tool)
            .map_or("unknown", |t| t.def.name)
    };
    let principal_kind = call.principal.kind.as_str();
    // The event waits in the seal, for a tool that commits it with its writes.
    let seal = Arc::new(Seal::new(audit, call.step));
    // Tools of the tenant's remote MCP servers are for workflows and agents.
    let outcome = if call.client.is_none() && remote_catalog::is_remote(&call.tool) {
        remote(app, &call).await.map(Done::Value)
    } else {
        let Some(tool) = app
            .catalog
            .get(&call.tool)
            .filter(|t| call.filter.allows(&t.def))
        else {
            let Some(mut audit) = seal.take_audit() else {
                return Err(CallError::UnknownTool(call.tool));
            };
            audit.outcome = "refused";
            audit.error_code = Some("unknown_tool".into());
            app.audit.record(audit).await;
            crate::metrics::refusal("unknown_tool");
            crate::metrics::tool_call(
                "unknown",
                "refused",
                call.principal.kind.as_str(),
                started.elapsed().as_secs_f64(),
            );
            return Err(CallError::UnknownTool(call.tool));
        };
        let parent = call
            .trace
            .span
            .as_ref()
            .and_then(tracing::Span::id)
            .or_else(|| tracing::Span::current().id());
        let span = tracing::info_span!(
            parent: parent,
            "tool",
            tool = tool.def.name,
            request_id = %call.request_id,
            transport = call.transport.as_str(),
            principal = %call.principal.name,
            principal_kind,
            outcome = tracing::field::Empty,
            otel.name = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if crate::telemetry::enabled() {
            span.record("otel.name", format!("tools/call {}", tool.def.name));
            crate::telemetry::continue_from(&span, call.trace.traceparent.as_deref());
        }
        let outcome = checked(app, tool, call, seal.clone())
            .instrument(span.clone())
            .await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let label = outcome_label(&outcome);
        span.record("outcome", label);
        if label == "error" {
            span.record("otel.status_code", "ERROR");
        }
        span.in_scope(|| match &outcome {
            Ok(Done::Ask(_)) => tracing::info!(elapsed_ms, "tool call awaits the caller's answer"),
            Ok(Done::Value(_)) => tracing::info!(elapsed_ms, "tool call succeeded"),
            Err(error) => match error.code() {
                ErrorCode::Internal => tracing::error!(elapsed_ms, %error, "tool call failed"),
                ErrorCode::PendingApproval => tracing::info!(elapsed_ms, "tool call held"),
                code => tracing::info!(elapsed_ms, ?code, "tool call refused"),
            },
        });
        outcome
    };
    count(label, principal_kind, &outcome, started);
    if let Err(ToolError::Store(error)) = &outcome {
        app.store.observe_store(error);
    }
    if seal.audited() && outcome.is_ok() {
        // Its record committed with its writes.
        return outcome.map_err(CallError::Tool);
    }
    let Some(mut audit) = seal.take_audit() else {
        // Not reached: only the call path takes the event, and only here.
        tracing::error!("a call's audit event was gone before it was recorded");
        return Err(CallError::Tool(ToolError::Unrecorded(
            "the call's audit record could not be written".into(),
        )));
    };
    if let Ok(Done::Ask(_)) = &outcome {
        audit.outcome = "input_required";
    }
    let request_id = audit.request_id.clone().unwrap_or_default();
    let recorded = finish(
        app,
        audit,
        started,
        outcome.as_ref().err().map(ToolError::code),
    )
    .await;
    // A call whose record is not durable does not report success (the README's promise).
    if !recorded && outcome.is_ok() {
        return Err(CallError::Tool(ToolError::Unrecorded(format!(
            "the call ran, but its audit record could not be written, so it is not reported as \
             done: it may have taken effect; check before trying again (request id {request_id})"
        ))));
    }
    outcome.map_err(CallError::Tool)
}

/// A call's outcome as metrics and traces name it.
fn outcome_label(outcome: &Result<Done, ToolError>) -> &'static str {
    match outcome {
        Ok(Done::Value(_)) => "ok",
        Ok(Done::Ask(_)) => "input_required",
        Err(error) => match error.code() {
            ErrorCode::PendingApproval => "held",
            ErrorCode::Internal => "error",
            _ => "refused",
        },
    }
}

/// Counts a call in the metrics: its outcome, its time, and why it was refused.
fn count(
    tool: &'static str,
    principal_kind: &'static str,
    outcome: &Result<Done, ToolError>,
    started: Instant,
) {
    let label = outcome_label(outcome);
    if let Err(error) = outcome
        && let Some(reason) = crate::metrics::refusal_reason(error.code())
    {
        crate::metrics::refusal(reason);
    }
    crate::metrics::tool_call(tool, label, principal_kind, started.elapsed().as_secs_f64());
}

/// Every check, the approval gate, then the tool.
async fn checked(
    app: &Arc<App>,
    tool: &RegisteredTool,
    call: Call,
    seal: Arc<Seal>,
) -> Result<Done, ToolError> {
    let principal = &call.principal;
    if let Some(denied) = denial(principal, tool) {
        crate::metrics::scope_denial();
        return Err(ToolError::Forbidden(
            denied.describe(tool.def.name, &principal.name),
        ));
    }
    // Deciding for people is done by a person in their own client, never by work done on
    // someone's behalf (a workflow step, a trigger, a schedule, an agent), whoever owns it.
    if tool.needs_person && !(principal.is_person_at_client() && call.client.is_some()) {
        return Err(ToolError::Forbidden(format!(
            "`{}` is decided by a person in their own client; no workflow, trigger, schedule \
             or agent may call it, on anyone's behalf",
            tool.def.name
        )));
    }
    if principal.delegation.is_some() && crate::toolkit::catalog::makes_standing_work(tool.def.name)
    {
        return Err(ToolError::Forbidden(format!(
            "`{}` makes work that runs later for its owner; work done on someone's behalf (a \
             workflow step, a trigger, a schedule, an agent run) may not, or it would run with \
             rights its chain does not share. Call it directly.",
            tool.def.name
        )));
    }
    if app.stopping.is_cancelled() && call.client.is_some() {
        return Err(ToolError::Unavailable(
            "This server is shutting down and takes no new calls; nothing was done. Retry in \
             1 s (another replica, or this one restarted, will answer)."
                .into(),
            1,
        ));
    }
    admit(app, principal, tool.def.scopes, call.quota.as_ref()).await?;
    let ctx = ToolCtx {
        app: app.clone(),
        transport: call.transport,
        principal: call.principal.clone(),
        request_id: call.request_id.clone(),
        session_id: call.session_id.clone(),
        filter: call.filter.clone(),
        progress: call.progress.clone(),
        tool: tool.def.name,
        arguments: Arc::new(call.arguments.clone()),
        approved_action: call.approved_action,
        client: call.client.clone(),
        seal,
    };
    if call.approved_action.is_none() {
        match gate(&ctx, tool, &call.arguments, call.purpose).await? {
            Gate::Run => {}
            Gate::Ask(question) => return Ok(Done::Ask(question)),
        }
    }
    let running = tool.call(ctx, call.arguments);
    let result = match call.timeout {
        None => running.await,
        Some(limit) => match tokio::time::timeout(limit, running).await {
            Ok(result) => result,
            Err(_) => Err(ToolError::Internal(format!(
                "`{}` took longer than {} s",
                tool.def.name,
                limit.as_secs()
            ))),
        },
    };
    match result {
        Err(ToolError::NeedsInput(question)) => Ok(Done::Ask(*question)),
        other => other.map(Done::Value),
    }
}

async fn remote(app: &Arc<App>, call: &Call) -> Result<Value, ToolError> {
    admit(app, &call.principal, &[], call.quota.as_ref()).await?;
    let timeout = call.timeout.unwrap_or(Duration::from_secs(60));
    remote_catalog::call(app, &call.principal, &call.tool, &call.arguments, timeout).await
}

/// Records the call's outcome in the audit trail.
/// Records the call's audit event; `false` when it could not be made durable.
async fn finish(
    app: &App,
    mut audit: AuditEvent,
    started: Instant,
    failed: Option<ErrorCode>,
) -> bool {
    audit.duration_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    if let Some(code) = failed {
        audit.outcome = match code {
            ErrorCode::PendingApproval => "held",
            ErrorCode::Internal => "error",
            _ => "refused",
        };
        audit.error_code = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
    }
    app.audit.record(audit).await
}
