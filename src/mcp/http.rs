//! Streamable HTTP at `/mcp` (rmcp's service inside axum), plus `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::mcp::call::Delivering;
use crate::store::health::{Down, RETRY_AFTER_SECS};
use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::server::AgentCrm;
use crate::access::audit::AuditEvent;
use crate::access::cache::CacheKey;
use crate::access::identity::{self, AuthError, Credential};
use crate::access::oauth;
use crate::access::ratelimit::{Class, Quota, QuotaSlot};
use crate::access::secrets::{API_KEY_PREFIX, digest};
use crate::access::{Principal, PrincipalKind};
use crate::app::App;
use crate::toolkit::catalog::RegisteredTool;
use crate::toolkit::filter::{Denial, denial, permits};

#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub listen: SocketAddr,
    /// Accepted `Host` values (DNS-rebinding protection); `*` accepts any.
    pub allowed_hosts: Vec<String>,
    /// Accepted browser `Origin` values (scheme://host:port, `:*` for any port); `*` accepts any.
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    /// How long a connection may take to send a request's headers, or sit idle between
    /// requests (silent connections and slowloris included).
    pub header_timeout: std::time::Duration,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// `/metrics` on this listener answers requests bearing this token (the operator's).
    pub metrics_token: Option<String>,
}

pub const DEFAULT_ALLOWED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
pub const DEFAULT_ALLOWED_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

pub fn router(app: Arc<App>, options: &HttpOptions, shutdown: CancellationToken) -> axum::Router {
    let mut config = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(options.max_body_bytes)
        // Ends open SSE streams and sessions, so graceful shutdown does not wait on them.
        .with_cancellation_token(shutdown.child_token());
    config = if options.allowed_hosts.iter().any(|h| h == "*") {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(options.allowed_hosts.clone())
    };
    config = if options.allowed_origins.iter().any(|o| o == "*") {
        config.disable_allowed_origins()
    } else {
        config
            .with_allowed_origins(options.allowed_origins.clone())
            .enforce_origin_validation()
    };
    let mcp_app = app.clone();
    // Idle sessions are closed by `Sessions` (which knows about open streams), not by rmcp's
    // own timer (which closes a session whose client only listens on its stream).
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = None;
    let manager = Arc::new(manager);
    let sessions = Sessions::start(app.clone(), manager.clone(), shutdown.clone());
    // Shared rather than used as a tower service: that would clone it, and its configuration
    // (host and origin lists), twice per request.
    let gateway = Arc::new(Gateway {
        app: app.clone(),
        sessions,
        max_body_bytes: options.max_body_bytes,
        mcp: StreamableHttpService::new(
            move || Ok(AgentCrm::http(mcp_app.clone())),
            manager,
            config,
        ),
    });
    let mcp = axum::Router::new().fallback(move |request: Request| {
        let gateway = gateway.clone();
        async move { gateway.serve(request).await }
    });
    let metrics_token = options.metrics_token.as_deref().map(digest);
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(
                move |State(app): State<Arc<App>>, headers: axum::http::HeaderMap| {
                    let token = metrics_token.clone();
                    async move { guarded_metrics(&app, token.as_deref(), &headers).await }
                },
            ),
        )
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/revoke", post(oauth::revoke))
        .route("/oauth/introspect", post(oauth::introspect))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::authorization_server_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(oauth::protected_resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(oauth::protected_resource_metadata),
        )
        .route(
            "/.well-known/openid-configuration",
            get(oauth::authorization_server_metadata),
        )
        .merge(crate::signin::routes())
        .nest("/mcp", mcp)
        .with_state(app)
}

/// The MCP sessions of this process (sessions live in the process that made them): who
/// opened each, when it was last used, and its open streams.
/// - A session belongs to its opener: anyone else's request, stream or DELETE with its id is
///   answered as if the session did not exist.
/// - A session with no open stream and no request for the idle timeout is closed; an open
///   stream (a client waiting on a subscription) keeps it alive however long it waits.
/// - Each principal keeps at most a cap of sessions: opening one more closes its oldest idle
///   one (or, if all are in use, its least recently used).
struct Sessions {
    app: Arc<App>,
    manager: Arc<LocalSessionManager>,
    open: std::sync::Mutex<std::collections::HashMap<Arc<str>, Tracked>>,
    idle: std::time::Duration,
    per_principal: usize,
}

