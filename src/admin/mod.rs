//! The `admin` toolset: agents, API keys and the audit trail of a tenant. Human admins
//! only: the catalog never offers these tools to agents, whatever their scopes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::audit::{self, AuditFilter, AuditRecord};
use crate::access::federation::{self, IdentityProvider};
use crate::access::policy::{self, Condition, Grant};
use crate::access::ratelimit::{self, Class, Limit};
use crate::access::signin::{self, ConnectedClient};
use crate::access::store::{self as access, Agent, ApiKey};
use crate::access::{Principal, PrincipalKind, Role, Scopes};
use crate::account::NoArgs;
use crate::error::ToolError;
use crate::store::page::{PageArgs, PageInfo};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

mod approval;

const ADMIN: &[&str] = &["admin"];
const AUDIT: &[&str] = &["admin", "audit:read"];

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Admin.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "register_agent",
                "Register an agent",
                "Register an AI agent with its scopes; returns its client secret once.\n\n\
                 The agent is new in this tenant and may use only the scopes given. Returns its \
                 client_id and client_secret; the secret is shown only in this answer, so hand it \
                 to the agent's operator now.",
                ADMIN,
                Hints::CREATE,
            ),
            register_agent,
        ),
        tool(
            def(
                "list_agents",
                "List agents",
                "List the agents of this tenant, with their scopes and whether they are enabled.",
                ADMIN,
                Hints::READ,
            ),
            list_agents,
        ),
        tool(
            def(
                "get_agent",
                "Get an agent",
                "Get one agent of this tenant by id: name, client_id, kind, scopes, enabled.",
                ADMIN,
                Hints::READ,
            ),
            get_agent,
        ),
        tool(
            def(
                "update_agent_permissions",
                "Update an agent's permissions",
                "Set an agent's scopes, field rules, row conditions, grants or rate limits.\n\n\
                 Rate-limit overrides are per class (calls, search, bulk). Changes take effect on \
                 the agent's next request, including requests with tokens issued before the change \
                 (rate limits within seconds).",
                ADMIN,
                Hints::SET,
            ),
            update_agent_permissions,
        ),
        tool(
            def(
                "rotate_agent_secret",
                "Rotate an agent's secret",
                "Give an agent a new client secret, shown once; the old one stops working at \
                 once.\n\n\
                 The old secret's refresh tokens end. The new secret is shown only in this answer.",
                ADMIN,
                Hints {
                    idempotent: false,
                    ..Hints::REMOVE
                },
            ),
            rotate_agent_secret,
        ),
        tool(
            def(
                "disable_agent",
                "Disable an agent",
                "Disable an agent: its tokens stop working at once.\n\n\
                 Its refresh tokens end and it cannot get new ones until enabled again.",
                ADMIN,
                Hints::REMOVE,
            ),
            disable_agent,
        ),
        tool(
            def(
                "enable_agent",
                "Enable an agent",
                "Enable a disabled agent so it can get tokens again.",
                ADMIN,
                Hints::SET,
            ),
            enable_agent,
        ),
        tool(
            def(
                "create_api_key",
                "Create an API key",
                "Create an API key acting for a user (default: you); the key is shown once.\n\n\
                 The user is one of this tenant. The key's scopes must be a subset of the user's; \
                 none means the user's own permissions. The key is shown only in this answer.",
                ADMIN,
                Hints::CREATE,
            ),
            create_api_key,
        ),
        tool(
            def(
                "list_api_keys",
                "List API keys",
                "List this tenant's API keys: name, prefix, owner, scopes, last use, \
                 revocation.\n\n\
                 Keys themselves are never shown again.",
                ADMIN,
                Hints::READ,
            ),
            list_api_keys,
        ),
        tool(
            def(
                "revoke_api_key",
                "Revoke an API key",
                "Revoke an API key; requests with it are refused from now on.",
                ADMIN,
                Hints::REMOVE,
            ),
            revoke_api_key,
        ),
        tool(
            def(
                "list_connected_clients",
                "List connected clients",
                "List the applications people connected through sign-in (OAuth), with the \
                 scopes each was allowed.\n\n\
                 Of every person of this tenant, or of one (`user_id`); most recently used first.",
                ADMIN,
                Hints::READ,
            ),
            list_connected_clients,
        ),
        tool(
            def(
                "disconnect_client",
                "Disconnect a client",
                "Withdraw a person's consent to an application: its tokens stop working at once.\n\n\
                 Its refresh tokens end; the person can connect it again by signing in.",
                ADMIN,
                Hints::REMOVE,
            ),
            disconnect_client,
        ),
        tool(
            def(
                "invite_user",
                "Invite a person",
                "Give a person a one-time link to set their password (valid 7 days), creating \
                 them first if needed.\n\n\
                 With the password they sign in from remote clients. A new person is a member \
                 with the `scopes` given (admins hold every scope). The link is shown only here.",
                ADMIN,
                Hints {
                    idempotent: false,
                    ..Hints::CREATE
                },
            ),
            invite_user,
        ),
        tool(
            def(
                "set_identity_provider",
                "Set the identity provider",
                "Let this tenant's people sign in through its OpenID Connect provider.\n\n\
                 Give the provider's issuer URL and the client id and secret it issued for this \
                 server (redirect URI `<server>/oauth/federated/callback`). The provider is \
                 checked before anything is saved; the secret is encrypted and never shown. \
                 People are matched by verified email; with `create_members`, someone the \
                 provider vouches for without an account becomes a member with no scopes.",
                ADMIN,
                Hints::SET,
            ),
            set_identity_provider,
        ),
        tool(
            def(
                "get_identity_provider",
                "Get the identity provider",
                "Show this tenant's OpenID Connect provider, if it has one (never its secret).",
                ADMIN,
                Hints::READ,
            ),
            get_identity_provider,
        ),
        tool(
            def(
                "remove_identity_provider",
                "Remove the identity provider",
                "Stop signing this tenant's people in through its provider; passwords still work.",
                ADMIN,
                Hints::REMOVE,
            ),
            remove_identity_provider,
        ),
        tool(
            def(
                "list_audit_log",
                "List the audit log",
                "List the audit trail of tool calls and auth events, newest first; filterable.\n\n\
                 Each event has who, what (arguments with secrets redacted), outcome, duration, \
                 transport, MCP session and request id. Filter by principal, action, outcome, \
                 session and time range.",
                AUDIT,
                Hints::READ,
            ),
            list_audit_log,
        ),
    ]
    .into_iter()
    .chain(approval::tools())
    .collect()
}

