//! A client for remote MCP servers over streamable HTTP.
//!
//! A remote server's tools join the catalog (`list_tools`) and are called on behalf of this
//! server's callers (`call_tool`). Each operation opens a session of its own, does its work
//! and closes the session (HTTP DELETE): imported servers are called rarely and from any
//! worker, so a long-lived session would only go stale between uses.
//!
//! The HTTP client is the caller's: on shared deployments it refuses private addresses, so
//! rmcp's transport must not build one of its own. The bearer token is a secret of the
//! connection: it reaches the remote server's `Authorization` header and nothing else (no
//! error message, `Debug` output or log line).

use std::collections::HashSet;
use std::error::Error as StdError;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ErrorData,
    Implementation, PaginatedRequestParams, ProtocolVersion, Tool,
};
use rmcp::service::{
    ClientInitializeError, ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, InsufficientScopeError, StreamableHttpClientTransportConfig,
    StreamableHttpError,
};
use rmcp::{ServiceError, transport::DynamicTransportError};
use serde_json::{Map, Value};
use tokio::time::{Instant, timeout_at};

/// At most this many tools are imported from one server: the catalog is shown to models,
/// and a server listing more is either broken or not meant to be imported whole.
pub const MAX_TOOLS: usize = 1000;

/// A remote MCP endpoint and the credential it expects.
#[derive(Clone)]
pub struct RemoteServer {
    /// The remote MCP endpoint, e.g. `http://127.0.0.1:PORT/mcp`.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
}

impl RemoteServer {
    pub fn new(url: impl Into<String>, bearer_token: Option<String>) -> RemoteServer {
        RemoteServer {
            url: url.into(),
            bearer_token,
        }
    }
}

/// By hand, so the token can never reach a log line through `{:?}`.
impl std::fmt::Debug for RemoteServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteServer")
            .field("url", &self.url)
            .field("bearer_token_set", &self.bearer_token.is_some())
            .finish()
    }
}

/// A tool as a remote server lists it, flattened to what the catalog needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RemoteTool {
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    /// A JSON object schema.
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    /// `annotations.readOnlyHint`.
    pub read_only: Option<bool>,
    /// `annotations.destructiveHint`.
    pub destructive: Option<bool>,
    /// `annotations.idempotentHint`.
    pub idempotent: Option<bool>,
    /// `annotations.openWorldHint`.
    pub open_world: Option<bool>,
}

impl From<Tool> for RemoteTool {
    fn from(tool: Tool) -> RemoteTool {
        let annotations = tool.annotations.unwrap_or_default();
        RemoteTool {
            name: tool.name.into_owned(),
            // The top-level title wins; older servers only had the annotation's.
            title: tool.title.or(annotations.title),
            description: tool.description.map(|d| d.into_owned()),
            input_schema: Value::Object(tool.input_schema.as_ref().clone()),
            output_schema: tool
                .output_schema
                .map(|s| Value::Object(s.as_ref().clone())),
            read_only: annotations.read_only_hint,
            destructive: annotations.destructive_hint,
            idempotent: annotations.idempotent_hint,
            open_world: annotations.open_world_hint,
        }
    }
}

/// The outcome of one remote tool call. A tool that ran and failed (`isError: true`) is an
/// outcome, not an error: its text is meant for the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteCall {
    pub is_error: bool,
    /// `structuredContent`.
    pub structured: Option<Value>,
    /// The text contents joined with `"\n"`.
    pub text: String,
}

impl From<CallToolResult> for RemoteCall {
    fn from(result: CallToolResult) -> RemoteCall {
        let text = result
            .content
            .iter()
            .filter_map(|c| c.as_text())
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        RemoteCall {
            is_error: result.is_error == Some(true),
            structured: result.structured_content,
            text,
        }
    }
}

/// Why a remote server could not be used. Messages never contain the bearer token.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("the remote MCP server could not be reached: {0}")]
    Unreachable(String),
    #[error("the remote MCP server refused the credentials (HTTP 401/403)")]
    Unauthorized,
    #[error("the remote MCP server answered with an error: {0}")]
    Protocol(String),
    #[error("the remote MCP server took longer than {0} s")]
    Timeout(u64),
}

/// Every tool the server lists (follows pagination, at most [`MAX_TOOLS`] tools).
pub async fn list_tools(
    http: reqwest::Client,
    server: &RemoteServer,
    timeout: Duration,
) -> Result<Vec<RemoteTool>, RemoteError> {
    let deadline = Instant::now() + timeout;
    let outcome = async {
        let session = open(http, server, deadline, timeout).await?;
        let listed = timeout_at(deadline, list_all(&session, timeout)).await;
        close(session, deadline).await;
        listed.map_err(|_| RemoteError::Timeout(seconds(timeout)))?
    }
    .await;
    finish(outcome, server, "tools/list")
}

