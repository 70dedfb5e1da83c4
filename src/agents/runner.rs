//! Agent runs. A run is a row on a PostgreSQL queue, claimed under a renewed lease like a
//! workflow execution. A prompt agent's run is a tool-calling loop against its LLM
//! connection, offering only the selected tools its own scopes allow and calling them
//! through the catalog and access layer as the agent; its transcript and tool-call log are
//! written after every model turn and tool call, so a run whose process died resumes where
//! it stopped (an interrupted tool call is repeated only when the tool is idempotent). A
//! workflow agent's run starts its workflow as the agent and waits for it.
//!
//! Ending a run is one transaction: the outcome, the `agent.run.completed` event, the
//! signed callback of its schedule, and the runs chained on it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::config::{Config, Runnable};
use crate::access::Principal;
use crate::access::audit::redact;
use crate::access::delegation::{self, Cause, Member};
use crate::access::store::Agent;
use crate::app::App;
use crate::connections::catalog as tool_catalog;
use crate::connections::llm::{self, ChatRequest, LlmError, Message, ResponseFormat, ToolSpec};
use crate::connections::manage::{self, ProbeFailure, record_status};
use crate::connections::platforms::Resolved;
use crate::error::ToolError;
use crate::jobs::queue::{Queue, lease, process_id};
use crate::mcp::call::{Call, invoke};
use crate::store::StoreError;
use crate::toolkit::context::Transport;
use crate::toolkit::filter::denial;

pub const CHANNEL: &str = "agentcrm_agent_runs";

/// Runs, on the lease queue of all background work: four at once per process.
pub static QUEUE: Queue = Queue {
    table: "agent_runs",
    channel: CHANNEL,
    parallel: 4,
    poll: Duration::from_secs(1),
};
/// A chain of runs started by runs started by chaining stops here.
pub const MAX_CHAIN_DEPTH: i32 = 10;
/// What a tool's answer may take of the model's context.
const MAX_TOOL_RESULT_CHARS: usize = 20_000;

/// Who or what asked for a run.
pub struct Trigger {
    /// `stdio`, `http`, `schedule`, `workflow` or `agent`.
    pub source: &'static str,
    pub kind: Option<String>,
    pub id: Option<Uuid>,
    pub name: String,
}

impl Trigger {
    pub fn by(principal: &Principal, transport: Transport) -> Trigger {
        Trigger {
            source: match transport {
                Transport::Stdio => "stdio",
                Transport::Http => "http",
                Transport::Workflow => "workflow",
                Transport::Agent | Transport::Approval | Transport::Conversation => "agent",
            },
            kind: Some(principal.kind.as_str().to_owned()),
            id: principal.id,
            name: principal.name.clone(),
        }
    }
}

/// A run to queue.
pub struct NewRun<'a> {
    pub agent: &'a Agent,
    pub runnable: &'a Runnable,
    pub trigger: Trigger,
    pub prompt: String,
    pub input: Value,
    pub schedule_id: Option<Uuid>,
    pub due_at: Option<DateTime<Utc>>,
    pub parent_run_id: Option<Uuid>,
    pub chain_depth: i32,
    /// Who the run acts for besides the agent (whoever started it, the runnable's owner and
    /// last editor); the agent identity goes first.
    pub acts_for: Vec<Member>,
    pub cause: Cause,
    /// Claimed by this process at once (a manual run it is about to drive).
    pub claim: bool,
}

impl NewRun<'_> {
    /// The person who started the run: a user, the owner of the API key used, or (for a
    /// scheduled run) the schedule's creator.
    fn person(&self) -> Option<Uuid> {
        self.acts_for.iter().find_map(|m| m.person)
    }

    /// The agent, then who started the run, then the runnable's owner and last editor.
    fn chain(&self) -> Vec<Member> {
        let agent = Member {
            kind: crate::access::PrincipalKind::Agent,
            id: self.agent.id,
            name: self.agent.name.clone(),
            person: None,
        };
        delegation::distinct(
            std::iter::once(agent)
                .chain(self.acts_for.iter().cloned())
                .chain(self.runnable.owner_members()),
        )
    }
}

