#![allow(dead_code)]
//! A fake remote MCP server for tests: a real rmcp server over streamable HTTP (axum, on
//! 127.0.0.1:0 in the test's runtime), with three tools, an optional bearer token, and a
//! record of what it was asked. The tests below use it to exercise
//! `agentcrm::connections::remote`, the client that imports remote servers' tools.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use agentcrm::connections::remote::{RemoteError, RemoteServer, call_tool, list_tools};

/// Tools per `tools/list` page: fewer than there are, so clients must follow the cursor.
const PAGE_SIZE: usize = 2;

/// A running fake remote MCP server, stopped on drop.
pub struct FakeMcp {
    /// The MCP endpoint, ending with `/mcp`.
    pub url: String,
    seen: Arc<Seen>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What the fake was sent, in order.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<(String, Value)>>,
    authorizations: Mutex<Vec<String>>,
    methods: Mutex<Vec<String>>,
    tickets: AtomicU64,
}

impl FakeMcp {
    /// `token`: when Some, every request without `Authorization: Bearer <token>` gets 401
    /// (with a `WWW-Authenticate` challenge, as OAuth-protected servers answer).
    pub async fn start(token: Option<&str>) -> FakeMcp {
        FakeMcp::start_with(token, StatusCode::UNAUTHORIZED, true).await
    }

    /// The same, refusing with `status` (401 or 403); `challenge: false` leaves out
    /// `WWW-Authenticate`, as servers with plain API keys often do.
    pub async fn start_with(token: Option<&str>, status: StatusCode, challenge: bool) -> FakeMcp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake MCP server");
        let address = listener.local_addr().expect("the fake's address");
        let seen = Arc::new(Seen::default());
        let shutdown = CancellationToken::new();
        let handler = Fake { seen: seen.clone() };
        let config = StreamableHttpServerConfig::default()
            // Ends open SSE streams, so shutdown does not wait on them.
            .with_cancellation_token(shutdown.child_token());
        let service = StreamableHttpService::new(
            move || Ok(handler.clone()),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        let gate = Gate {
            token: token.map(str::to_owned),
            status,
            challenge,
            seen: seen.clone(),
        };
        let router = axum::Router::new()
            .nest("/mcp", axum::Router::new().fallback_service(service))
            .layer(middleware::from_fn_with_state(gate, check));
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        FakeMcp {
            url: format!("http://{address}/mcp"),
            seen,
            shutdown,
            task,
        }
    }

    /// Every tools/call received: (tool name, arguments), in order.
    pub fn calls(&self) -> Vec<(String, Value)> {
        self.seen.calls.lock().unwrap().clone()
    }

    /// The Authorization header values seen on requests (to assert the token reached it).
    pub fn authorizations(&self) -> Vec<String> {
        self.seen.authorizations.lock().unwrap().clone()
    }

    /// The HTTP methods of every request, in order (a closed session ends with DELETE).
    pub fn http_methods(&self) -> Vec<String> {
        self.seen.methods.lock().unwrap().clone()
    }
}

impl Drop for FakeMcp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

#[derive(Clone)]
struct Gate {
    token: Option<String>,
    status: StatusCode,
    challenge: bool,
    seen: Arc<Seen>,
}

/// Records each request, and refuses those without the expected bearer token.
async fn check(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    gate.seen
        .methods
        .lock()
        .unwrap()
        .push(request.method().to_string());
    if let Some(value) = &authorization {
        gate.seen.authorizations.lock().unwrap().push(value.clone());
    }
    if let Some(token) = &gate.token
        && authorization.as_deref() != Some(format!("Bearer {token}").as_str())
    {
        let body = json!({ "error": "invalid_token", "error_description": "bad credentials" });
        let mut response = (gate.status, Json(body)).into_response();
        if gate.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fake-mcp\", error=\"invalid_token\""),
            );
        }
        return response;
    }
    next.run(request).await
}

/// The rmcp handler: one per session, sharing the record.
#[derive(Clone)]
struct Fake {
    seen: Arc<Seen>,
}

