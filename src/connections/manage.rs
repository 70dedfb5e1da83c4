//! Connections (`connections:read`, `connections:write`): create, list, update, delete and
//! test them. Credentials are sealed by the vault with the row's id as associated data and
//! never leave the server: not in answers, logs, the audit trail or errors.

use std::time::Instant;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::catalog;
use super::llm::{self, LlmError};
use super::platforms::{Platform, Resolved, no_credentials, resolve};
use super::remote::{self, RemoteError};
use crate::app::App;
use crate::error::ToolError;
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

const MAX_CONNECTIONS: i64 = 200;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Connections.def(name, title, description, scopes, hints)
    };
    // Testing reaches the outside service and records its answer on the connection.
    let probe = Hints {
        open_world: true,
        ..Hints::SET
    };
    vec![
        tool(
            def(
                "list_platforms",
                "List connection platforms",
                "List connection platforms with the JSON Schemas of their `config` and \
                 `credentials`.\n\n\
                 The platforms: openai, anthropic, mcp, http.",
                &["connections:read"],
                Hints::READ,
            ),
            list_platforms,
        ),
        tool(
            def(
                "create_connection",
                "Create a connection",
                "Connect an LLM, a remote MCP server or an HTTP endpoint; credentials are never \
                 shown again.\n\n\
                 Give `platform`, a `name` (lowercase letters, digits, dashes; it prefixes the \
                 connection's tools in the catalog), `config` and `credentials` (see \
                 list_platforms). Credentials are encrypted. A remote MCP server's tools are \
                 imported into the tool catalog at once.",
                &["connections:write"],
                Hints {
                    open_world: true,
                    ..Hints::CREATE
                },
            ),
            create_connection,
        ),
        tool(
            def(
                "list_connections",
                "List connections",
                "List this tenant's connections with platform, settings, status and last \
                 error.\n\n\
                 Status: active, error, expired. Credentials are never shown.",
                &["connections:read"],
                Hints::READ,
            ),
            list_connections,
        ),
        tool(
            def(
                "update_connection",
                "Update a connection",
                "Change a connection's name, description, config or credentials (merged by \
                 key).\n\n\
                 For config and credentials, given keys replace stored ones; the rest are kept.",
                &["connections:write"],
                Hints::SET,
            ),
            update_connection,
        ),
        tool(
            def(
                "delete_connection",
                "Delete a connection",
                "Delete a connection, its credentials and its catalog tools; their users then \
                 fail.\n\n\
                 Agents and workflows using it fail with a clear error until they are changed.",
                &["connections:write"],
                Hints::REMOVE,
            ),
            delete_connection,
        ),
        tool(
            def(
                "test_connection",
                "Test a connection",
                "Call a connection's service and record the outcome as its status.\n\n\
                 With its credentials: list models, list tools, or reach the endpoint.",
                &["connections:write"],
                probe,
            ),
            test_connection,
        ),
        tool(
            def(
                "test_new_connection",
                "Test a connection before saving it",
                "Check a platform, config and credentials against the service without saving \
                 anything.",
                &["connections:write"],
                Hints {
                    read_only: true,
                    open_world: true,
                    ..Hints::READ
                },
            ),
            test_new_connection,
        ),
    ]
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PlatformInfo {
    pub platform: Platform,
    pub title: &'static str,
    pub description: &'static str,
    pub config_schema: Value,
    pub credentials_schema: Value,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Platforms {
    pub platforms: Vec<PlatformInfo>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

async fn list_platforms(_ctx: ToolCtx, _args: NoArgs) -> Result<Platforms, ToolError> {
    let platforms = Platform::ALL
        .into_iter()
        .map(|platform| {
            let (config_schema, credentials_schema) = platform.schemas();
            PlatformInfo {
                platform,
                title: platform.title(),
                description: platform.description(),
                config_schema,
                credentials_schema,
            }
        })
        .collect();
    Ok(Platforms { platforms })
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Connection {
    pub id: Uuid,
    pub name: String,
    pub platform: String,
    pub description: String,
    /// Settings (never credentials).
    pub config: Value,
    /// Whether credentials are stored (they are never shown).
    pub has_credentials: bool,
    /// `active`, `error` (the last use or test failed) or `expired` (credentials refused).
    pub status: String,
    pub status_error: Option<String>,
    pub last_tested_at: Option<DateTime<Utc>>,
    /// Remote MCP servers: when their tools were last imported.
    pub catalog_refreshed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const COLUMNS: &str = "id, name, platform, description, config, \
     secret_encrypted IS NOT NULL AS has_credentials, status, status_error, last_tested_at, \
     catalog_refreshed_at, created_at, updated_at";

fn check_name(name: &str) -> Result<(), ToolError> {
    let ok = (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ToolError::InvalidRequest(format!(
            "connection name `{name}`: use 1 to 40 lowercase letters, digits and dashes, not \
             starting with a dash (it prefixes the connection's tools)"
        )))
    }
}

fn parse_platform(name: &str) -> Result<Platform, ToolError> {
    Platform::parse(name).ok_or_else(|| {
        ToolError::InvalidRequest(format!(
            "unknown platform `{name}`; see list_platforms (openai, anthropic, mcp, http)"
        ))
    })
}

/// Seals `credentials` for connection `id`; `None` when there is nothing to keep.
fn seal(app: &App, id: Uuid, credentials: &Value) -> Result<Option<Vec<u8>>, ToolError> {
    let empty = match credentials {
        Value::Object(map) => map.values().all(Value::is_null),
        Value::Null => true,
        _ => false,
    };
    if empty {
        return Ok(None);
    }
    let vault = app.vault.as_ref().ok_or_else(|| {
        ToolError::Forbidden(
            "this server has no encryption key for credentials; the operator must set \
             AGENTCRM_ENCRYPTION_KEY (32+ characters, the same on every process)"
                .into(),
        )
    })?;
    let bytes = serde_json::to_vec(credentials)
        .map_err(|e| ToolError::Internal(format!("credentials do not serialize: {e}")))?;
    Ok(Some(vault.seal(&bytes, id.as_bytes())))
}

/// The credentials stored on connection `id`.
fn open(app: &App, id: Uuid, sealed: Option<&[u8]>) -> Result<Value, ToolError> {
    let Some(sealed) = sealed else {
        return Ok(no_credentials());
    };
    let vault = app.vault.as_ref().ok_or_else(|| {
        ToolError::Forbidden(
            "this process has no encryption key (AGENTCRM_ENCRYPTION_KEY), so it cannot use \
             this connection's credentials"
                .into(),
        )
    })?;
    let bytes = vault
        .open(sealed, id.as_bytes())
        .map_err(|e| ToolError::Internal(e.to_string()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ToolError::Internal(format!("stored credentials do not read: {e}")))
}

#[derive(sqlx::FromRow)]
struct Stored {
    #[sqlx(flatten)]
    connection: Connection,
    secret_encrypted: Option<Vec<u8>>,
}

/// A connection of the tenant by id or name, with its credentials opened and checked.
pub async fn load(
    app: &App,
    tenant_id: Uuid,
    id_or_name: &str,
) -> Result<(Connection, Platform, Resolved), ToolError> {
    let id = Uuid::parse_str(id_or_name).ok();
    let stored: Stored = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, secret_encrypted FROM connections
         WHERE tenant_id = $1 AND (id = $2 OR name = $3)"
    )))
    .bind(tenant_id)
    .bind(id)
    .bind(id_or_name)
    .fetch_optional(app.store.pool())
    .await
    .map_err(StoreError::from)?
    .ok_or_else(|| ToolError::NotFound(format!("no connection `{id_or_name}` in this tenant")))?;
    let connection = stored.connection;
    let platform = parse_platform(&connection.platform)?;
    let credentials = open(app, connection.id, stored.secret_encrypted.as_deref())?;
    let (_, resolved) = resolve(
        platform,
        connection.config.clone(),
        credentials,
        app.outbound,
    )
    .map_err(|e| {
        ToolError::Conflict(format!(
            "connection `{}` is no longer valid ({e}); update it",
            connection.name
        ))
    })?;
    Ok((connection, platform, resolved))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// `openai`, `anthropic`, `mcp` or `http`.
    ///
    /// See list_platforms.
    pub platform: String,
    /// 1 to 40 of a-z, 0-9 and `-`.
    ///
    /// Unique in the tenant, not starting with `-`; it prefixes the connection's tools in the
    /// catalog (`<name>__<tool>`).
    pub name: String,
    /// What it is for.
    ///
    /// Up to 500 characters.
    #[serde(default)]
    pub description: String,
    /// Settings.
    ///
    /// Their schema is the platform's `config_schema`.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// Secrets; never shown again.
    ///
    /// Their schema is the platform's `credentials_schema`.
    #[serde(default)]
    pub credentials: Map<String, Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConnectionOut {
    pub connection: Connection,
    /// Remote MCP servers: tools imported into the catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools_imported: Option<usize>,
}

async fn create_connection(ctx: ToolCtx, args: CreateArgs) -> Result<ConnectionOut, ToolError> {
    check_name(&args.name)?;
    let platform = parse_platform(&args.platform)?;
    if args.description.chars().count() > 500 {
        return Err(ToolError::InvalidRequest(
            "description is limited to 500 characters".into(),
        ));
    }
    let credentials = Value::Object(args.credentials);
    let (config, _) = resolve(
        platform,
        Value::Object(args.config),
        credentials.clone(),
        ctx.app.outbound,
    )
    .map_err(ToolError::InvalidRequest)?;
    let id = Uuid::new_v4();
    let sealed = seal(&ctx.app, id, &credentials)?;
    let pool = ctx.app.store.pool();
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let count =
        crate::store::lock_and_count(&mut tx, ctx.principal.tenant_id, "connections").await?;
    if count >= MAX_CONNECTIONS {
        return Err(ToolError::Conflict(format!(
            "this tenant already has {MAX_CONNECTIONS} connections; delete one first"
        )));
    }
    let inserted: Result<Connection, sqlx::Error> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO connections (id, tenant_id, name, platform, description, config,
             secret_encrypted, created_by_kind, created_by_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(ctx.principal.tenant_id)
    .bind(&args.name)
    .bind(platform.as_str())
    .bind(&args.description)
    .bind(&config)
    .bind(sealed)
    .bind(ctx.principal.kind.as_str())
    .bind(ctx.principal.id)
    .fetch_one(&mut *tx)
    .await;
    let mut connection = match inserted {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(ToolError::Conflict(format!(
                "a connection named `{}` already exists",
                args.name
            )));
        }
        other => other.map_err(StoreError::from)?,
    };
    ctx.commit(tx).await?;
    let mut tools_imported = None;
    if matches!(platform, Platform::Mcp | Platform::Http) {
        // Imported now so the tools can be used at once; a failure is the status, not an error.
        tools_imported = catalog::refresh_one(&ctx.app, ctx.principal.tenant_id, id)
            .await
            .ok();
        connection = get(&ctx.app, ctx.principal.tenant_id, id).await?;
    }
    Ok(ConnectionOut {
        connection,
        tools_imported,
    })
}

async fn get(app: &App, tenant_id: Uuid, id: Uuid) -> Result<Connection, ToolError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM connections WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(app.store.pool())
    .await
    .map_err(StoreError::from)?
    .ok_or_else(|| ToolError::NotFound(format!("no connection {id} in this tenant")))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// `openai`, `anthropic`, `mcp` or `http`.
    pub platform: Option<String>,
    /// `active`, `error` or `expired`.
    pub status: Option<String>,
    #[serde(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConnectionList {
    pub connections: Vec<Connection>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_connections(ctx: ToolCtx, args: ListArgs) -> Result<ConnectionList, ToolError> {
    let page = args.page.page()?;
    if let Some(platform) = &args.platform {
        parse_platform(platform)?;
    }
    if let Some(status) = &args.status
        && !matches!(status.as_str(), "active" | "error" | "expired")
    {
        return Err(ToolError::InvalidRequest(
            "status is active, error or expired".into(),
        ));
    }
    let tenant = ctx.principal.tenant_id;
    let (connections, total) = fetch_page(
        ctx.app.store.pool(),
        COLUMNS,
        |q| {
            q.push(" FROM connections WHERE tenant_id = ")
                .push_bind(tenant);
            if let Some(platform) = &args.platform {
                q.push(" AND platform = ").push_bind(platform.clone());
            }
            if let Some(status) = &args.status {
                q.push(" AND status = ").push_bind(status.clone());
            }
        },
        "name, id",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    Ok(ConnectionList {
        connections,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateArgs {
    /// Id or name.
    ///
    /// The connection's id or name.
    pub connection: String,
    /// 1 to 40 of a-z, 0-9 and `-`.
    ///
    /// The connection's catalog tools are renamed with it.
    pub name: Option<String>,
    /// What it is for.
    pub description: Option<String>,
    /// Keys to set; `null` removes one.
    ///
    /// Given keys replace the stored ones; the others are kept.
    pub config: Option<Map<String, Value>>,
    /// Keys to set; `null` removes one.
    ///
    /// Given keys replace the stored ones; the others are kept.
    pub credentials: Option<Map<String, Value>>,
}

fn merge(stored: Value, changes: Map<String, Value>) -> Value {
    let mut map = match stored {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for (key, value) in changes {
        if value.is_null() {
            map.remove(&key);
        } else {
            map.insert(key, value);
        }
    }
    Value::Object(map)
}

async fn update_connection(ctx: ToolCtx, args: UpdateArgs) -> Result<ConnectionOut, ToolError> {
    let tenant = ctx.principal.tenant_id;
    let pool = ctx.app.store.pool();
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let id = Uuid::parse_str(&args.connection).ok();
    let stored: Stored = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, secret_encrypted FROM connections
         WHERE tenant_id = $1 AND (id = $2 OR name = $3) FOR UPDATE"
    )))
    .bind(tenant)
    .bind(id)
    .bind(&args.connection)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?
    .ok_or_else(|| {
        ToolError::NotFound(format!(
            "no connection `{}` in this tenant",
            args.connection
        ))
    })?;
    let current = stored.connection;
    let platform = parse_platform(&current.platform)?;
    if let Some(name) = &args.name {
        check_name(name)?;
    }
    if let Some(description) = &args.description
        && description.chars().count() > 500
    {
        return Err(ToolError::InvalidRequest(
            "description is limited to 500 characters".into(),
        ));
    }
    let config = match args.config {
        Some(changes) => merge(current.config.clone(), changes),
        None => current.config.clone(),
    };
    let credentials_changed = args.credentials.is_some();
    let credentials = match args.credentials {
        Some(changes) => merge(
            open(&ctx.app, current.id, stored.secret_encrypted.as_deref())?,
            changes,
        ),
        None => open(&ctx.app, current.id, stored.secret_encrypted.as_deref())?,
    };
    let (config, _) = resolve(platform, config, credentials.clone(), ctx.app.outbound)
        .map_err(ToolError::InvalidRequest)?;
    let sealed = if credentials_changed {
        seal(&ctx.app, current.id, &credentials)?
    } else {
        stored.secret_encrypted
    };
    let updated: Result<Connection, sqlx::Error> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE connections SET name = $3, description = $4, config = $5, secret_encrypted = $6,
             status = CASE WHEN $7 THEN 'active' ELSE status END,
             status_error = CASE WHEN $7 THEN NULL ELSE status_error END,
             updated_at = now()
         WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
    )))
    .bind(tenant)
    .bind(current.id)
    .bind(args.name.as_deref().unwrap_or(&current.name))
    .bind(args.description.as_deref().unwrap_or(&current.description))
    .bind(&config)
    .bind(sealed)
    .bind(credentials_changed)
    .fetch_one(&mut *tx)
    .await;
    let connection = match updated {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(ToolError::Conflict(format!(
                "a connection named `{}` already exists",
                args.name.unwrap_or_default()
            )));
        }
        other => other.map_err(StoreError::from)?,
    };
    ctx.commit(tx).await?;
    let mut tools_imported = None;
    if matches!(platform, Platform::Mcp | Platform::Http) {
        // Renamed or re-pointed: the catalog follows.
        tools_imported = catalog::refresh_one(&ctx.app, tenant, connection.id)
            .await
            .ok();
    }
    Ok(ConnectionOut {
        connection: get(&ctx.app, tenant, connection.id).await?,
        tools_imported,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionArgs {
    /// Id or name.
    ///
    /// The connection's id or name.
    pub connection: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub deleted: Uuid,
}

async fn delete_connection(ctx: ToolCtx, args: ConnectionArgs) -> Result<Deleted, ToolError> {
    let id = Uuid::parse_str(&args.connection).ok();
    let mut tx = ctx.begin().await?;
    let deleted: Option<Uuid> = sqlx::query_scalar(
        "DELETE FROM connections WHERE tenant_id = $1 AND (id = $2 OR name = $3) RETURNING id",
    )
    .bind(ctx.principal.tenant_id)
    .bind(id)
    .bind(&args.connection)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let deleted = deleted.ok_or_else(|| {
        ToolError::NotFound(format!(
            "no connection `{}` in this tenant",
            args.connection
        ))
    })?;
    ctx.commit(tx).await?;
    Ok(Deleted { deleted })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TestOutcome {
    pub ok: bool,
    /// What the service answered, or why it failed.
    pub message: String,
    /// `active`, `error` or `expired` (credentials refused).
    pub status: String,
    pub latency_ms: u64,
}

/// A failed probe: `expired` when the service refused the credentials.
pub struct ProbeFailure {
    pub expired: bool,
    pub message: String,
}

impl From<LlmError> for ProbeFailure {
    fn from(error: LlmError) -> ProbeFailure {
        ProbeFailure {
            expired: matches!(
                error,
                LlmError::Status {
                    status: 401 | 403,
                    ..
                }
            ),
            message: error.to_string(),
        }
    }
}

impl From<RemoteError> for ProbeFailure {
    fn from(error: RemoteError) -> ProbeFailure {
        ProbeFailure {
            expired: matches!(error, RemoteError::Unauthorized),
            message: error.to_string(),
        }
    }
}

/// Asks the service something harmless with these credentials.
async fn probe(app: &App, resolved: &Resolved) -> Result<Result<String, ProbeFailure>, ToolError> {
    Ok(match resolved {
        Resolved::Llm { provider, .. } => llm::probe(&app.http()?, provider)
            .await
            .map_err(ProbeFailure::from),
        Resolved::Mcp { server, .. } => {
            remote::list_tools(app.http()?, server, app.outbound.timeout)
                .await
                .map(|tools| format!("{} tools available", tools.len()))
                .map_err(ProbeFailure::from)
        }
        Resolved::Http {
            config,
            secret_headers,
            ..
        } => {
            let mut request = app.http()?.head(&config.url);
            for (name, value) in config.headers.iter().chain(secret_headers) {
                request = request.header(name, value);
            }
            match request.send().await {
                Ok(response) => match response.status().as_u16() {
                    401 | 403 => Err(ProbeFailure {
                        expired: true,
                        message: format!("the endpoint answered {}", response.status()),
                    }),
                    code if code >= 500 => Err(ProbeFailure {
                        expired: false,
                        message: format!("the endpoint answered {}", response.status()),
                    }),
                    _ => Ok(format!("the endpoint answered {}", response.status())),
                },
                Err(error) => Err(ProbeFailure {
                    expired: false,
                    message: format!(
                        "the endpoint could not be reached: {}",
                        crate::jobs::webhooks::describe(&error)
                    ),
                }),
            }
        }
    })
}

/// Records the outcome of using a connection as its status.
pub async fn record_status(
    app: &App,
    tenant_id: Uuid,
    id: Uuid,
    outcome: Result<(), &ProbeFailure>,
    tested: bool,
) -> Result<(), ToolError> {
    let (status, error) = match outcome {
        Ok(()) => ("active", None),
        Err(failure) if failure.expired => ("expired", Some(failure.message.clone())),
        Err(failure) => ("error", Some(failure.message.clone())),
    };
    sqlx::query(
        "UPDATE connections SET status = $3, status_error = $4,
             last_tested_at = CASE WHEN $5 THEN now() ELSE last_tested_at END
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant_id)
    .bind(id)
    .bind(status)
    .bind(error)
    .bind(tested)
    .execute(app.store.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(())
}

fn outcome(result: &Result<String, ProbeFailure>, started: Instant) -> TestOutcome {
    let latency_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(message) => TestOutcome {
            ok: true,
            message: message.clone(),
            status: "active".into(),
            latency_ms,
        },
        Err(failure) => TestOutcome {
            ok: false,
            message: failure.message.clone(),
            status: if failure.expired { "expired" } else { "error" }.into(),
            latency_ms,
        },
    }
}

async fn test_connection(ctx: ToolCtx, args: ConnectionArgs) -> Result<TestOutcome, ToolError> {
    let tenant = ctx.principal.tenant_id;
    let (connection, _, resolved) = load(&ctx.app, tenant, &args.connection).await?;
    let started = Instant::now();
    let result = probe(&ctx.app, &resolved).await?;
    record_status(
        &ctx.app,
        tenant,
        connection.id,
        result.as_ref().map(drop),
        true,
    )
    .await?;
    Ok(outcome(&result, started))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestNewArgs {
    /// `openai`, `anthropic`, `mcp` or `http`.
    pub platform: String,
    /// Settings.
    ///
    /// Their schema is the platform's `config_schema` (see list_platforms).
    #[serde(default)]
    pub config: Map<String, Value>,
    /// Secrets; not saved.
    ///
    /// Their schema is the platform's `credentials_schema`.
    #[serde(default)]
    pub credentials: Map<String, Value>,
}

async fn test_new_connection(ctx: ToolCtx, args: TestNewArgs) -> Result<TestOutcome, ToolError> {
    let platform = parse_platform(&args.platform)?;
    let (_, resolved) = resolve(
        platform,
        Value::Object(args.config),
        Value::Object(args.credentials),
        ctx.app.outbound,
    )
    .map_err(ToolError::InvalidRequest)?;
    let started = Instant::now();
    let result = probe(&ctx.app, &resolved).await?;
    Ok(outcome(&result, started))
}
