//! The `account` toolset: who the caller is and what this server is.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::policy::{Condition, Grant};
use crate::access::ratelimit::Standing;
use crate::access::{PrincipalKind, Role, Scopes};
use crate::error::ToolError;
use crate::store::{DatabaseKind, StoreError, tenants};
use crate::toolkit::catalog::{Hints, RegisteredTool, ToolDef, Toolset, tool};
use crate::toolkit::context::{ToolCtx, Transport};
use crate::toolkit::filter::{Denial, denial, visible};

pub fn tools() -> Vec<RegisteredTool> {
    vec![
        tool(
            ToolDef {
                name: "whoami",
                title: "Who am I",
                description: "Describe the caller: its principal, tenant, transport and session. \
                    Call it first.\n\n\
                    The principal is the one this server sees, which the other tools will act as; \
                    the transport and session are those of this connection.",
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
                description: "Describe this server: version, MCP protocol versions, toolsets and \
                    database.\n\n\
                    The toolsets and the number of tools are those enabled for this caller; the \
                    database is embedded or external, with its schema version.",
                toolset: Toolset::Account,
                scopes: &[],
                hints: Hints::READ,
            },
            server_info,
        ),
        tool(
            ToolDef {
                name: "list_my_permissions",
                title: "List my permissions",
                description: "List the caller's scopes and tools, and why each other tool is \
                    unavailable.\n\n\
                    Gives its effective scopes, the tools it can call, and for every other tool \
                    why it cannot (a missing scope, reserved for humans, or disabled on this \
                    server).",
                toolset: Toolset::Account,
                scopes: &[],
                hints: Hints::READ,
            },
            list_my_permissions,
        ),
        tool(
            ToolDef {
                name: "check_permission",
                title: "Check a permission",
                description: "Check whether the caller may call a `tool` or holds a `scope`, and \
                    why not.\n\n\
                    Use it before planning a step.",
                toolset: Toolset::Account,
                scopes: &[],
                hints: Hints::READ,
            },
            check_permission,
        ),
    ]
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ToolAccess {
    pub name: &'static str,
    pub toolset: Toolset,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ToolRefusal {
    pub name: &'static str,
    pub reason: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PermissionsOut {
    pub kind: PrincipalKind,
    pub scopes: Vec<&'static str>,
    /// Explicit grants, with their object exceptions.
    pub grants: Vec<Grant>,
    /// Tools the caller can call now.
    pub tools: Vec<ToolAccess>,
    /// Every other tool, with the reason.
    pub unavailable: Vec<ToolRefusal>,
}

/// Why the caller cannot call `tool`, or `None` when it can.
fn refusal_reason(ctx: &ToolCtx, tool: &RegisteredTool) -> Option<String> {
    if !ctx.filter.allows(&tool.def) {
        return Some("disabled on this server or for this request".into());
    }
    denial(&ctx.principal, tool).map(|d| match d {
        Denial::HumansOnly => "reserved for human administrators".into(),
        Denial::MissingScopes(missing) => format!("needs scope(s) {}", missing.join(", ")),
    })
}

async fn list_my_permissions(ctx: ToolCtx, _: NoArgs) -> Result<PermissionsOut, ToolError> {
    let mut tools = Vec::new();
    let mut unavailable = Vec::new();
    for tool in ctx.app.catalog.iter() {
        match refusal_reason(&ctx, tool) {
            None => tools.push(ToolAccess {
                name: tool.def.name,
                toolset: tool.def.toolset,
            }),
            Some(reason) => unavailable.push(ToolRefusal {
                name: tool.def.name,
                reason,
            }),
        }
    }
    let grants = ctx.policy().await?.grants.clone();
    Ok(PermissionsOut {
        grants,
        kind: ctx.principal.kind,
        scopes: ctx.principal.scopes.names(),
        tools,
        unavailable,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckArgs {
    /// A tool name.
    ///
    /// E.g. `list_customers`.
    pub tool: Option<String>,
    /// A scope, e.g. `customers:write`.
    pub scope: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckOut {
    pub allowed: bool,
    /// Why not, when not allowed.
    pub reason: Option<String>,
}

async fn check_permission(ctx: ToolCtx, args: CheckArgs) -> Result<CheckOut, ToolError> {
    let reason = match (&args.tool, &args.scope) {
        (Some(name), None) => {
            let tool =
                ctx.app.catalog.get(name).ok_or_else(|| {
                    ToolError::NotFound(format!("there is no tool named `{name}`"))
                })?;
            refusal_reason(&ctx, tool)
        }
        (None, Some(scope)) => {
            let wanted =
                Scopes::parse(&[scope]).map_err(|e| ToolError::InvalidRequest(e.to_string()))?;
            (!ctx.principal.scopes.contains(wanted))
                .then(|| format!("the caller does not hold `{scope}`"))
        }
        _ => {
            return Err(ToolError::InvalidRequest(
                "give exactly one of `tool` or `scope`".into(),
            ));
        }
    };
    Ok(CheckOut {
        allowed: reason.is_none(),
        reason,
    })
}

/// Takes no arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PrincipalOut {
    pub kind: PrincipalKind,
    /// The user, agent or API key id (the local owner's user row for the local owner).
    pub id: Option<Uuid>,
    pub name: String,
    /// For humans and API keys (the owner's role).
    pub role: Option<Role>,
    /// The user an API key acts for.
    pub on_behalf_of: Option<Uuid>,
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
    /// The person this is, or acts for (an API key's owner); absent for agents.
    pub person: Option<PersonOut>,
    pub tenant: TenantOut,
    /// Effective scopes: every tool whose scopes are all here is available.
    pub scopes: Vec<&'static str>,
    /// Where the caller stands against each rate limit.
    pub rate_limits: Vec<Standing>,
    /// Resource -> the only fields the caller may see and write (absent: all).
    pub field_rules: BTreeMap<String, BTreeSet<String>>,
    /// Resource -> conditions every row the caller reads or writes must match.
    pub conditions: BTreeMap<String, Vec<Condition>>,
    pub transport: Transport,
    /// The MCP session id, on HTTP connections that use sessions.
    pub session_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema, sqlx::FromRow)]
pub struct PersonOut {
    pub id: Uuid,
    pub email: String,
    /// Display name.
    pub name: String,
}

#[tracing::instrument(skip_all)]
async fn whoami(ctx: ToolCtx, _: NoArgs) -> Result<WhoamiOut, ToolError> {
    let tenant = tenants::get(ctx.app.store.pool(), ctx.principal.tenant_id)
        .await?
        .ok_or_else(|| ToolError::NotFound("the caller's tenant no longer exists".into()))?;
    let policy = std::sync::Arc::unwrap_or_clone(ctx.policy().await?);
    let p = &ctx.principal;
    let person_id = match p.kind {
        PrincipalKind::User | PrincipalKind::LocalOwner => p.id,
        PrincipalKind::ApiKey => p.on_behalf_of,
        PrincipalKind::Agent => None,
    };
    let person: Option<PersonOut> = match person_id {
        Some(id) => {
            sqlx::query_as("SELECT id, email, name FROM users WHERE tenant_id = $1 AND id = $2")
                .bind(p.tenant_id)
                .bind(id)
                .fetch_optional(ctx.app.store.pool())
                .await
                .map_err(StoreError::from)?
        }
        None => None,
    };
    let principal = PrincipalOut {
        kind: p.kind,
        id: p.id,
        name: p.name.clone(),
        role: p.role,
        on_behalf_of: p.on_behalf_of,
    };
    Ok(WhoamiOut {
        principal,
        person,
        tenant: TenantOut {
            id: tenant.id,
            slug: tenant.slug,
            name: tenant.name,
        },
        scopes: ctx.principal.scopes.names(),
        rate_limits: ctx.app.limiter.standing(&ctx.principal).await?,
        field_rules: policy.field_rules,
        conditions: policy.conditions,
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
        toolsets: {
            let sets: BTreeSet<Toolset> = visible(catalog, &ctx.filter, &ctx.principal)
                .map(|t| t.def.toolset)
                .collect();
            sets.into_iter().collect()
        },
        tool_count: visible(catalog, &ctx.filter, &ctx.principal).count(),
        read_only: ctx.filter.read_only,
        database: store.kind(),
        migration_version: store.migration_version().await?,
    })
}