fn object(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        other => panic!("a schema is an object, not {other}"),
    }
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "lookup_weather",
            "The weather forecast for a city.",
            object(json!({
                "type": "object",
                "properties": { "city": { "type": "string", "description": "City name" } },
                "required": ["city"],
            })),
        )
        .with_title("Look up the weather")
        .with_raw_output_schema(Arc::new(object(json!({
            "type": "object",
            "properties": {
                "city": { "type": "string" },
                "forecast": { "type": "string" },
                "temperature_c": { "type": "integer" },
            },
            "required": ["city", "forecast", "temperature_c"],
        }))))
        .with_annotations(ToolAnnotations::new().read_only(true).open_world(true)),
        Tool::new(
            "create_ticket",
            "Opens a support ticket.",
            object(json!({
                "type": "object",
                "properties": {
                    "title": { "type": "string" },
                    "priority": { "type": "string", "enum": ["low", "normal", "high"] },
                },
                "required": ["title"],
            })),
        )
        .with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(false)
                .idempotent(false),
        ),
        Tool::new(
            "always_fails",
            "Fails every time, as a tool (isError), not as a protocol error.",
            object(json!({ "type": "object", "properties": {} })),
        ),
    ]
}

impl ServerHandler for Fake {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("fake-mcp", "0.1.0"))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let start = match request.and_then(|r| r.cursor) {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .map_err(|_| ErrorData::invalid_params("unknown cursor", None))?,
        };
        let all = tools();
        let end = (start + PAGE_SIZE).min(all.len());
        let page = all.get(start..end).unwrap_or_default().to_vec();
        let mut result = ListToolsResult::with_all_items(page);
        result.next_cursor = (end < all.len()).then(|| end.to_string());
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let args = request.arguments.unwrap_or_default();
        self.seen
            .calls
            .lock()
            .unwrap()
            .push((name.clone(), Value::Object(args.clone())));
        let text = |key: &str| args.get(key).and_then(Value::as_str).map(str::to_owned);
        match name.as_str() {
            "lookup_weather" => {
                let city = text("city")
                    .ok_or_else(|| ErrorData::invalid_params("`city` is required", None))?;
                let mut result = CallToolResult::structured(
                    json!({ "city": city, "forecast": "sunny", "temperature_c": 21 }),
                );
                result.content = vec![ContentBlock::text(format!("Sunny in {city}, 21 °C"))];
                Ok(result.into())
            }
            "create_ticket" => {
                let title = text("title")
                    .ok_or_else(|| ErrorData::invalid_params("`title` is required", None))?;
                let n = self.seen.tickets.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(CallToolResult::structured(
                    json!({ "ticket_id": format!("T-{n}"), "title": title }),
                )
                .into())
            }
            "always_fails" => {
                Ok(CallToolResult::error(vec![ContentBlock::text("remote failure")]).into())
            }
            other => Err(ErrorData::invalid_params(
                format!("unknown tool `{other}`"),
                None,
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests of `agentcrm::connections::remote` against the fake.

const TOKEN: &str = "fake-bearer-8d2f6c0e-secret";
const WRONG: &str = "wrong-bearer-41b7a9d3-secret";
const WAIT: Duration = Duration::from_secs(20);

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().expect("reqwest client")
}

fn remote(url: &str, token: Option<&str>) -> RemoteServer {
    RemoteServer {
        url: url.to_owned(),
        bearer_token: token.map(str::to_owned),
    }
}

fn args(value: Value) -> Map<String, Value> {
    object(value)
}

/// A URL nothing listens on: a port just bound and released.
async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}/mcp")
}

fn assert_no_secret(error: &RemoteError, secret: &str) {
    let display = error.to_string();
    let debug = format!("{error:?}");
    assert!(
        !display.contains(secret),
        "Display leaks the token: {display}"
    );
    assert!(!debug.contains(secret), "Debug leaks the token: {debug}");
}

