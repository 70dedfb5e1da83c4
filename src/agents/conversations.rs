//! Conversations (seed 002): a person or an agent talks with a model through one of the
//! tenant's LLM connections. `send_message` stores the message, then asks the model, which
//! may call tools: each call goes through the one call path as the sender (its scopes,
//! field rules, conditions, rate limits, approval policy and audit), never with more; tools
//! that decide for people or handle secrets are never offered. Every message, tool call
//! and token count is stored; progress notifications follow the reply as it is written.
//!
//! A conversation is read by its participants (the person, through whichever of their keys;
//! or the agent) and tenant admins, and written to only by its owner, at its own client:
//! work done on someone's behalf has no conversations.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::config::NOT_FOR_AGENTS;
use super::runner::truncate;
use crate::access::Principal;
use crate::access::audit::redact;
use crate::access::delegation::{is_admin_person, person_of};
use crate::connections::llm::{self, ChatRequest, LlmError, Message, ResponseFormat, ToolSpec};
use crate::connections::manage::{self, ProbeFailure, record_status};
use crate::connections::platforms::Resolved;
use crate::error::ToolError;
use crate::mcp::call::{Call, invoke};
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{self, Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::{ToolCtx, Transport};
use crate::toolkit::filter::denial;

/// A reply may call tools this many times.
const MAX_TOOL_CALLS: usize = 20;
/// A reply takes at most this long, tool calls included.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The model sees this many of the latest messages.
const HISTORY: i64 = 200;
const MAX_TOOL_RESULT_CHARS: usize = 20_000;
const MAX_CONTENT_BYTES: usize = 100_000;
/// The tools of conversations themselves are not offered to their model.
const OWN_TOOLS: [&str; 5] = [
    "create_conversation",
    "list_conversations",
    "get_conversation",
    "send_message",
    "delete_conversation",
];

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Agents.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "create_conversation",
                "Create a conversation",
                "Start a conversation with a model on one of the tenant's LLM connections.\n\n\
                 Optional: a `title` (else taken from the first message), the `connection` and \
                 `model` (else the tenant's only LLM connection and its default model), a \
                 `system_prompt`, and the `tools` the model may call (else every tool you may \
                 use). Send messages with send_message.",
                &["agents:execute"],
                Hints::CREATE,
            ),
            create_conversation,
        ),
        tool(
            def(
                "list_conversations",
                "List conversations",
                "List your conversations, most recently active first.\n\n\
                 Titles, token use and message counts; read the messages with \
                 get_conversation. Admins list everyone's with `everyone: true`.",
                &["agents:execute"],
                Hints::READ,
            ),
            list_conversations,
        ),
        tool(
            def(
                "get_conversation",
                "Get a conversation",
                "Get a conversation and its messages, oldest first; paginated.\n\n\
                 Messages: `user` (what was sent), `assistant` (the model's replies, with the \
                 tool calls it asked for and its tokens) and `tool` (each call's result as the \
                 model saw it). Only its participants and tenant admins read it.",
                &["agents:execute"],
                Hints::READ,
            ),
            get_conversation,
        ),
        tool(
            def(
                "send_message",
                "Send a message",
                "Send a message in a conversation and get the model's reply.\n\n\
                 The model may call tools, as you: with your permissions, limits and approval \
                 policy, each call audited. Progress notifications follow the reply when the \
                 client sends a progress token. At most 20 tool calls and 120 s per reply. When \
                 no reply can be had (the provider fails, time runs out) the reply has status \
                 `error` and says why.",
                &["agents:execute"],
                // The model may change anything the sender may, and the provider is outside.
                Hints {
                    destructive: true,
                    open_world: true,
                    ..Hints::CREATE
                },
            ),
            send_message,
        ),
        tool(
            def(
                "delete_conversation",
                "Delete a conversation",
                "Delete a conversation and all its messages.\n\n\
                 Its owner or a tenant admin deletes it; it cannot be undone.",
                &["agents:execute"],
                Hints::REMOVE,
            ),
            delete_conversation,
        ),
    ]
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Conversation {
    pub id: Uuid,
    pub title: String,
    /// Who holds it: `user`, `api_key`, `local_owner` or `agent`.
    pub owner_kind: String,
    pub owner_name: String,
    /// The person it belongs to (null for an agent's).
    pub person_id: Option<Uuid>,
    /// The LLM connection (name or id) its replies use, if set.
    pub connection: Option<String>,
    pub model: Option<String>,
    pub system_prompt: String,
    /// The tools its model is offered; null for every tool the sender may use.
    pub tools: Option<Vec<String>>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub message_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, title, owner_kind, owner_name, person_id, connection, model, \
     system_prompt, tools, prompt_tokens, completion_tokens, total_tokens, message_count, \
     created_at, updated_at";

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct ChatMessage {
    pub id: i64,
    /// `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
    /// assistant: the tool calls it asked for (`{id, name, arguments}`).
    pub tool_calls: Value,
    /// tool: the call it answers.
    pub tool_call_id: Option<String>,
    pub tool_name: Option<String>,
    /// tool: the call failed (or was refused).
    pub is_error: bool,
    /// assistant: `ok`, or `error` when no reply could be had (see `error`).
    pub status: String,
    /// assistant: why there is no reply (the provider failed, the reply took too long).
    pub error: Option<String>,
    /// user: who sent it.
    pub sender_name: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub duration_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
}

const MESSAGE_COLUMNS: &str = "id, role, content, tool_calls, tool_call_id, tool_name, is_error, \
     status, error, sender_name, prompt_tokens, completion_tokens, total_tokens, duration_ms, \
     created_at";

/// Conversations are a person's or an agent's own, at its own client.
fn direct(principal: &Principal) -> Result<(), ToolError> {
    if principal.delegation.is_some() {
        return Err(ToolError::Forbidden(
            "conversations are held by a person or an agent at its own client, not by work \
             done on someone's behalf"
                .into(),
        ));
    }
    Ok(())
}

/// ` AND <the caller takes part>`: the same person (whichever of their keys), or the same
/// agent.
fn push_participant(query: &mut QueryBuilder<sqlx::Postgres>, principal: &Principal) {
    match person_of(principal) {
        Some(person) => query.push(" AND person_id = ").push_bind(person),
        None => query
            .push(" AND person_id IS NULL AND owner_id = ")
            .push_bind(principal.id.unwrap_or_default()),
    };
}

/// Who may do what with a conversation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Participants and tenant admins.
    Read,
    /// Participants only (nobody writes in someone else's name).
    Write,
}

