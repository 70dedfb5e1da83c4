//! Tool declarations: every tool declared once, with its toolset, scopes and annotations
//! beside the code that runs it, and the registry type they are collected in
//! (`crate::catalog::builtin` assembles this server's). `tools/list`, the generated
//! `schemas/` and `tools/`, and call dispatch all read that one registry.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::context::ToolCtx;
use crate::access::Scopes;
use crate::error::ToolError;

/// Groups of tools that can be enabled or disabled together (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Toolset {
    Account,
    Admin,
    Crm,
    Handoff,
    Workflows,
    Agents,
    Connections,
    Discovery,
}

impl Toolset {
    pub const ALL: [Toolset; 8] = [
        Toolset::Account,
        Toolset::Admin,
        Toolset::Crm,
        Toolset::Handoff,
        Toolset::Workflows,
        Toolset::Agents,
        Toolset::Connections,
        Toolset::Discovery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Toolset::Account => "account",
            Toolset::Admin => "admin",
            Toolset::Crm => "crm",
            Toolset::Handoff => "handoff",
            Toolset::Workflows => "workflows",
            Toolset::Agents => "agents",
            Toolset::Connections => "connections",
            Toolset::Discovery => "discovery",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Toolset::Account => "Who the caller is and what it may do.",
            Toolset::Admin => {
                "Agents, API keys, the audit trail and approval policy (human admins only)."
            }
            Toolset::Crm => {
                "Customers, interactions, search, reports, products, invoices, quotes and webhooks."
            }
            Toolset::Handoff => "Escalation to a person and the approval queue for held actions.",
            Toolset::Workflows => "Multi-step tool chains, their executions and templates.",
            Toolset::Agents => "Runnable agents, schedules, run logs and analytics.",
            Toolset::Connections => "LLM providers, remote MCP servers and outgoing HTTP calls.",
            Toolset::Discovery => {
                "Search and call tools by name, for clients that cannot hold a long tool list."
            }
        }
    }

    pub fn parse(name: &str) -> Option<Toolset> {
        Toolset::ALL.into_iter().find(|t| t.name() == name)
    }

    /// A declaration in this toolset.
    pub const fn def(
        self,
        name: &'static str,
        title: &'static str,
        description: &'static str,
        scopes: &'static [&'static str],
        hints: Hints,
    ) -> ToolDef {
        ToolDef {
            name,
            title,
            description,
            toolset: self,
            scopes,
            hints,
        }
    }
}

/// The four MCP annotations, all explicit: a declaration cannot leave one unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
}

impl Hints {
    /// Reads this server's own data and changes nothing.
    pub const READ: Hints = Hints {
        read_only: true,
        destructive: false,
        idempotent: true,
        open_world: false,
    };
    /// Adds something new each call.
    pub const CREATE: Hints = Hints {
        read_only: false,
        destructive: false,
        idempotent: false,
        open_world: false,
    };
    /// Sets state to given values: repeating the call changes nothing more.
    pub const SET: Hints = Hints {
        read_only: false,
        destructive: false,
        idempotent: true,
        open_world: false,
    };
    /// Takes something away (a record, access, a credential); repeating it changes nothing more.
    pub const REMOVE: Hints = Hints {
        read_only: false,
        destructive: true,
        idempotent: true,
        open_world: false,
    };
}

/// What a tool is, apart from the code that runs it.
#[derive(Debug, Clone)]
pub struct ToolDef {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub toolset: Toolset,
    /// Every scope listed is required to see or call the tool.
    pub scopes: &'static [&'static str],
    pub hints: Hints,
}

type Handler =
    Arc<dyn Fn(ToolCtx, JsonObject) -> BoxFuture<'static, Result<Value, ToolError>> + Send + Sync>;