#[tokio::test]
async fn lists_the_three_tools_with_schemas_and_annotations() {
    let fake = FakeMcp::start(Some(TOKEN)).await;
    let tools = list_tools(http(), &remote(&fake.url, Some(TOKEN)), WAIT)
        .await
        .expect("tools/list");

    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    // Three tools over two pages: the cursor was followed.
    assert_eq!(names, ["lookup_weather", "create_ticket", "always_fails"]);

    let weather = &tools[0];
    assert_eq!(weather.title.as_deref(), Some("Look up the weather"));
    assert_eq!(
        weather.description.as_deref(),
        Some("The weather forecast for a city.")
    );
    assert_eq!(weather.input_schema["type"], "object");
    assert_eq!(weather.input_schema["properties"]["city"]["type"], "string");
    assert_eq!(weather.input_schema["required"], json!(["city"]));
    let output = weather.output_schema.as_ref().expect("output schema");
    assert_eq!(output["properties"]["temperature_c"]["type"], "integer");
    assert_eq!(weather.read_only, Some(true));
    assert_eq!(weather.open_world, Some(true));
    assert_eq!(weather.destructive, None);

    let ticket = &tools[1];
    assert_eq!(ticket.read_only, Some(false));
    assert_eq!(ticket.destructive, Some(false));
    assert_eq!(ticket.idempotent, Some(false));
    assert_eq!(ticket.input_schema["required"], json!(["title"]));
    assert_eq!(ticket.output_schema, None);

    let fails = &tools[2];
    assert_eq!(fails.title, None);
    assert!(fails.description.is_some());
    assert_eq!(
        fails.input_schema,
        json!({ "type": "object", "properties": {} })
    );
    assert_eq!(
        (
            fails.read_only,
            fails.destructive,
            fails.idempotent,
            fails.open_world
        ),
        (None, None, None, None)
    );

    // The token reached the server on every request, and the session was closed.
    let authorizations = fake.authorizations();
    assert!(!authorizations.is_empty());
    assert!(
        authorizations
            .iter()
            .all(|a| *a == format!("Bearer {TOKEN}")),
        "{authorizations:?}"
    );
    let methods = fake.http_methods();
    assert_eq!(methods.first().map(String::as_str), Some("POST"));
    assert!(methods.iter().any(|m| m == "DELETE"), "{methods:?}");
}

#[tokio::test]
async fn calls_return_structured_output_and_are_recorded() {
    let fake = FakeMcp::start(Some(TOKEN)).await;
    let server = remote(&fake.url, Some(TOKEN));

    let weather = call_tool(
        http(),
        &server,
        "lookup_weather",
        args(json!({ "city": "Lisbon" })),
        WAIT,
    )
    .await
    .expect("lookup_weather");
    assert!(!weather.is_error);
    assert_eq!(
        weather.structured,
        Some(json!({ "city": "Lisbon", "forecast": "sunny", "temperature_c": 21 }))
    );
    assert_eq!(weather.text, "Sunny in Lisbon, 21 °C");

    let first = call_tool(
        http(),
        &server,
        "create_ticket",
        args(json!({ "title": "Printer on fire", "priority": "high" })),
        WAIT,
    )
    .await
    .expect("create_ticket");
    assert!(!first.is_error);
    assert_eq!(
        first.structured,
        Some(json!({ "ticket_id": "T-1", "title": "Printer on fire" }))
    );
    let second = call_tool(
        http(),
        &server,
        "create_ticket",
        args(json!({ "title": "Coffee machine" })),
        WAIT,
    )
    .await
    .expect("create_ticket");
    assert_eq!(second.structured.as_ref().unwrap()["ticket_id"], "T-2");

    assert_eq!(
        fake.calls(),
        vec![
            ("lookup_weather".to_owned(), json!({ "city": "Lisbon" })),
            (
                "create_ticket".to_owned(),
                json!({ "title": "Printer on fire", "priority": "high" })
            ),
            (
                "create_ticket".to_owned(),
                json!({ "title": "Coffee machine" })
            ),
        ]
    );
    assert!(
        fake.authorizations()
            .iter()
            .all(|a| *a == format!("Bearer {TOKEN}"))
    );
    // One session per call, each closed.
    let deletes = fake
        .http_methods()
        .iter()
        .filter(|m| *m == "DELETE")
        .count();
    assert_eq!(deletes, 3, "{:?}", fake.http_methods());
}

