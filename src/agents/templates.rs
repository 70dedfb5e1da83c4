//! Built-in agent templates: prompt agents for common CRM jobs, ready for `create_agent`
//! with a connection of the tenant's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::config::Kind;
use crate::error::ToolError;
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

pub fn tools() -> Vec<RegisteredTool> {
    vec![tool(
        Toolset::Agents.def(
            "list_agent_templates",
            "List agent templates",
            "List built-in prompt agents for common CRM jobs, to create with create_agent.\n\n\
             Lead triage, follow-ups, pipeline digests, churn watch, support escalation, data \
             hygiene; each with its system prompt, tools, guardrails and the scopes it needs. \
             Create one with create_agent {template, name, scopes, config: {connection}}.",
            &["agents:read"],
            Hints::READ,
        ),
        list_agent_templates,
    )]
}

#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub id: &'static str,
    pub name: &'static str,
    pub category: &'static str,
    pub description: &'static str,
    pub kind: Kind,
    pub system_prompt: &'static str,
    pub selected_tools: &'static [&'static str],
    pub scopes: &'static [&'static str],
    pub max_tool_calls: u32,
    pub response_format: &'static str,
    /// A schedule that suits it, as a cron expression.
    pub suggested_cron: Option<&'static str>,
}

impl Template {
    /// The template as a `create_agent` config object.
    pub fn config(&self) -> Map<String, Value> {
        let value = json!({
            "system_prompt": self.system_prompt,
            "selected_tools": self.selected_tools,
            "response_format": self.response_format,
            "guardrails": { "max_tool_calls": self.max_tool_calls, "timeout_seconds": 120 },
        });
        value.as_object().cloned().unwrap_or_default()
    }
}

pub fn library() -> &'static [Template] {
    &TEMPLATES
}

pub fn find(id: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.id == id)
}

const TEMPLATES: [Template; 6] = [
    Template {
        id: "lead-triage",
        name: "Lead triage",
        category: "sales",
        description: "Reads new leads, scores them from their interactions and marks the hot ones.",
        kind: Kind::Prompt,
        system_prompt: "You triage new leads for a sales team. List customers with status `lead` \
            created recently, read each one's interactions, and set the status of those showing \
            buying intent to `hot_lead` with update_customer. Answer with a short list of who you \
            changed and why.",
        selected_tools: &[
            "list_customers",
            "get_customer",
            "list_interactions",
            "update_customer",
        ],
        scopes: &["customers:read", "customers:write", "interactions:read"],
        max_tool_calls: 30,
        response_format: "text",
        suggested_cron: Some("0 8 * * 1-5"),
    },
    Template {
        id: "follow-up-writer",
        name: "Follow-up writer",
        category: "sales",
        description: "Drafts a follow-up note for customers without contact in two weeks.",
        kind: Kind::Prompt,
        system_prompt: "Find customers whose last interaction is older than 14 days, and for \
            each log a `note` interaction drafting a short, friendly follow-up message a person \
            can send. Do not contact anyone yourself.",
        selected_tools: &["list_customers", "list_interactions", "log_interaction"],
        scopes: &["customers:read", "interactions:read", "interactions:write"],
        max_tool_calls: 40,
        response_format: "text",
        suggested_cron: Some("0 9 * * 1"),
    },
    Template {
        id: "pipeline-digest",
        name: "Weekly pipeline digest",
        category: "reporting",
        description: "Summarises the pipeline and revenue as JSON for a callback or a chat post.",
        kind: Kind::Prompt,
        system_prompt: "Produce the weekly pipeline digest: call generate_report for the \
            pipeline and for revenue, then answer with a JSON object {\"summary\": string, \
            \"highlights\": [string], \"risks\": [string]}.",
        selected_tools: &["generate_report"],
        scopes: &["reports"],
        max_tool_calls: 4,
        response_format: "json",
        suggested_cron: Some("0 7 * * 1"),
    },
    Template {
        id: "churn-watch",
        name: "Churn watch",
        category: "success",
        description: "Looks for unhappy customers and asks a person to step in.",
        kind: Kind::Prompt,
        system_prompt: "Search interactions for negative sentiment or complaints in the last \
            week. For each customer at risk, call request_handoff with priority `high` and a \
            reason quoting what they said. Never change customer records.",
        selected_tools: &[
            "search",
            "list_interactions",
            "get_customer",
            "request_handoff",
        ],
        scopes: &["search", "customers:read", "interactions:read", "handoff"],
        max_tool_calls: 30,
        response_format: "text",
        suggested_cron: Some("0 10 * * *"),
    },
    Template {
        id: "support-escalation",
        name: "Support escalation",
        category: "support",
        description: "Given a customer and a message, logs it and escalates when needed.",
        kind: Kind::Prompt,
        system_prompt: "You receive a customer id and an inbound message in your input. Log the \
            message as an inbound interaction with its sentiment, and if the customer is upset \
            or asks for a person, call request_handoff. Answer with what you did.",
        selected_tools: &["get_customer", "log_interaction", "request_handoff"],
        scopes: &["customers:read", "interactions:write", "handoff"],
        max_tool_calls: 6,
        response_format: "text",
        suggested_cron: None,
    },
    Template {
        id: "data-hygiene",
        name: "Data hygiene",
        category: "operations",
        description: "Finds customers with missing or malformed contact details and annotates them.",
        kind: Kind::Prompt,
        system_prompt: "List customers and find records with no email and no phone, or with \
            malformed ones. Add an annotation to each explaining what is missing. Do not edit \
            the records.",
        selected_tools: &["list_customers", "add_annotation"],
        scopes: &["customers:read", "interactions:write"],
        max_tool_calls: 50,
        response_format: "text",
        suggested_cron: Some("0 3 * * 0"),
    },
];

