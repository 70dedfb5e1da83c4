//! Defining runnable agents (`agents:write`, people only: agents never manage agents):
//! create one (a new internal identity, or an existing agent made runnable), read and
//! override its configuration, pause and resume it, delete it.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::config::{
    Config, Kind, Overrides, RUNNABLE_COLUMNS, Runnable, find, find_runnable, principal_of,
};
use crate::access::Scopes;
use crate::access::delegation::{self, Member};
use crate::access::store::Agent;
use crate::error::ToolError;
use crate::store::StoreError;
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Agents.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "create_agent",
                "Create a runnable agent",
                "Define what an agent runs (a prompt or a workflow); it runs as itself, with its \
                 own scopes.\n\n\
                 `kind: prompt`: a system prompt, an LLM `connection`, model, temperature, max \
                 tokens, response format (text or json), `selected_tools` from the catalog and \
                 `guardrails` {max_tool_calls, timeout_seconds, max_token_budget}. \
                 `kind: workflow`: `workflow_id`. A new internal agent identity is created with \
                 `scopes` (at most yours), or give `agent` to make an existing agent runnable. \
                 `template` starts from one of list_agent_templates.",
                &["agents:write"],
                Hints::CREATE,
            ),
            create_agent,
        ),
        tool(
            def(
                "get_agent_config",
                "Get an agent's configuration",
                "Get an agent's definition, runtime overrides and effective configuration.\n\n\
                 The definition is the design-time one; the effective configuration is what its \
                 runs use.",
                &["agents:read"],
                Hints::READ,
            ),
            get_agent_config,
        ),
        tool(
            def(
                "set_agent_config",
                "Override an agent's configuration",
                "Set runtime overrides over an agent's definition; runs with overrides are \
                 `dynamic`.\n\n\
                 Any of system_prompt, connection, model, temperature, max_tokens, \
                 response_format, selected_tools, max_tool_calls, timeout_seconds, \
                 max_token_budget, enabled. Fields not given keep their value.",
                &["agents:write"],
                Hints::SET,
            ),
            set_agent_config,
        ),
        tool(
            def(
                "reset_agent_config",
                "Reset an agent's configuration",
                "Drop every runtime override: the agent runs its design-time definition again.",
                &["agents:write"],
                Hints::SET,
            ),
            reset_agent_config,
        ),
        tool(
            def(
                "pause_agent",
                "Pause an agent",
                "Pause an agent: no schedule, chain or run_agent starts it until resume_agent.\n\n\
                 Due times pass without a run.",
                &["agents:write"],
                Hints::SET,
            ),
            pause_agent,
        ),
        tool(
            def(
                "resume_agent",
                "Resume an agent",
                "Let a paused agent run again; its schedules' next runs are planned from now.",
                &["agents:write"],
                Hints::SET,
            ),
            resume_agent,
        ),
        tool(
            def(
                "delete_agent",
                "Delete an agent",
                "Delete an agent with its credentials, definition and schedules; past runs \
                 stay.\n\n\
                 Its identity and credentials, runnable definition and schedules go; its past runs \
                 stay in the run log.",
                &["agents:write"],
                Hints::REMOVE,
            ),
            delete_agent,
        ),
    ]
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentConfigOut {
    pub agent_id: Uuid,
    pub name: String,
    pub kind: Kind,
    /// The identity's scopes: what its runs may do.
    pub scopes: Vec<String>,
    /// The identity is enabled (disable_agent stops it everywhere).
    pub identity_enabled: bool,
    pub paused: bool,
    pub design: Config,
    pub overrides: Overrides,
    pub effective: Config,
    /// `design` without overrides, `dynamic` with them.
    pub run_type: &'static str,
    /// Selected tools the agent's scopes do not allow today (not offered to its model).
    pub warnings: Vec<String>,
    pub updated_by: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Who owns the definition (only they or an admin change it; none: admins only) and
    /// who last changed what it does: its runs act for both, besides the agent.
    #[schemars(with = "Option<Member>")]
    pub owner: Option<Value>,
    #[schemars(with = "Option<Member>")]
    pub behaviour_by: Option<Value>,
}

