//! A workflow's definition and its validation at save time: every step's tool exists,
//! arguments fit the tool's input as far as can be known before substitution, references
//! point to inputs, variables or earlier steps. Errors name the step and the field.

use std::collections::HashSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::expr::{Condition, references};
use crate::error::ToolError;
use crate::events::EVENT_TYPES;
use crate::toolkit::catalog::{Catalog, handles_secrets, makes_standing_work, needs_person};

pub const MAX_STEPS: usize = 50;
/// Tools a step may not call: a workflow starting workflows could run without end.
const NOT_IN_STEPS: [&str; 2] = ["execute_workflow", "run_tool"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Started with `execute_workflow`.
    #[default]
    Manual,
    /// Started on a schedule (`trigger_config`: `interval_seconds` or `cron`, `timezone`).
    Schedule,
    /// Started by an event of this tenant (`trigger_config`: `event`, optional `condition`
    /// over `{{event.…}}`).
    Event,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::Event => "event",
        }
    }
}

/// On a failed step call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorPolicy {
    /// 0 to 10 (default 0).
    ///
    /// Attempts after the first.
    #[serde(default)]
    pub retries: u32,
    /// Retry delay, ms (default 1000).
    ///
    /// Before the first retry, in milliseconds, doubled for each next one; 10 to 60000.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// `fail` (default) or `continue`.
    ///
    /// After the last failed attempt: `fail` the execution (default) or `continue` with the next
    /// step (the step is recorded as failed).
    #[serde(default)]
    pub then: Then,
}

fn default_backoff() -> u64 {
    1000
}

impl Default for ErrorPolicy {
    fn default() -> ErrorPolicy {
        ErrorPolicy {
            retries: 0,
            backoff_ms: default_backoff(),
            then: Then::Fail,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    #[default]
    Fail,
    Continue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique; letters, digits, `_`, `-`.
    ///
    /// Unique in the workflow, up to 64 characters. Later steps read its result as
    /// `{{steps.<id>.output.<path>}}`.
    pub id: String,
    /// The tool's name.
    ///
    /// See `tools/list`.
    pub tool: String,
    /// Tool arguments; may use `{{…}}`.
    ///
    /// Strings may hold `{{input.x}}`, `{{vars.y}}` and `{{steps.<id>.output.<path>}}`; a string
    /// that is one reference takes the value with its type.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// Run the step only if true.
    ///
    /// Otherwise it is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    #[serde(default)]
    pub on_error: ErrorPolicy,
    /// 1 to 600 seconds (default 60).
    ///
    /// How long one attempt may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

impl Step {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.timeout_seconds.unwrap_or(60)))
    }
}

/// Everything that defines what a workflow does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Definition {
    #[serde(default)]
    pub trigger_type: Trigger,
    #[serde(default)]
    pub trigger_config: Map<String, Value>,
    /// Named values the steps read as `{{vars.<name>}}`.
    #[serde(default)]
    pub variables: Map<String, Value>,
    /// 1 to 50 steps, run in order.
    pub steps: Vec<Step>,
}

/// Checks a definition against the catalog and the tools the tenant imported from its
/// connections (`imported`); the error names the step and the field.
pub fn validate(
    definition: &Definition,
    catalog: &Catalog,
    imported: &[String],
) -> Result<(), ToolError> {
    let invalid = |message: String| Err(ToolError::InvalidRequest(message));
    if definition.steps.is_empty() || definition.steps.len() > MAX_STEPS {
        return invalid(format!("steps: give 1 to {MAX_STEPS} steps"));
    }
    validate_trigger(definition)?;
    let mut earlier: HashSet<&str> = HashSet::new();
    for (index, step) in definition.steps.iter().enumerate() {
        let name = format!("steps[{index}] ({})", step.id);
        let valid_id = !step.id.is_empty()
            && step.id.len() <= 64
            && step
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_id {
            return invalid(format!(
                "steps[{index}].id: use 1 to 64 letters, digits, `_` or `-`"
            ));
        }
        if earlier.contains(step.id.as_str()) {
            return invalid(format!("{name}.id: another step has this id"));
        }
        let tool = catalog.get(&step.tool);
        let remote = crate::connections::catalog::is_remote(&step.tool);
        if tool.is_none() && !(remote && imported.contains(&step.tool)) {
            return invalid(format!(
                "{name}.tool: there is no tool `{}`{}",
                step.tool,
                if remote {
                    " in the tool catalog (refresh_tool_catalog imports a connection's tools)"
                } else {
                    ""
                }
            ));
        }
        if NOT_IN_STEPS.contains(&step.tool.as_str()) {
            return invalid(format!(
                "{name}.tool: a workflow cannot call `{}`",
                step.tool
            ));
        }
        if handles_secrets(&step.tool) {
            return invalid(format!(
                "{name}.tool: `{}` takes or answers with a secret, which a workflow would \
                 store; call it directly",
                step.tool
            ));
        }
        if makes_standing_work(&step.tool) {
            return invalid(format!(
                "{name}.tool: `{}` makes work that runs later for its owner, which a workflow \
                 would make for less than everyone it acts for; call it directly",
                step.tool
            ));
        }
        if needs_person(&step.tool) {
            return invalid(format!(
                "{name}.tool: `{}` is decided by a person in their own client, never by a \
                 workflow, whoever owns it",
                step.tool
            ));
        }
        if !(1..=600).contains(&step.timeout_seconds.unwrap_or(60)) {
            return invalid(format!("{name}.timeout_seconds: 1 to 600"));
        }
        let policy = &step.on_error;
        if policy.retries > 10 || !(10..=60_000).contains(&policy.backoff_ms) {
            return invalid(format!(
                "{name}.on_error: retries 0 to 10, backoff_ms 10 to 60000"
            ));
        }
        for (field, value) in &step.arguments {
            for reference in value_references(value) {
                check_reference(definition, &earlier, reference).map_err(|why| {
                    ToolError::InvalidRequest(format!("{name}.arguments.{field}: {why}"))
                })?;
            }
        }
        if let Some(condition) = &step.condition {
            for field in condition.fields() {
                check_reference(definition, &earlier, field)
                    .map_err(|why| ToolError::InvalidRequest(format!("{name}.condition: {why}")))?;
            }
        }
        // An imported tool's arguments are checked by its server when it is called.
        if let Some(tool) = tool {
            check_arguments(tool, &step.arguments)
                .map_err(|why| ToolError::InvalidRequest(format!("{name}.arguments: {why}")))?;
        }
        earlier.insert(step.id.as_str());
    }
    Ok(())
}

