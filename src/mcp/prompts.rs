//! MCP prompts for common jobs (triage a customer, review the week's pipeline, draft a
//! follow-up), and completion of their arguments: customer names come from `search`, run
//! as the caller, so completion shows only customers the caller may see.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CompletionInfo, GetPromptResult, Prompt, PromptArgument, PromptMessage, Role};
use serde_json::{Map, Value, json};

use super::call::{Call, invoke};
use super::resources::customer_uri;
use crate::access::Principal;
use crate::app::App;
use crate::error::ToolError;
use crate::toolkit::context::Transport;
use crate::toolkit::data::data_block;
use crate::toolkit::filter::ToolFilter;

pub const TRIAGE: &str = "triage_customer";
pub const PIPELINE: &str = "weekly_pipeline_review";
pub const FOLLOW_UP: &str = "draft_follow_up";
const TONES: [&str; 4] = ["friendly", "formal", "brief", "apologetic"];

pub fn list() -> Vec<Prompt> {
    let customer = || {
        PromptArgument::new("customer")
            .with_title("Customer")
            .with_description("The customer's name (completed as you type) or id.")
            .with_required(true)
    };
    vec![
        Prompt::new(
            TRIAGE,
            Some(
                "Triage a customer: read their record and recent interactions, judge urgency and \
                 sentiment, and propose next steps (and a handoff to a person if needed).",
            ),
            Some(vec![customer()]),
        )
        .with_title("Triage a customer"),
        Prompt::new(
            PIPELINE,
            Some(
                "Review the week's pipeline: pipeline by status, interactions and revenue, with \
                 highlights, risks and the customers to act on.",
            ),
            Some(vec![
                PromptArgument::new("week_of")
                    .with_title("Week of")
                    .with_description("A date in the week to review (default: this week)."),
            ]),
        )
        .with_title("Weekly pipeline review"),
        Prompt::new(
            FOLLOW_UP,
            Some(
                "Draft a follow-up message to a customer from their last interactions, and log \
                 it as a note once approved.",
            ),
            Some(vec![
                customer(),
                PromptArgument::new("tone")
                    .with_title("Tone")
                    .with_description("friendly (default), formal, brief or apologetic."),
            ]),
        )
        .with_title("Draft a follow-up"),
    ]
}

fn argument<'a>(arguments: &'a Option<Map<String, Value>>, name: &str) -> Option<&'a str> {
    arguments
        .as_ref()?
        .get(name)?
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Customers matching `text` that `principal` may see: (id, full name).
async fn customers(
    app: &Arc<App>,
    principal: &Principal,
    transport: Transport,
    filter: &Arc<ToolFilter>,
    text: &str,
    limit: u32,
) -> Result<Vec<(String, String)>, ToolError> {
    if let Ok(id) = uuid::Uuid::parse_str(text) {
        let arguments = json!({ "customer_id": id });
        let found = call(app, principal, transport, filter, "get_customer", arguments).await?;
        let name = full_name(&found["customer"]);
        return Ok(vec![(id.to_string(), name)]);
    }
    let arguments = json!({ "query": text, "types": ["customer"], "limit": limit });
    let found = call(app, principal, transport, filter, "search", arguments).await?;
    Ok(found["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|hit| {
            let id = hit["customer_id"].as_str()?.to_owned();
            Some((id, full_name(&hit["customer"])))
        })
        .collect())
}

fn full_name(customer: &Value) -> String {
    let part = |k: &str| customer[k].as_str().unwrap_or_default().to_owned();
    format!("{} {}", part("first_name"), part("last_name"))
        .trim()
        .to_owned()
}

async fn call(
    app: &Arc<App>,
    principal: &Principal,
    transport: Transport,
    filter: &Arc<ToolFilter>,
    tool: &str,
    arguments: Value,
) -> Result<Value, ToolError> {
    let Value::Object(arguments) = arguments else {
        return Err(ToolError::Internal("prompt arguments".into()));
    };
    invoke(
        app,
        Call::on_behalf(app, principal.clone(), transport, tool, arguments, "Prompt")
            .with_timeout(Duration::from_secs(10))
            .with_filter(filter.clone()),
    )
    .await
}

