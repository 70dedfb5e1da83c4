//! The platforms a connection can be to, each with its settings (shown) and credentials
//! (sealed, never shown), and the checks they pass before anything is saved.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::llm::Provider;
use super::remote::RemoteServer;
use crate::access::Scopes;
use crate::jobs::outbound::{OutboundOptions, check_url};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// OpenAI-compatible chat completions: OpenAI, Ollama, vLLM, LM Studio, ….
    Openai,
    /// Anthropic messages.
    Anthropic,
    /// A remote MCP server over streamable HTTP; its tools join the tool catalog.
    Mcp,
    /// An outgoing HTTP call (a webhook of another system), callable as a catalog tool.
    Http,
}

impl Platform {
    pub const ALL: [Platform; 4] = [
        Platform::Openai,
        Platform::Anthropic,
        Platform::Mcp,
        Platform::Http,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Openai => "openai",
            Platform::Anthropic => "anthropic",
            Platform::Mcp => "mcp",
            Platform::Http => "http",
        }
    }

    pub fn parse(name: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.as_str() == name)
    }

    pub fn is_llm(self) -> bool {
        matches!(self, Platform::Openai | Platform::Anthropic)
    }

    pub fn title(self) -> &'static str {
        match self {
            Platform::Openai => "OpenAI-compatible chat completions",
            Platform::Anthropic => "Anthropic messages",
            Platform::Mcp => "Remote MCP server",
            Platform::Http => "Outgoing HTTP call",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Platform::Openai => {
                "An LLM provider speaking the chat completions API with tool calls: OpenAI, or a \
                 local server such as Ollama (`http://127.0.0.1:11434/v1`), vLLM or LM Studio. \
                 Prompt agents and draft_workflow use it."
            }
            Platform::Anthropic => {
                "Anthropic's messages API with tool use. Prompt agents and draft_workflow use it."
            }
            Platform::Mcp => {
                "A remote MCP server over streamable HTTP. Its tools are imported into the tool \
                 catalog as `<connection>__<tool>` and can be called from workflows and prompt \
                 agents under this server's scopes and audit; its token never reaches callers."
            }
            Platform::Http => {
                "An outgoing HTTP request to another system, imported into the tool catalog as \
                 `<connection>__send` for workflows and prompt agents."
            }
        }
    }

    /// The JSON Schema of `config` and of `credentials` for this platform.
    pub fn schemas(self) -> (Value, Value) {
        fn schema<T: JsonSchema>() -> Value {
            serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
        }
        match self {
            Platform::Openai => (schema::<OpenaiConfig>(), schema::<ApiKeyCredentials>()),
            Platform::Anthropic => (schema::<AnthropicConfig>(), schema::<ApiKeyCredentials>()),
            Platform::Mcp => (schema::<McpConfig>(), schema::<BearerCredentials>()),
            Platform::Http => (schema::<HttpConfig>(), schema::<HttpCredentials>()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenaiConfig {
    /// Base URL of the API, up to and including `/v1` (default `https://api.openai.com/v1`).
    #[serde(default = "openai_base")]
    pub base_url: String,
    /// The model used when an agent names none.
    #[serde(default)]
    pub default_model: Option<String>,
}

fn openai_base() -> String {
    "https://api.openai.com/v1".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnthropicConfig {
    /// Default `https://api.anthropic.com`.
    #[serde(default = "anthropic_base")]
    pub base_url: String,
    /// The `anthropic-version` header (default `2023-06-01`).
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub default_model: Option<String>,
}

fn anthropic_base() -> String {
    "https://api.anthropic.com".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// The server's streamable HTTP endpoint, e.g. `https://tools.example.com/mcp`.
    pub url: String,
    /// Scopes a caller must hold to call this server's tools (default `connections:write`:
    /// a call goes out under this connection's credential).
    #[serde(default = "default_tool_scopes")]
    pub tool_scopes: Vec<String>,
}

fn default_tool_scopes() -> Vec<String> {
    vec!["connections:write".into()]
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where the request goes.
    pub url: String,
    /// `POST` (default), `PUT`, `PATCH` or `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Headers that are not secret (secret ones go in credentials).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Scopes a caller must hold to send it (default `connections:write`).
    #[serde(default = "default_tool_scopes")]
    pub tool_scopes: Vec<String>,
}

fn default_method() -> String {
    "POST".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCredentials {
    /// The provider's API key (optional for local servers such as Ollama).
    #[serde(default)]
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BearerCredentials {
    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCredentials {
    /// Secret headers, e.g. `{"Authorization": "Bearer …"}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A connection's settings and credentials, checked and ready to use.
#[derive(Clone)]
pub enum Resolved {
    Llm {
        provider: Provider,
        default_model: Option<String>,
    },
    Mcp {
        server: RemoteServer,
        tool_scopes: Scopes,
    },
    Http {
        config: HttpConfig,
        secret_headers: BTreeMap<String, String>,
        tool_scopes: Scopes,
    },
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("{what}: {e}"))
}

fn scopes(names: &[String]) -> Result<Scopes, String> {
    Scopes::parse(names).map_err(|e| format!("config.tool_scopes: {e}"))
}

/// Checks `config` and `credentials` for `platform`; returns the config as stored (with
/// defaults filled in) and the connection ready to use.
pub fn resolve(
    platform: Platform,
    config: Value,
    credentials: Value,
    outbound: OutboundOptions,
) -> Result<(Value, Resolved), String> {
    let url = |url: &str| {
        check_url(url, outbound)
            .map(|u| u.to_string().trim_end_matches('/').to_owned())
            .map_err(|e| format!("config: {e}"))
    };
    let empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let (stored, resolved) = match platform {
        Platform::Openai => {
            let mut config: OpenaiConfig = parse("config", config)?;
            let creds: ApiKeyCredentials = parse("credentials", credentials)?;
            config.base_url = url(&config.base_url)?;
            let resolved = Resolved::Llm {
                provider: Provider::OpenAi {
                    base_url: config.base_url.clone(),
                    api_key: empty(creds.api_key),
                },
                default_model: config.default_model.clone(),
            };
            (serde_json::to_value(config), resolved)
        }
        Platform::Anthropic => {
            let mut config: AnthropicConfig = parse("config", config)?;
            let creds: ApiKeyCredentials = parse("credentials", credentials)?;
            config.base_url = url(&config.base_url)?;
            let api_key = empty(creds.api_key)
                .ok_or("credentials.api_key is required for Anthropic".to_owned())?;
            let resolved = Resolved::Llm {
                provider: Provider::Anthropic {
                    base_url: config.base_url.clone(),
                    api_key,
                    version: config.version.clone(),
                },
                default_model: config.default_model.clone(),
            };
            (serde_json::to_value(config), resolved)
        }
        Platform::Mcp => {
            let mut config: McpConfig = parse("config", config)?;
            let creds: BearerCredentials = parse("credentials", credentials)?;
            config.url = url(&config.url)?;
            let resolved = Resolved::Mcp {
                server: RemoteServer {
                    url: config.url.clone(),
                    bearer_token: empty(creds.bearer_token),
                },
                tool_scopes: scopes(&config.tool_scopes)?,
            };
            (serde_json::to_value(config), resolved)
        }
        Platform::Http => {
            let mut config: HttpConfig = parse("config", config)?;
            let creds: HttpCredentials = parse("credentials", credentials)?;
            config.url = url(&config.url)?;
            config.method = config.method.to_ascii_uppercase();
            if !matches!(config.method.as_str(), "POST" | "PUT" | "PATCH" | "GET") {
                return Err("config.method is POST, PUT, PATCH or GET".into());
            }
            for name in config.headers.keys().chain(creds.headers.keys()) {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(format!("`{name}` is not a valid header name"));
                }
            }
            let tool_scopes = scopes(&config.tool_scopes)?;
            let resolved = Resolved::Http {
                config: config.clone(),
                secret_headers: creds.headers,
                tool_scopes,
            };
            (serde_json::to_value(config), resolved)
        }
    };
    let stored = stored.map_err(|e| format!("config: {e}"))?;
    Ok((stored, resolved))
}

/// An empty credentials object, for platforms whose credentials are optional.
pub fn no_credentials() -> Value {
    Value::Object(Map::new())
}
