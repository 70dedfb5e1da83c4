//! The MCP handler shared by stdio and streamable HTTP: builds `tools/list` from the
//! catalog through the filter, and dispatches `tools/call` to the declared handlers.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    CompletionInfo, CustomRequest, CustomResult, ErrorCode, GetPromptRequestParams,
    GetPromptResponse, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference,
    ResourceContents, ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter,
    UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};

use super::call::{Call, CallError, Done, perform};
use super::{prompts, resources};
use crate::access::Principal;
use crate::access::ratelimit::QuotaSlot;
use crate::app::App;
use crate::error::ToolError;
use crate::toolkit::catalog::Toolset;
use crate::toolkit::context::{ClientSide, Progress, Transport};
use crate::toolkit::filter::{ToolFilter, listed, parse_toolsets};

/// Every protocol version rmcp negotiates: `initialize`-based generations with HTTP
/// sessions, and the stateless 2026-07-28.
pub fn supported_protocol_versions() -> &'static [ProtocolVersion] {
    ProtocolVersion::KNOWN_VERSIONS
}

/// Request headers that narrow (never widen) the configured tool filter on HTTP.
pub const HEADER_TOOLSETS: &str = "x-mcp-toolsets";
pub const HEADER_TOOLS: &str = "x-mcp-tools";
pub const HEADER_EXCLUDE_TOOLS: &str = "x-mcp-exclude-tools";
pub const HEADER_READ_ONLY: &str = "x-mcp-readonly";
/// `compact` switches a request to compact mode (`full` changes nothing: never widens).
pub const HEADER_TOOL_MODE: &str = "x-mcp-tool-mode";

#[derive(Clone)]
pub struct AgentCrm {
    app: Arc<App>,
    transport: Transport,
    /// Set for stdio (one identity per process); HTTP requests carry their own.
    principal: Option<Principal>,
    /// A stdio process is one MCP session: its id in the audit trail and session history.
    stdio_session: Option<String>,
}

impl AgentCrm {
    pub fn stdio(app: Arc<App>, principal: Principal) -> AgentCrm {
        AgentCrm {
            app,
            transport: Transport::Stdio,
            principal: Some(principal),
            stdio_session: Some(format!("stdio-{}", uuid::Uuid::new_v4())),
        }
    }

    pub fn http(app: Arc<App>) -> AgentCrm {
        AgentCrm {
            app,
            transport: Transport::Http,
            principal: None,
            stdio_session: None,
        }
    }

