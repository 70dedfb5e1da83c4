//! LLM provider clients (OpenAI-compatible chat completions, Anthropic messages).
//!
//! Agents talk to models through one provider-neutral shape — a conversation of
//! [`Message`]s plus the [`ToolSpec`]s the model may call — so the agent loop, its stored
//! transcripts and its tests never depend on which provider a connection points at. Each
//! wire format is translated here and nowhere else.
//!
//! Errors say what went wrong in the provider's own words ([`LlmError::Status`]) without
//! ever echoing the credential: the key is redacted from anything a provider sends back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Where a model lives and how to authenticate to it.
#[derive(Debug, Clone)]
pub enum Provider {
    /// base_url like "https://api.openai.com/v1" or "http://127.0.0.1:11434/v1"; POST {base_url}/chat/completions, GET {base_url}/models.
    OpenAi {
        base_url: String,
        api_key: Option<String>,
    },
    /// base_url like "https://api.anthropic.com"; POST {base_url}/v1/messages, GET {base_url}/v1/models; headers x-api-key and anthropic-version (default "2023-06-01").
    Anthropic {
        base_url: String,
        api_key: String,
        version: Option<String>,
    },
}

/// The `anthropic-version` header sent when a connection does not pin one.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Anthropic requires `max_tokens`; this is what a request without one asks for.
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u32 = 1024;

/// How long provider text quoted in an error may be, so one bad answer cannot flood a
/// run's transcript or the logs.
const MAX_ERROR_CHARS: usize = 300;

/// The sentence that asks an Anthropic model for JSON: its API has no JSON mode.
const ANTHROPIC_JSON_INSTRUCTION: &str =
    "Answer with a single JSON object only: no prose, no code fences, nothing before or after it.";

/// Shape of the model's answer.
///
/// What the model's text answer must look like.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    #[default]
    Text,
    Json,
}

/// A tool the model may call; `input_schema` is the JSON Schema of its arguments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    /// The provider's id for the call; a tool result answers it by this id.
    pub id: String,
    pub name: String,
    /// Always a JSON object (the client refuses anything else as malformed).
    pub arguments: Value,
}

/// One turn of a conversation; persisted as JSON between turns (a run's transcript), so keep serde stable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    User {
        content: String,
    },
    Assistant {
        text: Option<String>,
        #[serde(default)]
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        call_id: String,
        name: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

impl Message {
    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Message::User {
            content: content.into(),
        }
    }

    /// The result of `call`, to send back to the model.
    pub fn tool_result(call: &ToolCall, content: impl Into<String>, is_error: bool) -> Self {
        Message::Tool {
            call_id: call.id.clone(),
            name: call.name.clone(),
            content: content.into(),
            is_error,
        }
    }
}

/// One call to the model.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub response_format: ResponseFormat,
}

/// Token counts of one call (summed by callers to enforce budgets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt += other.prompt;
        self.completion += other.completion;
        self.total += other.total;
    }
}

/// The model's answer to one call.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub text: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    /// The provider's stop/finish reason as sent ("stop", "tool_calls", "end_turn", "tool_use", "max_tokens", ...).
    pub stop_reason: Option<String>,
}

impl ChatResponse {
    /// The assistant turn to append to the conversation before sending tool results.
    pub fn to_message(&self) -> Message {
        Message::Assistant {
            text: self.text.clone(),
            tool_calls: self.tool_calls.clone(),
        }
    }
}

/// Why a call to a provider failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider answered with a non-2xx status; the message is the provider's own error message (from its JSON error body when present), truncated to ~300 chars.
    #[error("the provider answered {status}: {message}")]
    Status { status: u16, message: String },
    /// Could not connect / send / read (including timeouts).
    #[error("the provider could not be reached: {0}")]
    Unreachable(String),
    /// The provider's answer is not what the format promises (not JSON, no choices, tool-call arguments that are not a JSON object, ...).
    #[error("the provider's answer could not be read: {0}")]
    Malformed(String),
}