fn out(
    agent: &Agent,
    runnable: &Runnable,
    warnings: Vec<String>,
) -> Result<AgentConfigOut, ToolError> {
    let overrides = runnable.overrides()?;
    Ok(AgentConfigOut {
        agent_id: agent.id,
        name: agent.name.clone(),
        kind: runnable.kind()?,
        scopes: agent.scopes.clone(),
        identity_enabled: agent.enabled,
        paused: runnable.paused,
        design: runnable.design()?,
        run_type: if overrides.is_empty() {
            "design"
        } else {
            "dynamic"
        },
        effective: runnable.effective()?,
        overrides,
        warnings,
        updated_by: runnable.updated_by_name.clone(),
        updated_at: runnable.updated_at,
        owner: runnable.owner.clone(),
        behaviour_by: runnable.behaviour_by.clone(),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// Name of a new agent identity.
    ///
    /// Unique in the tenant. Not with `agent`.
    pub name: Option<String>,
    /// What the agent is for.
    #[serde(default)]
    pub description: String,
    /// Existing agent to make runnable.
    ///
    /// Its id or name; instead of a new identity.
    pub agent: Option<String>,
    /// The new identity's scopes.
    ///
    /// Each must be one you hold.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `prompt` or `workflow`.
    ///
    /// Default: the template's, else prompt.
    pub kind: Option<Kind>,
    /// Agent template id.
    ///
    /// From list_agent_templates, to start from.
    pub template: Option<String>,
    /// The definition.
    ///
    /// Its fields: system_prompt, connection, model, temperature, max_tokens, response_format,
    /// selected_tools, guardrails, workflow_id, enabled. When a template is given, they apply over
    /// the template's.
    #[serde(default)]
    pub config: Map<String, Value>,
}

async fn create_agent(ctx: ToolCtx, args: CreateArgs) -> Result<AgentConfigOut, ToolError> {
    let tenant = ctx.principal.tenant_id;
    let template = match &args.template {
        Some(id) => Some(super::templates::find(id).ok_or_else(|| {
            ToolError::NotFound(format!(
                "no agent template `{id}`; see list_agent_templates"
            ))
        })?),
        None => None,
    };
    let mut definition = template.map(|t| t.config()).unwrap_or_default();
    for (key, value) in args.config {
        definition.insert(key, value);
    }
    let config: Config = serde_json::from_value(Value::Object(definition))
        .map_err(|e| ToolError::InvalidRequest(format!("config: {e}")))?;
    let kind = args
        .kind
        .or(template.map(|t| t.kind))
        .unwrap_or(Kind::Prompt);
    let pool = ctx.app.store.pool();
    // The identity that will run: checked (tools against its scopes) before anything is saved.
    let existing = match (&args.agent, &args.name) {
        (Some(_), Some(_)) => {
            return Err(ToolError::InvalidRequest(
                "give `name` for a new agent or `agent` for an existing one, not both".into(),
            ));
        }
        (Some(agent), None) => {
            if !args.scopes.is_empty() {
                return Err(ToolError::InvalidRequest(
                    "an existing agent keeps its scopes (update_agent_permissions changes them)"
                        .into(),
                ));
            }
            let (agent, runnable) = find(&ctx.app, tenant, agent).await?;
            // Nobody borrows an identity wider than themselves.
            delegation::may_run_as(
                &ctx.principal,
                Scopes::parse(&agent.scopes).unwrap_or(Scopes::EVERY),
                &agent.name,
            )?;
            if runnable.is_some() {
                return Err(ToolError::Conflict(format!(
                    "agent `{}` is already runnable; use set_agent_config",
                    agent.name
                )));
            }
            Some(agent)
        }
        (None, Some(name)) => {
            if name.trim().is_empty() || name.chars().count() > 200 {
                return Err(ToolError::InvalidRequest(
                    "name is 1 to 200 characters".into(),
                ));
            }
            None
        }
        (None, None) => {
            return Err(ToolError::InvalidRequest(
                "give `name` for a new agent or `agent` to make an existing one runnable".into(),
            ));
        }
    };
    let scopes =
        Scopes::parse(&args.scopes).map_err(|e| ToolError::InvalidRequest(e.to_string()))?;
    if !ctx.principal.scopes.contains(scopes) {
        return Err(ToolError::Forbidden(format!(
            "you cannot give an agent scopes you do not hold: {}",
            scopes.without(ctx.principal.scopes).names().join(", ")
        )));
    }
    let identity = match &existing {
        Some(agent) => principal_of(agent),
        None => crate::access::Principal {
            tenant_id: tenant,
            kind: crate::access::principal::PrincipalKind::Agent,
            id: None,
            name: args.name.clone().unwrap_or_default(),
            role: None,
            on_behalf_of: None,
            scopes,
            delegation: None,
        },
    };
    let warnings = config.check(&ctx.app, kind, &identity).await?;
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let agent = match existing {
        Some(agent) => agent,
        None => {
            let created: Result<Agent, sqlx::Error> = sqlx::query_as(
                "INSERT INTO agents (tenant_id, name, description, client_id, secret_hash, kind, scopes, created_by)
                 VALUES ($1, $2, $3, $4, $5, 'internal', $6, $7)
                 RETURNING id, tenant_id, name, description, client_id, kind, enabled, scopes, created_at",
            )
            .bind(tenant)
            .bind(args.name.as_deref().unwrap_or_default().trim())
            .bind(&args.description)
            .bind(crate::access::secrets::new_client_id())
            // Runs inside the server need no secret; rotate_agent_secret issues one if wanted.
            .bind(crate::access::secrets::new_client_secret().1)
            .bind(scopes.to_strings())
            .bind(ctx.principal.on_behalf_of.or(ctx.principal.id).filter(|_| !ctx.principal.is_agent()))
            .fetch_one(&mut *tx)
            .await;
            match created {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    return Err(ToolError::Conflict(format!(
                        "an agent named `{}` already exists",
                        args.name.unwrap_or_default()
                    )));
                }
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                    return Err(ToolError::Internal(format!("agent creator: {e}")));
                }
                other => other.map_err(StoreError::from)?,
            }
        }
    };
    let owner = delegation::owner_member(pool, &ctx.principal).await?;
    let runnable: Runnable = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO agent_runnables (agent_id, tenant_id, kind, definition, updated_by_name,
             owner, behaviour_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {RUNNABLE_COLUMNS}"
    )))
    .bind(agent.id)
    .bind(tenant)
    .bind(kind.as_str())
    .bind(serde_json::to_value(&config).unwrap_or_default())
    .bind(&ctx.principal.name)
    .bind(serde_json::to_value(owner).unwrap_or_default())
    .bind(serde_json::to_value(Member::of(&ctx.principal)).unwrap_or_default())
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    ctx.commit(tx).await?;
    out(&agent, &runnable, warnings)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentArgs {
    /// Agent id or name.
    pub agent: String,
}