async fn find(ctx: &ToolCtx, id: Uuid, how: Use) -> Result<Conversation, ToolError> {
    let mut query = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM conversations WHERE tenant_id = "
    ));
    query
        .push_bind(ctx.principal.tenant_id)
        .push(" AND id = ")
        .push_bind(id);
    if how == Use::Write || !is_admin_person(&ctx.principal) {
        push_participant(&mut query, &ctx.principal);
    }
    query
        .build_query_as()
        .fetch_optional(ctx.app.store.pool())
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ToolError::NotFound(format!("no conversation {id} of yours")))
}

fn check_length(field: &str, value: &str, max: usize) -> Result<(), ToolError> {
    if value.len() > max {
        return Err(ToolError::InvalidRequest(format!(
            "{field} is limited to {max} bytes"
        )));
    }
    Ok(())
}

/// May a conversation's model be offered `name`? Not tools that decide for people, handle
/// secrets, start work of their own or are conversations themselves.
fn offerable(name: &str) -> bool {
    !catalog::handles_secrets(name)
        && !catalog::needs_person(name)
        && !catalog::makes_standing_work(name)
        && !NOT_FOR_AGENTS.contains(&name)
        && !OWN_TOOLS.contains(&name)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// Up to 200 characters.
    ///
    /// Default: the start of the first message.
    pub title: Option<String>,
    /// LLM connection id or name.
    ///
    /// Default: the tenant's only LLM connection (openai or anthropic).
    pub connection: Option<String>,
    /// Model name; default: the connection's.
    pub model: Option<String>,
    /// Instructions the model gets before the messages.
    pub system_prompt: Option<String>,
    /// Tool names the model may call.
    ///
    /// Default: every tool you may use (tools that decide for people or handle secrets are
    /// never offered). Fewer tools make each reply cheaper.
    pub tools: Option<Vec<String>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversationOut {
    pub conversation: Conversation,
}

async fn create_conversation(ctx: ToolCtx, args: CreateArgs) -> Result<ConversationOut, ToolError> {
    direct(&ctx.principal)?;
    let title = args.title.unwrap_or_default();
    if title.chars().count() > 200 {
        return Err(ToolError::InvalidRequest(
            "title is limited to 200 characters".into(),
        ));
    }
    let system_prompt = args.system_prompt.unwrap_or_default();
    check_length("system_prompt", &system_prompt, 20_000)?;
    if let Some(model) = &args.model {
        check_length("model", model, 200)?;
    }
    if let Some(connection) = &args.connection {
        llm_connection(&ctx, connection).await?;
    }
    if let Some(tools) = &args.tools {
        if tools.len() > 200 {
            return Err(ToolError::InvalidRequest(
                "tools names at most 200 tools".into(),
            ));
        }
        for name in tools {
            if ctx.app.catalog.get(name).is_none() {
                return Err(ToolError::InvalidRequest(format!(
                    "unknown tool `{name}` in tools (find_tools lists them)"
                )));
            }
            if !offerable(name) {
                return Err(ToolError::InvalidRequest(format!(
                    "`{name}` is never offered to a conversation's model: it decides for \
                     people, handles secrets or starts work of its own"
                )));
            }
        }
    }
    let mut tx = ctx.begin().await?;
    let conversation: Conversation = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO conversations (tenant_id, title, owner_kind, owner_id, owner_name, person_id,
             connection, model, system_prompt, tools)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         RETURNING {COLUMNS}"
    )))
    .bind(ctx.principal.tenant_id)
    .bind(&title)
    .bind(ctx.principal.kind.as_str())
    .bind(ctx.principal.id.unwrap_or_default())
    .bind(&ctx.principal.name)
    .bind(person_of(&ctx.principal))
    .bind(&args.connection)
    .bind(&args.model)
    .bind(&system_prompt)
    .bind(&args.tools)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    ctx.commit(tx).await?;
    Ok(ConversationOut { conversation })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Admins: everyone's conversations, not only yours.
    #[serde(default)]
    pub everyone: bool,
    #[serde(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_conversations(ctx: ToolCtx, args: ListArgs) -> Result<ConversationList, ToolError> {
    direct(&ctx.principal)?;
    if args.everyone && !is_admin_person(&ctx.principal) {
        return Err(ToolError::Forbidden(
            "only a tenant admin lists everyone's conversations".into(),
        ));
    }
    let page = args.page.page()?;
    let (conversations, total) = fetch_page(
        ctx.app.store.pool(),
        COLUMNS,
        |q| {
            q.push(" FROM conversations WHERE tenant_id = ")
                .push_bind(ctx.principal.tenant_id);
            if !args.everyone {
                push_participant(q, &ctx.principal);
            }
        },
        "updated_at DESC, id DESC",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    Ok(ConversationList {
        conversations,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetArgs {
    /// From create_conversation or list_conversations.
    pub conversation_id: Uuid,
    #[serde(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversationDetail {
    pub conversation: Conversation,
    /// Oldest first.
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn get_conversation(ctx: ToolCtx, args: GetArgs) -> Result<ConversationDetail, ToolError> {
    direct(&ctx.principal)?;
    let conversation = find(&ctx, args.conversation_id, Use::Read).await?;
    let page = args.page.page()?;
    let (messages, total) = fetch_page(
        ctx.app.store.pool(),
        MESSAGE_COLUMNS,
        |q| {
            q.push(" FROM conversation_messages WHERE tenant_id = ")
                .push_bind(ctx.principal.tenant_id)
                .push(" AND conversation_id = ")
                .push_bind(conversation.id);
        },
        "id",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    // What the conversation's tools took and gave, as the reader may read it: a narrowed
    // API key of the person reads no more of it than it could read with the tools.
    let reader = crate::mcp::shaping::Reader::of(&ctx).await?;
    let mut messages: Vec<ChatMessage> = messages;
    for message in &mut messages {
        if let Some(tool) = message.tool_name.as_deref()
            && let Some(reason) = reader.hidden(tool)
        {
            message.content = crate::mcp::shaping::marker(&reason).to_string();
        }
        if let Some(calls) = message.tool_calls.as_array_mut() {
            for call in calls {
                let name = call["name"].as_str().unwrap_or_default().to_owned();
                if let Some(arguments) = call.get_mut("arguments") {
                    reader.shape(&name, arguments);
                }
            }
        }
    }
    Ok(ConversationDetail {
        conversation,
        messages,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdArgs {
    /// From create_conversation or list_conversations.
    pub conversation_id: Uuid,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub deleted: Uuid,
    /// Messages deleted with it.
    pub messages: i32,
}

async fn delete_conversation(ctx: ToolCtx, args: IdArgs) -> Result<Deleted, ToolError> {
    direct(&ctx.principal)?;
    let conversation = find(&ctx, args.conversation_id, Use::Read).await?;
    let mut tx = ctx.begin().await?;
    sqlx::query("DELETE FROM conversations WHERE tenant_id = $1 AND id = $2")
        .bind(ctx.principal.tenant_id)
        .bind(conversation.id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    ctx.commit(tx).await?;
    Ok(Deleted {
        deleted: conversation.id,
        messages: conversation.message_count,
    })
}

/// An LLM connection of the tenant, ready to use.
async fn llm_connection(
    ctx: &ToolCtx,
    id_or_name: &str,
) -> Result<(manage::Connection, llm::Provider, Option<String>), ToolError> {
    let (found, _, resolved) = manage::load(&ctx.app, ctx.principal.tenant_id, id_or_name).await?;
    match resolved {
        Resolved::Llm {
            provider,
            default_model,
        } => Ok((found, provider, default_model)),
        _ => Err(ToolError::InvalidRequest(format!(
            "connection `{}` is not an LLM provider (openai or anthropic)",
            found.name
        ))),
    }
}

/// The connection to use when none is named: the tenant's only LLM connection.
async fn only_llm_connection(ctx: &ToolCtx) -> Result<String, ToolError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM connections WHERE tenant_id = $1
             AND platform IN ('openai', 'anthropic') ORDER BY name LIMIT 11",
    )
    .bind(ctx.principal.tenant_id)
    .fetch_all(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?;
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ToolError::Conflict(
            "this tenant has no LLM connection: create one with create_connection (platform \
             openai or anthropic)"
                .into(),
        )),
        many => Err(ToolError::InvalidRequest(format!(
            "this tenant has several LLM connections; name one in `connection`: {}",
            many.join(", ")
        ))),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendArgs {
    /// From create_conversation or list_conversations.
    pub conversation_id: Uuid,
    /// The message, up to 100,000 bytes.
    pub content: String,
    /// LLM connection id or name for this reply.
    ///
    /// Default: the conversation's.
    pub connection: Option<String>,
    /// Model for this reply; default: the conversation's.
    pub model: Option<String>,
}

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct Tokens {
    pub prompt: i64,
    pub completion: i64,
    pub total: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SendOut {
    pub conversation_id: Uuid,
    /// The model's final reply.
    pub reply: ChatMessage,
    /// The tools the model called for it, in order (name and whether it failed).
    pub tools_called: Vec<Value>,
    /// Tokens this reply used.
    pub tokens: Tokens,
}

async fn send_message(ctx: ToolCtx, args: SendArgs) -> Result<SendOut, ToolError> {
    direct(&ctx.principal)?;
    if args.content.trim().is_empty() {
        return Err(ToolError::InvalidRequest("content is empty".into()));
    }
    check_length("content", &args.content, MAX_CONTENT_BYTES)?;
    let conversation = find(&ctx, args.conversation_id, Use::Write).await?;
    let pool = ctx.app.store.pool();
    // One reply at a time: a second message waits for the first's reply.
    let claimed = sqlx::query(
        "UPDATE conversations SET busy_until = now() + interval '300 seconds'
         WHERE tenant_id = $1 AND id = $2 AND (busy_until IS NULL OR busy_until < now())",
    )
    .bind(ctx.principal.tenant_id)
    .bind(conversation.id)
    .execute(pool)
    .await
    .map_err(StoreError::from)?;
    if claimed.rows_affected() != 1 {
        return Err(ToolError::Conflict(
            "a reply in this conversation is still being written; send again once it is done"
                .into(),
        ));
    }
    let outcome = reply(&ctx, &conversation, args).await;
    if let Err(error) =
        sqlx::query("UPDATE conversations SET busy_until = NULL WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.principal.tenant_id)
            .bind(conversation.id)
            .execute(pool)
            .await
    {
        tracing::warn!(%error, conversation = %conversation.id, "could not release a conversation");
    }
    outcome
}

/// A message to store.
#[derive(Default)]
struct NewMessage<'a> {
    role: &'a str,
    content: String,
    tool_calls: Value,
    tool_call_id: Option<String>,
    tool_name: Option<String>,
    is_error: bool,
    /// assistant: why there is no reply.
    error: Option<String>,
    sender_name: Option<String>,
    usage: llm::Usage,
    duration_ms: Option<i64>,
}

async fn store(
    ctx: &ToolCtx,
    conversation: Uuid,
    message: NewMessage<'_>,
) -> Result<ChatMessage, ToolError> {
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let stored: ChatMessage = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO conversation_messages (tenant_id, conversation_id, role, content, tool_calls,
             tool_call_id, tool_name, is_error, sender_name, prompt_tokens, completion_tokens,
             total_tokens, duration_ms, status, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                 CASE WHEN $14::text IS NULL THEN 'ok' ELSE 'error' END, $14)
         RETURNING {MESSAGE_COLUMNS}"
    )))
    .bind(ctx.principal.tenant_id)
    .bind(conversation)
    .bind(message.role)
    .bind(&message.content)
    .bind(if message.tool_calls.is_null() {
        json!([])
    } else {
        message.tool_calls
    })
    .bind(&message.tool_call_id)
    .bind(&message.tool_name)
    .bind(message.is_error)
    .bind(&message.sender_name)
    .bind(message.usage.prompt as i64)
    .bind(message.usage.completion as i64)
    .bind(message.usage.total as i64)
    .bind(message.duration_ms)
    .bind(&message.error)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    // The first message names an untitled conversation.
    sqlx::query(
        "UPDATE conversations SET message_count = message_count + 1, updated_at = now(),
             prompt_tokens = prompt_tokens + $3, completion_tokens = completion_tokens + $4,
             total_tokens = total_tokens + $5,
             title = CASE WHEN title = '' AND $6 = 'user' THEN left($7, 60) ELSE title END
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(ctx.principal.tenant_id)
    .bind(conversation)
    .bind(stored.prompt_tokens)
    .bind(stored.completion_tokens)
    .bind(stored.total_tokens)
    .bind(&stored.role)
    .bind(stored.content.lines().next().unwrap_or_default())
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(stored)
}

/// The latest messages as the model reads them; a tool call left without its result (a
/// reply cut short) is answered as interrupted, as providers require.
async fn history(ctx: &ToolCtx, conversation: Uuid) -> Result<Vec<Message>, ToolError> {
    let mut rows: Vec<ChatMessage> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM conversation_messages
         WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY id DESC LIMIT $3"
    )))
    .bind(ctx.principal.tenant_id)
    .bind(conversation)
    .bind(HISTORY)
    .fetch_all(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?;
    rows.reverse();
    // Start at a message of the sender's: a cut history does not begin with tool results.
    let start = rows.iter().position(|m| m.role == "user").unwrap_or(0);
    let mut messages: Vec<Message> = Vec::new();
    let mut unanswered: Vec<llm::ToolCall> = Vec::new();
    let close = |messages: &mut Vec<Message>, unanswered: &mut Vec<llm::ToolCall>| {
        for call in unanswered.drain(..) {
            messages.push(Message::tool_result(
                &call,
                "the call was interrupted and may or may not have taken effect",
                true,
            ));
        }
    };
    for row in &rows[start..] {
        match row.role.as_str() {
            "tool" => {
                let id = row.tool_call_id.clone().unwrap_or_default();
                unanswered.retain(|c| c.id != id);
                messages.push(Message::Tool {
                    call_id: id,
                    name: row.tool_name.clone().unwrap_or_default(),
                    content: row.content.clone(),
                    is_error: row.is_error,
                });
            }
            role => {
                close(&mut messages, &mut unanswered);
                if role == "user" {
                    messages.push(Message::user(row.content.clone()));
                } else if row.status == "error" {
                    // No reply was had: nothing the model said.
                } else {
                    let calls: Vec<llm::ToolCall> =
                        serde_json::from_value(row.tool_calls.clone()).unwrap_or_default();
                    unanswered = calls.clone();
                    messages.push(Message::Assistant {
                        text: (!row.content.is_empty()).then(|| row.content.clone()),
                        tool_calls: calls,
                    });
                }
            }
        }
    }
    close(&mut messages, &mut unanswered);
    Ok(messages)
}

/// The tools the model is offered: the conversation's (or every tool), each one the sender
/// may call now, none that decides for people or handles secrets.
fn offered(ctx: &ToolCtx, selected: Option<&[String]>) -> Vec<ToolSpec> {
    let wanted = |name: &str| selected.is_none_or(|s| s.iter().any(|n| n == name));
    ctx.app
        .catalog
        .iter()
        .filter(|t| wanted(t.def.name) && offerable(t.def.name))
        .filter(|t| ctx.filter.allows(&t.def) && denial(&ctx.principal, t).is_none())
        .map(|t| ToolSpec {
            name: t.def.name.to_owned(),
            description: t
                .listing
                .description
                .as_deref()
                .unwrap_or_default()
                .to_owned(),
            // The lean schema: what a model needs to fill the arguments in.
            input_schema: Value::Object((*t.listing.input_schema).clone()),
        })
        .collect()
}

async fn reply(
    ctx: &ToolCtx,
    conversation: &Conversation,
    args: SendArgs,
) -> Result<SendOut, ToolError> {
    let started = Instant::now();
    let connection = match args.connection.or(conversation.connection.clone()) {
        Some(connection) => connection,
        None => only_llm_connection(ctx).await?,
    };
    let (found, provider, default_model) = llm_connection(ctx, &connection).await?;
    let Some(model) = args.model.or(conversation.model.clone()).or(default_model) else {
        return Err(ToolError::InvalidRequest(format!(
            "no model: name one in `model`, or set connection `{}`'s default_model",
            found.name
        )));
    };
    store(
        ctx,
        conversation.id,
        NewMessage {
            role: "user",
            content: args.content,
            sender_name: Some(ctx.principal.name.clone()),
            ..NewMessage::default()
        },
    )
    .await?;
    let tools = offered(ctx, conversation.tools.as_deref());
    let names: HashSet<String> = tools.iter().map(|t| t.name.clone()).collect();
    let http = ctx.app.llm_http()?;
    let mut transcript = history(ctx, conversation.id).await?;
    let mut tokens = Tokens::default();
    let mut called: Vec<Value> = Vec::new();
    let mut step = 0u64;
    let progress = |step: u64, message: String| async move {
        if let Some(progress) = &ctx.progress {
            progress.report(step, 0, message).await;
        }
    };
    loop {
        let Some(left) = REPLY_TIMEOUT.checked_sub(started.elapsed()) else {
            return failed(ctx, conversation.id, timed_out(), called, tokens).await;
        };
        step += 1;
        progress(step, format!("asking {model}")).await;
        let request = ChatRequest {
            model: model.clone(),
            system: (!conversation.system_prompt.is_empty())
                .then(|| conversation.system_prompt.clone()),
            messages: transcript.clone(),
            tools: tools.clone(),
            temperature: None,
            max_tokens: None,
            response_format: ResponseFormat::Text,
        };
        let asked = Instant::now();
        let answer = match tokio::time::timeout(left, llm::chat(&http, &provider, &request)).await {
            Err(_) => return failed(ctx, conversation.id, timed_out(), called, tokens).await,
            Ok(Err(error)) => {
                let why = provider_error(ctx, &found, error).await?;
                return failed(ctx, conversation.id, why, called, tokens).await;
            }
            Ok(Ok(answer)) => answer,
        };
        tokens.prompt += answer.usage.prompt as i64;
        tokens.completion += answer.usage.completion as i64;
        tokens.total += answer.usage.total as i64;
        let over = called.len() + answer.tool_calls.len() > MAX_TOOL_CALLS;
        let stored = store(
            ctx,
            conversation.id,
            NewMessage {
                role: "assistant",
                content: answer.text.clone().unwrap_or_default(),
                tool_calls: if over {
                    json!([])
                } else {
                    json!(answer
                        .tool_calls
                        .iter()
                        .map(|c| json!({ "id": c.id, "name": c.name, "arguments": redact(&c.arguments) }))
                        .collect::<Vec<_>>())
                },
                usage: answer.usage,
                duration_ms: Some(asked.elapsed().as_millis() as i64),
                ..NewMessage::default()
            },
        )
        .await?;
        if answer.tool_calls.is_empty() || over {
            if over {
                tracing::info!(conversation = %conversation.id, "reply stopped at its tool-call limit");
            }
            progress(step + 1, "replied".into()).await;
            return Ok(SendOut {
                conversation_id: conversation.id,
                reply: stored,
                tools_called: called,
                tokens,
            });
        }
        transcript.push(answer.to_message());
        for call in &answer.tool_calls {
            let Some(left) = REPLY_TIMEOUT.checked_sub(started.elapsed()) else {
                return failed(ctx, conversation.id, timed_out(), called, tokens).await;
            };
            step += 1;
            progress(step, format!("calling {}", call.name)).await;
            let began = Instant::now();
            let (content, is_error) = call_tool(ctx, call, &names, left).await;
            called.push(json!({ "name": call.name, "is_error": is_error }));
            store(
                ctx,
                conversation.id,
                NewMessage {
                    role: "tool",
                    content: content.clone(),
                    tool_call_id: Some(call.id.clone()),
                    tool_name: Some(call.name.clone()),
                    is_error,
                    duration_ms: Some(began.elapsed().as_millis() as i64),
                    ..NewMessage::default()
                },
            )
            .await?;
            transcript.push(Message::tool_result(call, content, is_error));
        }
    }
}

fn timed_out() -> String {
    format!(
        "the reply took longer than {} s and was stopped; what it did so far is in \
         get_conversation",
        REPLY_TIMEOUT.as_secs()
    )
}

/// No reply could be had: stored as a failed reply, which is the answer (as an agent run
/// that fails is a run with status `error`, not a failed call).
async fn failed(
    ctx: &ToolCtx,
    conversation: Uuid,
    why: String,
    called: Vec<Value>,
    tokens: Tokens,
) -> Result<SendOut, ToolError> {
    let reply = store(
        ctx,
        conversation,
        NewMessage {
            role: "assistant",
            error: Some(why),
            ..NewMessage::default()
        },
    )
    .await?;
    Ok(SendOut {
        conversation_id: conversation,
        reply,
        tools_called: called,
        tokens,
    })
}

/// What a provider's failure means to the sender; a refused credential also marks the
/// connection.
async fn provider_error(
    ctx: &ToolCtx,
    found: &manage::Connection,
    error: LlmError,
) -> Result<String, ToolError> {
    if let LlmError::Status {
        status: 401 | 403, ..
    } = &error
    {
        let failure = ProbeFailure::from(error);
        record_status(
            &ctx.app,
            ctx.principal.tenant_id,
            found.id,
            Err(&failure),
            false,
        )
        .await?;
        return Ok(format!(
            "connection `{}`: {}; fix its credentials with update_connection",
            found.name, failure.message
        ));
    }
    Ok(format!("connection `{}`: {error}", found.name))
}

/// One tool call of the model's, as the sender, through the one call path.
async fn call_tool(
    ctx: &ToolCtx,
    call: &llm::ToolCall,
    offered: &HashSet<String>,
    left: Duration,
) -> (String, bool) {
    let outcome = if !offered.contains(&call.name) {
        Err(ToolError::Forbidden(format!(
            "`{}` is not one of the tools offered in this conversation",
            call.name
        )))
    } else {
        let arguments = match &call.arguments {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        invoke(
            &ctx.app,
            Call::on_behalf(
                &ctx.app,
                ctx.principal.clone(),
                Transport::Conversation,
                &call.name,
                arguments,
                "Conversation",
            )
            .with_timeout(left)
            .with_filter(ctx.filter.clone()),
        )
        .await
    };
    match outcome {
        Ok(value) => {
            // Tool results carry stored text: the model gets them as data, not instructions.
            let text = truncate(&redact(&value).to_string(), MAX_TOOL_RESULT_CHARS);
            (
                crate::toolkit::data::data_block(&format!("result of {}", call.name), &text),
                false,
            )
        }
        Err(error) => {
            let body = error.to_body("");
            let code = serde_json::to_value(body.error).unwrap_or_default();
            (
                json!({ "error": code, "error_description": body.error_description }).to_string(),
                true,
            )
        }
    }
}