/// Queues a run; `None` when that due time of that schedule already has its run.
pub async fn queue(
    tx: &mut sqlx::PgConnection,
    new: NewRun<'_>,
) -> Result<Option<Uuid>, ToolError> {
    let config = new.runnable.effective()?;
    let run_type = if new.runnable.overrides()?.is_empty() {
        "design"
    } else {
        "dynamic"
    };
    let config = serde_json::to_value(&config)
        .map_err(|e| ToolError::Internal(format!("agent config does not serialize: {e}")))?;
    let id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO agent_runs (tenant_id, agent_id, agent_name, agent_kind, run_type, source,
             triggered_by_kind, triggered_by_id, triggered_by_name, schedule_id, due_at,
             parent_run_id, chain_depth, prompt, input, config, status, lease_owner, lease_until,
             started_at, chain, cause, user_id, agent_ref, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                 CASE WHEN $17 THEN 'running' ELSE 'queued' END,
                 CASE WHEN $17 THEN $18::uuid END,
                 CASE WHEN $17 THEN now() + make_interval(secs => $19) END,
                 CASE WHEN $17 THEN now() END, $20, $21, $22, $2, $23)
         ON CONFLICT (schedule_id, due_at) DO NOTHING
         RETURNING id",
    )
    .bind(new.agent.tenant_id)
    .bind(new.agent.id)
    .bind(&new.agent.name)
    .bind(&new.runnable.kind)
    .bind(run_type)
    .bind(new.trigger.source)
    .bind(&new.trigger.kind)
    .bind(new.trigger.id)
    .bind(&new.trigger.name)
    .bind(new.schedule_id)
    .bind(new.due_at)
    .bind(new.parent_run_id)
    .bind(new.chain_depth)
    .bind(&new.prompt)
    .bind(&new.input)
    .bind(config)
    .bind(new.claim)
    .bind(process_id())
    .bind(lease().as_secs_f64())
    .bind(delegation::chain_json(&new.chain()))
    .bind(new.cause.json())
    .bind(new.person())
    .bind(crate::telemetry::traceparent())
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if id.is_some() && !new.claim {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    }
    Ok(id)
}

#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    tenant_id: Uuid,
    agent_id: Option<Uuid>,
    agent_name: String,
    agent_kind: String,
    prompt: String,
    input: Value,
    config: Value,
    transcript: Value,
    tool_calls: Value,
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
    log: Value,
    deadline: DateTime<Utc>,
    chain: Value,
    cause: Value,
}

/// How a run ended.
struct Ending {
    status: &'static str,
    output: Option<Value>,
    error: Option<String>,
}

impl Ending {
    fn error(message: impl Into<String>) -> Ending {
        Ending {
            status: "error",
            output: None,
            error: Some(message.into()),
        }
    }

    fn timeout(seconds: i64) -> Ending {
        Ending {
            status: "timeout",
            output: None,
            error: Some(format!(
                "stopped by guardrail timeout: the run took longer than {seconds} s"
            )),
        }
    }
}

/// The state a prompt run carries between turns, written after each.
struct State {
    transcript: Vec<Message>,
    tool_calls: Vec<Value>,
    usage: llm::Usage,
    log: Vec<Value>,
}

impl State {
    fn note(&mut self, event: &str, detail: impl Into<String>) {
        self.log
            .push(json!({ "at": Utc::now(), "event": event, "detail": detail.into() }));
    }
}

/// Drives a run this process holds the lease of, until it ends or the lease is lost.
pub async fn run(app: Arc<App>, id: Uuid) {
    let heartbeat = QUEUE.heartbeat(&app, id);
    let lost = heartbeat.lost.clone();
    let span = tracing::info_span!("agent.run", run = %id);
    let span = QUEUE.span(app.store.pool(), id, span).await;
    let driven = tracing::Instrument::instrument(drive(&app, id, &lost), span).await;
    if let Err(error) = driven {
        tracing::error!(%error, run = %id, "agent run stopped");
        let ending = Ending::error(match &error {
            ToolError::Store(_) | ToolError::Internal(_) => {
                "the server could not complete this run; see its log".to_owned()
            }
            other => other.to_string(),
        });
        if let Err(error) = finish(&app, id, None, ending).await {
            tracing::error!(%error, run = %id, "agent run: could not record its end");
        }
    }
    drop(heartbeat);
}