#[tokio::test]
async fn a_failing_tool_is_an_outcome_not_an_error() {
    let fake = FakeMcp::start(None).await;
    let call = call_tool(
        http(),
        &remote(&fake.url, None),
        "always_fails",
        Map::new(),
        WAIT,
    )
    .await
    .expect("an isError result is Ok");
    assert!(call.is_error);
    assert_eq!(call.text, "remote failure");
    assert_eq!(call.structured, None);
    assert_eq!(fake.calls(), vec![("always_fails".to_owned(), json!({}))]);
}

#[tokio::test]
async fn json_rpc_errors_are_protocol_errors() {
    let fake = FakeMcp::start(None).await;
    let server = remote(&fake.url, None);

    let error = call_tool(http(), &server, "no_such_tool", Map::new(), WAIT)
        .await
        .expect_err("unknown tool");
    let RemoteError::Protocol(message) = &error else {
        panic!("expected Protocol, got {error:?}")
    };
    assert!(message.contains("no_such_tool"), "{message}");

    let error = call_tool(http(), &server, "lookup_weather", Map::new(), WAIT)
        .await
        .expect_err("missing city");
    assert!(
        matches!(&error, RemoteError::Protocol(m) if m.contains("city")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_unauthorized_and_never_shown() {
    let fake = FakeMcp::start(Some(TOKEN)).await;

    let error = list_tools(http(), &remote(&fake.url, Some(WRONG)), WAIT)
        .await
        .expect_err("wrong token");
    assert!(matches!(error, RemoteError::Unauthorized), "{error:?}");
    assert_no_secret(&error, WRONG);

    let error = call_tool(
        http(),
        &remote(&fake.url, Some(WRONG)),
        "lookup_weather",
        args(json!({ "city": "Oslo" })),
        WAIT,
    )
    .await
    .expect_err("wrong token");
    assert!(matches!(error, RemoteError::Unauthorized), "{error:?}");
    assert_no_secret(&error, WRONG);

    let error = list_tools(http(), &remote(&fake.url, None), WAIT)
        .await
        .expect_err("no token");
    assert!(matches!(error, RemoteError::Unauthorized), "{error:?}");

    // The wrong token was sent (and refused); nothing was called.
    assert!(fake.authorizations().contains(&format!("Bearer {WRONG}")));
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn a_401_or_403_with_or_without_a_challenge_is_unauthorized() {
    for (status, challenge) in [
        (StatusCode::UNAUTHORIZED, false),
        (StatusCode::FORBIDDEN, true),
        (StatusCode::FORBIDDEN, false),
    ] {
        let fake = FakeMcp::start_with(Some(TOKEN), status, challenge).await;
        let error = list_tools(http(), &remote(&fake.url, Some(WRONG)), WAIT)
            .await
            .expect_err("wrong token");
        assert!(
            matches!(error, RemoteError::Unauthorized),
            "{status} (challenge: {challenge}): {error:?}"
        );
        assert_no_secret(&error, WRONG);
    }
}

/// A server that echoes the credential in an error body: neither the error nor a log line
/// repeats it.
#[tokio::test]
async fn a_token_echoed_by_the_server_is_not_repeated() {
    async fn echo(request: Request) -> Response {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = format!("malformed request from {authorization}");
        (StatusCode::BAD_REQUEST, body).into_response()
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().fallback(echo)).await;
    });
    let (logs, guard) = capture_logs();
    let error = list_tools(http(), &remote(&url, Some(TOKEN)), WAIT)
        .await
        .expect_err("400");
    drop(guard);
    let RemoteError::Protocol(message) = &error else {
        panic!("expected Protocol, got {error:?}")
    };
    assert!(message.contains("400"), "{message}");
    assert_no_secret(&error, TOKEN);
    let logs = logs.text();
    assert!(logs.contains("remote MCP server failed"), "{logs}");
    assert!(
        !logs.contains(TOKEN),
        "a log line contains the token:\n{logs}"
    );
    server.abort();
}

#[tokio::test]
async fn a_closed_port_is_unreachable_quickly() {
    let url = closed_port_url().await;
    let started = Instant::now();
    let error = list_tools(http(), &remote(&url, Some(TOKEN)), WAIT)
        .await
        .expect_err("nothing listens");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, RemoteError::Unreachable(_)), "{error:?}");
    assert_no_secret(&error, TOKEN);

    let error = call_tool(
        http(),
        &remote(&url, Some(TOKEN)),
        "lookup_weather",
        Map::new(),
        WAIT,
    )
    .await
    .expect_err("nothing listens");
    assert!(matches!(error, RemoteError::Unreachable(_)), "{error:?}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let error = list_tools(
        http(),
        &remote(&url, Some(TOKEN)),
        Duration::from_millis(700),
    )
    .await
    .expect_err("no answer");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, RemoteError::Timeout(1)), "{error:?}");
    silent.abort();
}