/// One call of `name` with `arguments`.
pub async fn call_tool(
    http: reqwest::Client,
    server: &RemoteServer,
    name: &str,
    arguments: Map<String, Value>,
    timeout: Duration,
) -> Result<RemoteCall, RemoteError> {
    let deadline = Instant::now() + timeout;
    let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
    let outcome = async {
        let session = open(http, server, deadline, timeout).await?;
        let called = timeout_at(deadline, session.call_tool(params)).await;
        close(session, deadline).await;
        match called {
            Err(_) => Err(RemoteError::Timeout(seconds(timeout))),
            Ok(Err(error)) => Err(from_service(&error, timeout)),
            Ok(Ok(result)) => Ok(RemoteCall::from(result)),
        }
    }
    .await;
    finish(outcome, server, "tools/call")
}

type Session = RunningService<RoleClient, ClientConfig>;

/// Connects and runs the `initialize` handshake before `deadline`.
async fn open(
    http: reqwest::Client,
    server: &RemoteServer,
    deadline: Instant,
    timeout: Duration,
) -> Result<Session, RemoteError> {
    // No body text of failed HTTP responses: rmcp would keep it in the error and log it at
    // ERROR, and a server may echo the credential there (or address the model reading the
    // message). The status stays; JSON-RPC errors are read under their own limit.
    let mut config = StreamableHttpClientTransportConfig::with_uri(server.url.as_str())
        .max_error_response_size(0);
    if let Some(token) = &server.bearer_token {
        // rmcp adds the `Bearer ` prefix (reqwest's `bearer_auth`, marked sensitive).
        config = config.auth_header(token.clone());
    }
    let transport = StreamableHttpClientTransport::with_client(http, config);
    // Sessions (`initialize`) are what deployed servers speak; rmcp's newest protocol
    // generation has no handshake, so name the newest one that does.
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE);
    let handshake = client.serve_with_lifecycle(transport, ClientLifecycleMode::Initialize);
    match timeout_at(deadline, handshake).await {
        Err(_) => Err(RemoteError::Timeout(seconds(timeout))),
        Ok(Err(error)) => Err(from_initialize(&error, timeout)),
        Ok(Ok(session)) => Ok(session),
    }
}

/// Ends the session: rmcp's worker sends the DELETE as it stops. The close runs in a task
/// of its own, so a server slow to answer the DELETE costs the caller at most the time left
/// before `deadline`, and the session is still closed after that.
async fn close(session: Session, deadline: Instant) {
    let closing = tokio::spawn(async move { session.cancel().await });
    if timeout_at(deadline, closing).await.is_err() {
        tracing::debug!("remote MCP session still closing at the deadline; left to finish");
    }
}

/// Follows `nextCursor` until the last page, [`MAX_TOOLS`] tools, or a cursor seen before
/// (a server looping on its pages would otherwise hold the caller until the deadline).
async fn list_all(session: &Session, timeout: Duration) -> Result<Vec<RemoteTool>, RemoteError> {
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    let mut seen = HashSet::new();
    loop {
        let params = cursor
            .take()
            .map(|c| PaginatedRequestParams::default().with_cursor(Some(c)));
        let page = session
            .list_tools(params)
            .await
            .map_err(|e| from_service(&e, timeout))?;
        tools.extend(page.tools.into_iter().map(RemoteTool::from));
        if tools.len() >= MAX_TOOLS {
            tools.truncate(MAX_TOOLS);
            tracing::warn!(
                max = MAX_TOOLS,
                "remote MCP server lists more tools than are imported; the rest are ignored"
            );
            return Ok(tools);
        }
        match page.next_cursor {
            None => return Ok(tools),
            Some(next) if !seen.insert(next.clone()) => {
                return Err(RemoteError::Protocol(
                    "tools/list returned a pagination cursor it had returned before".into(),
                ));
            }
            Some(next) => cursor = Some(next),
        }
    }
}

/// Removes the token from any message (a server may echo it, e.g. in a JSON-RPC error),
/// and logs the failure without it.
fn finish<T>(
    outcome: Result<T, RemoteError>,
    server: &RemoteServer,
    operation: &'static str,
) -> Result<T, RemoteError> {
    outcome.map_err(|error| {
        let error = redact(error, server.bearer_token.as_deref());
        tracing::debug!(url = %server.url, operation, %error, "remote MCP server failed");
        error
    })
}