async fn drive(app: &Arc<App>, id: Uuid, lost: &AtomicBool) -> Result<(), ToolError> {
    let pool = app.store.pool();
    // The timeout guardrail counts from the first start, across resumptions.
    let claimed: Option<Claimed> = sqlx::query_as(
        "UPDATE agent_runs SET deadline = coalesce(deadline, now() + make_interval(secs =>
                 coalesce((config->'guardrails'->>'timeout_seconds')::double precision, 120)))
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'
         RETURNING id, tenant_id, agent_id, agent_name, agent_kind, prompt, input, config,
                   transcript, tool_calls, prompt_tokens, completion_tokens, total_tokens, log,
                   deadline, chain, cause",
    )
    .bind(id)
    .bind(process_id())
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?;
    let Some(run) = claimed else {
        return Ok(());
    };
    let config: Config = serde_json::from_value(run.config.clone())
        .map_err(|e| ToolError::Internal(format!("stored run config: {e}")))?;
    let mut state = State {
        transcript: serde_json::from_value(run.transcript.clone()).unwrap_or_default(),
        tool_calls: serde_json::from_value(run.tool_calls.clone()).unwrap_or_default(),
        usage: llm::Usage {
            prompt: run.prompt_tokens.max(0) as u64,
            completion: run.completion_tokens.max(0) as u64,
            total: run.total_tokens.max(0) as u64,
        },
        log: serde_json::from_value(run.log.clone()).unwrap_or_default(),
    };
    let principal = match acting(pool, &run).await {
        Ok(principal) => principal,
        Err(ToolError::Store(error)) => return Err(ToolError::Store(error)),
        Err(refused) => {
            return finish(app, id, Some(&state), Ending::error(refused.to_string())).await;
        }
    };
    if !config.enabled {
        let ending = Ending::error(format!("agent `{}` is disabled", run.agent_name));
        return finish(app, id, Some(&state), ending).await;
    }
    let ending = match run.agent_kind.as_str() {
        "workflow" => run_workflow(app, &run, &config, &principal, &mut state).await?,
        _ => run_prompt(app, &run, &config, &principal, &mut state, lost).await?,
    };
    let Some(ending) = ending else {
        return Ok(()); // the lease was lost: another process has the run
    };
    finish(app, id, Some(&state), ending).await
}

/// Who the run acts for, as they stand now: the agent (still there and enabled) and
/// everyone in its chain, with the intersection of their permissions.
async fn acting(pool: &PgPool, run: &Claimed) -> Result<Principal, ToolError> {
    let mut members = delegation::read_chain(&run.chain);
    if members.is_empty() {
        let Some(agent_id) = run.agent_id else {
            return Err(ToolError::Forbidden("the agent no longer exists".into()));
        };
        members.push(Member {
            kind: crate::access::PrincipalKind::Agent,
            id: agent_id,
            name: run.agent_name.clone(),
            person: None,
        });
    }
    delegation::resolve(pool, run.tenant_id, &members, Cause::read(&run.cause)).await
}

fn remaining(deadline: DateTime<Utc>) -> Option<Duration> {
    (deadline - Utc::now())
        .to_std()
        .ok()
        .filter(|d| !d.is_zero())
}

fn timeout_seconds(config: &Config) -> i64 {
    i64::from(config.guardrails.timeout_seconds)
}

