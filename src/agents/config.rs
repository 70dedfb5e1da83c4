//! What a runnable agent runs: a prompt agent (system prompt, LLM connection, model,
//! sampling settings, selected tools, guardrails) or a workflow agent (a workflow it
//! starts). The design-time definition is set by `create_agent`; `set_agent_config` lays
//! runtime overrides over it (fields left unset keep the design value) and
//! `reset_agent_config` drops them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::access::Principal;
use crate::access::delegation::Member;
use crate::access::store::Agent;
use crate::app::App;
use crate::connections::catalog as tool_catalog;
use crate::connections::llm::ResponseFormat;
use crate::connections::platforms::Platform;
use crate::error::ToolError;
use crate::store::StoreError;
use crate::toolkit::catalog::handles_secrets;

pub const DEFAULT_MAX_TOOL_CALLS: u32 = 10;
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 120;
const MAX_TIMEOUT_SECONDS: u32 = 3600;
const MAX_SELECTED_TOOLS: usize = 64;
/// Tools that start other runs: offered to a model, they could start runs without end.
pub const NOT_FOR_AGENTS: [&str; 3] = ["run_agent", "execute_workflow", "run_tool"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A tool-calling loop against an LLM connection.
    Prompt,
    /// Runs a workflow with the run's input.
    Workflow,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Prompt => "prompt",
            Kind::Workflow => "workflow",
        }
    }
}

/// Limits a prompt agent's run stops at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guardrails {
    /// Tool calls one run may make (default 10).
    #[serde(default = "default_max_tool_calls")]
    pub max_tool_calls: u32,
    /// Seconds one run may take (default 120, at most 3600); past it the run is `timeout`.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// Total tokens (prompt and completion) one run may use; none: no limit.
    #[serde(default)]
    pub max_token_budget: Option<u64>,
}

fn default_max_tool_calls() -> u32 {
    DEFAULT_MAX_TOOL_CALLS
}

fn default_timeout() -> u32 {
    DEFAULT_TIMEOUT_SECONDS
}

impl Default for Guardrails {
    fn default() -> Guardrails {
        Guardrails {
            max_tool_calls: DEFAULT_MAX_TOOL_CALLS,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            max_token_budget: None,
        }
    }
}

/// The full configuration of a runnable agent (design-time, or effective with overrides).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Prompt agents: instructions given to the model before the run's prompt.
    #[serde(default)]
    pub system_prompt: String,
    /// Prompt agents: the LLM connection (name or id; platform openai or anthropic).
    #[serde(default)]
    pub connection: Option<String>,
    /// Model (default: the connection's).
    ///
    /// Default: the connection's `default_model`.
    #[serde(default)]
    pub model: Option<String>,
    /// 0 to 2.
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// `text` (default) or `json` (the answer is parsed as a JSON object).
    #[serde(default)]
    pub response_format: ResponseFormat,
    /// Catalog tools the model may call (see list_tool_catalog); only those the agent's own
    /// scopes allow are offered at run time.
    #[serde(default)]
    pub selected_tools: Vec<String>,
    #[serde(default)]
    pub guardrails: Guardrails,
    /// Workflow agents: the workflow each run starts.
    #[serde(default)]
    pub workflow_id: Option<Uuid>,
    /// A disabled agent does not run.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Runtime overrides, all optional.
///
/// Every field is optional; unset fields keep the design value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_tools: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tool_calls: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_budget: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self == &Overrides::default()
    }

    /// `self` with the fields `newer` sets replaced.
    pub fn merged(mut self, newer: Overrides) -> Overrides {
        macro_rules! take {
            ($($field:ident),*) => { $( if newer.$field.is_some() { self.$field = newer.$field; } )* };
        }
        take!(
            system_prompt,
            connection,
            model,
            temperature,
            max_tokens,
            response_format,
            selected_tools,
            max_tool_calls,
            timeout_seconds,
            max_token_budget,
            enabled
        );
        self
    }
}

impl Config {
    /// The design with `overrides` laid over it.
    pub fn with(&self, overrides: &Overrides) -> Config {
        let o = overrides.clone();
        Config {
            system_prompt: o
                .system_prompt
                .unwrap_or_else(|| self.system_prompt.clone()),
            connection: o.connection.or_else(|| self.connection.clone()),
            model: o.model.or_else(|| self.model.clone()),
            temperature: o.temperature.or(self.temperature),
            max_tokens: o.max_tokens.or(self.max_tokens),
            response_format: o.response_format.unwrap_or(self.response_format),
            selected_tools: o
                .selected_tools
                .unwrap_or_else(|| self.selected_tools.clone()),
            guardrails: Guardrails {
                max_tool_calls: o.max_tool_calls.unwrap_or(self.guardrails.max_tool_calls),
                timeout_seconds: o.timeout_seconds.unwrap_or(self.guardrails.timeout_seconds),
                max_token_budget: o.max_token_budget.or(self.guardrails.max_token_budget),
            },
            workflow_id: self.workflow_id,
            enabled: o.enabled.unwrap_or(self.enabled),
        }
    }

