//! The tool catalog: this server's own tools (service `agentcrm`) and the tools of the
//! tenant's connections (service: the connection's name), imported from remote MCP
//! servers as `<connection>__<tool>` and refreshed periodically. Imported tools are called
//! here, under this server's scopes and audit, with the connection's credential, which
//! never reaches the model or the caller.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rmcp::model::JsonObject;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::manage::{self, ProbeFailure, record_status};
use super::platforms::{Platform, Resolved};
use super::remote;
use crate::access::{Principal, Scopes};
use crate::app::App;
use crate::error::ToolError;
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;
use crate::toolkit::filter::visible;

/// Separates a connection's name from its tool's name. Built-in tools never contain it.
pub const SEPARATOR: &str = "__";
pub const BUILTIN_SERVICE: &str = "agentcrm";
/// LLM providers accept function names of at most 64 characters.
const MAX_NAME: usize = 64;
const MAX_TOOLS_PER_CONNECTION: usize = 500;

pub fn is_remote(name: &str) -> bool {
    name.contains(SEPARATOR)
}

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Connections.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "list_tool_catalog",
                "List the tool catalog",
                "List the tools you may use: this server's and those imported from \
                 connections.\n\n\
                 This server's own are service `agentcrm`; imported ones have the connection's \
                 name as service and tool names `<connection>__<tool>`. With short descriptions. \
                 Filter by `service` or a word in the name or description. Prompt agents and \
                 workflows call tools by these names.",
                &["connections:read"],
                Hints::READ,
            ),
            list_tool_catalog,
        ),
        tool(
            def(
                "get_tool_catalog_entry",
                "Get a tool catalog entry",
                "Get one catalog tool with its full input and output schemas, hints, the scopes \
                 a caller needs and when it was last refreshed.",
                &["connections:read"],
                Hints::READ,
            ),
            get_tool_catalog_entry,
        ),
        tool(
            def(
                "refresh_tool_catalog",
                "Refresh the tool catalog",
                "Re-import the tools of one connection, or of every remote MCP and HTTP one.\n\n\
                 Also done periodically. Tools a server no longer lists leave the catalog.",
                &["connections:write"],
                Hints {
                    open_world: true,
                    ..Hints::SET
                },
            ),
            refresh_tool_catalog,
        ),
    ]
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RemoteEntry {
    pub name: String,
    pub connection_id: Uuid,
    pub connection_name: String,
    pub remote_name: String,
    pub title: Option<String>,
    pub description: String,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub refreshed_at: DateTime<Utc>,
    pub config: Value,
}

const REMOTE_COLUMNS: &str = "t.name, t.connection_id, c.name AS connection_name, t.remote_name, \
     t.title, t.description, t.input_schema, t.output_schema, t.read_only, t.destructive, \
     t.idempotent, t.refreshed_at, c.config";

impl RemoteEntry {
    /// Scopes a caller needs: the connection's `tool_scopes` (default `connections:write`).
    pub fn required(&self) -> Scopes {
        let names: Vec<String> = self
            .config
            .get("tool_scopes")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_else(|| vec!["connections:write".into()]);
        // Unknown names were refused when the connection was saved; if one slipped through,
        // require everything rather than nothing.
        Scopes::parse(&names).unwrap_or(Scopes::EVERY)
    }
}

/// Imported tools of the tenant, all of them or those named.
pub async fn remote_entries(
    app: &App,
    tenant_id: Uuid,
    names: Option<&[String]>,
) -> Result<Vec<RemoteEntry>, ToolError> {
    let mut query = sqlx::QueryBuilder::new(format!(
        "SELECT {REMOTE_COLUMNS} FROM tool_catalog t JOIN connections c
             ON c.tenant_id = t.tenant_id AND c.id = t.connection_id
         WHERE t.tenant_id = "
    ));
    query.push_bind(tenant_id);
    if let Some(names) = names {
        query
            .push(" AND t.name = ANY(")
            .push_bind(names.to_vec())
            .push(")");
    }
    query.push(" ORDER BY t.name");
    let rows = query
        .build_query_as()
        .fetch_all(app.store.pool())
        .await
        .map_err(StoreError::from)?;
    Ok(rows)
}