/// The tools the model is offered: selected ones the agent may call now.
async fn offered_tools(
    app: &App,
    config: &Config,
    principal: &Principal,
) -> Result<Vec<ToolSpec>, ToolError> {
    let mut specs = Vec::new();
    let remote: Vec<String> = config
        .selected_tools
        .iter()
        .filter(|t| tool_catalog::is_remote(t))
        .cloned()
        .collect();
    let imported = if remote.is_empty() {
        Vec::new()
    } else {
        tool_catalog::remote_entries(app, principal.tenant_id, Some(&remote)).await?
    };
    for name in &config.selected_tools {
        if crate::toolkit::catalog::handles_secrets(name)
            || crate::toolkit::catalog::needs_person(name)
            || crate::toolkit::catalog::makes_standing_work(name)
            || super::config::NOT_FOR_AGENTS.contains(&name.as_str())
        {
            continue;
        }
        if tool_catalog::is_remote(name) {
            if let Some(entry) = imported.iter().find(|e| &e.name == name)
                && principal.scopes.contains(entry.required())
            {
                specs.push(ToolSpec {
                    name: entry.name.clone(),
                    description: entry.description.clone(),
                    input_schema: entry.input_schema.clone(),
                });
            }
            continue;
        }
        if let Some(tool) = app.catalog.get(name)
            && app.filter.allows(&tool.def)
            && denial(principal, tool).is_none()
        {
            specs.push(ToolSpec {
                name: tool.def.name.to_owned(),
                description: tool.def.description.to_owned(),
                input_schema: Value::Object(tool.input_schema().clone()),
            });
        }
    }
    Ok(specs)
}

fn first_message(run: &Claimed) -> String {
    let mut content = run.prompt.clone();
    if run.input.as_object().is_some_and(|m| !m.is_empty()) {
        if !content.is_empty() {
            content.push_str("\n\n");
        }
        content.push_str("Input data (JSON):\n");
        content.push_str(&run.input.to_string());
    }
    if content.is_empty() {
        content.push_str("Run your task.");
    }
    content
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}… [truncated]", &text[..at]),
        None => text.to_owned(),
    }
}