fn redact(error: RemoteError, token: Option<&str>) -> RemoteError {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return error;
    };
    let clean = |message: String| message.replace(token, "[redacted]");
    match error {
        RemoteError::Unreachable(m) => RemoteError::Unreachable(clean(m)),
        RemoteError::Protocol(m) => RemoteError::Protocol(clean(m)),
        other => other,
    }
}

/// Whole seconds for [`RemoteError::Timeout`], rounded up so a sub-second limit is not
/// reported as "0 s".
fn seconds(timeout: Duration) -> u64 {
    timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)
}

type HttpError = StreamableHttpError<reqwest::Error>;

fn from_initialize(error: &ClientInitializeError, timeout: Duration) -> RemoteError {
    match error {
        ClientInitializeError::TransportError { error, .. } => from_transport(error, timeout),
        ClientInitializeError::JsonRpcError(error) => RemoteError::Protocol(jsonrpc(error)),
        ClientInitializeError::LegacyFallbackFailed { fallback, .. } => {
            from_initialize(fallback, timeout)
        }
        ClientInitializeError::ConnectionClosed(_) | ClientInitializeError::Cancelled => {
            RemoteError::Unreachable(error.to_string())
        }
        other => RemoteError::Protocol(other.to_string()),
    }
}

fn from_service(error: &ServiceError, timeout: Duration) -> RemoteError {
    match error {
        ServiceError::McpError(error) => RemoteError::Protocol(jsonrpc(error)),
        ServiceError::TransportSend(error) => from_transport(error, timeout),
        ServiceError::Timeout { .. } => RemoteError::Timeout(seconds(timeout)),
        ServiceError::TransportClosed | ServiceError::Cancelled { .. } => {
            RemoteError::Unreachable(error.to_string())
        }
        other => RemoteError::Protocol(other.to_string()),
    }
}

fn jsonrpc(error: &ErrorData) -> String {
    format!("{} (JSON-RPC error {})", error.message, error.code.0)
}

/// Finds the transport's own error under rmcp's type-erased wrapper.
fn from_transport(error: &DynamicTransportError, timeout: Duration) -> RemoteError {
    let root: &(dyn StdError + 'static) = error.error.as_ref();
    let mut current = Some(root);
    while let Some(error) = current {
        if let Some(error) = error.downcast_ref::<HttpError>() {
            return from_http(error, timeout);
        }
        if let Some(error) = error.downcast_ref::<reqwest::Error>() {
            return from_reqwest(error, timeout);
        }
        if error.is::<AuthRequiredError>() || error.is::<InsufficientScopeError>() {
            return RemoteError::Unauthorized;
        }
        current = error.source();
    }
    RemoteError::Unreachable(chain(root))
}

fn from_http(error: &HttpError, timeout: Duration) -> RemoteError {
    match error {
        StreamableHttpError::Client(error) => from_reqwest(error, timeout),
        // A 401/403 carrying a `WWW-Authenticate` challenge.
        StreamableHttpError::AuthRequired(_) | StreamableHttpError::InsufficientScope(_) => {
            RemoteError::Unauthorized
        }
        // rmcp reports a 401/403 without a challenge only in this message's text
        // ("HTTP 401 Unauthorized: <body>"); rmcp is pinned, so the format is too.
        StreamableHttpError::UnexpectedServerResponse(message)
            if message.starts_with("HTTP 401") || message.starts_with("HTTP 403") =>
        {
            RemoteError::Unauthorized
        }
        StreamableHttpError::HttpStatus(status) if matches!(status.status, 401 | 403) => {
            RemoteError::Unauthorized
        }
        StreamableHttpError::Io(_)
        | StreamableHttpError::Sse(_)
        | StreamableHttpError::UnexpectedEndOfStream
        | StreamableHttpError::TransportChannelClosed
        | StreamableHttpError::TokioJoinError(_) => RemoteError::Unreachable(chain(error)),
        other => RemoteError::Protocol(chain(other)),
    }
}

fn from_reqwest(error: &reqwest::Error, timeout: Duration) -> RemoteError {
    match error.status() {
        Some(status) if matches!(status.as_u16(), 401 | 403) => RemoteError::Unauthorized,
        Some(_) => RemoteError::Protocol(chain(error)),
        // A connect timeout means the server was not reached at all.
        None if error.is_timeout() && !error.is_connect() => RemoteError::Timeout(seconds(timeout)),
        None => RemoteError::Unreachable(chain(error)),
    }
}

/// An error and its causes on one line ("error sending request: ... : Connection refused"),
/// skipping causes whose text the previous message already includes.
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut message = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        current = cause.source();
    }
    message
}