    fn http_parts<'a>(
        &self,
        ctx: &'a RequestContext<RoleServer>,
    ) -> Option<&'a http::request::Parts> {
        ctx.extensions.get::<http::request::Parts>()
    }

    /// The configured filter, narrowed by this request's headers on HTTP.
    fn request_filter(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Arc<ToolFilter>, McpError> {
        let Some(parts) = self.http_parts(ctx) else {
            return Ok(self.app.filter.clone());
        };
        let header_list = |name: &str| -> Vec<String> {
            parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let toolsets = header_list(HEADER_TOOLSETS);
        let tools = header_list(HEADER_TOOLS);
        let exclude = header_list(HEADER_EXCLUDE_TOOLS);
        let read_only = parts
            .headers
            .get(HEADER_READ_ONLY)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
        let compact = match parts
            .headers
            .get(HEADER_TOOL_MODE)
            .map(|v| v.to_str().map(str::trim))
        {
            None => false,
            Some(Ok(mode)) if mode.eq_ignore_ascii_case("compact") => true,
            Some(Ok(mode)) if mode.eq_ignore_ascii_case("full") => false,
            Some(_) => {
                return Err(McpError::invalid_request(
                    format!("{HEADER_TOOL_MODE}: `full` or `compact`"),
                    None,
                ));
            }
        };
        if toolsets.is_empty() && tools.is_empty() && exclude.is_empty() && !read_only && !compact {
            return Ok(self.app.filter.clone());
        }
        let request = ToolFilter {
            toolsets: parse_toolsets(&toolsets)
                .map_err(|e| McpError::invalid_request(format!("{HEADER_TOOLSETS}: {e}"), None))?,
            read_only,
            // Unknown names in narrowing headers can only hide tools, so they are harmless.
            tools: (!tools.is_empty()).then(|| tools.into_iter().collect()),
            exclude: exclude.into_iter().collect(),
            compact,
        };
        Ok(Arc::new(self.app.filter.narrow(&request)))
    }

    fn session_id(&self, ctx: &RequestContext<RoleServer>) -> Option<String> {
        if let Some(session) = &self.stdio_session {
            return Some(session.clone());
        }
        self.http_parts(ctx)?
            .headers
            .get("mcp-session-id")?
            .to_str()
            .ok()
            .map(str::to_owned)
    }

    /// The caller: fixed for a stdio process, set per request by the HTTP auth layer.
    fn principal(&self, ctx: &RequestContext<RoleServer>) -> Result<Principal, McpError> {
        if let Some(principal) = &self.principal {
            return Ok(principal.clone());
        }
        self.http_parts(ctx)
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            .ok_or_else(|| {
                McpError::internal_error("request reached the server unauthenticated", None)
            })
    }
}

/// The answer to a tool the caller cannot see, whether it exists or not.
fn unknown_tool(name: &str) -> McpError {
    McpError::invalid_params(format!("Unknown tool: {name}"), None)
}

// Handlers that await are boxed: rmcp runs each request in a task whose future is as large
// as the largest handler's, and moving a large one into and through the spawn showed in perf
// as memcpy on every call.
impl ServerHandler for AgentCrm {
    // Logging is deprecated (SEP-2577), but clients and the conformance suite still use it.
    #[allow(deprecated)]
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_completions()
                .enable_prompts()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(
            Implementation::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
                .with_title("agentcrm")
                .with_description(env!("CARGO_PKG_DESCRIPTION")),
        )
        .with_instructions(
            "agentcrm holds a business's customers, interactions, workflows, handoffs and \
                 agents. Every tool acts as the caller's identity and within its tenant; call \
                 `whoami` to see who that is. Tool errors carry `error`, `error_description` \
                 and `request_id`.",
        )
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(supported_protocol_versions())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let filter = self.request_filter(&ctx)?;
        let principal = self.principal(&ctx)?;
        let full = self.app.list_output_schemas;
        let tools = listed(self.app.catalog, &filter, &principal)
            .map(|t| {
                if full {
                    t.tool.clone()
                } else {
                    t.listing.clone()
                }
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(prompts::list()))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        Box::pin(async move {
            let principal = self.principal(&ctx)?;
            let filter = self.request_filter(&ctx)?;
            prompts::get(
                &self.app,
                &principal,
                self.transport,
                &filter,
                &request.name,
                &request.arguments,
            )
            .await
            .map(Into::into)
            .map_err(|e| self.protocol_error(e))
        })
        .await
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        Box::pin(async move {
            let principal = self.principal(&ctx)?;
            let completion = match &request.r#ref {
                Reference::Prompt(prompt) => prompts::complete(
                    &self.app,
                    &principal,
                    self.transport,
                    &self.request_filter(&ctx)?,
                    &prompt.name,
                    &request.argument.name,
                    &request.argument.value,
                )
                .await
                .map_err(|e| self.protocol_error(e))?,
                // Resource ids are UUIDs: nothing to complete.
                _ => CompletionInfo::default(),
            };
            Ok(CompleteResult::new(completion))
        })
        .await
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        // Accepted; this server sends its logs to stderr (and the audit trail), not to
        // clients, so no level sends more.
        tracing::debug!(level = ?request.level, "client asked for a log level");
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Box::pin(async move {
            let principal = self.principal(&ctx)?;
            let resources = resources::listed(&self.app, &principal)
                .await
                .map_err(|e| self.resource_error(e))?;
            Ok(ListResourcesResult::with_all_items(resources))
        })
        .await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let principal = self.principal(&ctx)?;
        Ok(ListResourceTemplatesResult::with_all_items(
            resources::templates(&self.app, &principal, &*self.request_filter(&ctx)?),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        Box::pin(async move {
            let principal = self.principal(&ctx)?;
            let filter = self.request_filter(&ctx)?;
            let value = self.readable(&principal, &filter, &request.uri).await?;
            let contents = match resources::parse(&request.uri) {
                Some((kind, _)) if kind.text => {
                    let mime_type = value["export"]["mime_type"]
                        .as_str()
                        .unwrap_or(kind.mime_type)
                        .to_owned();
                    let text = match value.get("content") {
                        Some(serde_json::Value::String(text)) => text.clone(),
                        _ => String::new(),
                    };
                    ResourceContents::text(text, request.uri).with_mime_type(mime_type)
                }
                _ => ResourceContents::text(value.to_string(), request.uri)
                    .with_mime_type("application/json"),
            };
            Ok(ReadResourceResult::new(vec![contents]).into())
        })
        .await
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        Box::pin(async move {
            let principal = self.principal(&ctx)?;
            let filter = self.request_filter(&ctx)?;
            self.readable(&principal, &filter, &request.uri).await?;
            let session = self.session_id(&ctx).unwrap_or_else(|| "stdio".into());
            self.app
                .subscriptions
                .subscribe_session(&request.uri, &session, ctx.peer.clone());
            Ok(())
        })
        .await
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let session = self.session_id(&ctx).unwrap_or_else(|| "stdio".into());
        self.app
            .subscriptions
            .unsubscribe_session(&request.uri, &session);
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // Only our resources' URIs; who may read them is checked in `listen`.
        let uris = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| resources::parse(uri).is_some())
            .cloned()
            .collect::<Vec<_>>();
        let mut accepted = SubscriptionFilter::new();
        accepted.resource_subscriptions = (!uris.is_empty()).then_some(uris);
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let principal = self.principal(context.request_context())?;
        let filter = self.request_filter(context.request_context())?;
        let mut allowed = Vec::new();
        for uri in context.accepted().resource_subscriptions.iter().flatten() {
            // A URI the caller may not read is acknowledged but never notified.
            if resources::read(&self.app, &principal, self.transport, &filter, uri)
                .await
                .is_ok()
            {
                allowed.push(uri.clone());
            }
        }
        let _registration = self
            .app
            .subscriptions
            .subscribe_listen(&allowed, context.sink());
        context.cancelled().await;
        Ok(())
    }

    /// rmcp routes a standard request whose params do not parse here, as if it were an
    /// unknown method: answer with what is wrong with the params instead.
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, McpError> {
        let problem = match request.method.as_str() {
            "tools/call" => request.params_as::<CallToolRequestParams>().err(),
            "tools/list" | "resources/list" | "resources/templates/list" | "prompts/list" => {
                request.params_as::<PaginatedRequestParams>().err()
            }
            "resources/read" => request.params_as::<ReadResourceRequestParams>().err(),
            // Not resources/(un)subscribe: protocol 2026-07-28 removed them, and a request for
            // them there must stay an unknown method.
            "prompts/get" => request.params_as::<GetPromptRequestParams>().err(),
            "completion/complete" => request.params_as::<CompleteRequestParams>().err(),
            method => {
                return Err(McpError::new(
                    ErrorCode::METHOD_NOT_FOUND,
                    format!("Method not found: {method}"),
                    None,
                ));
            }
        };
        let detail = match (problem, request.params.is_none()) {
            (Some(error), _) => error.to_string(),
            (None, true) => "params are required".to_owned(),
            (None, false) => "params are malformed".to_owned(),
        };
        Err(McpError::invalid_params(
            format!("Invalid params for {}: {detail}", request.method),
            None,
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        // The audit event, the tool context and the gate: the largest of the handlers.
        Box::pin(self.call(request, ctx)).await
    }
}

impl AgentCrm {
    /// A `tools/call`, through the one call path (`call::perform`).
    async fn call(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        // `run_tool` is the call it names, with every check of a direct call.
        let request = unwrap_run_tool(request);
        let filter = self.request_filter(&ctx)?;
        let principal = self.principal(&ctx)?;
        let request_id = uuid::Uuid::now_v7().to_string();
        let progress = ctx
            .meta
            .get_progress_token()
            .or_else(|| request.meta.as_ref().and_then(|m| m.get_progress_token()))
            .map(|token| Progress {
                peer: ctx.peer.clone(),
                token,
            });
        let outcome = perform(
            &self.app,
            Call {
                principal,
                transport: self.transport,
                tool: request.name.to_string(),
                arguments: request.arguments.unwrap_or_default(),
                filter,
                request_id: request_id.clone(),
                session_id: self.session_id(&ctx),
                progress,
                client: Some(ClientSide {
                    peer: ctx.peer.clone(),
                    modern: ctx.protocol_version().is_some_and(|v| !v.has_initialize()),
                    capabilities: ctx.client_capabilities(),
                    answers: request.input_responses,
                }),
                timeout: None,
                purpose: "Client call",
                approved_action: None,
                step: None,
                quota: self
                    .http_parts(&ctx)
                    .and_then(|parts| parts.extensions.get::<QuotaSlot>().cloned()),
                trace: crate::telemetry::Parent {
                    span: self.http_parts(&ctx).and_then(|parts| {
                        parts
                            .extensions
                            .get::<crate::telemetry::RequestSpan>()
                            .map(|s| s.0.clone())
                    }),
                    traceparent: request
                        .meta
                        .as_ref()
                        .and_then(|m| m.get("traceparent"))
                        .or_else(|| ctx.meta.get("traceparent"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned),
                },
            },
        )
        .await;
        let mut result = match outcome {
            Ok(Done::Ask(question)) => return Ok(question.into()),
            Ok(Done::Value(value)) => CallToolResult::structured(value),
            Err(CallError::UnknownTool(name)) => return Err(unknown_tool(&name)),
            Err(CallError::Tool(error)) => {
                let value = serde_json::to_value(error.to_body(&request_id))
                    .map_err(|e| McpError::internal_error(e.to_string(), None))?;
                CallToolResult::structured_error(value)
            }
        };
        let mut meta = rmcp::model::JsonObject::new();
        meta.insert("agentcrm/request_id".into(), request_id.into());
        result.meta = Some(rmcp::model::MetaObject(meta));
        Ok(result.into())
    }

    /// A resource's JSON if `principal` may read it (through the resource's `get_…` tool).
    async fn readable(
        &self,
        principal: &Principal,
        filter: &Arc<ToolFilter>,
        uri: &str,
    ) -> Result<serde_json::Value, McpError> {
        resources::read(&self.app, principal, self.transport, filter, uri)
            .await
            .map_err(|e| self.resource_error(e))
    }

    fn protocol_error(&self, error: ToolError) -> McpError {
        self.resource_error(error)
    }

    fn resource_error(&self, error: ToolError) -> McpError {
        match error {
            ToolError::NotFound(message) => McpError::resource_not_found(message, None),
            ToolError::Store(_) | ToolError::Internal(_) => {
                tracing::error!(%error, "resource request failed");
                McpError::internal_error("the server could not read this resource", None)
            }
            other => McpError::invalid_params(other.to_string(), None),
        }
    }
}

/// `run_tool {name, arguments}` becomes a call of `name`; anything else (or a malformed
/// `run_tool`, which its own handler then refuses) stays as it is.
fn unwrap_run_tool(request: CallToolRequestParams) -> CallToolRequestParams {
    if request.name != super::discovery::RUN_TOOL {
        return request;
    }
    let Some(args) = &request.arguments else {
        return request;
    };
    let Ok(run) = serde_json::from_value::<super::discovery::RunArgs>(serde_json::Value::Object(
        args.clone(),
    )) else {
        return request;
    };
    if run.name == super::discovery::RUN_TOOL {
        return request;
    }
    let mut inner = request.clone();
    inner.name = run.name.into();
    inner.arguments = Some(run.arguments);
    inner
}

/// Toolsets named for the log line at start-up.
pub fn describe_toolsets(toolsets: &[Toolset]) -> String {
    toolsets
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(",")
}