/// `None` when the lease was lost.
async fn run_prompt(
    app: &Arc<App>,
    run: &Claimed,
    config: &Config,
    principal: &Principal,
    state: &mut State,
    lost: &AtomicBool,
) -> Result<Option<Ending>, ToolError> {
    let pool = app.store.pool();
    let Some(connection) = &config.connection else {
        return Ok(Some(Ending::error("the agent has no LLM connection")));
    };
    let (found, _, resolved) = match manage::load(app, run.tenant_id, connection).await {
        Ok(loaded) => loaded,
        Err(ToolError::Store(e)) => return Err(ToolError::Store(e)),
        Err(error) => return Ok(Some(Ending::error(error.to_string()))),
    };
    let Resolved::Llm {
        provider,
        default_model,
    } = resolved
    else {
        return Ok(Some(Ending::error(format!(
            "connection `{}` is not an LLM provider",
            found.name
        ))));
    };
    let Some(model) = config.model.clone().or(default_model) else {
        return Ok(Some(Ending::error(format!(
            "no model: set the agent's `model` or connection `{}`'s default_model",
            found.name
        ))));
    };
    let tools = offered_tools(app, config, principal).await?;
    let offered: HashSet<String> = tools.iter().map(|t| t.name.clone()).collect();
    if state.transcript.is_empty() {
        state.transcript.push(Message::User {
            content: first_message(run),
        });
        state.note(
            "started",
            format!(
                "model {model} on `{}`, {} tool(s) offered",
                found.name,
                tools.len()
            ),
        );
    } else {
        state.note("resumed", "another process picks up the run");
    }
    let http = app.llm_http()?;
    let max_calls = config.guardrails.max_tool_calls as usize;
    loop {
        if lost.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if app.stopping.is_cancelled() {
            QUEUE.hand_back(app.store.pool(), run.id).await;
            return Ok(None);
        }
        // Tool calls the model asked for that have no result yet (the last turn, or a turn
        // interrupted by the death of a process).
        let pending = pending_calls(&state.transcript);
        if !pending.is_empty() {
            for call in pending {
                let Some(left) = remaining(run.deadline) else {
                    return Ok(Some(Ending::timeout(timeout_seconds(config))));
                };
                let started = state.tool_calls.iter().position(|c| c["id"] == call.id);
                let (content, is_error) = match started {
                    Some(index) if state.tool_calls[index]["status"] == "running" => {
                        // Started by a process that died: was it done? Only an idempotent
                        // tool is safe to call again.
                        if idempotent(app, run.tenant_id, &call.name).await? {
                            state.tool_calls.remove(index);
                            if !save(pool, run.id, state).await? {
                                return Ok(None);
                            }
                            continue_call(app, run, principal, state, &call, &offered, left).await?
                        } else {
                            let message = format!(
                                "`{}` was interrupted when its process stopped and is not safe \
                                 to repeat; it may or may not have taken effect",
                                call.name
                            );
                            state.tool_calls[index]["status"] = json!("interrupted");
                            state.tool_calls[index]["error"] = json!(message);
                            (message, true)
                        }
                    }
                    Some(index) => (
                        state.tool_calls[index]["result_text"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        state.tool_calls[index]["status"] != "ok",
                    ),
                    None => {
                        if state.tool_calls.len() >= max_calls {
                            let message = format!(
                                "stopped by guardrail max_tool_calls: the model asked for more \
                                 than {max_calls} tool calls"
                            );
                            state.note("guardrail", message.clone());
                            return Ok(Some(Ending::error(message)));
                        }
                        continue_call(app, run, principal, state, &call, &offered, left).await?
                    }
                };
                state.transcript.push(Message::Tool {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content,
                    is_error,
                });
                if !save(pool, run.id, state).await? {
                    return Ok(None);
                }
            }
            continue;
        }
        let Some(left) = remaining(run.deadline) else {
            return Ok(Some(Ending::timeout(timeout_seconds(config))));
        };
        let request = ChatRequest {
            model: model.clone(),
            system: (!config.system_prompt.is_empty()).then(|| config.system_prompt.clone()),
            messages: state.transcript.clone(),
            tools: tools.clone(),
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            response_format: config.response_format,
        };
        let answer = match tokio::time::timeout(left, llm::chat(&http, &provider, &request)).await {
            Err(_) => return Ok(Some(Ending::timeout(timeout_seconds(config)))),
            Ok(Err(error)) => {
                if let LlmError::Status {
                    status: 401 | 403, ..
                } = &error
                {
                    let failure = ProbeFailure::from(error);
                    record_status(app, run.tenant_id, found.id, Err(&failure), false).await?;
                    return Ok(Some(Ending::error(format!(
                        "connection `{}`: {}",
                        found.name, failure.message
                    ))));
                }
                let message = format!("connection `{}`: {error}", found.name);
                state.note("model_error", message.clone());
                return Ok(Some(Ending::error(message)));
            }
            Ok(Ok(answer)) => answer,
        };
        state.usage.prompt += answer.usage.prompt;
        state.usage.completion += answer.usage.completion;
        state.usage.total += answer.usage.total;
        state.note(
            "model",
            format!(
                "{} tool call(s), {} tokens",
                answer.tool_calls.len(),
                answer.usage.total
            ),
        );
        state.transcript.push(Message::Assistant {
            text: answer.text.clone(),
            tool_calls: answer.tool_calls.clone(),
        });
        if !save(pool, run.id, state).await? {
            return Ok(None);
        }
        if let Some(budget) = config.guardrails.max_token_budget
            && state.usage.total > budget
        {
            let message = format!(
                "stopped by guardrail max_token_budget: the run used {} tokens of {budget}",
                state.usage.total
            );
            state.note("guardrail", message.clone());
            return Ok(Some(Ending::error(message)));
        }
        if answer.tool_calls.is_empty() {
            let text = answer.text.unwrap_or_default();
            let output = match config.response_format {
                ResponseFormat::Text => json!({ "text": text }),
                ResponseFormat::Json => match serde_json::from_str::<Value>(text.trim()) {
                    Ok(value) => value,
                    Err(e) => {
                        return Ok(Some(Ending::error(format!(
                            "the agent answers JSON, and the model's answer is not JSON ({e})"
                        ))));
                    }
                },
            };
            return Ok(Some(Ending {
                status: "success",
                output: Some(output),
                error: None,
            }));
        }
    }
}

/// Calls the model asked for, in order, that have no result in the transcript.
fn pending_calls(transcript: &[Message]) -> Vec<llm::ToolCall> {
    let Some(last_assistant) = transcript
        .iter()
        .rposition(|m| matches!(m, Message::Assistant { .. }))
    else {
        return Vec::new();
    };
    let Message::Assistant { tool_calls, .. } = &transcript[last_assistant] else {
        return Vec::new();
    };
    let answered: HashSet<&str> = transcript[last_assistant..]
        .iter()
        .filter_map(|m| match m {
            Message::Tool { call_id, .. } => Some(call_id.as_str()),
            _ => None,
        })
        .collect();
    tool_calls
        .iter()
        .filter(|c| !answered.contains(c.id.as_str()))
        .cloned()
        .collect()
}

async fn idempotent(app: &App, tenant_id: Uuid, name: &str) -> Result<bool, ToolError> {
    if tool_catalog::is_remote(name) {
        let names = [name.to_owned()];
        let entries = tool_catalog::remote_entries(app, tenant_id, Some(&names)).await?;
        return Ok(entries.first().is_some_and(|e| e.idempotent));
    }
    Ok(app
        .catalog
        .get(name)
        .is_some_and(|t| t.def.hints.idempotent))
}

/// Makes one tool call of the model's, logging it before and after.
async fn continue_call(
    app: &Arc<App>,
    run: &Claimed,
    principal: &Principal,
    state: &mut State,
    call: &llm::ToolCall,
    offered: &HashSet<String>,
    left: Duration,
) -> Result<(String, bool), ToolError> {
    let pool = app.store.pool();
    let started = std::time::Instant::now();
    state.tool_calls.push(json!({
        "id": call.id,
        "name": call.name,
        "arguments": redact(&call.arguments),
        "status": "running",
        "started_at": Utc::now(),
    }));
    let index = state.tool_calls.len() - 1;
    save(pool, run.id, state).await?;
    let outcome = if !offered.contains(&call.name) {
        Err(ToolError::Forbidden(format!(
            "`{}` is not one of this agent's tools",
            call.name
        )))
    } else {
        let arguments = match &call.arguments {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        // A fresh principal per call: scopes narrowed or someone disabled mid-run count.
        let principal = match acting(pool, run).await {
            Ok(principal) => principal,
            Err(ToolError::Store(error)) => return Err(ToolError::Store(error)),
            Err(refused) => {
                return Err(ToolError::Forbidden(format!(
                    "{refused}; {} cannot call tools",
                    principal.name
                )));
            }
        };
        invoke(
            app,
            Call::on_behalf(
                app,
                principal,
                Transport::Agent,
                &call.name,
                arguments,
                "Agent run",
            )
            .with_timeout(left),
        )
        .await
    };
    let entry = &mut state.tool_calls[index];
    entry["duration_ms"] = json!(started.elapsed().as_millis() as u64);
    let (content, is_error) = match outcome {
        Ok(value) => {
            let value = redact(&value);
            entry["status"] = json!("ok");
            entry["output"] = value.clone();
            // Tool results carry stored text: the model gets them as data, not instructions.
            let text = truncate(&value.to_string(), MAX_TOOL_RESULT_CHARS);
            (
                crate::toolkit::data::data_block(&format!("result of {}", call.name), &text),
                false,
            )
        }
        Err(error) => {
            let body = error.to_body("");
            let code = serde_json::to_value(body.error).unwrap_or_default();
            entry["status"] = json!("error");
            entry["error"] = json!(body.error_description);
            (
                json!({ "error": code, "error_description": body.error_description }).to_string(),
                true,
            )
        }
    };
    entry["result_text"] = json!(content);
    state.note(
        "tool",
        format!(
            "{} {}",
            call.name,
            if is_error { "failed" } else { "succeeded" }
        ),
    );
    Ok((content, is_error))
}

/// Writes the run's progress if this process still holds it.
async fn save(pool: &PgPool, id: Uuid, state: &State) -> Result<bool, ToolError> {
    let saved = sqlx::query(
        "UPDATE agent_runs SET transcript = $3, tool_calls = $4, tool_call_count = $5,
             prompt_tokens = $6, completion_tokens = $7, total_tokens = $8, log = $9
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(process_id())
    .bind(serde_json::to_value(&state.transcript).unwrap_or_default())
    .bind(Value::Array(state.tool_calls.clone()))
    .bind(state.tool_calls.len() as i32)
    .bind(state.usage.prompt as i64)
    .bind(state.usage.completion as i64)
    .bind(state.usage.total as i64)
    .bind(Value::Array(state.log.clone()))
    .execute(pool)
    .await
    .map_err(StoreError::from)?;
    Ok(saved.rows_affected() == 1)
}

/// A workflow agent: its workflow, run as the agent, waited for until the run's deadline.
async fn run_workflow(
    app: &Arc<App>,
    run: &Claimed,
    config: &Config,
    principal: &Principal,
    state: &mut State,
) -> Result<Option<Ending>, ToolError> {
    let pool = app.store.pool();
    let Some(workflow_id) = config.workflow_id else {
        return Ok(Some(Ending::error("the agent has no workflow")));
    };
    if let Some(interrupted) = state.tool_calls.iter().find(|c| c["status"] == "running") {
        // The workflow engine resumes the execution itself; follow it if it was recorded.
        if interrupted.get("execution_id").is_none() {
            return Ok(Some(Ending::error(
                "the run was interrupted while starting its workflow; check \
                 list_workflow_executions before running it again",
            )));
        }
    }
    let execution_id: Uuid = match state
        .tool_calls
        .iter()
        .find_map(|c| c["execution_id"].as_str().and_then(|s| s.parse().ok()))
    {
        Some(id) => id,
        None => {
            let Some(left) = remaining(run.deadline) else {
                return Ok(Some(Ending::timeout(timeout_seconds(config))));
            };
            let mut input = match &run.input {
                Value::Object(map) => map.clone(),
                _ => Map::new(),
            };
            if !run.prompt.is_empty() {
                input.insert("prompt".into(), json!(run.prompt));
            }
            let arguments: Map<String, Value> = json!({
                "workflow_id": workflow_id,
                "input_data": input,
                "wait_seconds": 0,
            })
            .as_object()
            .cloned()
            .unwrap_or_default();
            state.tool_calls.push(json!({
                "id": "workflow", "name": "execute_workflow", "arguments": arguments,
                "status": "running", "started_at": Utc::now(),
            }));
            save(pool, run.id, state).await?;
            let started = invoke(
                app,
                Call::on_behalf(
                    app,
                    principal.clone(),
                    Transport::Agent,
                    "execute_workflow",
                    arguments,
                    "Agent run",
                )
                .with_timeout(left),
            )
            .await;
            let entry = state
                .tool_calls
                .last_mut()
                .ok_or_else(|| ToolError::Internal("the workflow call left no log entry".into()))?;
            match started {
                Ok(value) => {
                    let id = value["execution"]["id"].clone();
                    entry["status"] = json!("ok");
                    entry["execution_id"] = id.clone();
                    state.note("workflow", format!("execution {id} started"));
                    save(pool, run.id, state).await?;
                    id.as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| ToolError::Internal("no execution id".into()))?
                }
                Err(error) => {
                    let message = error.to_body("").error_description;
                    entry["status"] = json!("error");
                    entry["error"] = json!(message);
                    return Ok(Some(Ending::error(format!(
                        "the workflow could not start: {message}"
                    ))));
                }
            }
        }
    };
    loop {
        let row: Option<(String, Option<Value>, Option<String>)> = sqlx::query_as(
            "SELECT status, output, error FROM workflow_executions WHERE tenant_id = $1 AND id = $2",
        )
        .bind(run.tenant_id)
        .bind(execution_id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?;
        let Some((status, output, error)) = row else {
            return Ok(Some(Ending::error(
                "the workflow execution no longer exists",
            )));
        };
        let ending = match status.as_str() {
            "succeeded" => Some(Ending {
                status: "success",
                output: Some(json!({ "execution_id": execution_id, "output": output })),
                error: None,
            }),
            "failed" | "cancelled" => Some(Ending {
                status: "error",
                output: Some(json!({ "execution_id": execution_id })),
                error: Some(format!(
                    "workflow execution {execution_id} {status}: {}",
                    error.unwrap_or_default()
                )),
            }),
            _ => None,
        };
        if let Some(ending) = ending {
            state.note("workflow", format!("execution {execution_id} {status}"));
            return Ok(Some(ending));
        }
        if remaining(run.deadline).is_none() {
            return Ok(Some(Ending::timeout(timeout_seconds(config))));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Ends a run this process holds: the outcome, its event, its schedule's callback and the
/// runs chained on it, in one transaction.
async fn finish(
    app: &Arc<App>,
    id: Uuid,
    state: Option<&State>,
    ending: Ending,
) -> Result<(), ToolError> {
    let pool = app.store.pool();
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    #[derive(sqlx::FromRow)]
    struct Ended {
        tenant_id: Uuid,
        agent_id: Option<Uuid>,
        agent_name: String,
        schedule_id: Option<Uuid>,
        prompt: String,
        log: Value,
        tool_calls: Value,
        duration_ms: i64,
        chain_depth: i32,
        finished_at: DateTime<Utc>,
    }
    let mut log = state.map(|s| s.log.clone()).unwrap_or_default();
    log.push(json!({
        "at": Utc::now(), "event": "finished",
        "detail": format!("{}{}", ending.status,
            ending.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()),
    }));
    let ended: Option<Ended> = sqlx::query_as(
        "UPDATE agent_runs SET status = $3, output = $4, error = $5, log = $6,
             tool_calls = coalesce($7, tool_calls),
             tool_call_count = coalesce(jsonb_array_length($7), tool_call_count),
             finished_at = now(), lease_owner = NULL, lease_until = NULL,
             duration_ms = (extract(epoch FROM now() - coalesce(started_at, created_at)) * 1000)::bigint
         WHERE id = $1 AND lease_owner = $2 AND status = 'running'
         RETURNING tenant_id, agent_id, agent_name, schedule_id, prompt, log, tool_calls,
                   duration_ms, chain_depth, finished_at",
    )
    .bind(id)
    .bind(process_id())
    .bind(ending.status)
    .bind(&ending.output)
    .bind(&ending.error)
    .bind(Value::Array(log))
    .bind(state.map(|s| Value::Array(s.tool_calls.clone())))
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let Some(ended) = ended else {
        return Ok(()); // another process holds the run now
    };
    let summary = json!({
        "run_id": id,
        "agent_id": ended.agent_id,
        "agent": ended.agent_name,
        "status": ending.status,
        "output": ending.output,
        "error": ending.error,
        "duration_ms": ended.duration_ms,
    });
    let actor = Principal {
        tenant_id: ended.tenant_id,
        kind: crate::access::principal::PrincipalKind::Agent,
        id: ended.agent_id,
        name: ended.agent_name.clone(),
        role: None,
        on_behalf_of: None,
        scopes: crate::access::Scopes::NONE,
        delegation: None,
    };
    crate::events::emit(&mut tx, &actor, "agent.run.completed", id, summary.clone()).await?;
    crate::mcp::resources::notify_changed(&mut tx, crate::mcp::resources::run_uri(id)).await?;
    if let Some(schedule_id) = ended.schedule_id {
        sqlx::query("UPDATE agent_schedules SET last_run_at = now() WHERE id = $1")
            .bind(schedule_id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let body = json!({
            "timestamp": ended.finished_at,
            "status": ending.status,
            "prompt": ended.prompt,
            "agent_output": ending.output,
            "error": ending.error,
            "log": { "events": ended.log, "tool_calls": ended.tool_calls },
            "log_id": id,
            "run_id": id,
            "agent": ended.agent_name,
        });
        super::callbacks::queue(app, &mut tx, ended.tenant_id, schedule_id, id, &body).await?;
    }
    if let Some(agent_id) = ended.agent_id {
        super::schedules::chain(
            &mut tx,
            ended.tenant_id,
            agent_id,
            id,
            ending.status,
            &summary,
            ended.chain_depth,
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Fires due schedules and runs queued runs, until `shutdown`.
pub fn start(app: Arc<App>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    QUEUE.worker(
        app,
        shutdown,
        |app| async move {
            if let Err(error) = super::schedules::fire_due(&app).await {
                tracing::warn!(%error, "agent schedules: could not fire due schedules");
            }
        },
        run,
    )
}
