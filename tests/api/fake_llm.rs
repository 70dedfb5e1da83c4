#![allow(dead_code)]
//! A fake LLM provider for tests.
//!
//! A real HTTP server on 127.0.0.1 that answers the chat and model-listing endpoints in
//! the OpenAI or Anthropic wire format from a script, so agent runs can be tested end to
//! end (including timeouts, provider errors and malformed answers) without a model.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// Prompt tokens reported for every answer (tests assert sums of these).
pub const PROMPT_TOKENS: u64 = 10;
/// Completion tokens reported for every answer.
pub const COMPLETION_TOKENS: u64 = 5;

/// Which wire format the fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Anthropic,
}

/// One scripted answer of the fake model.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The model asks for these tool calls: (tool name, arguments object).
    Tools(Vec<(String, Value)>),
    /// The model answers with text and stops.
    Text(String),
    /// Wait this long before answering with the next reply of the script (to trip timeouts).
    /// The reply answered after the wait is the boxed one; the request is recorded on arrival.
    Slow(Duration, Box<Reply>),
    /// A 200 response with this raw body (malformed provider output).
    Raw(String),
    /// An error status with a body in the flavor's error format.
    Error(u16, String),
}

impl Reply {
    /// Shorthand for a single tool call.
    pub fn tool(name: &str, arguments: Value) -> Reply {
        Reply::Tools(vec![(name.to_owned(), arguments)])
    }

    /// Shorthand for a text answer.
    pub fn text(text: &str) -> Reply {
        Reply::Text(text.to_owned())
    }
}

/// A running fake provider; the server stops when this is dropped.
pub struct FakeLlm {
    /// What to put in a connection's config: for OpenAi ends with /v1, for Anthropic no path.
    pub base_url: String,
    pub flavor: Flavor,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

struct State {
    flavor: Flavor,
    script: Vec<Reply>,
    key: Option<String>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Index of the next reply in the script.
    next: usize,
    /// Ids handed out so far, to keep tool-call and message ids unique.
    ids: u64,
    requests: Vec<Value>,
    credentials: Vec<String>,
    traceparents: Vec<String>,
}

impl FakeLlm {
    /// Starts on 127.0.0.1:0 in the current tokio runtime (tokio::spawn). Replies are served in order; once the script is exhausted the LAST reply repeats forever.
    pub async fn start(flavor: Flavor, script: Vec<Reply>) -> FakeLlm {
        Self::launch(flavor, script, None).await
    }

    /// Like [`FakeLlm::start`], but every request (chat and model listing) must carry `key`
    /// (`Authorization: Bearer key` for OpenAi, `x-api-key: key` for Anthropic) or gets a 401.
    pub async fn start_with_key(flavor: Flavor, script: Vec<Reply>, key: &str) -> FakeLlm {
        Self::launch(flavor, script, Some(key.to_owned())).await
    }

    async fn launch(flavor: Flavor, script: Vec<Reply>, key: Option<String>) -> FakeLlm {
        let state = Arc::new(State {
            flavor,
            script,
            key,
            inner: Mutex::default(),
        });
        let chat_path = match flavor {
            Flavor::OpenAi => "/v1/chat/completions",
            Flavor::Anthropic => "/v1/messages",
        };
        let app = Router::new()
            .route(chat_path, post(chat))
            .route("/v1/models", get(models))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake LLM");
        let addr = listener.local_addr().expect("fake LLM address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let base_url = match flavor {
            Flavor::OpenAi => format!("http://{addr}/v1"),
            Flavor::Anthropic => format!("http://{addr}"),
        };
        FakeLlm {
            base_url,
            flavor,
            state,
            server,
        }
    }

    /// The JSON bodies of every chat request received so far, in order (including any
    /// refused for a wrong key; those do not advance the script).
    pub fn requests(&self) -> Vec<Value> {
        self.state.lock().requests.clone()
    }

    /// The `traceparent` header of each chat request that carried one, in order.
    pub fn traceparents(&self) -> Vec<String> {
        self.state.lock().traceparents.clone()
    }