    /// Checks a configuration of `kind` for tenant `tenant_id`; returns warnings (selected
    /// tools the agent's scopes do not allow today).
    pub async fn check(
        &self,
        app: &App,
        kind: Kind,
        agent: &Principal,
    ) -> Result<Vec<String>, ToolError> {
        let bad = |m: String| Err(ToolError::InvalidRequest(m));
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return bad("temperature is 0 to 2".into());
        }
        if self.max_tokens == Some(0) {
            return bad("max_tokens must be at least 1".into());
        }
        let g = &self.guardrails;
        if g.max_tool_calls > 1000 {
            return bad("guardrails.max_tool_calls is at most 1000".into());
        }
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&g.timeout_seconds) {
            return bad(format!(
                "guardrails.timeout_seconds is 1 to {MAX_TIMEOUT_SECONDS}"
            ));
        }
        if g.max_token_budget == Some(0) {
            return bad("guardrails.max_token_budget must be at least 1".into());
        }
        if self.system_prompt.len() > 100_000 {
            return bad("system_prompt is limited to 100,000 bytes".into());
        }
        match kind {
            Kind::Workflow => {
                let Some(workflow) = self.workflow_id else {
                    return bad("a workflow agent needs workflow_id".into());
                };
                let exists: Option<Uuid> =
                    sqlx::query_scalar("SELECT id FROM workflows WHERE tenant_id = $1 AND id = $2")
                        .bind(agent.tenant_id)
                        .bind(workflow)
                        .fetch_optional(app.store.pool())
                        .await
                        .map_err(StoreError::from)?;
                if exists.is_none() {
                    return Err(ToolError::NotFound(format!(
                        "no workflow {workflow} in this tenant"
                    )));
                }
                Ok(Vec::new())
            }
            Kind::Prompt => {
                let Some(connection) = &self.connection else {
                    return bad("a prompt agent needs an LLM connection (`connection`)".into());
                };
                let (found, platform, _) =
                    crate::connections::manage::load(app, agent.tenant_id, connection).await?;
                if !Platform::is_llm(platform) {
                    return bad(format!(
                        "connection `{}` is a {} connection, not an LLM provider (openai or \
                         anthropic)",
                        found.name, found.platform
                    ));
                }
                if self.selected_tools.len() > MAX_SELECTED_TOOLS {
                    return bad(format!("at most {MAX_SELECTED_TOOLS} selected tools"));
                }
                check_tools(app, agent, &self.selected_tools).await
            }
        }
    }
}