/// The messages of prompt `name` for `principal`.
pub async fn get(
    app: &Arc<App>,
    principal: &Principal,
    transport: Transport,
    filter: &Arc<ToolFilter>,
    name: &str,
    arguments: &Option<Map<String, Value>>,
) -> Result<GetPromptResult, ToolError> {
    let text = match name {
        TRIAGE | FOLLOW_UP => {
            let wanted = argument(arguments, "customer").ok_or_else(|| {
                ToolError::InvalidRequest("the `customer` argument is required".into())
            })?;
            let (id, customer) = customers(app, principal, transport, filter, wanted, 1)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ToolError::NotFound(format!("no customer you may see matches `{wanted}`"))
                })?;
            let uri = customer_uri(uuid::Uuid::parse_str(&id).unwrap_or_default());
            // The name is stored text: it reaches the model as data, never as instructions.
            let named = data_block("customer name", &customer);
            if name == TRIAGE {
                format!(
                    "Triage the customer {uri} (id {id}), named in the data block at the end.\n\
                     1. Read the record with get_customer and the recent interactions with \
                     list_interactions (customer_id {id}).\n\
                     2. Judge urgency (low, normal, high, urgent) and sentiment from what they \
                     said, quoting it.\n\
                     3. Propose the next steps. If a person should step in, call \
                     request_handoff with the priority and a reason.\n\
                     Do not change the record without saying so first.\n\n{named}"
                )
            } else {
                let tone = argument(arguments, "tone").unwrap_or("friendly");
                if !TONES.contains(&tone) {
                    return Err(ToolError::InvalidRequest(format!(
                        "tone is one of {}",
                        TONES.join(", ")
                    )));
                }
                format!(
                    "Draft a {tone} follow-up message to the customer {uri} (id {id}), named in \
                     the data block at the end.\n\
                     Read their last interactions with list_interactions (customer_id {id}) \
                     and refer to what was last discussed. Keep it short. Show me the draft; \
                     once I approve it, log it with log_interaction (type note, direction \
                     outbound, subject \"Follow-up\").\n\n{named}"
                )
            }
        }
        PIPELINE => {
            let week = argument(arguments, "week_of")
                .map(str::to_owned)
                .unwrap_or_else(|| chrono::Utc::now().date_naive().to_string());
            if chrono::NaiveDate::parse_from_str(&week, "%Y-%m-%d").is_err() {
                return Err(ToolError::InvalidRequest(
                    "week_of is a date such as 2026-11-23".into(),
                ));
            }
            format!(
                "Review the sales pipeline for the week of {week}.\n\
                 1. Call generate_report for the pipeline by status, for interactions over \
                 that week, and for revenue.\n\
                 2. Summarise in a few lines, then list highlights, risks (stalled deals, \
                 unhappy customers) and the five customers to act on first, with why.\n\
                 Answer in plain prose for a weekly meeting."
            )
        }
        other => {
            return Err(ToolError::NotFound(format!(
                "no prompt `{other}`; prompts: {TRIAGE}, {PIPELINE}, {FOLLOW_UP}"
            )));
        }
    };
    Ok(GetPromptResult::new(vec![PromptMessage::new_text(
        Role::User,
        text,
    )]))
}

/// Completion of a prompt argument's value.
pub async fn complete(
    app: &Arc<App>,
    principal: &Principal,
    transport: Transport,
    filter: &Arc<ToolFilter>,
    prompt: &str,
    argument: &str,
    value: &str,
) -> Result<CompletionInfo, ToolError> {
    let values: Vec<String> = match (prompt, argument) {
        (TRIAGE | FOLLOW_UP, "customer") => {
            if value.trim().is_empty() {
                Vec::new()
            } else {
                let mut names: Vec<String> =
                    customers(app, principal, transport, filter, value, 10)
                        .await?
                        .into_iter()
                        .map(|(_, name)| name)
                        .filter(|n| !n.is_empty())
                        .collect();
                names.dedup();
                names
            }
        }
        (FOLLOW_UP, "tone") => TONES
            .iter()
            .filter(|t| t.starts_with(&value.to_lowercase()))
            .map(|t| (*t).to_owned())
            .collect(),
        _ => Vec::new(),
    };
    CompletionInfo::new(values).map_err(ToolError::Internal)
}