    /// Header values of `authorization` (OpenAI) or `x-api-key` (Anthropic) received, in order.
    /// Every request counts (chat and model listing); requests without the header add nothing.
    pub fn credentials(&self) -> Vec<String> {
        self.state.lock().credentials.clone()
    }

    /// How many scripted replies have been served.
    pub fn served(&self) -> usize {
        self.state.lock().next
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the recorded requests from the others.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the credential header; returns the refusal when the request may not proceed.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let header = match self.flavor {
            Flavor::OpenAi => "authorization",
            Flavor::Anthropic => "x-api-key",
        };
        let given = headers
            .get(header)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        if let Some(given) = &given {
            self.lock().credentials.push(given.clone());
        }
        if self.flavor == Flavor::Anthropic && !headers.contains_key("anthropic-version") {
            return Some(error_response(
                self.flavor,
                400,
                "anthropic-version: header is required",
            ));
        }
        let key = self.key.as_ref()?;
        let expected = match self.flavor {
            Flavor::OpenAi => format!("Bearer {key}"),
            Flavor::Anthropic => key.clone(),
        };
        if given.as_deref() == Some(expected.as_str()) {
            None
        } else {
            let message = match self.flavor {
                Flavor::OpenAi => "Incorrect API key provided.",
                Flavor::Anthropic => "invalid x-api-key",
            };
            Some(error_response(self.flavor, 401, message))
        }
    }

    /// The next scripted reply (the last one once the script is exhausted).
    fn next_reply(&self) -> Reply {
        let mut inner = self.lock();
        let Some(last) = self.script.len().checked_sub(1) else {
            return Reply::Error(500, "the fake LLM has no script".into());
        };
        let reply = self.script[inner.next.min(last)].clone();
        inner.next += 1;
        reply
    }

    fn next_id(&self) -> u64 {
        let mut inner = self.lock();
        inner.ids += 1;
        inner.ids
    }
}

async fn chat(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => {
            return error_response(state.flavor, 400, &format!("the body is not JSON: {err}"));
        }
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake")
        .to_owned();
    let missing_max_tokens = body.get("max_tokens").is_none();
    {
        let mut inner = state.lock();
        inner.requests.push(body);
        if let Some(value) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
            inner.traceparents.push(value.to_owned());
        }
    }
    if let Some(refused) = state.refusal(&headers) {
        return refused;
    }
    if state.flavor == Flavor::Anthropic && missing_max_tokens {
        return error_response(state.flavor, 400, "max_tokens: Field required");
    }
    let mut reply = state.next_reply();
    while let Reply::Slow(delay, then) = reply {
        tokio::time::sleep(delay).await;
        reply = *then;
    }
    answer(&state, &model, reply)
}

fn answer(state: &State, model: &str, reply: Reply) -> Response {
    let flavor = state.flavor;
    let body = match reply {
        Reply::Raw(raw) => {
            return (StatusCode::OK, [("content-type", "application/json")], raw).into_response();
        }
        Reply::Error(status, message) => return error_response(flavor, status, &message),
        Reply::Slow(..) => unreachable!("slow replies are unwrapped before answering"),
        Reply::Text(text) => match flavor {
            Flavor::OpenAi => openai_completion(
                state.next_id(),
                model,
                json!({"role": "assistant", "content": text}),
                "stop",
            ),
            Flavor::Anthropic => anthropic_message(
                state.next_id(),
                model,
                vec![json!({"type": "text", "text": text})],
                "end_turn",
            ),
        },
        Reply::Tools(calls) => match flavor {
            Flavor::OpenAi => {
                let calls: Vec<Value> = calls
                    .into_iter()
                    .map(|(name, arguments)| {
                        json!({
                            "id": format!("call_{}", state.next_id()),
                            "type": "function",
                            "function": {"name": name, "arguments": arguments.to_string()},
                        })
                    })
                    .collect();
                openai_completion(
                    state.next_id(),
                    model,
                    json!({"role": "assistant", "content": null, "tool_calls": calls}),
                    "tool_calls",
                )
            }
            Flavor::Anthropic => {
                let blocks = calls
                    .into_iter()
                    .map(|(name, input)| {
                        json!({
                            "type": "tool_use",
                            "id": format!("toolu_{}", state.next_id()),
                            "name": name,
                            "input": input,
                        })
                    })
                    .collect();
                anthropic_message(state.next_id(), model, blocks, "tool_use")
            }
        },
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn openai_completion(id: u64, model: &str, message: Value, finish_reason: &str) -> Value {
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        },
    })
}

