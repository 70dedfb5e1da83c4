//! Streamable HTTP at `/mcp` (rmcp's service inside axum), plus `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::context::Transport;
use super::server::AgentCrm;
use crate::app::App;

#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub listen: SocketAddr,
    /// Accepted `Host` values (DNS-rebinding protection); `*` accepts any.
    pub allowed_hosts: Vec<String>,
    /// Accepted browser `Origin` values (scheme://host:port, `:*` for any port); `*` accepts any.
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
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
    let mcp = StreamableHttpService::new(
        move || Ok(AgentCrm::new(mcp_app.clone(), Transport::Http)),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let mcp = axum::Router::new()
        .fallback_service(mcp)
        .layer(middleware::from_fn_with_state(
            options.max_body_bytes,
            reject_malformed_json,
        ));
    axum::Router::new()
        .route("/healthz", get(healthz))
        .nest("/mcp", mcp)
        .with_state(app)
}

/// rmcp answers an unparsable JSON body with 415 and plain text; JSON-RPC wants a parse
/// error (-32700) the client can read, so bodies are checked (without building values)
/// before they reach it.
async fn reject_malformed_json(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if request.method() != Method::POST || !is_json {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
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
    if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
        return jsonrpc_error(
            StatusCode::BAD_REQUEST,
            -32700,
            format!("Parse error: {error}"),
        );
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn jsonrpc_error(status: StatusCode, code: i32, message: String) -> Response {
    let body =
        json!({ "jsonrpc": "2.0", "id": null, "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
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

/// Serves until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    options: &HttpOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router(app, options, shutdown.clone());
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