async fn get_agent_config(ctx: ToolCtx, args: AgentArgs) -> Result<AgentConfigOut, ToolError> {
    let (agent, runnable) = find_runnable(&ctx.app, ctx.principal.tenant_id, &args.agent).await?;
    let kind = runnable.kind()?;
    let warnings = match kind {
        Kind::Prompt => runnable
            .effective()?
            .check(&ctx.app, kind, &principal_of(&agent))
            .await
            .unwrap_or_else(|e| vec![e.to_body(&ctx.request_id).error_description]),
        Kind::Workflow => Vec::new(),
    };
    out(&agent, &runnable, warnings)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetArgs {
    /// Agent id or name.
    pub agent: String,
    /// Fields to override.
    ///
    /// Fields not given keep their current override or design value.
    pub overrides: Overrides,
}

/// Only a runnable's owner or an admin changes it.
fn may_change(ctx: &ToolCtx, agent: &Agent, runnable: &Runnable) -> Result<(), ToolError> {
    delegation::may_manage(
        &ctx.principal,
        runnable.owner().as_ref(),
        &format!("agent `{}`'s definition", agent.name),
    )
}

async fn set_agent_config(ctx: ToolCtx, args: SetArgs) -> Result<AgentConfigOut, ToolError> {
    let tenant = ctx.principal.tenant_id;
    let (agent, runnable) = find_runnable(&ctx.app, tenant, &args.agent).await?;
    may_change(&ctx, &agent, &runnable)?;
    let kind = runnable.kind()?;
    if kind == Kind::Workflow {
        let o = &args.overrides;
        if o.clone().merged(Overrides::default())
            != (Overrides {
                enabled: o.enabled,
                ..Default::default()
            })
        {
            return Err(ToolError::InvalidRequest(
                "a workflow agent's only override is `enabled`; change its workflow instead".into(),
            ));
        }
    }
    let overrides = runnable.overrides()?.merged(args.overrides);
    let effective = runnable.design()?.with(&overrides);
    let warnings = effective
        .check(&ctx.app, kind, &principal_of(&agent))
        .await?;
    let mut tx = ctx.begin().await?;
    let runnable: Runnable = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE agent_runnables SET overrides = $3, updated_by_name = $4, updated_at = now(),
             behaviour_by = $5
         WHERE tenant_id = $1 AND agent_id = $2 RETURNING {RUNNABLE_COLUMNS}"
    )))
    .bind(tenant)
    .bind(agent.id)
    .bind(serde_json::to_value(&overrides).unwrap_or_default())
    .bind(&ctx.principal.name)
    // Whoever changes what it does is who its runs act for from now on (with its owner).
    .bind(serde_json::to_value(Member::of(&ctx.principal)).unwrap_or_default())
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    ctx.commit(tx).await?;
    out(&agent, &runnable, warnings)
}

