//! The `account` toolset: who the caller is and what this server is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ToolError;
use crate::mcp::catalog::{Hints, RegisteredTool, ToolDef, Toolset, tool};
use crate::mcp::context::{Principal, ToolCtx, Transport};
use crate::mcp::filter::visible;
use crate::store::{DatabaseKind, tenants};

pub fn tools() -> Vec<RegisteredTool> {
    vec![
        tool(
            ToolDef {
                name: "whoami",
                title: "Who am I",
                description: "Describe the caller: the principal this server sees, its tenant, \
                    and the transport and session of this connection. Call it first to learn \
                    what the other tools will act as.",
                toolset: Toolset::Account,
                scopes: &[],
                hints: Hints::READ,
            },
            whoami,
        ),
        tool(
            ToolDef {
                name: "server_info",
                title: "Server information",
                description: "Describe this agentcrm server: version, supported MCP protocol \
                    versions, the toolsets and number of tools enabled for this caller, and \
                    the database it runs on (embedded or external) with its schema version.",
                toolset: Toolset::Account,
                scopes: &[],
                hints: Hints::READ,
            },
            server_info,
        ),
    ]
}

/// Takes no arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// The owner of the embedded local default: a human admin of the local tenant.
    LocalOwner,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PrincipalOut {
    pub kind: PrincipalKind,
    pub name: String,
    /// `admin` or `member` for humans.
    pub role: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TenantOut {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WhoamiOut {
    pub principal: PrincipalOut,
    pub tenant: TenantOut,
    pub transport: Transport,
    /// The MCP session id, on HTTP connections that use sessions.
    pub session_id: Option<String>,
}

#[tracing::instrument(skip_all)]
async fn whoami(ctx: ToolCtx, _: NoArgs) -> Result<WhoamiOut, ToolError> {
    let tenant = tenants::get(ctx.app.store.pool(), ctx.principal.tenant_id())
        .await?
        .ok_or_else(|| ToolError::NotFound("the caller's tenant no longer exists".into()))?;
    let principal = match ctx.principal {
        Principal::LocalOwner { .. } => PrincipalOut {
            kind: PrincipalKind::LocalOwner,
            name: "local owner".into(),
            role: "admin".into(),
        },
    };
    Ok(WhoamiOut {
        principal,
        tenant: TenantOut {
            id: tenant.id,
            slug: tenant.slug,
            name: tenant.name,
        },
        transport: ctx.transport,
        session_id: ctx.session_id,
    })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ServerInfoOut {
    pub name: String,
    pub version: String,
    /// MCP protocol versions this server negotiates, newest first.
    pub protocol_versions: Vec<String>,
    /// Toolsets with at least one tool enabled for this caller.
    pub toolsets: Vec<Toolset>,
    /// Number of tools enabled for this caller.
    pub tool_count: usize,
    pub read_only: bool,
    pub database: DatabaseKind,
    /// The newest migration applied to the database.
    pub migration_version: Option<i64>,
}

#[tracing::instrument(skip_all)]
async fn server_info(ctx: ToolCtx, _: NoArgs) -> Result<ServerInfoOut, ToolError> {
    let store = &ctx.app.store;
    let catalog = ctx.app.catalog;
    Ok(ServerInfoOut {
        name: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        protocol_versions: crate::mcp::server::supported_protocol_versions()
            .iter()
            .map(|v| v.to_string())
            .collect(),
        toolsets: ctx.filter.enabled_toolsets(catalog),
        tool_count: visible(catalog, &ctx.filter).count(),
        read_only: ctx.filter.read_only,
        database: store.kind(),
        migration_version: store.migration_version().await?,
    })
}
