//! The built-in template library: CRM workflows ready to use. `use_workflow_template`
//! saves one as a draft of the caller's tenant, checked like any workflow.

use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::definitions::{CreateArgs, WorkflowOut, insert};
use super::model::Trigger;
use crate::error::ToolError;
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Workflows.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "list_workflow_templates",
                "List workflow templates",
                "List ready-made CRM workflows; filter by category, difficulty, word, \
                 connection.\n\n\
                 Difficulty: beginner, intermediate, advanced. The word is one of the name or \
                 description; the connection is one a template requires.",
                &["workflows:read"],
                Hints::READ,
            ),
            list_workflow_templates,
        ),
        tool(
            def(
                "list_template_categories",
                "List template categories",
                "The categories of the template library, with how many templates each has.",
                &["workflows:read"],
                Hints::READ,
            ),
            list_template_categories,
        ),
        tool(
            def(
                "get_workflow_template",
                "Get a workflow template",
                "A template with its steps, trigger and variables.",
                &["workflows:read"],
                Hints::READ,
            ),
            get_workflow_template,
        ),
        tool(
            def(
                "use_workflow_template",
                "Create a workflow from a template",
                "Save a template as a draft workflow; review it, then activate it with \
                 update_workflow.\n\n\
                 It may be renamed and its variables overridden.",
                &["workflows:write"],
                Hints::CREATE,
            ),
            use_workflow_template,
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Difficulty {
    Beginner,
    Intermediate,
    Advanced,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Template {
    /// A stable name, e.g. `new-lead-follow-up`.
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub category: &'static str,
    pub difficulty: Difficulty,
    /// Connections the workflow needs (none for those using only this server's tools).
    pub required_connections: Vec<&'static str>,
    pub trigger_type: Trigger,
    pub trigger_config: Value,
    pub variables: Value,
    pub steps: Value,
}

#[allow(clippy::too_many_arguments)]
fn template(
    id: &'static str,
    name: &'static str,
    description: &'static str,
    category: &'static str,
    difficulty: Difficulty,
    trigger: (Trigger, Value),
    variables: Value,
    steps: Value,
) -> Template {
    Template {
        id,
        name,
        description,
        category,
        difficulty,
        required_connections: Vec::new(),
        trigger_type: trigger.0,
        trigger_config: trigger.1,
        variables,
        steps,
    }
}

pub fn library() -> &'static [Template] {
    static LIBRARY: OnceLock<Vec<Template>> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        use Difficulty::*;
        let on = |event: &str, condition: Value| {
            let mut config = json!({ "event": event });
            if !condition.is_null() {
                config["condition"] = condition;
            }
            (Trigger::Event, config)
        };
        let weekly = (Trigger::Schedule, json!({ "cron": "0 9 * * 1", "timezone": "UTC" }));
        vec![
            template(
                "new-lead-follow-up",
                "New lead follow-up",
                "When a lead is created, assign it to the sales owner and note a follow-up within a day.",
                "sales",
                Beginner,
                on("customer.created", json!({ "field": "event.payload.customer.status", "operator": "eq", "value": "lead" })),
                json!({ "owner": "sales" }),
                json!([
                    { "id": "assign", "tool": "bulk_update_customers",
                      "arguments": { "customer_ids": ["{{event.payload.customer.id}}"], "set": { "assigned_to": "{{vars.owner}}" } } },
                    { "id": "note", "tool": "log_interaction",
                      "arguments": { "customer_id": "{{event.payload.customer.id}}", "type": "note",
                                     "notes": "New lead {{event.payload.customer.first_name}}: follow up within a day." } },
                ]),
            ),
            template(
                "stale-deal-nudge",
                "Stale deal nudge",
                "Every Monday, tag prospects created before a date for a nudge and ask a person to review them.",
                "sales",
                Intermediate,
                weekly.clone(),
                json!({ "tag": "nudge" }),
                json!([
                    { "id": "stale", "tool": "list_customers",
                      "arguments": { "status": "prospect", "created_before": "{{input.before}}", "limit": 100 } },
                    { "id": "tag", "tool": "bulk_update_customers",
                      "condition": { "field": "steps.stale.output.total", "operator": "gt", "value": 0 },
                      "arguments": { "filter": { "status": "prospect" }, "set": { "add_tags": ["{{vars.tag}}"] } } },
                    { "id": "review", "tool": "request_handoff",
                      "condition": { "field": "steps.stale.output.total", "operator": "gt", "value": 0 },
                      "arguments": { "reason": "{{steps.stale.output.total}} prospects have gone quiet", "priority": "normal" } },
                ]),
            ),
            template(
                "weekly-pipeline-report",
                "Weekly pipeline report",
                "Every Monday at 9:00, the pipeline by status.",
                "reporting",
                Beginner,
                weekly.clone(),
                json!({}),
                json!([{ "id": "pipeline", "tool": "generate_report", "arguments": { "report": "pipeline" } }]),
            ),
            template(
                "escalate-unhappy-customer",
                "Escalate an unhappy customer",
                "When an interaction is logged with negative sentiment, ask a person to step in, urgently.",
                "support",
                Beginner,
                on("interaction.created", json!({ "field": "event.payload.interaction.metadata.sentiment", "operator": "eq", "value": "negative" })),
                json!({}),
                json!([{ "id": "escalate", "tool": "request_handoff",
                         "arguments": { "customer_id": "{{event.payload.interaction.customer_id}}",
                                        "reason": "Negative sentiment on a {{event.payload.interaction.type}}",
                                        "priority": "urgent",
                                        "context": "{{event.payload.interaction.notes}}" } }]),
            ),
            template(
                "vip-welcome",
                "VIP welcome",
                "When a customer is created with the vip tag, note a welcome and ask the account team to call.",
                "customer_success",
                Beginner,
                on("customer.created", json!({ "field": "event.payload.customer.tags", "operator": "contains", "value": "vip" })),
                json!({}),
                json!([
                    { "id": "note", "tool": "log_interaction",
                      "arguments": { "customer_id": "{{event.payload.customer.id}}", "type": "note", "notes": "VIP welcome sent." } },
                    { "id": "call", "tool": "request_handoff",
                      "arguments": { "customer_id": "{{event.payload.customer.id}}", "reason": "Welcome call for a new VIP", "priority": "high" } },
                ]),
            ),
            template(
                "overdue-invoice-chase",
                "Chase sent invoices",
                "Every Monday, list invoices still sent (not paid) and ask finance to chase them.",
                "finance",
                Intermediate,
                weekly.clone(),
                json!({}),
                json!([
                    { "id": "open", "tool": "list_invoices", "arguments": { "status": "sent", "limit": 100 } },
                    { "id": "chase", "tool": "request_handoff",
                      "condition": { "field": "steps.open.output.total", "operator": "gt", "value": 0 },
                      "arguments": { "reason": "{{steps.open.output.total}} invoices are sent and unpaid", "priority": "normal" } },
                ]),
            ),
            template(
                "monthly-revenue-report",
                "Monthly revenue report",
                "On the first of the month, revenue invoiced, paid and outstanding by month.",
                "reporting",
                Beginner,
                (Trigger::Schedule, json!({ "cron": "0 8 1 * *", "timezone": "UTC" })),
                json!({}),
                json!([{ "id": "revenue", "tool": "generate_report", "arguments": { "report": "revenue" } }]),
            ),
            template(
                "churn-risk-review",
                "Churn risk review",
                "Tag inactive customers as a churn risk and ask customer success to review them.",
                "customer_success",
                Intermediate,
                (Trigger::Manual, json!({})),
                json!({ "tag": "churn-risk" }),
                json!([
                    { "id": "tag", "tool": "bulk_update_customers",
                      "arguments": { "filter": { "status": "inactive" }, "set": { "add_tags": ["{{vars.tag}}"] } },
                      "on_error": { "retries": 2, "backoff_ms": 1000 } },
                    { "id": "review", "tool": "request_handoff",
                      "condition": { "field": "steps.tag.output.affected", "operator": "gt", "value": 0 },
                      "arguments": { "reason": "{{steps.tag.output.affected}} inactive customers tagged {{vars.tag}}", "priority": "normal" } },
                ]),
            ),
            template(
                "quote-to-invoice",
                "Quote to sent invoice",
                "Convert an accepted quote into an invoice and mark it sent.",
                "finance",
                Advanced,
                (Trigger::Manual, json!({})),
                json!({}),
                json!([
                    { "id": "convert", "tool": "convert_quote_to_invoice", "arguments": { "quote_id": "{{input.quote_id}}" } },
                    { "id": "send", "tool": "update_invoice_status",
                      "arguments": { "invoice_id": "{{steps.convert.output.invoice.id}}", "status": "sent" } },
                ]),
            ),
            template(
                "agent-activity-digest",
                "Agent activity digest",
                "Every Monday, what agents did: calls, handoffs, by agent.",
                "operations",
                Beginner,
                weekly,
                json!({}),
                json!([{ "id": "activity", "tool": "generate_report", "arguments": { "report": "agent_activity" } }]),
            ),
        ]
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// A category, e.g. `sales`.
    ///
    /// See list_template_categories.
    pub category: Option<String>,
    /// Only this level.
    pub difficulty: Option<Difficulty>,
    /// A word of the name or description.
    ///
    /// Any case.
    pub search: Option<String>,
    /// Required connection, e.g. `llm`.
    ///
    /// Only templates needing this connection; none of the built-in ones needs one.
    pub connection: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TemplateList {
    pub templates: Vec<Template>,
    pub total: usize,
}

async fn list_workflow_templates(_ctx: ToolCtx, args: ListArgs) -> Result<TemplateList, ToolError> {
    let search = args.search.as_deref().map(str::to_lowercase);
    let templates: Vec<Template> = library()
        .iter()
        .filter(|t| args.category.as_deref().is_none_or(|c| c == t.category))
        .filter(|t| args.difficulty.is_none_or(|d| d == t.difficulty))
        .filter(|t| {
            search.as_deref().is_none_or(|s| {
                t.name.to_lowercase().contains(s) || t.description.to_lowercase().contains(s)
            })
        })
        .filter(|t| {
            args.connection
                .as_deref()
                .is_none_or(|c| t.required_connections.contains(&c))
        })
        .cloned()
        .collect();
    Ok(TemplateList {
        total: templates.len(),
        templates,
    })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Category {
    pub category: &'static str,
    pub templates: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CategoryList {
    pub categories: Vec<Category>,
}

async fn list_template_categories(
    _ctx: ToolCtx,
    _args: crate::account::NoArgs,
) -> Result<CategoryList, ToolError> {
    let mut categories: Vec<Category> = Vec::new();
    for t in library() {
        match categories.iter_mut().find(|c| c.category == t.category) {
            Some(c) => c.templates += 1,
            None => categories.push(Category {
                category: t.category,
                templates: 1,
            }),
        }
    }
    categories.sort_by_key(|c| c.category);
    Ok(CategoryList { categories })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateIdArgs {
    /// e.g. `new-lead-follow-up`.
    pub template_id: String,
}

fn find(id: &str) -> Result<&'static Template, ToolError> {
    library().iter().find(|t| t.id == id).ok_or_else(|| {
        ToolError::NotFound(format!(
            "no template `{id}`; list_workflow_templates shows them"
        ))
    })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TemplateOut {
    pub template: Template,
}

async fn get_workflow_template(
    _ctx: ToolCtx,
    args: TemplateIdArgs,
) -> Result<TemplateOut, ToolError> {
    Ok(TemplateOut {
        template: find(&args.template_id)?.clone(),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UseArgs {
    /// From list_workflow_templates.
    pub template_id: String,
    /// Default: the template's name.
    pub name: Option<String>,
    /// Variable values by name.
    ///
    /// Values replacing the template's variables of the same name.
    #[serde(default)]
    pub variables: Map<String, Value>,
}

async fn use_workflow_template(ctx: ToolCtx, args: UseArgs) -> Result<WorkflowOut, ToolError> {
    let template = find(&args.template_id)?;
    let mut variables = template.variables.as_object().cloned().unwrap_or_default();
    for (name, value) in args.variables {
        if !variables.contains_key(&name) {
            return Err(ToolError::InvalidRequest(format!(
                "the template has no variable `{name}`"
            )));
        }
        variables.insert(name, value);
    }
    let steps = serde_json::from_value(template.steps.clone())
        .map_err(|e| ToolError::Internal(format!("template {}: {e}", template.id)))?;
    let workflow = insert(
        &ctx,
        CreateArgs {
            name: args.name.unwrap_or_else(|| template.name.to_owned()),
            description: template.description.to_owned(),
            status: None,
            trigger_type: template.trigger_type,
            trigger_config: template
                .trigger_config
                .as_object()
                .cloned()
                .unwrap_or_default(),
            variables,
            steps,
            workflow_metadata: [("template".to_owned(), json!(template.id))]
                .into_iter()
                .collect(),
        },
    )
    .await?;
    Ok(WorkflowOut { workflow })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflows::model::{Definition, validate};

    #[test]
    fn every_template_is_a_valid_workflow() {
        assert!(library().len() >= 8);
        for t in library() {
            let definition = Definition {
                trigger_type: t.trigger_type,
                trigger_config: t.trigger_config.as_object().cloned().unwrap(),
                variables: t.variables.as_object().cloned().unwrap(),
                steps: serde_json::from_value(t.steps.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", t.id)),
            };
            validate(&definition, crate::catalog::builtin(), &[])
                .unwrap_or_else(|e| panic!("{}: {e}", t.id));
        }
    }
}