/// Refuses tools that do not exist or that no agent may use; warns of those the agent's
/// scopes do not allow today.
async fn check_tools(
    app: &App,
    agent: &Principal,
    tools: &[String],
) -> Result<Vec<String>, ToolError> {
    let mut warnings = Vec::new();
    let remote: Vec<String> = tools
        .iter()
        .filter(|t| tool_catalog::is_remote(t))
        .cloned()
        .collect();
    let imported = tool_catalog::remote_entries(app, agent.tenant_id, Some(&remote)).await?;
    for name in tools {
        if NOT_FOR_AGENTS.contains(&name.as_str()) {
            return Err(ToolError::InvalidRequest(format!(
                "`{name}` cannot be a prompt agent's tool: agents start other agents through \
                 schedules (schedule_agent with after_agent), whose chains are bounded"
            )));
        }
        if handles_secrets(name) {
            return Err(ToolError::InvalidRequest(format!(
                "`{name}` takes or answers with a secret, which would pass through the model \
                 and the run log; it cannot be an agent's tool"
            )));
        }
        if crate::toolkit::catalog::needs_person(name) {
            return Err(ToolError::InvalidRequest(format!(
                "`{name}` is decided by a person in their own client; it cannot be an agent's \
                 tool"
            )));
        }
        if crate::toolkit::catalog::makes_standing_work(name) {
            return Err(ToolError::InvalidRequest(format!(
                "`{name}` makes work that runs later for its owner, which an agent's run would \
                 make for less than everyone it acts for; it cannot be an agent's tool"
            )));
        }
        if tool_catalog::is_remote(name) {
            match imported.iter().find(|e| &e.name == name) {
                None => {
                    return Err(ToolError::InvalidRequest(format!(
                        "selected tool `{name}` is not in the tool catalog; see \
                         list_tool_catalog (refresh_tool_catalog imports a connection's tools)"
                    )));
                }
                Some(entry) if !agent.scopes.contains(entry.required()) => {
                    warnings.push(format!(
                        "`{name}` needs {} which the agent lacks; it is not offered until granted",
                        entry.required().names().join(", ")
                    ));
                }
                Some(_) => {}
            }
            continue;
        }
        let Some(tool) = app.catalog.get(name) else {
            return Err(ToolError::InvalidRequest(format!(
                "selected tool `{name}` does not exist; see list_tool_catalog"
            )));
        };
        if tool.humans_only {
            return Err(ToolError::InvalidRequest(format!(
                "`{name}` is for people only; no agent may call it"
            )));
        }
        if !agent.scopes.contains(tool.required) {
            warnings.push(format!(
                "`{name}` needs {} which the agent lacks; it is not offered until granted",
                tool.def.scopes.join(", ")
            ));
        }
    }
    Ok(warnings)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Runnable {
    pub agent_id: Uuid,
    pub tenant_id: Uuid,
    pub kind: String,
    pub definition: Value,
    pub overrides: Value,
    pub paused: bool,
    pub updated_by_name: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Who owns the definition (none: its creator is gone, admins only) and who last
    /// changed what it does: both are in the chain of every run.
    pub owner: Option<Value>,
    pub behaviour_by: Option<Value>,
}

pub const RUNNABLE_COLUMNS: &str = "agent_id, tenant_id, kind, definition, overrides, paused, \
     updated_by_name, created_at, updated_at, owner, behaviour_by";

impl Runnable {
    pub fn owner(&self) -> Option<Member> {
        self.owner
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// The owner and the last editor, as chain members of its runs.
    pub fn owner_members(&self) -> Vec<Member> {
        crate::access::delegation::stored_members(
            [&self.owner, &self.behaviour_by].into_iter().flatten(),
        )
    }

    pub fn kind(&self) -> Result<Kind, ToolError> {
        match self.kind.as_str() {
            "prompt" => Ok(Kind::Prompt),
            "workflow" => Ok(Kind::Workflow),
            other => Err(ToolError::Internal(format!("stored agent kind `{other}`"))),
        }
    }

    pub fn design(&self) -> Result<Config, ToolError> {
        serde_json::from_value(self.definition.clone())
            .map_err(|e| ToolError::Internal(format!("stored agent definition: {e}")))
    }

    pub fn overrides(&self) -> Result<Overrides, ToolError> {
        serde_json::from_value(self.overrides.clone())
            .map_err(|e| ToolError::Internal(format!("stored agent overrides: {e}")))
    }

    pub fn effective(&self) -> Result<Config, ToolError> {
        Ok(self.design()?.with(&self.overrides()?))
    }
}

/// An agent of the tenant by id or name, with its runnable definition if it has one.
pub async fn find(
    app: &App,
    tenant_id: Uuid,
    agent: &str,
) -> Result<(Agent, Option<Runnable>), ToolError> {
    let pool = app.store.pool();
    let id = Uuid::parse_str(agent).ok();
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM agents WHERE tenant_id = $1 AND (id = $2 OR name = $3)")
            .bind(tenant_id)
            .bind(id)
            .bind(agent)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)?;
    let not_found = || ToolError::NotFound(format!("no agent `{agent}` in this tenant"));
    let id = found.ok_or_else(not_found)?;
    let identity = crate::access::store::get_agent(pool, tenant_id, id)
        .await?
        .ok_or_else(not_found)?;
    let runnable: Option<Runnable> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUNNABLE_COLUMNS} FROM agent_runnables WHERE tenant_id = $1 AND agent_id = $2"
    )))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?;
    Ok((identity, runnable))
}

/// Like [`find`], for an agent that must be runnable.
pub async fn find_runnable(
    app: &App,
    tenant_id: Uuid,
    agent: &str,
) -> Result<(Agent, Runnable), ToolError> {
    let (identity, runnable) = find(app, tenant_id, agent).await?;
    let runnable = runnable.ok_or_else(|| {
        ToolError::Conflict(format!(
            "agent `{}` has no runnable definition; create_agent with agent_id makes it runnable",
            identity.name
        ))
    })?;
    Ok((identity, runnable))
}

pub fn principal_of(agent: &Agent) -> Principal {
    Principal {
        tenant_id: agent.tenant_id,
        kind: crate::access::principal::PrincipalKind::Agent,
        id: Some(agent.id),
        name: agent.name.clone(),
        role: None,
        on_behalf_of: None,
        scopes: crate::access::Scopes::parse(&agent.scopes).unwrap_or(crate::access::Scopes::NONE),
        delegation: None,
    }
}