/// Sends one conversation to the model and returns its answer (text and/or tool calls).
pub async fn chat(
    http: &reqwest::Client,
    provider: &Provider,
    request: &ChatRequest,
) -> Result<ChatResponse, LlmError> {
    let span = tracing::info_span!(
        "llm.chat",
        otel.name = %format_args!("chat {}", request.model),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = match provider {
            Provider::OpenAi { .. } => "openai",
            Provider::Anthropic { .. } => "anthropic",
        },
        gen_ai.request.model = %request.model,
    );
    let answer = tracing::Instrument::instrument(ask(http, provider, request), span.clone()).await;
    if answer.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    answer
}

async fn ask(
    http: &reqwest::Client,
    provider: &Provider,
    request: &ChatRequest,
) -> Result<ChatResponse, LlmError> {
    match provider {
        Provider::OpenAi { base_url, api_key } => {
            let url = format!("{}/chat/completions", trim_base(base_url));
            let key = openai::key(api_key);
            let mut builder = http.post(url).json(&openai::request_body(request));
            if let Some(key) = key {
                builder = builder.bearer_auth(key);
            }
            tracing::debug!(model = %request.model, "calling an OpenAI-compatible provider");
            let body = send(builder, key).await?;
            openai::parse_response(&body)
        }
        Provider::Anthropic {
            base_url,
            api_key,
            version,
        } => {
            let url = format!("{}/v1/messages", trim_base(base_url));
            let builder = anthropic::headers(http.post(url), api_key, version.as_deref())
                .json(&anthropic::request_body(request));
            tracing::debug!(model = %request.model, "calling the Anthropic provider");
            let body = send(builder, Some(api_key)).await?;
            anthropic::parse_response(&body)
        }
    }
}

/// Checks that the provider answers with these credentials (lists models); Ok is a short sentence such as "3 models available".
pub async fn probe(http: &reqwest::Client, provider: &Provider) -> Result<String, LlmError> {
    let (body, has_more) = match provider {
        Provider::OpenAi { base_url, api_key } => {
            let key = openai::key(api_key);
            let mut builder = http.get(format!("{}/models", trim_base(base_url)));
            if let Some(key) = key {
                builder = builder.bearer_auth(key);
            }
            (send(builder, key).await?, false)
        }
        Provider::Anthropic {
            base_url,
            api_key,
            version,
        } => {
            let builder = anthropic::headers(
                http.get(format!("{}/v1/models", trim_base(base_url))),
                api_key,
                version.as_deref(),
            );
            let body = send(builder, Some(api_key)).await?;
            // Anthropic pages its list (20 by default): more pages mean "at least".
            let has_more = body.get("has_more").and_then(Value::as_bool) == Some(true);
            (body, has_more)
        }
    };
    let count = body
        .get("data")
        .and_then(Value::as_array)
        .map(Vec::len)
        .ok_or_else(|| LlmError::Malformed("the model list has no `data` array".into()))?;
    let noun = if count == 1 { "model" } else { "models" };
    Ok(if has_more {
        format!("at least {count} {noun} available")
    } else {
        format!("{count} {noun} available")
    })
}

/// Base URLs are pasted by people: tolerate a trailing slash.
fn trim_base(base_url: &str) -> &str {
    base_url.trim_end_matches('/')
}

/// Sends a request and returns its JSON body, mapping every failure to an [`LlmError`].
/// `secret` is redacted from anything quoted back from the provider.
async fn send(builder: reqwest::RequestBuilder, secret: Option<&str>) -> Result<Value, LlmError> {
    let response = crate::telemetry::propagate(builder)
        .send()
        .await
        .map_err(|err| LlmError::Unreachable(redact(&error_chain(&err), secret)))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|err| LlmError::Unreachable(redact(&error_chain(&err), secret)))?;
    if !status.is_success() {
        let message = error_message(&text)
            .filter(|message| !message.trim().is_empty())
            .unwrap_or_else(|| {
                if text.trim().is_empty() {
                    status.canonical_reason().unwrap_or("no message").to_owned()
                } else {
                    text.trim().to_owned()
                }
            });
        return Err(LlmError::Status {
            status: status.as_u16(),
            message: truncate(&redact(&message, secret)),
        });
    }
    serde_json::from_str(&text).map_err(|err| {
        LlmError::Malformed(truncate(&redact(
            &format!("the body is not JSON ({err}): {}", text.trim()),
            secret,
        )))
    })
}