/// Remote tools are outside the server's own read-only guarantee and toolset choice: a
/// server limited to read-only tools or without the connections toolset offers none.
fn server_allows_remote(app: &App) -> bool {
    let filter = &app.filter;
    !filter.read_only
        && filter
            .toolsets
            .as_ref()
            .is_none_or(|t| t.contains(&Toolset::Connections))
}

fn missing_scopes(principal: &Principal, entry: &RemoteEntry) -> Option<String> {
    let required = entry.required();
    (!principal.scopes.contains(required)).then(|| {
        format!(
            "{} may not call `{}`: it needs the {} scope(s)",
            principal.name,
            entry.name,
            required.names().join(", ")
        )
    })
}

/// Calls an imported tool as `principal`.
pub async fn call(
    app: &Arc<App>,
    principal: &Principal,
    name: &str,
    arguments: &JsonObject,
    timeout: Duration,
) -> Result<Value, ToolError> {
    let unknown = || ToolError::Forbidden(format!("`{name}` is not available on this server"));
    if !server_allows_remote(app) {
        return Err(unknown());
    }
    let names = [name.to_owned()];
    let entry = remote_entries(app, principal.tenant_id, Some(&names))
        .await?
        .into_iter()
        .next()
        .ok_or_else(unknown)?;
    if let Some(reason) = missing_scopes(principal, &entry) {
        return Err(ToolError::Forbidden(reason));
    }
    let (connection, _, resolved) =
        manage::load(app, principal.tenant_id, &entry.connection_id.to_string()).await?;
    if connection.status == "expired" {
        return Err(ToolError::Conflict(format!(
            "connection `{}` has expired credentials ({}); an admin must update it",
            connection.name,
            connection.status_error.as_deref().unwrap_or("refused")
        )));
    }
    match &resolved {
        Resolved::Mcp { server, .. } => {
            match remote::call_tool(
                app.http()?,
                server,
                &entry.remote_name,
                arguments.clone(),
                timeout,
            )
            .await
            {
                Ok(call) if call.is_error => Err(ToolError::InvalidRequest(format!(
                    "`{name}` failed on the remote server: {}",
                    truncate(&call.text, 1000)
                ))),
                Ok(call) => Ok(call
                    .structured
                    .unwrap_or_else(|| json!({ "text": call.text }))),
                Err(error) => {
                    let failure = ProbeFailure::from(error);
                    record_status(
                        app,
                        principal.tenant_id,
                        connection.id,
                        Err(&failure),
                        false,
                    )
                    .await?;
                    Err(remote_failure(&connection.name, failure))
                }
            }
        }
        Resolved::Http {
            config,
            secret_headers,
            ..
        } => {
            send(
                app,
                &connection.name,
                config,
                secret_headers,
                arguments,
                timeout,
            )
            .await
        }
        Resolved::Llm { .. } => Err(unknown()),
    }
}