struct Tracked {
    owner: Owner,
    used: std::time::Instant,
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// A principal as a session owner: tenant, kind and id.
type Owner = (uuid::Uuid, &'static str, Option<uuid::Uuid>);

fn owner(principal: &Principal) -> Owner {
    (principal.tenant_id, principal.kind.as_str(), principal.id)
}

fn env_number(name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|v| range.contains(v))
        .unwrap_or(default)
}

impl Sessions {
    /// Tracks sessions and closes idle ones until `shutdown`. The idle timeout is
    /// `AGENTCRM_SESSION_IDLE_SECS` (default 300), the cap per principal
    /// `AGENTCRM_MAX_SESSIONS_PER_PRINCIPAL` (default 64).
    fn start(
        app: Arc<App>,
        manager: Arc<LocalSessionManager>,
        shutdown: CancellationToken,
    ) -> Arc<Sessions> {
        let idle = std::time::Duration::from_secs(env_number(
            "AGENTCRM_SESSION_IDLE_SECS",
            300,
            1..=86_400,
        ));
        let sessions = Arc::new(Sessions {
            app,
            manager,
            open: Default::default(),
            idle,
            per_principal: env_number("AGENTCRM_MAX_SESSIONS_PER_PRINCIPAL", 64, 1..=10_000)
                as usize,
        });
        let sweeper = Arc::downgrade(&sessions);
        let every = (idle / 4).clamp(
            std::time::Duration::from_millis(250),
            std::time::Duration::from_secs(30),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(sessions) = sweeper.upgrade() else {
                    return;
                };
                let idle: Vec<Arc<str>> = sessions.with(|open| {
                    open.iter()
                        .filter(|(_, t)| t.is_idle() && t.used.elapsed() >= sessions.idle)
                        .map(|(id, _)| id.clone())
                        .collect()
                });
                for id in idle {
                    sessions.close(&id, "idle").await;
                }
            }
        });
        sessions
    }

    fn with<T>(&self, f: impl FnOnce(&mut std::collections::HashMap<Arc<str>, Tracked>) -> T) -> T {
        let mut open = match self.open.lock() {
            Ok(open) => open,
            Err(poisoned) => poisoned.into_inner(),
        };
        let out = f(&mut open);
        crate::metrics::http_sessions(open.len());
        out
    }

    async fn close(&self, id: &Arc<str>, why: &str) {
        self.with(|open| open.remove(id));
        use rmcp::transport::streamable_http_server::session::SessionManager;
        if let Err(error) = self.manager.close_session(id).await {
            tracing::debug!(%error, session = %id, "session already closed");
        } else {
            tracing::info!(session = %id, why, "MCP session closed");
        }
    }

    /// `session`'s stream counter, when it is `who`'s (marking it used); unknown sessions
    /// are nobody's.
    fn use_as(&self, session: &str, who: &Owner) -> Option<Arc<std::sync::atomic::AtomicUsize>> {
        self.with(|open| match open.get_mut(session) {
            Some(tracked) if tracked.owner == *who => {
                tracked.used = std::time::Instant::now();
                Some(tracked.streams.clone())
            }
            _ => None,
        })
    }

    /// Tracks a new session of `who`; returns the session to close if `who` is over the cap.
    fn open(&self, session: Arc<str>, who: Owner) -> Option<Arc<str>> {
        self.with(|open| {
            open.insert(
                session.clone(),
                Tracked {
                    owner: who,
                    used: std::time::Instant::now(),
                    streams: Default::default(),
                },
            );
            let mine: Vec<(&Arc<str>, &Tracked)> =
                open.iter().filter(|(_, t)| t.owner == who).collect();
            if mine.len() <= self.per_principal {
                return None;
            }
            // Oldest idle first; else least recently used; never the one just opened.
            mine.into_iter()
                .filter(|(id, _)| **id != session)
                .min_by_key(|(_, t)| (!t.is_idle(), t.used))
                .map(|(id, _)| id.clone())
        })
    }
}