/// The provider's own message from a JSON error body: `{"error":{"message"}}` (OpenAI and
/// Anthropic), or `{"error":"..."}` as some OpenAI-compatible servers send.
fn error_message(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let error = value.get("error")?;
    match error {
        Value::String(message) => Some(message.clone()),
        Value::Object(fields) => fields
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// reqwest's top-level message ("error sending request") hides the cause (refused,
/// timed out, TLS): include the whole chain.
fn error_chain(err: &reqwest::Error) -> String {
    let mut message = if err.is_timeout() {
        format!("timed out: {err}")
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    truncate(&message)
}

/// Providers sometimes quote the key they were given; never let it reach an error.
fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(secret) if !secret.is_empty() => text.replace(secret, "[redacted]"),
        _ => text.to_owned(),
    }
}

/// Cuts provider text to [`MAX_ERROR_CHARS`] characters (on a char boundary).
fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Tool arguments must be a JSON object; both formats promise one.
fn require_object(value: Value, tool: &str) -> Result<Value, LlmError> {
    if value.is_object() {
        Ok(value)
    } else {
        Err(LlmError::Malformed(format!(
            "the arguments of the call to {tool} are not a JSON object"
        )))
    }
}

fn as_u64(value: Option<&Value>) -> u64 {
    value.and_then(Value::as_u64).unwrap_or(0)
}

/// The OpenAI chat-completions format (also spoken by Ollama, vLLM and LM Studio).
mod openai {
    use super::*;

    /// Local servers (Ollama, LM Studio) need no key; a blank one means none, not
    /// `Authorization: Bearer `.
    pub(super) fn key(api_key: &Option<String>) -> Option<&str> {
        api_key.as_deref().filter(|key| !key.trim().is_empty())
    }

    pub(super) fn request_body(request: &ChatRequest) -> Value {
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if let Some(system) = &request.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        for message in &request.messages {
            messages.push(match message {
                Message::User { content } => json!({"role": "user", "content": content}),
                Message::Assistant { text, tool_calls } => {
                    let mut turn = json!({"role": "assistant", "content": text});
                    if !tool_calls.is_empty() {
                        turn["tool_calls"] = tool_calls
                            .iter()
                            .map(|call| {
                                json!({
                                    "id": call.id,
                                    "type": "function",
                                    "function": {
                                        "name": call.name,
                                        "arguments": call.arguments.to_string(),
                                    },
                                })
                            })
                            .collect();
                    }
                    turn
                }
                Message::Tool {
                    call_id,
                    content,
                    is_error,
                    ..
                } => {
                    // The format has no error flag: say it in the content.
                    let content = if *is_error {
                        format!("Error: {content}")
                    } else {
                        content.clone()
                    };
                    json!({"role": "tool", "tool_call_id": call_id, "content": content})
                }
            });
        }
        let mut body = Map::new();
        body.insert("model".into(), json!(request.model));
        body.insert("messages".into(), Value::Array(messages));
        if !request.tools.is_empty() {
            let tools = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": tool.input_schema,
                        },
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        if let Some(temperature) = request.temperature {
            body.insert("temperature".into(), json!(temperature));
        }
        if let Some(max_tokens) = request.max_tokens {
            body.insert("max_tokens".into(), json!(max_tokens));
        }
        if request.response_format == ResponseFormat::Json {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Value::Object(body)
    }

    pub(super) fn parse_response(body: &Value) -> Result<ChatResponse, LlmError> {
        let choice = body
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| choices.first())
            .ok_or_else(|| LlmError::Malformed("the answer has no choices".into()))?;
        let message = choice
            .get("message")
            .filter(|message| message.is_object())
            .ok_or_else(|| LlmError::Malformed("the first choice has no message".into()))?;
        let text = match message.get("content") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            // Some compatible servers send content parts instead of a string.
            Some(Value::Array(parts)) => Some(
                parts
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .collect::<String>(),
            ),
            Some(_) => {
                return Err(LlmError::Malformed(
                    "the message content is not text".into(),
                ));
            }
        }
        .filter(|text| !text.is_empty());
        let tool_calls = match message.get("tool_calls") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(calls)) => calls
                .iter()
                .enumerate()
                .map(|(index, call)| tool_call(index, call))
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(LlmError::Malformed("tool_calls is not an array".into()));
            }
        };
        let usage = body.get("usage");
        let prompt = as_u64(usage.and_then(|usage| usage.get("prompt_tokens")));
        let completion = as_u64(usage.and_then(|usage| usage.get("completion_tokens")));
        let total = usage
            .and_then(|usage| usage.get("total_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(prompt + completion);
        Ok(ChatResponse {
            text,
            tool_calls,
            usage: Usage {
                prompt,
                completion,
                total,
            },
            stop_reason: choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    fn tool_call(index: usize, call: &Value) -> Result<ToolCall, LlmError> {
        let function = call
            .get("function")
            .ok_or_else(|| LlmError::Malformed(format!("tool call {index} has no function")))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| LlmError::Malformed(format!("tool call {index} has no name")))?
            .to_owned();
        let arguments = match function.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(text)) if text.trim().is_empty() => json!({}),
            Some(Value::String(text)) => serde_json::from_str(text).map_err(|_| {
                LlmError::Malformed(format!("the arguments of the call to {name} are not JSON"))
            })?,
            // Some compatible servers send the object itself rather than its encoding.
            Some(value) => value.clone(),
        };
        let arguments = require_object(arguments, &name)?;
        // A few compatible servers omit ids; the conversation still needs one per call.
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map_or_else(|| format!("call_{index}"), str::to_owned);
        Ok(ToolCall {
            id,
            name,
            arguments,
        })
    }
}