/// Tools whose answer carries a secret shown only once (a client secret, an API key, a
/// signing secret). Their answers must reach the caller and nowhere else, so they are
/// never run where answers are stored: workflow steps, or held calls run on approval.
pub const RETURNS_SECRETS: [&str; 5] = [
    "invite_user",
    "register_agent",
    "rotate_agent_secret",
    "create_api_key",
    "create_webhook",
];

/// Tools whose arguments carry a secret (connection credentials, callback secrets). Like
/// [`RETURNS_SECRETS`], they are never run where calls are stored or shown to a model:
/// workflow steps, held calls, prompt agents' tools.
pub const TAKES_SECRETS: [&str; 6] = [
    "set_identity_provider",
    "create_connection",
    "update_connection",
    "test_new_connection",
    "schedule_agent",
    "update_schedule",
];

/// Tools that decide for people (a held action, a handoff ticket): a person does that,
/// interactively, in their own client. They are never workflow steps, held calls, agent
/// tools or triggered work, whoever owns the work (SPEC §1, §4).
pub const NEEDS_PERSON: [&str; 2] = ["decide_pending_action", "update_handoff"];

/// Tools that make or change work which runs later for its owner (a workflow, a runnable
/// agent, a schedule). Work done on someone's behalf never calls them: what it made would
/// run for its first member alone, with rights the rest of its chain does not share (a
/// member's step, run by an admin, made a workflow that ran as the admin).
pub const MAKES_STANDING_WORK: [&str; 10] = [
    "create_workflow",
    "update_workflow",
    "use_workflow_template",
    "extract_workflow",
    "create_agent",
    "set_agent_config",
    "reset_agent_config",
    "resume_agent",
    "schedule_agent",
    "update_schedule",
];

/// Does `name` make or change standing work ([`MAKES_STANDING_WORK`])?
pub fn makes_standing_work(name: &str) -> bool {
    MAKES_STANDING_WORK.contains(&name)
}

/// Is `name` a tool only a person at their own client may call?
pub fn needs_person(name: &str) -> bool {
    NEEDS_PERSON.contains(&name)
}

/// Does a call of `name` carry a secret, in its arguments or its answer?
pub fn handles_secrets(name: &str) -> bool {
    RETURNS_SECRETS.contains(&name) || TAKES_SECRETS.contains(&name)
}

/// A declared tool with its MCP description built once and its type-erased handler.
pub struct RegisteredTool {
    pub def: ToolDef,
    /// The full definition: `describe_tools`, `schemas/`, and `tools/list` when configured
    /// to list output schemas.
    pub tool: Tool,
    /// What `tools/list` offers by default: no output schema, and the input schema without
    /// what only validators read (see [`super::listing`]). Tool lists go into a model's context.
    pub listing: Tool,
    /// `def.scopes` as a set.
    pub required: Scopes,
    /// Blocked for agents whatever their scopes (SPEC §1): the admin toolset and anything
    /// needing the `admin` scope.
    pub humans_only: bool,
    /// Only a person's own call from their client runs it ([`NEEDS_PERSON`]).
    pub needs_person: bool,
    /// Every write it makes commits through `ToolCtx::commit`: a workflow step of it that
    /// was interrupted without the mark of a commit provably changed nothing, and is run
    /// again on resume even when the tool is not idempotent.
    pub sealed: bool,
    handler: Handler,
    validate: fn(&JsonObject) -> Result<(), ToolError>,
}

impl RegisteredTool {
    /// Declares that every write of this tool commits through `ToolCtx::commit` (checked by
    /// reading its handler: no write on the pool, no second transaction).
    pub fn sealed(mut self) -> RegisteredTool {
        self.sealed = true;
        self
    }

    pub fn input_schema(&self) -> &JsonObject {
        &self.tool.input_schema
    }

    pub fn output_schema(&self) -> Option<&JsonObject> {
        self.tool.output_schema.as_deref()
    }

    /// Checks that `args` are what the tool takes, without running it (e.g. before a call
    /// is held for approval).
    pub fn validate(&self, args: &JsonObject) -> Result<(), ToolError> {
        (self.validate)(args)
    }

