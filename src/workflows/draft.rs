//! `draft_workflow`: a workflow drafted by a language model from a description. The model
//! is an LLM connection of the tenant's (the one named, or the first active one), else the
//! client's own through MCP sampling (`sampling/createMessage` on sessions, an
//! input-required result on 2026-07-28). The draft is checked like any workflow and saved
//! as a draft.

// Sampling is deprecated in the protocol (SEP-2577), but it is what clients offer today.
#![allow(deprecated)]

use std::time::Duration;

use rmcp::model::{
    CreateMessageRequest, CreateMessageRequestParams, CreateMessageResult, InputRequest,
    InputRequests, InputRequiredResult, SamplingMessage,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::definitions::{CreateArgs, WorkflowOut, insert};
use super::model::{Step, Trigger};
use crate::connections::llm::{self, ChatRequest, Message, ResponseFormat};
use crate::connections::platforms::Resolved;
use crate::error::ToolError;
use crate::store::StoreError;
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::{ClientSide, ToolCtx};
use crate::toolkit::filter::visible;

const ANSWER: &str = "agentcrm_draft";
const ASK_TIMEOUT: Duration = Duration::from_secs(300);

pub fn tools() -> Vec<RegisteredTool> {
    vec![tool(
        Toolset::Workflows.def(
            "draft_workflow",
            "Draft a workflow from a description",
            "Have a language model draft a workflow from a description; saved as a draft.\n\n\
             Describe what should happen (\"when a hot lead is created, log a note and ask sales \
             to call\"); the model drafts the steps from the tools you may use, and the draft is \
             checked and saved with status draft for you to review. Uses an LLM connection \
             (`connection`, or the tenant's first active one), else your client's model (MCP \
             sampling); without either, says so.",
            &["workflows:write"],
            Hints {
                open_world: true,
                ..Hints::CREATE
            },
        ),
        draft_workflow,
    )]
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftArgs {
    /// What the workflow should do.
    ///
    /// In a few sentences (up to 4,000 characters).
    pub description: String,
    /// Default: the model's proposal.
    pub name: Option<String>,
    /// LLM connection (default: first active).
    ///
    /// Its id or name; default: the tenant's first active one.
    pub connection: Option<String>,
    /// Model (default: the connection's).
    ///
    /// Default: the connection's `default_model`.
    pub model: Option<String>,
}

/// What the model is asked to write.
#[derive(Debug, Deserialize)]
struct Drafted {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    trigger_type: Trigger,
    #[serde(default)]
    trigger_config: Map<String, Value>,
    #[serde(default)]
    variables: Map<String, Value>,
    steps: Vec<Step>,
}

async fn draft_workflow(ctx: ToolCtx, args: DraftArgs) -> Result<WorkflowOut, ToolError> {
    let description = args.description.trim();
    if description.is_empty() || description.chars().count() > 4000 {
        return Err(ToolError::InvalidRequest(
            "description must be 1 to 4,000 characters".into(),
        ));
    }
    let text = match llm_connection(&ctx, args.connection.as_deref()).await? {
        Some(connection) => {
            ask_connection(&ctx, &connection, args.model.as_deref(), description).await?
        }
        None => {
            let client = ctx
                .client
                .as_ref()
                .filter(|c| {
                    c.capabilities
                        .as_ref()
                        .is_some_and(|c| c.sampling.is_some())
                })
                .ok_or_else(|| {
                    ToolError::InvalidRequest(
                        "no language model is available: this server has no LLM connection \
                         configured, and this client does not offer MCP sampling. Write the \
                         workflow with create_workflow, create an LLM connection, or use a \
                         client with sampling."
                            .into(),
                    )
                })?;
            ask(&ctx, client, description).await?
        }
    };
    let drafted = parse(&text)?;
    let workflow = insert(
        &ctx,
        CreateArgs {
            name: args
                .name
                .or(drafted.name)
                .unwrap_or_else(|| "Drafted workflow".into()),
            description: if drafted.description.is_empty() {
                description.to_owned()
            } else {
                drafted.description
            },
            status: None,
            trigger_type: drafted.trigger_type,
            trigger_config: drafted.trigger_config,
            variables: drafted.variables,
            steps: drafted.steps,
            workflow_metadata: [("drafted_from".to_owned(), Value::from(description))]
                .into_iter()
                .collect(),
        },
    )
    .await
    .map_err(|error| match error {
        ToolError::InvalidRequest(why) => ToolError::InvalidRequest(format!(
            "the model's draft does not hold up, so nothing was saved: {why}"
        )),
        other => other,
    })?;
    Ok(WorkflowOut { workflow })
}

/// The LLM connection to draft with: the one named, or the tenant's first active one.
async fn llm_connection(ctx: &ToolCtx, named: Option<&str>) -> Result<Option<String>, ToolError> {
    if let Some(named) = named {
        return Ok(Some(named.to_owned()));
    }
    let first: Option<String> = sqlx::query_scalar(
        "SELECT name FROM connections
         WHERE tenant_id = $1 AND platform IN ('openai', 'anthropic') AND status = 'active'
         ORDER BY name LIMIT 1",
    )
    .bind(ctx.principal.tenant_id)
    .fetch_optional(ctx.app.store.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(first)
}

/// The draft written by the model of an LLM connection.
async fn ask_connection(
    ctx: &ToolCtx,
    connection: &str,
    model: Option<&str>,
    description: &str,
) -> Result<String, ToolError> {
    let (found, _, resolved) =
        crate::connections::manage::load(&ctx.app, ctx.principal.tenant_id, connection).await?;
    let Resolved::Llm {
        provider,
        default_model,
    } = resolved
    else {
        return Err(ToolError::InvalidRequest(format!(
            "connection `{}` is not an LLM provider (openai or anthropic)",
            found.name
        )));
    };
    let model = model.map(str::to_owned).or(default_model).ok_or_else(|| {
        ToolError::InvalidRequest(format!(
            "name a `model`: connection `{}` has no default_model",
            found.name
        ))
    })?;
    let request = ChatRequest {
        model,
        system: None,
        messages: vec![Message::User {
            content: prompt(ctx, description),
        }],
        tools: Vec::new(),
        temperature: Some(0.0),
        max_tokens: Some(4000),
        response_format: ResponseFormat::Json,
    };
    let http = ctx.app.llm_http()?;
    match tokio::time::timeout(ASK_TIMEOUT, llm::chat(&http, &provider, &request)).await {
        Ok(Ok(answer)) => answer.text.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            ToolError::InvalidRequest(format!(
                "the model of connection `{}` answered without text",
                found.name
            ))
        }),
        Ok(Err(error)) => Err(ToolError::Conflict(format!(
            "connection `{}`: {error}",
            found.name
        ))),
        Err(_) => Err(ToolError::Conflict(format!(
            "connection `{}`: the model did not answer within {} s",
            found.name,
            ASK_TIMEOUT.as_secs()
        ))),
    }
}

/// The model's answer: from this call's answers (2026-07-28), or asked now on the session.
async fn ask(ctx: &ToolCtx, client: &ClientSide, description: &str) -> Result<String, ToolError> {
    if let Some(answer) = client.answers.as_ref().and_then(|a| a.get(ANSWER)) {
        let result: CreateMessageResult = serde_json::from_value(answer.clone()).map_err(|e| {
            ToolError::InvalidRequest(format!("the sampling answer is malformed: {e}"))
        })?;
        return text_of(&result);
    }
    let request = CreateMessageRequestParams::new(
        vec![SamplingMessage::user_text(prompt(ctx, description))],
        4000,
    );
    if client.modern {
        let mut requests = InputRequests::new();
        requests.insert(
            ANSWER.into(),
            InputRequest::CreateMessage(CreateMessageRequest::new(request)),
        );
        return Err(ToolError::NeedsInput(Box::new(InputRequiredResult::new(
            Some(requests),
            None,
        ))));
    }
    match tokio::time::timeout(ASK_TIMEOUT, client.peer.create_message(request)).await {
        Ok(Ok(result)) => text_of(&result),
        Ok(Err(error)) => Err(ToolError::InvalidRequest(format!(
            "the client's model could not be asked: {error}"
        ))),
        Err(_) => Err(ToolError::InvalidRequest(format!(
            "the client's model did not answer within {} s",
            ASK_TIMEOUT.as_secs()
        ))),
    }
}

fn text_of(result: &CreateMessageResult) -> Result<String, ToolError> {
    let value = serde_json::to_value(&result.message.content)
        .map_err(|e| ToolError::Internal(format!("sampling answer: {e}")))?;
    let texts: Vec<&str> = match &value {
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.get("text")?.as_str())
            .collect(),
        item => item
            .get("text")
            .and_then(Value::as_str)
            .into_iter()
            .collect(),
    };
    if texts.is_empty() {
        return Err(ToolError::InvalidRequest(
            "the client's model answered without text".into(),
        ));
    }
    Ok(texts.join("\n"))
}