async fn set_columns(
    ctx: &ToolCtx,
    agent: &str,
    change: &'static str,
) -> Result<(Agent, Runnable), ToolError> {
    let tenant = ctx.principal.tenant_id;
    let (agent, runnable) = find_runnable(&ctx.app, tenant, agent).await?;
    may_change(ctx, &agent, &runnable)?;
    let mut tx = ctx
        .app
        .store
        .pool()
        .begin()
        .await
        .map_err(StoreError::from)?;
    let sql = match change {
        "reset" => "overrides = '{}'",
        "pause" => "paused = true",
        _ => "paused = false",
    };
    let runnable: Runnable = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE agent_runnables SET {sql}, updated_by_name = $3, updated_at = now()
         WHERE tenant_id = $1 AND agent_id = $2 RETURNING {RUNNABLE_COLUMNS}"
    )))
    .bind(tenant)
    .bind(agent.id)
    .bind(&ctx.principal.name)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if change == "resume" {
        super::schedules::replan(&mut tx, tenant, agent.id).await?;
    }
    ctx.commit(tx).await?;
    Ok((agent, runnable))
}

async fn reset_agent_config(ctx: ToolCtx, args: AgentArgs) -> Result<AgentConfigOut, ToolError> {
    let (agent, runnable) = set_columns(&ctx, &args.agent, "reset").await?;
    out(&agent, &runnable, Vec::new())
}

async fn pause_agent(ctx: ToolCtx, args: AgentArgs) -> Result<AgentConfigOut, ToolError> {
    let (agent, runnable) = set_columns(&ctx, &args.agent, "pause").await?;
    out(&agent, &runnable, Vec::new())
}

async fn resume_agent(ctx: ToolCtx, args: AgentArgs) -> Result<AgentConfigOut, ToolError> {
    let (agent, runnable) = set_columns(&ctx, &args.agent, "resume").await?;
    out(&agent, &runnable, Vec::new())
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub deleted: Uuid,
    pub name: String,
}

async fn delete_agent(ctx: ToolCtx, args: AgentArgs) -> Result<Deleted, ToolError> {
    let tenant = ctx.principal.tenant_id;
    let (agent, runnable) = find(&ctx.app, tenant, &args.agent).await?;
    // An identity goes with its credentials: an admin's to delete, or the owner's of a
    // runnable agent whose identity create_agent made for it (never one an admin registered).
    if !delegation::is_admin_person(&ctx.principal) {
        let made_for_it: Option<bool> = sqlx::query_scalar(
            "SELECT kind = 'internal' AND created_by IS NOT DISTINCT FROM $3
             FROM agents WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(agent.id)
        .bind(ctx.principal.on_behalf_of.or(ctx.principal.id))
        .fetch_optional(ctx.app.store.pool())
        .await
        .map_err(StoreError::from)?;
        match (&runnable, made_for_it) {
            (Some(runnable), Some(true)) => may_change(&ctx, &agent, runnable)?,
            _ => {
                return Err(ToolError::Forbidden(format!(
                    "agent `{}` was registered by an admin (or for someone else): only an \
                     admin deletes it",
                    agent.name
                )));
            }
        }
    }
    let mut tx = ctx.begin().await?;
    sqlx::query("DELETE FROM agents WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(agent.id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    ctx.commit(tx).await?;
    Ok(Deleted {
        deleted: agent.id,
        name: agent.name,
    })
}