impl Tracked {
    fn is_idle(&self) -> bool {
        self.streams.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// Counts a stream open while its response body lives; the session was in use until then.
struct StreamOpen {
    streams: Arc<std::sync::atomic::AtomicUsize>,
    sessions: std::sync::Weak<Sessions>,
    id: Arc<str>,
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        crate::metrics::http_streams(-1.0);
        self.streams
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(sessions) = self.sessions.upgrade() {
            sessions.with(|open| {
                if let Some(tracked) = open.get_mut(&self.id) {
                    tracked.used = std::time::Instant::now();
                }
            });
        }
    }
}

/// What stands before rmcp on `/mcp`: one handler that runs each step in turn (as tower
/// layers, each step cost a boxed, cloned service and a moved future on every request).
struct Gateway {
    app: Arc<App>,
    sessions: Arc<Sessions>,
    max_body_bytes: usize,
    mcp: StreamableHttpService<AgentCrm, LocalSessionManager>,
}

impl Gateway {
    /// Outermost first: the trace, authenticate, the session's owner, check the body, rmcp.
    async fn serve(&self, request: Request) -> Response {
        trace_request(request, |request| {
            authenticate(&self.app, request, |request| {
                bind_session(&self.sessions, request, |request| {
                    inspect_body(self.max_body_bytes, &self.app, request, |request| async {
                        self.mcp.handle(request).await.into_response()
                    })
                })
            })
        })
        .await
    }
}

/// Binds a new session to the principal that opened it, and lets only that principal use
/// it: a request, GET stream or DELETE with someone else's session id gets rmcp's own 404.
/// A streamed response (an SSE stream) counts as the session in use for as long as it is open.
async fn bind_session<N, F>(sessions: &Arc<Sessions>, request: Request, next: N) -> Response
where
    N: FnOnce(Request) -> F,
    F: Future<Output = Response>,
{
    let Some(who) = request.extensions().get::<Principal>().map(owner) else {
        return next(request).await;
    };
    let given = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let deleting = request.method() == Method::DELETE;
    let delivering =
        (request.method() == Method::POST).then(|| Delivering::enter(sessions.app.clone()));
    let streams = match &given {
        Some(session) => match sessions.use_as(session, &who) {
            Some(streams) => Some(streams),
            None => {
                return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
            }
        },
        None => None,
    };
    let response = next(request).await;
    match given {
        Some(session) if deleting && response.status().is_success() => {
            sessions.with(|open| open.remove(session.as_str()));
            // rmcp says 202; clients (the Python SDK among them) expect 200 or 204 and log
            // a failure otherwise.
            StatusCode::NO_CONTENT.into_response()
        }
        Some(session) => {
            let streaming = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            match streams {
                // A POST's answer streams: it is delivered when its body ends.
                Some(_) if streaming && delivering.is_some() => {
                    let (parts, body) = response.into_parts();
                    let body = Body::from_stream(futures::StreamExt::map(
                        body.into_data_stream(),
                        move |chunk| {
                            let _delivering = &delivering;
                            chunk
                        },
                    ));
                    Response::from_parts(parts, body)
                }
                Some(streams) if streaming => {
                    streams.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    crate::metrics::http_streams(1.0);
                    let open = StreamOpen {
                        streams,
                        sessions: Arc::downgrade(sessions),
                        id: Arc::from(session),
                    };
                    let (parts, body) = response.into_parts();
                    let body = Body::from_stream(futures::StreamExt::map(
                        body.into_data_stream(),
                        move |chunk| {
                            let _open = &open;
                            chunk
                        },
                    ));
                    Response::from_parts(parts, body)
                }
                _ => response,
            }
        }
        None => {
            if let Some(session) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                && let Some(evicted) = sessions.open(Arc::from(session), who)
            {
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    sessions.close(&evicted, "over the cap per principal").await
                });
            }
            response
        }
    }
}