/// The JSON object in the model's text (it may wrap it in prose or a code fence).
fn parse(text: &str) -> Result<Drafted, ToolError> {
    let (Some(start), Some(end)) = (text.find('{'), text.rfind('}')) else {
        return Err(ToolError::InvalidRequest(
            "the model's answer holds no JSON workflow, so nothing was saved".into(),
        ));
    };
    serde_json::from_str(&text[start..=end]).map_err(|e| {
        ToolError::InvalidRequest(format!(
            "the model's draft is not a workflow ({e}), so nothing was saved"
        ))
    })
}

fn prompt(ctx: &ToolCtx, description: &str) -> String {
    let tools: Vec<String> = visible(ctx.app.catalog, &ctx.filter, &ctx.principal)
        .filter(|t| t.def.name != "execute_workflow")
        .map(|t| {
            let arguments = t
                .input_schema()
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            format!("- {}({arguments}): {}", t.def.name, t.def.description)
        })
        .collect();
    format!(
        "Draft a workflow for this CRM server. Answer with one JSON object and nothing else:\n\
         {{\"name\": \"…\", \"description\": \"…\", \"trigger_type\": \"manual\" | \"schedule\" | \"event\",\n\
          \"trigger_config\": {{}} (schedule: {{\"cron\": \"0 9 * * 1\"}} or {{\"interval_seconds\": 3600}}; \
         event: {{\"event\": \"customer.created\", \"condition\": …}}),\n\
          \"variables\": {{}}, \"steps\": [{{\"id\": \"find\", \"tool\": \"<tool name>\", \"arguments\": {{…}},\n\
          \"condition\": {{\"field\": \"steps.find.output.total\", \"operator\": \"gt\", \"value\": 0}} (optional),\n\
          \"on_error\": {{\"retries\": 2, \"backoff_ms\": 1000, \"then\": \"fail\" | \"continue\"}} (optional)}}]}}\n\
         Arguments may use {{{{input.<name>}}}}, {{{{vars.<name>}}}}, {{{{steps.<id>.output.<path>}}}} \
         and, for event triggers, {{{{event.payload.<path>}}}}. Operators: eq ne gt gte lt lte \
         contains exists in; compose with {{\"and\": […]}}, {{\"or\": […]}}, {{\"not\": …}}.\n\n\
         Tools (name(arguments): what it does):\n{}\n\n\
         What the workflow should do:\n{description}",
        tools.join("\n")
    )
}