#[derive(Debug, Serialize, JsonSchema)]
pub struct TemplateOut {
    pub id: &'static str,
    pub name: &'static str,
    pub category: &'static str,
    pub description: &'static str,
    pub kind: Kind,
    /// What create_agent takes as `config` (add `connection`).
    pub config: Value,
    /// Scopes to give the agent.
    pub scopes: &'static [&'static str],
    pub suggested_cron: Option<&'static str>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// A category, e.g. `sales`.
    ///
    /// `sales`, `reporting`, `success`, `support` or `operations`.
    pub category: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateOut>,
}

async fn list_agent_templates(_ctx: ToolCtx, args: ListArgs) -> Result<TemplateList, ToolError> {
    let templates = TEMPLATES
        .iter()
        .filter(|t| args.category.as_deref().is_none_or(|c| c == t.category))
        .map(|t| TemplateOut {
            id: t.id,
            name: t.name,
            category: t.category,
            description: t.description,
            kind: t.kind,
            config: Value::Object(t.config()),
            scopes: t.scopes,
            suggested_cron: t.suggested_cron,
        })
        .collect();
    Ok(TemplateList { templates })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Scopes;

    #[test]
    fn every_template_uses_existing_tools_its_scopes_allow() {
        let catalog = crate::catalog::builtin();
        for template in library() {
            let scopes = Scopes::parse(template.scopes).expect("known scopes");
            for name in template.selected_tools {
                let tool = catalog
                    .get(name)
                    .unwrap_or_else(|| panic!("{}: no tool {name}", template.id));
                assert!(!tool.humans_only, "{}: {name} is for people", template.id);
                assert!(
                    scopes.contains(tool.required),
                    "{}: {name} needs {:?}",
                    template.id,
                    tool.def.scopes
                );
            }
            if let Some(cron) = template.suggested_cron {
                crate::jobs::cron::parse(cron).expect("valid cron");
            }
            let config: crate::agents::config::Config =
                serde_json::from_value(Value::Object(template.config())).expect("config reads");
            assert_eq!(config.selected_tools.len(), template.selected_tools.len());
        }
    }
}