fn validate_trigger(definition: &Definition) -> Result<(), ToolError> {
    let config = &definition.trigger_config;
    let invalid = |message: &str| {
        Err(ToolError::InvalidRequest(format!(
            "trigger_config: {message}"
        )))
    };
    match definition.trigger_type {
        Trigger::Manual => Ok(()),
        Trigger::Schedule => super::schedule::check(config)
            .map_err(|why| ToolError::InvalidRequest(format!("trigger_config: {why}"))),
        Trigger::Event => {
            let Some(event) = config.get("event").and_then(Value::as_str) else {
                return invalid("an event trigger needs `event`, e.g. `customer.created`");
            };
            if !EVENT_TYPES.contains(&event) {
                return invalid(&format!(
                    "`{event}` is not an event; use one of {}",
                    EVENT_TYPES.join(", ")
                ));
            }
            if let Some(condition) = config.get("condition") {
                serde_json::from_value::<Condition>(condition.clone()).map_err(|e| {
                    ToolError::InvalidRequest(format!("trigger_config.condition: {e}"))
                })?;
            }
            Ok(())
        }
    }
}

/// Every `{{…}}` in a value, at any depth.
fn value_references(value: &Value) -> Vec<&str> {
    match value {
        Value::String(text) => references(text).into_iter().map(|(_, r)| r).collect(),
        Value::Array(items) => items.iter().flat_map(value_references).collect(),
        Value::Object(map) => map.values().flat_map(value_references).collect(),
        _ => Vec::new(),
    }
}

fn check_reference(
    definition: &Definition,
    earlier: &HashSet<&str>,
    reference: &str,
) -> Result<(), String> {
    let mut parts = reference.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("input"), Some(name), _) if !name.is_empty() => Ok(()),
        (Some("event"), _, _) if definition.trigger_type == Trigger::Event => Ok(()),
        (Some("vars"), Some(name), _) => {
            if definition.variables.contains_key(name) {
                Ok(())
            } else {
                Err(format!("`{{{{{reference}}}}}` names no variable `{name}`"))
            }
        }
        (Some("steps"), Some(id), rest) => {
            if !earlier.contains(id) {
                Err(format!(
                    "`{{{{{reference}}}}}` refers to `{id}`, which is not an earlier step"
                ))
            } else if !matches!(rest, Some("output" | "status" | "error")) {
                Err(format!(
                    "`{{{{{reference}}}}}`: read a step's `output`, `status` or `error`"
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(format!(
            "`{{{{{reference}}}}}` is not `input.<name>`, `vars.<name>` or `steps.<id>.output…`"
        )),
    }
}

/// Argument names against the tool's input schema, and the whole input when no value
/// waits for a substitution.
fn check_arguments(
    tool: &crate::toolkit::catalog::RegisteredTool,
    arguments: &Map<String, Value>,
) -> Result<(), String> {
    let schema = tool.input_schema();
    let properties = schema.get("properties").and_then(Value::as_object);
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    if closed {
        for name in arguments.keys() {
            if !properties.is_some_and(|p| p.contains_key(name)) {
                return Err(format!("`{}` takes no argument `{name}`", tool.def.name));
            }
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !arguments.contains_key(name) {
                return Err(format!("`{}` needs `{name}`", tool.def.name));
            }
        }
    }
    let waiting = arguments.values().any(|v| !value_references(v).is_empty());
    if !waiting {
        return tool.validate(arguments).map_err(|e| e.to_string());
    }
    // Literal values are checked against their property's declared JSON type.
    for (name, value) in arguments {
        let declared = properties
            .and_then(|p| p.get(name))
            .and_then(|p| p.get("type"));
        let types: Vec<&str> = match declared {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        if !value_references(value).is_empty() || types.iter().any(|t| is_type(value, t)) {
            continue;
        }
        return Err(format!("`{name}` must be {}", types.join(" or ")));
    }
    Ok(())
}

fn is_type(value: &Value, json_type: &str) -> bool {
    match json_type {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}