/// Reads a POST body once before rmcp does, to answer two things in HTTP terms:
/// - unparsable JSON: rmcp says 415 in plain text; JSON-RPC wants a parse error (-32700);
/// - a `tools/call` of a tool whose scopes a signed-in person's token lacks: 403 with an
///   `insufficient_scope` challenge naming the scopes (MCP's step-up authorization).
async fn inspect_body<N, F>(limit: usize, app: &Arc<App>, request: Request, next: N) -> Response
where
    N: FnOnce(Request) -> F,
    F: Future<Output = Response>,
{
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let principal = request.extensions().get::<Principal>().cloned();
    if request.method() != Method::POST || !is_json {
        let response = next(request).await;
        return with_quota(app, principal.as_ref(), None, response).await;
    }
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return jsonrpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                format!("Request body exceeds the limit of {limit} bytes"),
            );
        }
    };
    // Only a person's token from the authorization code grant can step up (sign in again
    // with more scope); anyone else gets the refusal as the tool's result, which every
    // client shows the model (an HTTP 403 reaches it as a bare transport error, or not at all).
    if let Some(principal) = parts
        .extensions
        .get::<Principal>()
        .filter(|p| p.kind == PrincipalKind::User)
        && let Some(name) = called_tool(&bytes)
        && let Some(tool) = app.catalog.get(&name).filter(|t| app.filter.allows(&t.def))
        && !permits(principal, tool)
    {
        let response = insufficient_scope(app, &parts, principal, tool).await;
        return with_quota(app, Some(principal), None, response).await;
    }
    // A call's rate-limit headers wait for the call path to count it.
    let counted = match &principal {
        Some(_) if names_tools_call(&bytes) => {
            let (slot, counted) = QuotaSlot::new();
            parts.extensions.insert(slot);
            Some(counted)
        }
        _ => None,
    };
    let response = next(Request::from_parts(parts, Body::from(bytes.clone()))).await;
    let response = with_quota(app, principal.as_ref(), counted, response).await;
    // rmcp answers a body that is not a JSON-RPC message with a plain-text 415, having done
    // nothing with it: answer with a JSON-RPC error instead. Reading the body as rmcp does
    // only then keeps the parse off the path of every good request (it is the costliest
    // step of a small call).
    if response.status() != StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return response;
    }
    if let Err(error) = serde_json::from_slice::<rmcp::model::ClientJsonRpcMessage>(&bytes) {
        return match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Err(error) => jsonrpc_error(
                StatusCode::BAD_REQUEST,
                -32700,
                format!("Parse error: {error}"),
            ),
            Ok(value) => {
                let id = value
                    .get("id")
                    .filter(|id| id.is_string() || id.is_i64() || id.is_u64())
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                let body = json!({ "jsonrpc": "2.0", "id": id,
                    "error": { "code": -32600, "message": format!("Invalid Request: {error}") } });
                (StatusCode::BAD_REQUEST, Json(body)).into_response()
            }
        };
    }
    response
}

/// Whether a body may be a `tools/call` (a cheap look, not a parse: the call path says
/// for sure, by counting it or not).
fn names_tools_call(body: &[u8]) -> bool {
    const METHOD: &[u8] = b"\"tools/call\"";
    body.windows(METHOD.len()).any(|w| w == METHOD)
}