#[test]
fn remote_server_debug_hides_the_token() {
    let server = remote("http://127.0.0.1:9/mcp", Some(TOKEN));
    let debug = format!("{server:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(debug.contains("http://127.0.0.1:9/mcp"), "{debug}");
    assert!(debug.contains("true"), "says a token is set: {debug}");
}

/// The server's tool handlers run on a multi-threaded runtime: the calls must be `Send`.
#[test]
fn the_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let server = remote("http://127.0.0.1:9/mcp", None);
    let listing = list_tools(http(), &server, WAIT);
    assert_send(&listing);
    let call = call_tool(http(), &server, "x", Map::new(), WAIT);
    assert_send(&call);
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every log line of this thread, at every level, until the guard drops. The test's
/// runtime runs on this thread, hence the client, its rmcp worker and reqwest.
fn capture_logs() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

/// A fake on a thread and runtime of its own, so the captured logs are the client's only
/// (the server side legitimately sees the token). Stops when the sender is dropped.
fn fake_elsewhere(token: Option<&'static str>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let fake = FakeMcp::start(token).await;
            let _ = url_tx.send(fake.url.clone());
            let _ = stop_rx.await;
        });
    });
    let url = url_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("fake started");
    (url, stop_tx)
}

#[tokio::test]
async fn no_log_line_contains_the_token() {
    let (url, _stop) = fake_elsewhere(Some(TOKEN));
    let (logs, guard) = capture_logs();

    list_tools(http(), &remote(&url, Some(TOKEN)), WAIT)
        .await
        .expect("tools/list");
    call_tool(
        http(),
        &remote(&url, Some(TOKEN)),
        "always_fails",
        Map::new(),
        WAIT,
    )
    .await
    .expect("tools/call");
    let error = list_tools(http(), &remote(&url, Some(WRONG)), WAIT)
        .await
        .expect_err("wrong token");
    assert!(matches!(error, RemoteError::Unauthorized), "{error:?}");
    let closed = closed_port_url().await;
    let error = list_tools(http(), &remote(&closed, Some(WRONG)), WAIT)
        .await
        .expect_err("closed port");
    assert!(matches!(error, RemoteError::Unreachable(_)), "{error:?}");
    drop(guard);

    let logs = logs.text();
    // The capture worked: rmcp logged the session's end, and this module its failures.
    assert!(logs.contains("delete session"), "{logs}");
    assert!(logs.contains("remote MCP server failed"), "{logs}");
    assert!(
        !logs.contains(TOKEN),
        "a log line contains the token:\n{logs}"
    );
    assert!(
        !logs.contains(WRONG),
        "a log line contains the token:\n{logs}"
    );
}