    pub fn call(
        &self,
        ctx: ToolCtx,
        args: JsonObject,
    ) -> BoxFuture<'static, Result<Value, ToolError>> {
        (self.handler)(ctx, args)
    }
}

/// A tool's arguments as its input type; an error names the argument and what it takes.
fn read_input<I: DeserializeOwned>(args: Value) -> Result<I, ToolError> {
    serde_path_to_error::deserialize(args).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        // chrono's messages say what failed, not what is wanted.
        let wanted = if inner.contains("input contains invalid characters")
            || inner.contains("premature end of input")
            || inner.contains("input is out of range")
            || inner.contains("trailing input")
        {
            " (expected an RFC 3339 date-time such as 2026-01-31T09:00:00Z)"
        } else {
            ""
        };
        ToolError::InvalidRequest(if path == "." {
            format!("invalid arguments: {inner}{wanted}")
        } else {
            format!("invalid arguments: `{path}`: {inner}{wanted}")
        })
    })
}

/// Declares a tool from a typed async handler: the input and output schemas come from
/// `I` and `O`, and arguments are deserialized into `I` before the handler runs.
pub fn tool<I, O, F, Fut>(def: ToolDef, handler: F) -> RegisteredTool
where
    I: DeserializeOwned + JsonSchema + 'static,
    O: Serialize + JsonSchema + 'static,
    F: Fn(ToolCtx, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, ToolError>> + Send + 'static,
{
    use rmcp::handler::server::common::{schema_for_input, schema_for_output};
    let input_schema = schema_for_input::<I>()
        .unwrap_or_else(|e| panic!("tool {}: input type is not an object schema: {e}", def.name));
    let tool = Tool::new_with_raw(
        def.name,
        Some(def.description.into()),
        objects(input_schema),
    )
    .with_title(def.title)
    .with_raw_output_schema(objects(schema_for_output::<O>()))
    .with_annotations(
        ToolAnnotations::with_title(def.title)
            .read_only(def.hints.read_only)
            .destructive(def.hints.destructive)
            .idempotent(def.hints.idempotent)
            .open_world(def.hints.open_world),
    );
    let handler = Arc::new(handler);
    let handler: Handler = Arc::new(move |ctx, args| {
        let handler = handler.clone();
        Box::pin(async move {
            storable(&args)?;
            let input: I = read_input(Value::Object(args))?;
            let output = handler(ctx, input).await?;
            serde_json::to_value(output)
                .map_err(|e| ToolError::Internal(format!("could not serialize the result: {e}")))
        })
    });
    let validate: fn(&JsonObject) -> Result<(), ToolError> = |args| {
        storable(args)?;
        read_input::<I>(Value::Object(args.clone())).map(drop)
    };
    let required =
        Scopes::parse(def.scopes).unwrap_or_else(|e| panic!("tool {} declares an {e}", def.name));
    // Deciding for a person is never an agent's to do, whatever its scopes (SPEC §4), nor
    // managing agents (SPEC §1).
    let humans_only = def.toolset == Toolset::Admin
        || def.scopes.contains(&"admin")
        || def.scopes.contains(&"handoff:decide")
        || def.scopes.contains(&"agents:write");
    let needs_person = needs_person(def.name);
    RegisteredTool {
        def,
        listing: super::listing::lean(&tool),
        tool,
        required,
        humans_only,
        needs_person,
        sealed: false,
        handler,
        validate,
    }
}

/// `schema` with every `true` sub-schema (any value, as schemars writes a `serde_json::Value`
/// field) spelled `{}`: the same meaning, and clients of protocol 2025-11-25 accept only
/// objects there.
fn objects(schema: Arc<JsonObject>) -> Arc<JsonObject> {
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match key.as_str() {
                        "properties" | "$defs" | "definitions" | "patternProperties" => {
                            if let Value::Object(members) = child {
                                for member in members.values_mut() {
                                    if *member == Value::Bool(true) {
                                        *member = Value::Object(JsonObject::new());
                                    }
                                }
                            }
                        }
                        "items" | "additionalProperties" if *child == Value::Bool(true) => {
                            *child = Value::Object(JsonObject::new());
                        }
                        "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                            if let Value::Array(members) = child {
                                for member in members.iter_mut() {
                                    if *member == Value::Bool(true) {
                                        *member = Value::Object(JsonObject::new());
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                    walk(child);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = Value::Object((*schema).clone());
    walk(&mut value);
    match value {
        Value::Object(map) => Arc::new(map),
        _ => schema,
    }
}

/// Refuses arguments PostgreSQL cannot store faithfully: text holding the NUL character
/// (text and jsonb refuse it) and floating-point numbers beyond ±2^53 (jsonb keeps every
/// digit of 1e308, which then does not read back as a JSON number).
fn storable(args: &JsonObject) -> Result<(), ToolError> {
    const LIMIT: f64 = 9_007_199_254_740_992.0;
    fn walk(value: &Value, path: &mut String) -> Result<(), ToolError> {
        let nul = |at: &str| {
            ToolError::InvalidRequest(format!(
                "`{at}`: text must not contain the NUL character (U+0000)"
            ))
        };
        match value {
            Value::String(text) if text.contains('\0') => Err(nul(path)),
            Value::Number(n) if n.is_f64() && n.as_f64().is_some_and(|x| x.abs() > LIMIT) => {
                Err(ToolError::InvalidRequest(format!(
                    "`{path}`: numbers must be between -9007199254740992 and 9007199254740992"
                )))
            }
            Value::Array(items) => {
                let len = path.len();
                for (i, item) in items.iter().enumerate() {
                    path.push_str(&format!("[{i}]"));
                    walk(item, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(map) => {
                let len = path.len();
                for (key, item) in map {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&key.replace('\0', "\\0"));
                    if key.contains('\0') {
                        return Err(nul(path));
                    }
                    walk(item, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    let mut path = String::new();
    for (key, value) in args {
        path.clear();
        path.push_str(&key.replace('\0', "\\0"));
        if key.contains('\0') {
            return Err(ToolError::InvalidRequest(format!(
                "`{path}`: text must not contain the NUL character (U+0000)"
            )));
        }
        walk(value, &mut path)?;
    }
    Ok(())
}

/// The most a free-form JSON field stored with a record may take, serialized (custom
/// fields, interaction metadata, workflow metadata): records stay small to read and index.
pub const MAX_STORED_JSON: usize = 64 * 1024;

/// Refuses a free-form JSON field larger than [`MAX_STORED_JSON`], naming it and the cap.
pub fn check_stored_json(
    field: &str,
    value: &serde_json::Map<String, Value>,
) -> Result<(), ToolError> {
    let size = serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_STORED_JSON {
        return Err(ToolError::InvalidRequest(format!(
            "`{field}` takes at most {} KB of JSON ({} KB given)",
            MAX_STORED_JSON / 1024,
            size.div_ceil(1024)
        )));
    }
    Ok(())
}

/// The registry of every tool this server has, in a stable order.
pub struct Catalog {
    tools: Vec<RegisteredTool>,
    by_name: HashMap<&'static str, usize>,
}

impl Catalog {
    pub fn new(tools: Vec<RegisteredTool>) -> Catalog {
        let mut by_name = HashMap::with_capacity(tools.len());
        for (index, tool) in tools.iter().enumerate() {
            let previous = by_name.insert(tool.def.name, index);
            assert!(
                previous.is_none(),
                "tool {} is declared twice",
                tool.def.name
            );
        }
        Catalog { tools, by_name }
    }

    pub fn get(&self, name: &str) -> Option<&RegisteredTool> {
        self.by_name.get(name).map(|&i| &self.tools[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &RegisteredTool> {
        self.tools.iter()
    }
}