/// The Anthropic messages format.
mod anthropic {
    use super::*;

    pub(super) fn headers(
        builder: reqwest::RequestBuilder,
        api_key: &str,
        version: Option<&str>,
    ) -> reqwest::RequestBuilder {
        builder.header("x-api-key", api_key).header(
            "anthropic-version",
            version.unwrap_or(DEFAULT_ANTHROPIC_VERSION),
        )
    }

    pub(super) fn request_body(request: &ChatRequest) -> Value {
        let mut messages: Vec<Value> = Vec::with_capacity(request.messages.len());
        // Tool results of one assistant turn must all go back in one user message.
        let mut results: Vec<Value> = Vec::new();
        for message in &request.messages {
            if let Message::Tool {
                call_id,
                content,
                is_error,
                ..
            } = message
            {
                results.push(json!({
                    "type": "tool_result",
                    "tool_use_id": call_id,
                    "content": content,
                    "is_error": is_error,
                }));
                continue;
            }
            flush_results(&mut messages, &mut results);
            match message {
                Message::User { content } => {
                    messages.push(json!({"role": "user", "content": content}));
                }
                Message::Assistant { text, tool_calls } => {
                    let mut blocks = Vec::with_capacity(tool_calls.len() + 1);
                    // Anthropic refuses empty text blocks.
                    if let Some(text) = text.as_deref().filter(|text| !text.is_empty()) {
                        blocks.push(json!({"type": "text", "text": text}));
                    }
                    for call in tool_calls {
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": call.id,
                            "name": call.name,
                            "input": call.arguments,
                        }));
                    }
                    // An empty assistant turn would be refused; it carries nothing anyway.
                    if !blocks.is_empty() {
                        messages.push(json!({"role": "assistant", "content": blocks}));
                    }
                }
                Message::Tool { .. } => {}
            }
        }
        flush_results(&mut messages, &mut results);

        let mut body = Map::new();
        body.insert("model".into(), json!(request.model));
        body.insert(
            "max_tokens".into(),
            json!(request.max_tokens.unwrap_or(DEFAULT_ANTHROPIC_MAX_TOKENS)),
        );
        let system = match (&request.system, request.response_format) {
            (Some(system), ResponseFormat::Json) => {
                Some(format!("{system}\n\n{ANTHROPIC_JSON_INSTRUCTION}"))
            }
            (None, ResponseFormat::Json) => Some(ANTHROPIC_JSON_INSTRUCTION.to_owned()),
            (system, ResponseFormat::Text) => system.clone(),
        };
        if let Some(system) = system {
            body.insert("system".into(), json!(system));
        }
        body.insert("messages".into(), Value::Array(messages));
        if !request.tools.is_empty() {
            let tools = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "name": tool.name,
                        "description": tool.description,
                        "input_schema": tool.input_schema,
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        if let Some(temperature) = request.temperature {
            body.insert("temperature".into(), json!(temperature));
        }
        Value::Object(body)
    }

    fn flush_results(messages: &mut Vec<Value>, results: &mut Vec<Value>) {
        if !results.is_empty() {
            messages.push(json!({"role": "user", "content": std::mem::take(results)}));
        }
    }

    pub(super) fn parse_response(body: &Value) -> Result<ChatResponse, LlmError> {
        if body.get("type").and_then(Value::as_str) == Some("error") {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("an error without a message");
            return Err(LlmError::Malformed(truncate(&format!(
                "an error in a successful answer: {message}"
            ))));
        }
        let blocks = body
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| LlmError::Malformed("the answer has no content blocks".into()))?;
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    if let Some(part) = block.get("text").and_then(Value::as_str) {
                        text.push_str(part);
                    }
                }
                Some("tool_use") => {
                    let name = block
                        .get("name")
                        .and_then(Value::as_str)
                        .filter(|name| !name.is_empty())
                        .ok_or_else(|| LlmError::Malformed("a tool_use block has no name".into()))?
                        .to_owned();
                    let id = block
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|id| !id.is_empty())
                        .ok_or_else(|| {
                            LlmError::Malformed(format!("the call to {name} has no id"))
                        })?
                        .to_owned();
                    let input = block.get("input").cloned().unwrap_or(Value::Null);
                    let arguments = require_object(input, &name)?;
                    tool_calls.push(ToolCall {
                        id,
                        name,
                        arguments,
                    });
                }
                // Thinking and other blocks are not part of the answer.
                _ => {}
            }
        }
        let usage = body.get("usage");
        let field = |name: &str| as_u64(usage.and_then(|usage| usage.get(name)));
        // Cached prompt tokens are still prompt tokens the model read.
        let prompt = field("input_tokens")
            + field("cache_creation_input_tokens")
            + field("cache_read_input_tokens");
        let completion = field("output_tokens");
        Ok(ChatResponse {
            text: (!text.is_empty()).then_some(text),
            tool_calls,
            usage: Usage {
                prompt,
                completion,
                total: prompt + completion,
            },
            stop_reason: body
                .get("stop_reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use std::sync::{Arc, Mutex};

    /// One request the test server received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        path: String,
        headers: HeaderMap,
        body: String,
    }

    impl Seen {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).expect("the client sends JSON")
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|value| value.to_str().ok())
        }
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// A real local HTTP server answering every request with `status` and `body`.
    async fn serve(status: u16, body: &str) -> (String, Log) {
        let log: Log = Arc::default();
        let recorded = log.clone();
        let body = body.to_owned();
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, bytes: Bytes| {
                let recorded = recorded.clone();
                let body = body.clone();
                async move {
                    recorded.lock().expect("log").push(Seen {
                        method,
                        path: uri.path().to_owned(),
                        headers,
                        body: String::from_utf8_lossy(&bytes).into_owned(),
                    });
                    (
                        StatusCode::from_u16(status).expect("status"),
                        [("content-type", "application/json")],
                        body,
                    )
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), log)
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    fn openai(base: &str, key: Option<&str>) -> Provider {
        Provider::OpenAi {
            base_url: format!("{base}/v1/"),
            api_key: key.map(str::to_owned),
        }
    }

    fn anthropic(base: &str, key: &str) -> Provider {
        Provider::Anthropic {
            base_url: base.to_owned(),
            api_key: key.to_owned(),
            version: None,
        }
    }

    fn search_call() -> ToolCall {
        ToolCall {
            id: "call_1".into(),
            name: "crm_search".into(),
            arguments: json!({"query": "acme"}),
        }
    }

    fn lookup_call() -> ToolCall {
        ToolCall {
            id: "call_2".into(),
            name: "crm_get".into(),
            arguments: json!({"id": 7}),
        }
    }

    /// A second turn: the model asked for two tools, one of which failed.
    fn conversation(format: ResponseFormat) -> ChatRequest {
        ChatRequest {
            model: "test-model".into(),
            system: Some("You are a CRM assistant.".into()),
            messages: vec![
                Message::user("Find Acme"),
                Message::Assistant {
                    text: Some("Looking.".into()),
                    tool_calls: vec![search_call(), lookup_call()],
                },
                Message::tool_result(&search_call(), "[{\"id\":7}]", false),
                Message::tool_result(&lookup_call(), "not found", true),
            ],
            tools: vec![ToolSpec {
                name: "crm_search".into(),
                description: "Searches the CRM".into(),
                input_schema: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
            }],
            temperature: Some(0.2),
            max_tokens: Some(256),
            response_format: format,
        }
    }

    #[tokio::test]
    async fn openai_request_shape_and_answer() {
        let answer = json!({
            "id": "chatcmpl-1",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [
                        {"id": "call_9", "type": "function",
                         "function": {"name": "crm_search", "arguments": "{\"query\":\"beta\"}"}},
                        {"id": "call_10", "type": "function",
                         "function": {"name": "crm_list", "arguments": ""}},
                    ],
                },
                "finish_reason": "tool_calls",
            }],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        });
        let (base, log) = serve(200, &answer.to_string()).await;
        let response = chat(
            &client(),
            &openai(&base, Some("sk-test")),
            &conversation(ResponseFormat::Json),
        )
        .await
        .expect("chat");

        assert_eq!(response.text, None);
        assert_eq!(
            response.tool_calls,
            vec![
                ToolCall {
                    id: "call_9".into(),
                    name: "crm_search".into(),
                    arguments: json!({"query": "beta"}),
                },
                ToolCall {
                    id: "call_10".into(),
                    name: "crm_list".into(),
                    arguments: json!({}),
                },
            ]
        );
        assert_eq!(
            response.usage,
            Usage {
                prompt: 12,
                completion: 7,
                total: 19
            }
        );
        assert_eq!(response.stop_reason.as_deref(), Some("tool_calls"));

        let seen = log.lock().expect("log")[0].clone();
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/v1/chat/completions");
        assert_eq!(seen.header("authorization"), Some("Bearer sk-test"));
        let body = seen.json();
        assert_eq!(
            body,
            json!({
                "model": "test-model",
                "messages": [
                    {"role": "system", "content": "You are a CRM assistant."},
                    {"role": "user", "content": "Find Acme"},
                    {"role": "assistant", "content": "Looking.", "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "crm_search", "arguments": "{\"query\":\"acme\"}"}},
                        {"id": "call_2", "type": "function",
                         "function": {"name": "crm_get", "arguments": "{\"id\":7}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "[{\"id\":7}]"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "Error: not found"},
                ],
                "tools": [{"type": "function", "function": {
                    "name": "crm_search",
                    "description": "Searches the CRM",
                    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
                }}],
                "temperature": 0.2,
                "max_tokens": 256,
                "response_format": {"type": "json_object"},
            })
        );
    }

    #[tokio::test]
    async fn openai_minimal_request_and_text_answer() {
        let answer = json!({
            "choices": [{"message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        });
        let (base, log) = serve(200, &answer.to_string()).await;
        let request = ChatRequest {
            model: "llama3".into(),
            system: None,
            messages: vec![
                Message::user("Hi"),
                Message::Assistant {
                    text: None,
                    tool_calls: vec![],
                },
            ],
            tools: vec![],
            temperature: None,
            max_tokens: None,
            response_format: ResponseFormat::Text,
        };
        let response = chat(&client(), &openai(&base, None), &request)
            .await
            .expect("chat");
        assert_eq!(response.text.as_deref(), Some("Hello"));
        assert!(response.tool_calls.is_empty());
        // A missing total is the sum.
        assert_eq!(
            response.usage,
            Usage {
                prompt: 3,
                completion: 2,
                total: 5
            }
        );
        assert_eq!(response.stop_reason.as_deref(), Some("stop"));

        let seen = log.lock().expect("log")[0].clone();
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(
            seen.json(),
            json!({
                "model": "llama3",
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": null},
                ],
            })
        );
    }

    #[tokio::test]
    async fn anthropic_request_shape_and_answer() {
        let answer = json!({
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Found it."},
                {"type": "tool_use", "id": "toolu_1", "name": "crm_get", "input": {"id": 8}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 20, "output_tokens": 4},
        });
        let (base, log) = serve(200, &answer.to_string()).await;
        let response = chat(
            &client(),
            &anthropic(&base, "ak-test"),
            &conversation(ResponseFormat::Json),
        )
        .await
        .expect("chat");
        assert_eq!(response.text.as_deref(), Some("Found it."));
        assert_eq!(
            response.tool_calls,
            vec![ToolCall {
                id: "toolu_1".into(),
                name: "crm_get".into(),
                arguments: json!({"id": 8}),
            }]
        );
        assert_eq!(
            response.usage,
            Usage {
                prompt: 20,
                completion: 4,
                total: 24
            }
        );
        assert_eq!(response.stop_reason.as_deref(), Some("tool_use"));

        let seen = log.lock().expect("log")[0].clone();
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/v1/messages");
        assert_eq!(seen.header("x-api-key"), Some("ak-test"));
        assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(
            seen.json(),
            json!({
                "model": "test-model",
                "max_tokens": 256,
                "system": format!("You are a CRM assistant.\n\n{ANTHROPIC_JSON_INSTRUCTION}"),
                "messages": [
                    {"role": "user", "content": "Find Acme"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Looking."},
                        {"type": "tool_use", "id": "call_1", "name": "crm_search", "input": {"query": "acme"}},
                        {"type": "tool_use", "id": "call_2", "name": "crm_get", "input": {"id": 7}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "[{\"id\":7}]", "is_error": false},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "not found", "is_error": true},
                    ]},
                ],
                "tools": [{
                    "name": "crm_search",
                    "description": "Searches the CRM",
                    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
                }],
                "temperature": 0.2,
            })
        );
    }

    #[tokio::test]
    async fn anthropic_defaults_and_text_answer() {
        let answer = json!({
            "type": "message",
            "content": [{"type": "text", "text": "All "}, {"type": "text", "text": "done."}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 100},
        });
        let (base, log) = serve(200, &answer.to_string()).await;
        let provider = Provider::Anthropic {
            base_url: format!("{base}/"),
            api_key: "ak".into(),
            version: Some("2024-01-01".into()),
        };
        let request = ChatRequest {
            model: "claude".into(),
            system: None,
            messages: vec![Message::user("Hi")],
            tools: vec![],
            temperature: None,
            max_tokens: None,
            response_format: ResponseFormat::Text,
        };
        let response = chat(&client(), &provider, &request).await.expect("chat");
        assert_eq!(response.text.as_deref(), Some("All done."));
        assert_eq!(response.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            response.usage,
            Usage {
                prompt: 105,
                completion: 2,
                total: 107
            }
        );
        let seen = log.lock().expect("log")[0].clone();
        assert_eq!(seen.header("anthropic-version"), Some("2024-01-01"));
        assert_eq!(
            seen.json(),
            json!({
                "model": "claude",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": "Hi"}],
            })
        );
    }

    #[tokio::test]
    async fn provider_errors_carry_the_provider_message() {
        let request = conversation(ResponseFormat::Text);
        let (base, _) = serve(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-secret","type":"invalid_request_error"}}"#,
        )
        .await;
        match chat(&client(), &openai(&base, Some("sk-secret")), &request).await {
            Err(LlmError::Status { status, message }) => {
                assert_eq!(status, 401);
                assert_eq!(message, "Incorrect API key provided: [redacted]");
            }
            other => panic!("expected a status error, got {other:?}"),
        }

        let (base, _) = serve(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .await;
        match chat(&client(), &anthropic(&base, "ak"), &request).await {
            Err(LlmError::Status { status, message }) => {
                assert_eq!(status, 529);
                assert_eq!(message, "Overloaded");
            }
            other => panic!("expected a status error, got {other:?}"),
        }

        // Not JSON: the raw text, truncated.
        let long = "x".repeat(1000);
        let (base, _) = serve(502, &format!("Bad gateway {long}")).await;
        match chat(&client(), &openai(&base, None), &request).await {
            Err(LlmError::Status { status, message }) => {
                assert_eq!(status, 502);
                assert!(message.starts_with("Bad gateway xxx"), "{message}");
                assert!(message.chars().count() <= MAX_ERROR_CHARS + 1, "{message}");
            }
            other => panic!("expected a status error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unreachable_provider() {
        // Bind then drop a listener: the port is (almost certainly) closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let result = chat(
            &client(),
            &openai(&format!("http://{addr}"), Some("sk-secret")),
            &conversation(ResponseFormat::Text),
        )
        .await;
        match result {
            Err(LlmError::Unreachable(message)) => assert!(!message.contains("sk-secret")),
            other => panic!("expected unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn malformed_answers() {
        let request = conversation(ResponseFormat::Text);
        let malformed = async |flavor: &str, body: &str| {
            let (base, _) = serve(200, body).await;
            let provider = if flavor == "openai" {
                openai(&base, Some("sk"))
            } else {
                anthropic(&base, "ak")
            };
            match chat(&client(), &provider, &request).await {
                Err(LlmError::Malformed(message)) => message,
                other => panic!("expected malformed for {body}, got {other:?}"),
            }
        };
        malformed("openai", "<html>oops</html>").await;
        malformed("openai", r#"{"choices":[]}"#).await;
        let message = malformed(
            "openai",
            r#"{"choices":[{"message":{"content":null,"tool_calls":[
                {"id":"c","type":"function","function":{"name":"crm_search","arguments":"{not json"}}
            ]}}]}"#,
        )
        .await;
        assert!(message.contains("crm_search"), "{message}");
        malformed(
            "openai",
            r#"{"choices":[{"message":{"content":null,"tool_calls":[
                {"id":"c","type":"function","function":{"name":"crm_search","arguments":"[1,2]"}}
            ]}}]}"#,
        )
        .await;
        malformed("anthropic", "not json").await;
        malformed("anthropic", r#"{"type":"message"}"#).await;
        malformed(
            "anthropic",
            r#"{"content":[{"type":"tool_use","id":"t","name":"crm_get","input":"id=7"}]}"#,
        )
        .await;
    }

    #[tokio::test]
    async fn probe_lists_models() {
        let (base, log) = serve(
            200,
            r#"{"object":"list","data":[{"id":"a"},{"id":"b"},{"id":"c"}]}"#,
        )
        .await;
        let answer = probe(&client(), &openai(&base, Some("sk")))
            .await
            .expect("probe");
        assert_eq!(answer, "3 models available");
        let seen = log.lock().expect("log")[0].clone();
        assert_eq!(seen.method, Method::GET);
        assert_eq!(seen.path, "/v1/models");
        assert_eq!(seen.header("authorization"), Some("Bearer sk"));

        let (base, log) = serve(200, r#"{"data":[{"id":"claude"}],"has_more":false}"#).await;
        let answer = probe(&client(), &anthropic(&base, "ak"))
            .await
            .expect("probe");
        assert_eq!(answer, "1 model available");
        let seen = log.lock().expect("log")[0].clone();
        assert_eq!(seen.path, "/v1/models");
        assert_eq!(seen.header("x-api-key"), Some("ak"));

        let (base, _) = serve(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        )
        .await;
        match probe(&client(), &anthropic(&base, "wrong")).await {
            Err(LlmError::Status {
                status: 401,
                message,
            }) => assert_eq!(message, "invalid x-api-key"),
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn transcript_serde_is_stable() {
        let messages = vec![
            Message::user("hi"),
            Message::Assistant {
                text: None,
                tool_calls: vec![search_call()],
            },
            Message::tool_result(&search_call(), "ok", false),
        ];
        let encoded = serde_json::to_value(&messages).expect("encode");
        assert_eq!(
            encoded,
            json!([
                {"role": "user", "content": "hi"},
                {"role": "assistant", "text": null, "tool_calls": [
                    {"id": "call_1", "name": "crm_search", "arguments": {"query": "acme"}}
                ]},
                {"role": "tool", "call_id": "call_1", "name": "crm_search", "content": "ok", "is_error": false},
            ])
        );
        let decoded: Vec<Message> = serde_json::from_value(encoded).expect("decode");
        assert_eq!(decoded, messages);
    }
}
