//! The `discovery` toolset, for clients that cannot hold a long tool list: `find_tools`
//! (keyword search over the tools the caller may use), `describe_tools` (their full
//! definitions) and `run_tool` (a call by name). In compact mode (`--tool-mode compact`,
//! or the `X-MCP-Tool-Mode: compact` header) `tools/list` offers only these three.
//!
//! `run_tool` is unwrapped by the server before dispatch (`server::call_tool`), so the
//! inner call passes exactly the checks of a direct call and is audited under its own name.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ToolError;
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, tool};
use crate::toolkit::context::ToolCtx;
use crate::toolkit::filter::visible;

pub const RUN_TOOL: &str = "run_tool";
const MAX_RESULTS: u32 = 50;
const MAX_DESCRIBE: usize = 20;

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Discovery.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "find_tools",
                "Find tools",
                "Search the tools you may use by keywords; best matches first.\n\n\
                 Keywords are matched against names, titles and descriptions, optionally within \
                 one toolset. Answers names with short descriptions; describe_tools gives their \
                 schemas and run_tool calls them.",
                &[],
                Hints::READ,
            ),
            find_tools,
        ),
        tool(
            def(
                "describe_tools",
                "Describe tools",
                "Get the full definitions of named tools you may use (up to 20).\n\n\
                 Each with its description, input and output JSON Schemas and annotations.",
                &[],
                Hints::READ,
            ),
            describe_tools,
        ),
        tool(
            def(
                RUN_TOOL,
                "Run a tool by name",
                "Call a tool you may use by `name` with its `arguments`, exactly as a direct \
                 call.\n\n\
                 The same permissions, limits, approvals and audit, and its own result or error.",
                &[],
                // It can run any tool, so it promises nothing.
                Hints {
                    read_only: false,
                    destructive: true,
                    idempotent: false,
                    open_world: true,
                },
            ),
            run_tool,
        ),
    ]
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindArgs {
    /// Keywords, e.g. "invoice overdue".
    ///
    /// Or "schedule agent".
    #[serde(default)]
    pub query: String,
    /// A toolset, e.g. `crm`.
    ///
    /// Only tools of this toolset: `account`, `admin`, `crm`, `handoff`, `workflows`, `agents` or
    /// `connections`.
    pub toolset: Option<String>,
    /// 1 to 50 (default 10).
    ///
    /// At most this many tools.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Found {
    pub name: &'static str,
    pub title: &'static str,
    /// The description's summary (its first paragraph).
    pub description: String,
    pub toolset: Toolset,
    pub read_only: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FoundTools {
    pub tools: Vec<Found>,
    /// Tools matching, before `limit`.
    pub total: usize,
}

/// Tools the caller may use through discovery: everything it may call but the discovery
/// tools themselves.
fn usable(ctx: &ToolCtx) -> impl Iterator<Item = &RegisteredTool> {
    visible(ctx.app.catalog, &ctx.filter, &ctx.principal)
        .filter(|t| t.def.toolset != Toolset::Discovery)
}

async fn find_tools(ctx: ToolCtx, args: FindArgs) -> Result<FoundTools, ToolError> {
    let limit = args.limit.unwrap_or(10);
    if !(1..=MAX_RESULTS).contains(&limit) {
        return Err(ToolError::InvalidRequest(format!(
            "limit is 1 to {MAX_RESULTS}"
        )));
    }
    let toolset = match &args.toolset {
        Some(name) => Some(Toolset::parse(name).ok_or_else(|| {
            ToolError::InvalidRequest(format!(
                "unknown toolset `{name}`; toolsets: {}",
                Toolset::ALL.map(Toolset::name).join(", ")
            ))
        })?),
        None => None,
    };
    let words: Vec<String> = args
        .query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 1)
        .map(str::to_lowercase)
        .collect();
    let mut scored: Vec<(u32, &RegisteredTool)> = usable(&ctx)
        .filter(|t| toolset.is_none_or(|s| t.def.toolset == s))
        .filter_map(|t| {
            if words.is_empty() {
                return Some((0, t));
            }
            let name = t.def.name.to_lowercase();
            let title = t.def.title.to_lowercase();
            let description = t.def.description.to_lowercase();
            let score: u32 = words
                .iter()
                .map(|w| {
                    // A word that is part of the name weighs most; plurals match singulars.
                    let stem = w.strip_suffix('s').filter(|s| s.len() > 2).unwrap_or(w);
                    4 * u32::from(name.contains(stem))
                        + 2 * u32::from(title.contains(stem))
                        + u32::from(description.contains(stem))
                })
                .sum();
            (score > 0).then_some((score, t))
        })
        .collect();
    scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    let total = scored.len();
    let tools = scored
        .into_iter()
        .take(limit as usize)
        .map(|(_, t)| Found {
            name: t.def.name,
            title: t.def.title,
            description: crate::toolkit::listing::summary(t.def.description),
            toolset: t.def.toolset,
            read_only: t.def.hints.read_only,
        })
        .collect();
    Ok(FoundTools { tools, total })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DescribeArgs {
    /// Up to 20 tool names.
    ///
    /// From find_tools.
    pub names: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Described {
    /// Each tool as `tools/list` would give it: name, title, description, inputSchema,
    /// outputSchema, annotations.
    pub tools: Vec<Value>,
    /// Names that are not tools you may use.
    pub unknown: Vec<String>,
}

async fn describe_tools(ctx: ToolCtx, args: DescribeArgs) -> Result<Described, ToolError> {
    if args.names.is_empty() || args.names.len() > MAX_DESCRIBE {
        return Err(ToolError::InvalidRequest(format!(
            "name 1 to {MAX_DESCRIBE} tools"
        )));
    }
    let mut tools = Vec::new();
    let mut unknown = Vec::new();
    for name in args.names {
        match usable(&ctx).find(|t| t.def.name == name) {
            Some(tool) => tools.push(
                serde_json::to_value(&tool.tool)
                    .map_err(|e| ToolError::Internal(format!("tool definition: {e}")))?,
            ),
            None => unknown.push(name),
        }
    }
    Ok(Described { tools, unknown })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// The tool to call.
    pub name: String,
    /// Its arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// The tool's own result (its output schema is the called tool's).
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunOut {
    #[serde(flatten)]
    pub result: Map<String, Value>,
}

/// Reached only where the server did not unwrap the call (it always does for clients):
/// nothing runs without the checks of a direct call.
async fn run_tool(_ctx: ToolCtx, args: RunArgs) -> Result<RunOut, ToolError> {
    Err(ToolError::InvalidRequest(format!(
        "`{}` can only be run by name from an MCP client; call it directly here",
        args.name
    )))
}