fn not_found(what: &str, id: Uuid) -> ToolError {
    // Another tenant's id gets exactly this answer too.
    ToolError::NotFound(format!("no {what} with id {id} in this tenant"))
}

fn scopes(names: &[String]) -> Result<Scopes, ToolError> {
    Scopes::parse(names).map_err(|e| ToolError::InvalidRequest(e.to_string()))
}

/// A unique-constraint violation becomes a `conflict` a person can act on.
fn conflict(error: crate::store::StoreError, message: String) -> ToolError {
    if let crate::store::StoreError::Database(sqlx::Error::Database(db)) = &error {
        if db.is_unique_violation() {
            return ToolError::Conflict(message);
        }
        if db.is_check_violation() {
            return ToolError::InvalidRequest("a value is empty or too long".into());
        }
    }
    error.into()
}

/// The user a human principal is (or acts for).
fn acting_user(principal: &Principal) -> Option<Uuid> {
    match principal.kind {
        PrincipalKind::User | PrincipalKind::LocalOwner => principal.id,
        PrincipalKind::ApiKey => principal.on_behalf_of,
        PrincipalKind::Agent => None,
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgentArgs {
    /// Unique, 1 to 200 characters.
    ///
    /// Unique within the tenant.
    pub name: String,
    /// What the agent is for.
    #[serde(default)]
    pub description: String,
    /// Run by this organisation.
    ///
    /// Default: an external agent.
    #[serde(default)]
    pub internal: bool,
    /// Scopes granted.
    ///
    /// E.g. `["customers:read", "search"]`.
    pub scopes: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RegisteredAgent {
    pub agent: Agent,
    pub client_id: String,
    /// Shown only here: store it now.
    pub client_secret: String,
}

async fn register_agent(
    ctx: ToolCtx,
    args: RegisterAgentArgs,
) -> Result<RegisteredAgent, ToolError> {
    let scopes = scopes(&args.scopes)?;
    let p = &ctx.principal;
    let (agent, client_secret) = access::create_agent(
        ctx.app.store.pool(),
        p.tenant_id,
        &args.name,
        &args.description,
        args.internal,
        scopes,
        acting_user(p),
    )
    .await
    .map_err(|e| conflict(e, format!("an agent named `{}` already exists", args.name)))?;
    Ok(RegisteredAgent {
        client_id: agent.client_id.clone(),
        agent,
        client_secret,
    })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentList {
    pub agents: Vec<Agent>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_agents(ctx: ToolCtx, args: PageArgs) -> Result<AgentList, ToolError> {
    let page = args.page()?;
    let (agents, total) =
        access::page_agents(ctx.app.store.pool(), ctx.principal.tenant_id, page).await?;
    Ok(AgentList {
        agents,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentIdArgs {
    /// From list_agents.
    pub agent_id: Uuid,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentOut {
    pub agent: Agent,
}

async fn get_agent(ctx: ToolCtx, args: AgentIdArgs) -> Result<AgentOut, ToolError> {
    let agent = access::get_agent(ctx.app.store.pool(), ctx.principal.tenant_id, args.agent_id)
        .await?
        .ok_or_else(|| not_found("agent", args.agent_id))?;
    Ok(AgentOut { agent })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePermissionsArgs {
    /// From list_agents.
    pub agent_id: Uuid,
    /// New scopes (absent: unchanged).
    ///
    /// They replace the old ones.
    pub scopes: Option<Vec<String>>,
    /// Rate-limit overrides per class.
    ///
    /// For this agent; `max: null` returns a class to the tenant's (or the default) limit.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitArg>,
    /// Resource -> visible fields; replaces all.
    ///
    /// Enforced on `customers`. The only fields the agent may see and write, e.g.
    /// `{"customers": ["first_name", "email", "phone"]}`; replaces all field rules; `{}` clears.
    pub field_rules: Option<BTreeMap<String, Vec<String>>>,
    /// Resource -> row conditions; replaces all.
    ///
    /// Enforced on `customers` (and so on their interactions, annotations, quotes and
    /// invoices). Conditions every row the agent reads or writes must match, e.g.
    /// `{"customers": [{"field": "status", "op": "eq", "value": "hot_lead"}]}`.
    pub conditions: Option<BTreeMap<String, Vec<Condition>>>,
    /// Explicit grants; replaces all.
    ///
    /// On `customers:read`, `customers:write`, `customers:delete` or `customers:export`, each
    /// with object exceptions (customer ids) that hold on every path touching the customer;
    /// agents need one for `customers:delete` and `customers:export`.
    pub grants: Option<Vec<Grant>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitArg {
    pub class: Class,
    /// Calls per window; null: no override.
    pub max: Option<i64>,
    /// 1 to 86400 seconds (default 3600).
    ///
    /// The window's length.
    pub window_seconds: Option<i64>,
}

async fn update_agent_permissions(
    ctx: ToolCtx,
    args: UpdatePermissionsArgs,
) -> Result<AgentOut, ToolError> {
    let pool = ctx.app.store.pool();
    let tenant = ctx.principal.tenant_id;
    // Everything is validated before anything is written: bad input changes nothing.
    let new_scopes = args.scopes.as_deref().map(scopes).transpose()?;
    let mut limits = Vec::new();
    for arg in &args.rate_limits {
        let window_seconds = arg.window_seconds.unwrap_or(3600);
        let limit = match arg.max {
            Some(max) if max < 0 || !(1..=86_400).contains(&window_seconds) => {
                return Err(ToolError::InvalidRequest(
                    "rate limits need max >= 0 and window_seconds between 1 and 86400".into(),
                ));
            }
            Some(max) => Some(Limit {
                max,
                window_seconds,
            }),
            None => None,
        };
        limits.push((arg.class, limit));
    }
    let mut granted = std::collections::HashSet::new();
    for grant in args.grants.iter().flatten() {
        scopes(std::slice::from_ref(&grant.scope))?;
        if !granted.insert(grant.scope.trim()) {
            return Err(ToolError::InvalidRequest(format!(
                "grants: `{}` is granted twice; give one grant per scope",
                grant.scope
            )));
        }
    }
    let name_ok = |name: &String| !name.trim().is_empty() && name.len() <= 100;
    let rules_ok = args
        .field_rules
        .iter()
        .flatten()
        .all(|(resource, fields)| name_ok(resource) && fields.iter().all(name_ok));
    let conditions_ok = args
        .conditions
        .iter()
        .flatten()
        .all(|(resource, list)| name_ok(resource) && list.iter().all(|c| name_ok(&c.field)));
    if !rules_ok || !conditions_ok {
        return Err(ToolError::InvalidRequest(
            "resource and field names must be 1 to 100 characters".into(),
        ));
    }
    policy::check_enforced(
        args.field_rules.as_ref(),
        args.conditions.as_ref(),
        args.grants.as_deref(),
    )
    .map_err(ToolError::InvalidRequest)?;
    let mut agent = access::get_agent(pool, tenant, args.agent_id)
        .await?
        .ok_or_else(|| not_found("agent", args.agent_id))?;
    if let Some(scopes) = new_scopes {
        agent = access::set_agent_scopes(pool, tenant, args.agent_id, scopes)
            .await?
            .ok_or_else(|| not_found("agent", args.agent_id))?;
    }
    for (class, limit) in limits {
        ratelimit::set_limit(pool, tenant, Some(args.agent_id), class, limit).await?;
    }
    policy::set_agent_policy(
        pool,
        tenant,
        args.agent_id,
        args.field_rules.as_ref(),
        args.conditions.as_ref(),
        args.grants.as_deref(),
    )
    .await?;
    // Other processes hear of it through NOTIFY; this one forgets at once.
    ctx.app.auth_cache.invalidate();
    Ok(AgentOut { agent })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RotatedSecret {
    pub agent: Agent,
    /// Shown only here: store it now.
    pub client_secret: String,
}

async fn rotate_agent_secret(ctx: ToolCtx, args: AgentIdArgs) -> Result<RotatedSecret, ToolError> {
    let (agent, client_secret) =
        access::rotate_agent_secret(ctx.app.store.pool(), ctx.principal.tenant_id, args.agent_id)
            .await?
            .ok_or_else(|| not_found("agent", args.agent_id))?;
    // Other processes hear of it through NOTIFY; this one forgets at once.
    ctx.app.auth_cache.invalidate();
    Ok(RotatedSecret {
        agent,
        client_secret,
    })
}

async fn disable_agent(ctx: ToolCtx, args: AgentIdArgs) -> Result<AgentOut, ToolError> {
    set_enabled(ctx, args.agent_id, false).await
}

async fn enable_agent(ctx: ToolCtx, args: AgentIdArgs) -> Result<AgentOut, ToolError> {
    set_enabled(ctx, args.agent_id, true).await
}

async fn set_enabled(ctx: ToolCtx, agent_id: Uuid, enabled: bool) -> Result<AgentOut, ToolError> {
    let agent = access::set_agent_enabled(
        ctx.app.store.pool(),
        ctx.principal.tenant_id,
        agent_id,
        enabled,
    )
    .await?
    .ok_or_else(|| not_found("agent", agent_id))?;
    // Other processes hear of it through NOTIFY; this one forgets at once.
    ctx.app.auth_cache.invalidate();
    Ok(AgentOut { agent })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyArgs {
    /// A name for the key.
    ///
    /// To recognise it by; 1 to 200 characters.
    pub name: String,
    /// The user it acts for (default: you).
    pub user_id: Option<Uuid>,
    /// A subset of the user's scopes.
    ///
    /// Empty or absent: the user's own permissions.
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    /// Shown only here: store it now.
    pub key: String,
}

async fn create_api_key(ctx: ToolCtx, args: CreateApiKeyArgs) -> Result<CreatedApiKey, ToolError> {
    let p = &ctx.principal;
    let pool = ctx.app.store.pool();
    let user_id = args
        .user_id
        .or_else(|| acting_user(p))
        .ok_or_else(|| ToolError::InvalidRequest("user_id is required".into()))?;
    let owner = access::get_user(pool, p.tenant_id, user_id)
        .await?
        .ok_or_else(|| not_found("user", user_id))?;
    let mut requested = scopes(&args.scopes)?;
    let role = Role::parse(&owner.role).unwrap_or(Role::Member);
    let owned = Principal::human_scopes(role, Scopes::parse(&owner.scopes).unwrap_or_default());
    if !owned.contains(requested) {
        return Err(ToolError::InvalidRequest(format!(
            "an API key's scopes must be a subset of its owner's; {} holds {:?}",
            owner.email,
            owned.names()
        )));
    }
    // A key never exceeds its maker: made through a narrower credential (a narrowed key),
    // it gets at most that credential's scopes, also when none are listed (which would
    // otherwise inherit all of its owner's).
    let effective = if requested.is_empty() {
        owned
    } else {
        requested
    };
    if !p.scopes.contains(effective) {
        if !requested.is_empty() {
            return Err(ToolError::Forbidden(format!(
                "a key cannot be wider than the credential that makes it: {} does not hold {}",
                p.name,
                requested.without(p.scopes).names().join(", ")
            )));
        }
        requested = p.scopes.intersect(owned);
        if requested.is_empty() {
            return Err(ToolError::Forbidden(format!(
                "{} holds none of {}'s scopes, so it cannot make a key for them",
                p.name, owner.email
            )));
        }
    }
    let (api_key, key) = access::create_api_key(pool, p.tenant_id, owner.id, &args.name, requested)
        .await
        .map_err(|e| conflict(e, "that API key already exists".into()))?;
    Ok(CreatedApiKey { api_key, key })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKey>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_api_keys(ctx: ToolCtx, args: PageArgs) -> Result<ApiKeyList, ToolError> {
    let page = args.page()?;
    let (api_keys, total) =
        access::page_api_keys(ctx.app.store.pool(), ctx.principal.tenant_id, page).await?;
    Ok(ApiKeyList {
        api_keys,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyIdArgs {
    /// From list_api_keys.
    pub api_key_id: Uuid,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ApiKeyOut {
    pub api_key: ApiKey,
}

async fn revoke_api_key(ctx: ToolCtx, args: ApiKeyIdArgs) -> Result<ApiKeyOut, ToolError> {
    let api_key = access::revoke_api_key(
        ctx.app.store.pool(),
        ctx.principal.tenant_id,
        args.api_key_id,
    )
    .await?
    .ok_or_else(|| not_found("API key", args.api_key_id))?;
    // Other processes hear of it through NOTIFY; this one forgets at once.
    ctx.app.auth_cache.invalidate();
    Ok(ApiKeyOut { api_key })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteArgs {
    /// The person's email address.
    ///
    /// A person of this tenant with it gets the link; otherwise they are created first.
    pub email: String,
    /// For a new person (default: the email's local part).
    #[schemars(length(max = 200))]
    pub name: Option<String>,
    /// For a new person (default member).
    pub role: Option<InviteRole>,
    /// A new member's scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InviteRole {
    Admin,
    Member,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Invite {
    pub email: String,
    /// Whether the person was created for this invitation.
    pub created: bool,
    /// `/invite/<token>` on this server: shown only here.
    pub invite_path: String,
    /// The whole link, when this server knows its public URL.
    pub invite_url: Option<String>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

async fn invite_user(ctx: ToolCtx, args: InviteArgs) -> Result<Invite, ToolError> {
    let pool = ctx.app.store.pool();
    let tenant = ctx.principal.tenant_id;
    let email = args.email.trim();
    // Characters, as users.email counts them ("é@" is 3 bytes, 2 characters).
    if !(3..=320).contains(&email.chars().count()) || !email.contains('@') {
        return Err(ToolError::InvalidRequest(
            "give the person's email address".into(),
        ));
    }
    let (user, created) = match access::find_user_by_email(pool, tenant, email).await? {
        Some(user) => (user, false),
        None => {
            let role = match args.role.unwrap_or(InviteRole::Member) {
                InviteRole::Admin => Role::Admin,
                InviteRole::Member => Role::Member,
            };
            let granted = scopes(&args.scopes)?;
            // Nobody hands out more than they hold.
            if role == Role::Admin && !ctx.principal.scopes.contains(Scopes::EVERY)
                || !ctx.principal.scopes.contains(granted)
            {
                return Err(ToolError::Forbidden(
                    "an invitation cannot give more than the inviter holds".into(),
                ));
            }
            let name = args
                .name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| email.split('@').next().unwrap_or(email))
                .to_owned();
            // The email's local part may be longer than a name may be.
            if name.chars().count() > 200 {
                return Err(ToolError::InvalidRequest(
                    "`name`: at most 200 characters (give one when the email's local part is \
                     longer)"
                        .into(),
                ));
            }
            let user = access::create_user(pool, tenant, email, &name, role, granted).await?;
            (user, true)
        }
    };
    let inviter = ctx.principal.on_behalf_of.or(ctx.principal.id);
    let (token, expires_at) = signin::create_invite(pool, tenant, user.id, inviter).await?;
    let invite_path = format!("/invite/{token}");
    Ok(Invite {
        email: user.email,
        created,
        invite_url: ctx
            .app
            .tokens
            .as_ref()
            .map(|keys| format!("{}{invite_path}", keys.issuer)),
        invite_path,
        expires_at,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderArgs {
    /// The provider's issuer URL.
    ///
    /// Its discovery document is at `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// Issued by the provider for this server.
    pub client_id: String,
    /// Encrypted at rest; never shown again.
    pub client_secret: String,
    /// Shown on the sign-in page (default: the issuer's host).
    pub display_name: Option<String>,
    /// Create a member (no scopes) on first sign-in (default false).
    #[serde(default)]
    pub create_members: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct IdentityProviderOut {
    pub identity_provider: Option<IdentityProvider>,
}

async fn set_identity_provider(
    ctx: ToolCtx,
    args: IdentityProviderArgs,
) -> Result<IdentityProviderOut, ToolError> {
    let Some(vault) = &ctx.app.vault else {
        return Err(ToolError::Forbidden(
            "this server has no encryption key for the provider's secret; the operator must set \
             AGENTCRM_ENCRYPTION_KEY"
                .into(),
        ));
    };
    let issuer = crate::jobs::outbound::check_url(&args.issuer, ctx.app.outbound)
        .map_err(ToolError::InvalidRequest)?;
    let issuer = issuer.as_str().trim_end_matches('/').to_owned();
    let (client_id, secret) = (args.client_id.trim(), args.client_secret.trim());
    if client_id.is_empty() || client_id.len() > 500 || secret.is_empty() || secret.len() > 2000 {
        return Err(ToolError::InvalidRequest(
            "client_id (1 to 500 characters) and client_secret (1 to 2000) are required".into(),
        ));
    }
    let name = args
        .display_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            reqwest::Url::parse(&issuer)
                .ok()?
                .host_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "your organization".into());
    if name.chars().count() > 100 {
        return Err(ToolError::InvalidRequest(
            "display_name takes at most 100 characters".into(),
        ));
    }
    let http = ctx.app.http()?;
    federation::discover(&http, &issuer)
        .await
        .map_err(|e| ToolError::InvalidRequest(format!("the provider was not usable: {e}")))?;
    let provider = federation::set_provider(
        ctx.app.store.pool(),
        vault,
        ctx.principal.tenant_id,
        &issuer,
        client_id,
        secret,
        &name,
        args.create_members,
    )
    .await?;
    Ok(IdentityProviderOut {
        identity_provider: Some(provider),
    })
}

async fn get_identity_provider(ctx: ToolCtx, _: NoArgs) -> Result<IdentityProviderOut, ToolError> {
    Ok(IdentityProviderOut {
        identity_provider: federation::get_provider(ctx.app.store.pool(), ctx.principal.tenant_id)
            .await?,
    })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Removed {
    pub removed: bool,
}

async fn remove_identity_provider(ctx: ToolCtx, _: NoArgs) -> Result<Removed, ToolError> {
    Ok(Removed {
        removed: federation::remove_provider(ctx.app.store.pool(), ctx.principal.tenant_id).await?,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectedClientsArgs {
    /// Only this person's.
    pub user_id: Option<Uuid>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConnectedClients {
    pub clients: Vec<ConnectedClient>,
}

async fn list_connected_clients(
    ctx: ToolCtx,
    args: ConnectedClientsArgs,
) -> Result<ConnectedClients, ToolError> {
    let clients =
        signin::connected_clients(ctx.app.store.pool(), ctx.principal.tenant_id, args.user_id)
            .await?;
    Ok(ConnectedClients { clients })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectArgs {
    /// From list_connected_clients.
    pub user_id: Uuid,
    /// As `list_connected_clients` gives it.
    pub client_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Disconnected {
    pub user_id: Uuid,
    pub client_id: String,
    pub disconnected: bool,
}

async fn disconnect_client(ctx: ToolCtx, args: DisconnectArgs) -> Result<Disconnected, ToolError> {
    let removed = signin::revoke_client(
        ctx.app.store.pool(),
        ctx.principal.tenant_id,
        args.user_id,
        &args.client_id,
    )
    .await?;
    if !removed {
        return Err(ToolError::NotFound(format!(
            "person {} has not connected a client `{}` in this tenant",
            args.user_id, args.client_id
        )));
    }
    // Other processes hear of it through NOTIFY; this one forgets at once.
    ctx.app.auth_cache.invalidate();
    Ok(Disconnected {
        user_id: args.user_id,
        client_id: args.client_id,
        disconnected: true,
    })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditList {
    pub events: Vec<AuditRecord>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_audit_log(ctx: ToolCtx, args: AuditFilter) -> Result<AuditList, ToolError> {
    let page = PageArgs::of(args.limit, &args.cursor)?;
    let (events, total) = audit::list(ctx.app.store.pool(), ctx.principal.tenant_id, &args, page)
        .await
        .map_err(crate::store::StoreError::from)?;
    Ok(AuditList {
        events,
        page: page.info(total),
    })
}