fn anthropic_message(id: u64, model: &str, content: Vec<Value>, stop_reason: &str) -> Value {
    json!({
        "id": format!("msg_{id}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS},
    })
}

async fn models(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = state.refusal(&headers) {
        return refused;
    }
    let body = match state.flavor {
        Flavor::OpenAi => json!({
            "object": "list",
            "data": [
                {"id": "fake-small", "object": "model", "created": 1_700_000_000, "owned_by": "fake"},
                {"id": "fake-large", "object": "model", "created": 1_700_000_000, "owned_by": "fake"},
            ],
        }),
        Flavor::Anthropic => json!({
            "data": [
                {"type": "model", "id": "claude-fake-small", "display_name": "Fake Small",
                 "created_at": "2025-01-01T00:00:00Z"},
                {"type": "model", "id": "claude-fake-large", "display_name": "Fake Large",
                 "created_at": "2025-01-01T00:00:00Z"},
            ],
            "has_more": false,
            "first_id": "claude-fake-small",
            "last_id": "claude-fake-large",
        }),
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// An error in the flavor's real error format.
fn error_response(flavor: Flavor, status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match flavor {
        Flavor::OpenAi => json!({
            "error": {
                "message": message,
                "type": if status.is_server_error() { "server_error" } else { "invalid_request_error" },
                "param": null,
                "code": if status == StatusCode::UNAUTHORIZED { json!("invalid_api_key") } else { Value::Null },
            },
        }),
        Flavor::Anthropic => json!({
            "type": "error",
            "error": {
                "type": match status.as_u16() {
                    400 => "invalid_request_error",
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    413 => "request_too_large",
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    _ => "api_error",
                },
                "message": message,
            },
        }),
    };
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcrm::connections::llm::{
        self, ChatRequest, LlmError, Message, Provider, ResponseFormat, ToolSpec, Usage,
    };

    fn provider(fake: &FakeLlm, key: &str) -> Provider {
        match fake.flavor {
            Flavor::OpenAi => Provider::OpenAi {
                base_url: fake.base_url.clone(),
                api_key: Some(key.to_owned()),
            },
            Flavor::Anthropic => Provider::Anthropic {
                base_url: fake.base_url.clone(),
                api_key: key.to_owned(),
                version: None,
            },
        }
    }

    fn http() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    /// A tool call, then a text answer: the client and the fake agree on both formats.
    async fn two_turns(flavor: Flavor) {
        let fake = FakeLlm::start_with_key(
            flavor,
            vec![
                Reply::tool("crm_search", json!({"query": "acme"})),
                Reply::text("Acme is customer 7."),
            ],
            "sk-fake",
        )
        .await;
        let http = http();
        let provider = provider(&fake, "sk-fake");
        let mut request = ChatRequest {
            model: "fake-model".into(),
            system: Some("You are a CRM assistant.".into()),
            messages: vec![Message::user("Who is Acme?")],
            tools: vec![ToolSpec {
                name: "crm_search".into(),
                description: "Searches the CRM".into(),
                input_schema: json!({"type": "object"}),
            }],
            temperature: None,
            max_tokens: None,
            response_format: ResponseFormat::Text,
        };

        let first = llm::chat(&http, &provider, &request).await.expect("turn 1");
        assert_eq!(first.text, None);
        assert_eq!(first.tool_calls.len(), 1);
        let call = first.tool_calls[0].clone();
        assert_eq!(call.name, "crm_search");
        assert_eq!(call.arguments, json!({"query": "acme"}));
        let expected_stop = match flavor {
            Flavor::OpenAi => "tool_calls",
            Flavor::Anthropic => "tool_use",
        };
        assert_eq!(first.stop_reason.as_deref(), Some(expected_stop));

        request.messages.push(first.to_message());
        request
            .messages
            .push(Message::tool_result(&call, "[{\"id\":7}]", false));
        let second = llm::chat(&http, &provider, &request).await.expect("turn 2");
        assert_eq!(second.text.as_deref(), Some("Acme is customer 7."));
        assert!(second.tool_calls.is_empty());
        let mut usage = first.usage;
        usage += second.usage;
        assert_eq!(
            usage,
            Usage {
                prompt: 2 * PROMPT_TOKENS,
                completion: 2 * COMPLETION_TOKENS,
                total: 2 * (PROMPT_TOKENS + COMPLETION_TOKENS),
            }
        );

        // The second request carried the tool result in the flavor's own shape.
        let requests = fake.requests();
        assert_eq!(requests.len(), 2);
        let last = requests[1]["messages"]
            .as_array()
            .and_then(|messages| messages.last())
            .cloned()
            .expect("messages");
        match flavor {
            Flavor::OpenAi => assert_eq!(
                last,
                json!({"role": "tool", "tool_call_id": call.id, "content": "[{\"id\":7}]"})
            ),
            Flavor::Anthropic => assert_eq!(
                last,
                json!({"role": "user", "content": [{
                    "type": "tool_result", "tool_use_id": call.id,
                    "content": "[{\"id\":7}]", "is_error": false,
                }]})
            ),
        }
        let expected_credential = match flavor {
            Flavor::OpenAi => "Bearer sk-fake",
            Flavor::Anthropic => "sk-fake",
        };
        assert_eq!(fake.credentials(), vec![expected_credential; 2]);

        // The script is exhausted: the last reply repeats.
        let third = llm::chat(&http, &provider, &request).await.expect("turn 3");
        assert_eq!(third.text.as_deref(), Some("Acme is customer 7."));

        // The models listing answers the right key and refuses a wrong one.
        assert_eq!(
            llm::probe(&http, &provider).await.expect("probe"),
            "2 models available"
        );
        let wrong = self::provider(&fake, "sk-wrong");
        match llm::probe(&http, &wrong).await {
            Err(LlmError::Status { status: 401, .. }) => {}
            other => panic!("expected a 401, got {other:?}"),
        }
        match llm::chat(&http, &wrong, &request).await {
            Err(LlmError::Status { status: 401, .. }) => {}
            other => panic!("expected a 401, got {other:?}"),
        }
        assert_eq!(fake.served(), 3);
    }

    #[tokio::test]
    async fn openai_client_and_fake_agree() {
        two_turns(Flavor::OpenAi).await;
    }

    #[tokio::test]
    async fn anthropic_client_and_fake_agree() {
        two_turns(Flavor::Anthropic).await;
    }

    #[tokio::test]
    async fn scripted_errors_slowness_and_raw_bodies() {
        for flavor in [Flavor::OpenAi, Flavor::Anthropic] {
            let fake = FakeLlm::start(
                flavor,
                vec![
                    Reply::Error(429, "slow down".into()),
                    Reply::Raw("not json".into()),
                    Reply::Slow(Duration::from_secs(2), Box::new(Reply::text("late"))),
                ],
            )
            .await;
            let http = http();
            let provider = provider(&fake, "sk");
            let request = ChatRequest {
                model: "fake-model".into(),
                system: None,
                messages: vec![Message::user("hi")],
                tools: vec![],
                temperature: None,
                max_tokens: None,
                response_format: ResponseFormat::Text,
            };
            match llm::chat(&http, &provider, &request).await {
                Err(LlmError::Status { status, message }) => {
                    assert_eq!((status, message.as_str()), (429, "slow down"));
                }
                other => panic!("expected a 429, got {other:?}"),
            }
            assert!(matches!(
                llm::chat(&http, &provider, &request).await,
                Err(LlmError::Malformed(_))
            ));
            let impatient = reqwest::Client::builder()
                .timeout(Duration::from_millis(200))
                .build()
                .expect("client");
            assert!(matches!(
                llm::chat(&impatient, &provider, &request).await,
                Err(LlmError::Unreachable(_))
            ));
        }
    }
}