/// Adds `X-RateLimit-Limit`, `-Remaining` and `-Reset` (and `Retry-After` when refused) for
/// the class the request counted against: the call's, once the call path has counted it;
/// otherwise where the caller stands in the `calls` class, counting nothing.
async fn with_quota(
    app: &App,
    principal: Option<&Principal>,
    counted: Option<tokio::sync::oneshot::Receiver<Quota>>,
    mut response: Response,
) -> Response {
    let Some(principal) = principal else {
        return response;
    };
    let quota = match counted {
        Some(counted) => tokio::time::timeout(std::time::Duration::from_secs(10), counted)
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    let quota = match quota {
        Some(quota) => Some(quota),
        None => app.limiter.peek(principal, Class::Calls).await.ok(),
    };
    let Some(quota) = quota else {
        return response;
    };
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("x-ratelimit-limit", quota.limit.max.to_string());
    set("x-ratelimit-remaining", quota.remaining.to_string());
    set("x-ratelimit-reset", quota.reset.to_string());
    set("x-ratelimit-class", quota.class.name().to_owned());
    if let Some(seconds) = quota.retry_after {
        set("retry-after", seconds.to_string());
    }
    response
}

/// The tool a `tools/call` body names, if it is one.
fn called_tool(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Call {
        method: String,
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        name: String,
    }
    let call: Call = serde_json::from_slice(body).ok()?;
    (call.method == "tools/call").then_some(call.params?.name)
}

async fn insufficient_scope(
    app: &App,
    parts: &axum::http::request::Parts,
    principal: &Principal,
    tool: &RegisteredTool,
) -> Response {
    let request_id = uuid::Uuid::now_v7().to_string();
    let mut event = AuditEvent::by(principal, "tool", tool.def.name, "refused");
    event.error_code = Some("forbidden".into());
    event.transport = Some("http");
    event.request_id = Some(request_id.clone());
    event.session_id = parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    app.audit.record(event).await;
    let denied = denial(principal, tool);
    let description = denied.as_ref().map_or_else(
        || format!("`{}` is not available", tool.def.name),
        |d| d.describe(tool.def.name, &principal.name),
    );
    // A scope challenge only where more scope would help (MCP step-up authorization);
    // it names every scope the tool needs, as RFC 6750 asks.
    let challenge = matches!(denied, Some(Denial::MissingScopes(_))).then(|| {
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"{}\", resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
            tool.def.scopes.join(" "),
            oauth::base_url(app, &parts.headers)
        )
    });
    let body =
        json!({ "error": "forbidden", "error_description": description, "request_id": request_id });
    let mut response = (StatusCode::FORBIDDEN, Json(body)).into_response();
    if let Some(challenge) = challenge.and_then(|c| c.parse().ok()) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

fn jsonrpc_error(status: StatusCode, code: i32, message: String) -> Response {
    let body =
        json!({ "jsonrpc": "2.0", "id": null, "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}

/// The Prometheus text, sampled now.
pub async fn metrics_text(app: &App) -> Response {
    match crate::metrics::render(&app.store).await {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not recorded in this process",
        )
            .into_response(),
    }
}

/// `/metrics` on the main listener: the whole server's figures, across tenants, so only
/// for the operator's token (`--metrics-token`), never a tenant's credential.
async fn guarded_metrics(
    app: &App,
    token: Option<&[u8]>,
    headers: &axum::http::HeaderMap,
) -> Response {
    let Some(token) = token else {
        let body = json!({ "error": "not_found", "error_description":
            "metrics are served on --metrics-listen, or here with --metrics-token" });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| digest(v.trim()));
    if given.as_deref() != Some(token) {
        let body = json!({ "error": "unauthorized", "error_description":
            "/metrics needs the operator's token: Authorization: Bearer <--metrics-token>" });
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    metrics_text(app).await
}

async fn healthz(State(app): State<Arc<App>>) -> (StatusCode, Json<serde_json::Value>) {
    match sqlx::query("SELECT 1").execute(app.store.pool()).await {
        Ok(_) => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        Err(error) => {
            tracing::warn!(%error, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "error": "database unreachable" })),
            )
        }
    }
}

/// Serves until `shutdown` is cancelled, then finishes in-flight requests. Each connection
/// gets `header_timeout` to send a request's headers (and no longer to sit idle between
/// requests), and at most `max_connections` are open at once: past that a connection gets a
/// 503 and is closed, so silent or trickling clients cannot hold the server's sockets.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    options: &HttpOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Sessions (and their open streams) end only once calls in flight are done: ending them
    // at the signal would cut those calls off.
    let sessions_end = CancellationToken::new();
    let router = router(app.clone(), options, sessions_end.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    let (closing, _) = tokio::sync::watch::channel(());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was accepted.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Responses go out in several writes (SSE framing): without TCP_NODELAY, Nagle's
        // algorithm and delayed ACKs add ~40 ms to many of them.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(tcp));
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // The peer address (failed client authentications are throttled per address).
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request.map(Body::new))
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(options.header_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .with_upgrades();
        let mut closing = closing.subscribe();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended");
                    }
                }
                _ = closing.changed() => {
                    connection.as_mut().graceful_shutdown();
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended");
                    }
                }
            }
            drop(slot);
        });
    }
    // Finish in-flight requests: new calls are refused while those running finish, then the
    // sessions end, then every connection ends and its slot comes back.
    drop(listener);
    let grace = crate::jobs::drain_grace();
    if !app.inflight.drained(grace).await {
        tracing::warn!("calls still running {grace:?} after the shutdown signal; ending them");
    }
    sessions_end.cancel();
    closing.send_replace(());
    let _all = slots
        .acquire_many(u32::try_from(options.max_connections).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

/// A connection past the cap: a plain 503 and the socket closed.
async fn refuse(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":"unavailable","error_description":"Too many open connections; retry shortly."}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tcp.write_all(response.as_bytes()),
    )
    .await;
    let _ = tcp.shutdown().await;
}