fn remote_failure(connection: &str, failure: ProbeFailure) -> ToolError {
    if failure.expired {
        ToolError::Forbidden(format!(
            "the service of connection `{connection}` refused its credentials; an admin must \
             update the connection"
        ))
    } else {
        ToolError::Conflict(format!("connection `{connection}`: {}", failure.message))
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SendArgs {
    /// The JSON body to send.
    #[serde(default)]
    body: Option<Value>,
    /// Query parameters added to the URL.
    #[serde(default)]
    query: BTreeMap<String, String>,
}

/// The `<connection>__send` tool of an HTTP connection.
async fn send(
    app: &App,
    connection: &str,
    config: &super::platforms::HttpConfig,
    secret_headers: &BTreeMap<String, String>,
    arguments: &JsonObject,
    timeout: Duration,
) -> Result<Value, ToolError> {
    let args: SendArgs = serde_json::from_value(Value::Object(arguments.clone()))
        .map_err(|e| ToolError::InvalidRequest(format!("invalid arguments: {e}")))?;
    let method = http::Method::from_bytes(config.method.as_bytes())
        .map_err(|_| ToolError::Conflict(format!("connection `{connection}` has a bad method")))?;
    let mut url = reqwest::Url::parse(&config.url).map_err(|e| {
        ToolError::Conflict(format!("connection `{connection}` has a bad URL: {e}"))
    })?;
    if !args.query.is_empty() {
        url.query_pairs_mut().extend_pairs(&args.query);
    }
    let mut request = app.http()?.request(method, url).timeout(timeout);
    for (name, value) in config.headers.iter().chain(secret_headers) {
        request = request.header(name, value);
    }
    if let Some(body) = &args.body {
        request = request.json(body);
    }
    let response = request.send().await.map_err(|e| {
        ToolError::Conflict(format!(
            "connection `{connection}`: the endpoint could not be reached: {}",
            crate::jobs::webhooks::describe(&e)
        ))
    })?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let text = truncate(&text, 20_000);
    let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
    if status >= 400 {
        return Err(ToolError::InvalidRequest(format!(
            "connection `{connection}`: the endpoint answered {status}: {}",
            truncate(&body.to_string(), 500)
        )));
    }
    Ok(json!({ "status": status, "body": body }))
}

/// A tool name an LLM provider accepts: `[A-Za-z0-9_-]`, at most 64 characters.
fn catalog_name(connection: &str, remote: &str) -> String {
    let clean: String = remote
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("{connection}{SEPARATOR}{clean}");
    name.truncate(MAX_NAME);
    name
}

/// Imports a connection's tools again; returns how many it has.
pub async fn refresh_one(app: &App, tenant_id: Uuid, id: Uuid) -> Result<usize, ToolError> {
    let (connection, platform, resolved) = manage::load(app, tenant_id, &id.to_string()).await?;
    let tools: Vec<super::remote::RemoteTool> = match (&resolved, platform) {
        (Resolved::Mcp { server, .. }, _) => {
            match remote::list_tools(app.http()?, server, app.outbound.timeout).await {
                Ok(tools) => tools,
                Err(error) => {
                    let failure = ProbeFailure::from(error);
                    record_status(app, tenant_id, id, Err(&failure), false).await?;
                    return Err(remote_failure(&connection.name, failure));
                }
            }
        }
        (Resolved::Http { config, .. }, Platform::Http) => vec![super::remote::RemoteTool {
            name: "send".into(),
            title: Some(format!("Send to {}", connection.name)),
            description: Some(format!(
                "Send an HTTP {} request to the endpoint of connection `{}`{}. Answers the \
                 status and the response body.",
                config.method,
                connection.name,
                if connection.description.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", connection.description)
                }
            )),
            input_schema: serde_json::to_value(schemars::schema_for!(SendArgs)).unwrap_or_default(),
            output_schema: None,
            read_only: Some(false),
            destructive: Some(false),
            idempotent: Some(false),
            open_world: Some(true),
        }],
        _ => return Ok(0),
    };
    let mut seen = std::collections::HashSet::new();
    let mut tx = app.store.pool().begin().await.map_err(StoreError::from)?;
    sqlx::query("DELETE FROM tool_catalog WHERE tenant_id = $1 AND connection_id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    for tool in tools.iter().take(MAX_TOOLS_PER_CONNECTION) {
        let name = catalog_name(&connection.name, &tool.name);
        if !seen.insert(name.clone()) {
            continue;
        }
        sqlx::query(
            "INSERT INTO tool_catalog (tenant_id, connection_id, name, remote_name, title,
                 description, input_schema, output_schema, read_only, destructive, idempotent)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(tenant_id)
        .bind(id)
        .bind(&name)
        .bind(&tool.name)
        .bind(&tool.title)
        .bind(truncate(tool.description.as_deref().unwrap_or(""), 2000))
        .bind(&tool.input_schema)
        .bind(&tool.output_schema)
        .bind(tool.read_only.unwrap_or(false))
        .bind(tool.destructive.unwrap_or(true))
        .bind(tool.idempotent.unwrap_or(false))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    }
    sqlx::query(
        "UPDATE connections SET catalog_refreshed_at = now(), status = 'active', status_error = NULL
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant_id)
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(seen.len())
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CatalogItem {
    pub name: String,
    /// `agentcrm`, or the connection the tool comes from.
    pub service: String,
    pub title: Option<String>,
    pub description: String,
    pub read_only: bool,
    pub destructive: bool,
    /// Imported tools: when they were last refreshed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refreshed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// `agentcrm` or a connection name.
    pub service: Option<String>,
    /// A word of names or descriptions.
    ///
    /// Case-insensitive.
    pub search: Option<String>,
    #[serde(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CatalogList {
    pub tools: Vec<CatalogItem>,
    #[serde(flatten)]
    pub page: PageInfo,
}

/// The summary of a description (its first paragraph, as `tools/list` gives it): a list
/// stays short.
fn short(description: &str) -> String {
    truncate(&crate::toolkit::listing::summary(description), 200)
}

/// Every catalog tool `ctx`'s caller may use, in a stable order.
async fn usable(ctx: &ToolCtx) -> Result<Vec<(CatalogItem, Option<RemoteEntry>)>, ToolError> {
    let mut items: Vec<(CatalogItem, Option<RemoteEntry>)> =
        visible(ctx.app.catalog, &ctx.filter, &ctx.principal)
            .map(|t| {
                (
                    CatalogItem {
                        name: t.def.name.to_owned(),
                        service: BUILTIN_SERVICE.into(),
                        title: Some(t.def.title.to_owned()),
                        description: t.def.description.to_owned(),
                        read_only: t.def.hints.read_only,
                        destructive: t.def.hints.destructive,
                        refreshed_at: None,
                    },
                    None,
                )
            })
            .collect();
    if server_allows_remote(&ctx.app) {
        for entry in remote_entries(&ctx.app, ctx.principal.tenant_id, None).await? {
            if missing_scopes(&ctx.principal, &entry).is_some() {
                continue;
            }
            items.push((
                CatalogItem {
                    name: entry.name.clone(),
                    service: entry.connection_name.clone(),
                    title: entry.title.clone(),
                    description: entry.description.clone(),
                    read_only: entry.read_only,
                    destructive: entry.destructive,
                    refreshed_at: Some(entry.refreshed_at),
                },
                Some(entry),
            ));
        }
    }
    Ok(items)
}

async fn list_tool_catalog(ctx: ToolCtx, args: ListArgs) -> Result<CatalogList, ToolError> {
    let page = args.page.page()?;
    let needle = args.search.as_deref().map(str::to_lowercase);
    let matching: Vec<CatalogItem> = usable(&ctx)
        .await?
        .into_iter()
        .map(|(item, _)| item)
        .filter(|item| args.service.as_ref().is_none_or(|s| &item.service == s))
        .filter(|item| {
            needle.as_ref().is_none_or(|n| {
                item.name.to_lowercase().contains(n) || item.description.to_lowercase().contains(n)
            })
        })
        .collect();
    let total = matching.len() as i64;
    let tools = matching
        .into_iter()
        .skip(page.offset as usize)
        .take(page.limit as usize)
        .map(|mut item| {
            item.description = short(&item.description);
            item
        })
        .collect();
    Ok(CatalogList {
        tools,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryArgs {
    /// As list_tool_catalog gives it.
    ///
    /// E.g. `list_customers`, or `<connection>__<tool>` for an imported tool.
    pub name: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CatalogEntry {
    #[serde(flatten)]
    pub item: CatalogItem,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    pub idempotent: bool,
    /// Scopes a caller needs to call it.
    pub scopes: Vec<String>,
}

async fn get_tool_catalog_entry(ctx: ToolCtx, args: EntryArgs) -> Result<CatalogEntry, ToolError> {
    let (item, remote) = usable(&ctx)
        .await?
        .into_iter()
        .find(|(item, _)| item.name == args.name)
        .ok_or_else(|| {
            ToolError::NotFound(format!(
                "no tool `{}` in the catalog you may use; see list_tool_catalog",
                args.name
            ))
        })?;
    Ok(match remote {
        Some(entry) => CatalogEntry {
            scopes: entry
                .required()
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            input_schema: entry.input_schema,
            output_schema: entry.output_schema,
            idempotent: entry.idempotent,
            item,
        },
        None => {
            let tool = ctx.app.catalog.get(&item.name).ok_or_else(|| {
                ToolError::NotFound(format!("no tool `{}` in the catalog", item.name))
            })?;
            CatalogEntry {
                scopes: tool.def.scopes.iter().map(|s| (*s).to_owned()).collect(),
                input_schema: Value::Object(tool.input_schema().clone()),
                output_schema: tool.output_schema().map(|s| Value::Object(s.clone())),
                idempotent: tool.def.hints.idempotent,
                item,
            }
        }
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshArgs {
    /// A connection's id or name (default: every remote one).
    ///
    /// Omit it to refresh every remote MCP and HTTP connection.
    pub connection: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Refreshed {
    pub connection: String,
    pub ok: bool,
    pub tools: usize,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RefreshOut {
    pub refreshed: Vec<Refreshed>,
}

async fn refresh_tool_catalog(ctx: ToolCtx, args: RefreshArgs) -> Result<RefreshOut, ToolError> {
    let tenant = ctx.principal.tenant_id;
    let id = args
        .connection
        .as_deref()
        .and_then(|c| Uuid::parse_str(c).ok());
    let targets: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, name FROM connections
         WHERE tenant_id = $1 AND platform IN ('mcp', 'http')
           AND ($2::text IS NULL OR id = $3 OR name = $2)
         ORDER BY name",
    )
    .bind(tenant)
    .bind(&args.connection)
    .bind(id)
    .fetch_all(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?;
    if let Some(name) = &args.connection
        && targets.is_empty()
    {
        return Err(ToolError::NotFound(format!(
            "no remote MCP or HTTP connection `{name}` in this tenant"
        )));
    }
    let mut refreshed = Vec::new();
    for (id, name) in targets {
        let outcome = refresh_one(&ctx.app, tenant, id).await;
        refreshed.push(Refreshed {
            connection: name,
            ok: outcome.is_ok(),
            tools: *outcome.as_ref().unwrap_or(&0),
            error: outcome
                .err()
                .map(|e| e.to_body(&ctx.request_id).error_description),
        });
    }
    Ok(RefreshOut { refreshed })
}

/// How often imported tools are refreshed (`AGENTCRM_CATALOG_REFRESH_SECS`, default an hour).
fn refresh_every() -> Duration {
    let seconds = std::env::var("AGENTCRM_CATALOG_REFRESH_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s >= 10)
        .unwrap_or(3600);
    Duration::from_secs(seconds)
}

/// Refreshes stale connections' tools. A process takes a connection by moving its
/// `catalog_refreshed_at` first, so processes sharing the database do not all refresh it.
pub fn start(app: Arc<App>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = refresh_every();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every.min(Duration::from_secs(30))) => {}
            }
            let due: Result<Vec<(Uuid, Uuid)>, sqlx::Error> = sqlx::query_as(
                "UPDATE connections SET catalog_refreshed_at = now()
                 WHERE id IN (SELECT id FROM connections
                              WHERE platform = 'mcp' AND status <> 'expired'
                                AND (catalog_refreshed_at IS NULL
                                     OR catalog_refreshed_at < now() - make_interval(secs => $1))
                              LIMIT 10 FOR UPDATE SKIP LOCKED)
                 RETURNING tenant_id, id",
            )
            .bind(every.as_secs_f64())
            .fetch_all(app.store.pool())
            .await;
            match due {
                Ok(due) => {
                    for (tenant, id) in due {
                        if let Err(error) = refresh_one(&app, tenant, id).await {
                            tracing::info!(connection = %id, %error, "tool catalog refresh failed");
                        }
                    }
                }
                Err(error) if app.store.pool().is_closed() => {
                    tracing::debug!(%error, "catalog refresh: pool closed");
                    return;
                }
                Err(error) => tracing::warn!(%error, "catalog refresh: could not look for work"),
            }
        }
    })
}
