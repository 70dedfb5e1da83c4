//! The baseline of the access-layer benchmark: agentcrm's own tool handlers served by a
//! bare rmcp handler, with authentication, permission checks, rate limits and the audit
//! trail bypassed. Never a way to run agentcrm: it trusts every caller as one principal.
//!
//! DATABASE_URL=... cargo run --release --example bare_server -- 127.0.0.1:8849 <api key>

use std::sync::Arc;

use agentcrm::access::Principal;
use agentcrm::access::audit::AuditLog;
use agentcrm::access::cache::AuthCache;
use agentcrm::access::ratelimit::RateLimiter;
use agentcrm::access::store::principal_for_api_key;
use agentcrm::app::App;
use agentcrm::store::Store;
use agentcrm::toolkit::context::{ToolCtx, Transport};
use agentcrm::toolkit::filter::ToolFilter;
use axum::serve::ListenerExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};

// The same allocator as the server binary, so that the comparison measures the layer.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
struct Bare {
    app: Arc<App>,
    principal: Principal,
}

impl ServerHandler for Bare {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(
            self.app.catalog.iter().map(|t| t.tool.clone()).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let tool = self
            .app
            .catalog
            .get(&request.name)
            .ok_or_else(|| McpError::invalid_params("unknown tool", None))?;
        let ctx = ToolCtx {
            app: self.app.clone(),
            transport: Transport::Http,
            principal: self.principal.clone(),
            request_id: String::new(),
            session_id: None,
            filter: self.app.filter.clone(),
            progress: None,
            tool: tool.def.name,
            arguments: Default::default(),
            approved_action: None,
            client: None,
            seal: Default::default(),
        };
        let result = match tool.call(ctx, request.arguments.unwrap_or_default()).await {
            Ok(value) => CallToolResult::structured(value),
            Err(error) => {
                CallToolResult::structured_error(serde_json::json!({ "error": error.to_string() }))
            }
        };
        Ok(result.into())
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8849".into());
    let key = args
        .next()
        .expect("usage: bare_server LISTEN API_KEY (with DATABASE_URL set)");
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let store = Store::open(Some(&url), std::path::Path::new("."))
        .await
        .expect("database");
    let principal = principal_for_api_key(store.pool(), &key)
        .await
        .expect("query")
        .expect("a valid API key");
    let app = Arc::new(App {
        audit: AuditLog::start(store.pool().clone()),
        limiter: RateLimiter::start(store.pool().clone()),
        auth_cache: AuthCache::default(),
        store,
        catalog: agentcrm::catalog::builtin(),
        filter: Arc::new(ToolFilter::default()),
        list_output_schemas: false,
        local_owner: None,
        tokens: None,
        vault: None,
        outbound: agentcrm::jobs::outbound::OutboundOptions {
            allow_private: false,
            timeout: std::time::Duration::from_secs(10),
        },
        clients: Default::default(),
        subscriptions: Default::default(),
        inflight: Default::default(),
        background: Default::default(),
        stopping: Default::default(),
    });
    let service = StreamableHttpService::new(
        move || {
            Ok(Bare {
                app: app.clone(),
                principal: principal.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("listen");
    eprintln!("bare server on http://{listen}/mcp");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await.expect("serve");
}