/// Resolves the caller from `X-Api-Key` or `Authorization: Bearer`, and hands the principal
/// to the MCP handler in the request's extensions. Without credentials, only the embedded
/// default's local owner (loopback listeners) gets through.
/// With traces on, the request's span: it continues the client's `traceparent` header, and
/// the tool calls the request carries are its children.
async fn trace_request<N, F>(mut request: Request, next: N) -> Response
where
    N: FnOnce(Request) -> F,
    F: Future<Output = Response>,
{
    if !crate::telemetry::enabled() {
        return next(request).await;
    }
    let method = request.method().clone();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} /mcp"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        principal_kind = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    crate::telemetry::continue_from(&span, traceparent);
    request
        .extensions_mut()
        .insert(crate::telemetry::RequestSpan(span.clone()));
    let response = tracing::Instrument::instrument(next(request), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn authenticate<N, F>(app: &Arc<App>, mut request: Request, next: N) -> Response
where
    N: FnOnce(Request) -> F,
    F: Future<Output = Response>,
{
    if let Some(down) = app.store.unavailable() {
        return database_unavailable(down);
    }
    let headers = request.headers();
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let outcome = match (api_key, bearer) {
        (Some(key), _) => api_key_principal(app, key.trim()).await,
        (None, Some(token)) if token.starts_with(API_KEY_PREFIX) => {
            api_key_principal(app, token).await
        }
        (None, Some(token)) => oauth::principal_for_jwt(app, token).await,
        (None, None) => app.local_owner.clone().ok_or(AuthError::Missing),
    };
    match outcome {
        Ok(principal) => {
            if crate::telemetry::enabled() {
                // The request span of `trace_request`.
                tracing::Span::current().record("principal_kind", principal.kind.as_str());
            }
            request.extensions_mut().insert(principal);
            next(request).await
        }
        Err(AuthError::Store(error))
            if {
                app.store.observe_store(&error);
                app.store.is_down()
            } =>
        {
            database_unavailable(app.store.unavailable().unwrap_or(Down {
                retry_after: RETRY_AFTER_SECS,
                for_secs: 0,
            }))
        }
        Err(error) => {
            let resource_metadata = format!(
                "{}/.well-known/oauth-protected-resource",
                oauth::base_url(app, request.headers())
            );
            if !matches!(error, AuthError::Missing) {
                let mut event = AuditEvent::anonymous("auth", "auth.refused", "refused");
                event.transport = Some("http");
                event.error_code = Some(match error {
                    AuthError::Store(_) => "internal".into(),
                    _ => "invalid_credentials".into(),
                });
                app.audit.record(event).await;
            }
            unauthorized(&error, &resource_metadata)
        }
    }
}

/// An API key's principal, from the auth cache when nothing changed since it was read.
async fn api_key_principal(app: &App, key: &str) -> Result<Principal, AuthError> {
    let cache_key = CacheKey::ApiKey(digest(key));
    if let Some(principal) = app.auth_cache.get(&cache_key) {
        return Ok(principal);
    }
    let generation = app.auth_cache.generation();
    let principal = identity::authenticate(app.store.pool(), Credential::ApiKey(key)).await?;
    app.auth_cache
        .insert(cache_key, principal.clone(), generation);
    Ok(principal)
}

/// 503 while the database is known to be down: credentials cannot be checked.
fn database_unavailable(down: Down) -> Response {
    let body = json!({
        "error": "internal",
        "error_description": format!(
            "The database is unavailable, so credentials cannot be checked; nothing was done. \
             Retry in {} s.",
            down.retry_after
        ),
        "request_id": uuid::Uuid::now_v7().to_string(),
        "retry_after": down.retry_after,
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    if let Ok(value) = down.retry_after.to_string().parse() {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn unauthorized(error: &AuthError, resource_metadata: &str) -> Response {
    let request_id = uuid::Uuid::now_v7().to_string();
    let (status, challenge, description) = match error {
        AuthError::Missing => (
            StatusCode::UNAUTHORIZED,
            format!("Bearer resource_metadata=\"{resource_metadata}\""),
            "Authentication required: send `Authorization: Bearer <access token or API key>` or `X-Api-Key: <key>`.".to_owned(),
        ),
        AuthError::Invalid => (
            StatusCode::UNAUTHORIZED,
            format!("Bearer error=\"invalid_token\", resource_metadata=\"{resource_metadata}\""),
            "The credentials are invalid, expired, revoked or disabled.".to_owned(),
        ),
        AuthError::Throttled(seconds) => {
            let body = json!({
                "error": "rate_limited",
                "error_description": error.to_string(),
                "request_id": request_id,
                "retry_after": seconds,
            });
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            if let Ok(value) = seconds.to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        AuthError::Store(store) => {
            tracing::error!(%store, request_id, "authentication failed on the database");
            let retry_after = crate::error::POOL_RETRY_AFTER_SECS;
            let body = json!({
                "error": "internal",
                "error_description": format!("The server could not check credentials (its database connections may all be in use); nothing was done. Retry in {retry_after} s; if it persists, report request id {request_id}."),
                "request_id": request_id,
                "retry_after": retry_after,
            });
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
            return response;
        }
    };
    let body = json!({ "error": "unauthorized", "error_description": description, "request_id": request_id });
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = challenge.parse() {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
