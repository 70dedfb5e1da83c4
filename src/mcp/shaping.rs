//! Stored outputs read through the reader's policy: workflow step arguments and outputs,
//! agent run tool calls and transcripts, session call logs and held calls were produced
//! for someone else's permissions. What the reader could not have read with the tool
//! itself is replaced by a marker saying so.

use serde_json::{Value, json};

use crate::access::{Principal, Scopes};
use crate::connections::catalog as remote_catalog;
use crate::error::ToolError;
use crate::toolkit::catalog::{Catalog, Toolset};
use crate::toolkit::context::ToolCtx;
use crate::toolkit::filter::denial;

/// Who reads a log, with what they may read.
pub struct Reader {
    principal: Principal,
    /// Field rules, row conditions or object grants apply to the reader.
    restricted: bool,
    catalog: &'static Catalog,
}

impl Reader {
    pub async fn of(ctx: &ToolCtx) -> Result<Reader, ToolError> {
        Ok(Reader {
            principal: ctx.principal.clone(),
            restricted: ctx.policy().await?.is_restricted(),
            catalog: ctx.app.catalog,
        })
    }

    /// Is the reader this principal (user, agent or API key id)?
    pub fn is(&self, id: Option<uuid::Uuid>) -> bool {
        id.is_some() && self.principal.id == id
    }

    /// Why the reader may not see what a call of `tool` took or gave, if it may not.
    pub fn hidden(&self, tool: &str) -> Option<String> {
        if remote_catalog::is_remote(tool) {
            let needed = Scopes::parse(&["connections:write"]).unwrap_or(Scopes::EVERY);
            return (!self.principal.scopes.contains(needed))
                .then(|| format!("data of the imported tool `{tool}` needs connections:write"));
        }
        let Some(registered) = self.catalog.get(tool) else {
            return Some(format!("`{tool}` is not a tool of this server"));
        };
        if let Some(denied) = denial(&self.principal, registered) {
            return Some(denied.describe(tool, &self.principal.name));
        }
        if self.restricted
            && !matches!(
                registered.def.toolset,
                Toolset::Account | Toolset::Discovery
            )
        {
            return Some(format!(
                "field rules, row conditions or object grants apply to {}: read it with \
                 `{tool}` itself",
                self.principal.name
            ));
        }
        None
    }

    /// Replaces `value` with a marker when the reader may not see it; true if it did.
    pub fn shape(&self, tool: &str, value: &mut Value) -> bool {
        match self.hidden(tool) {
            Some(reason) if !value.is_null() => {
                *value = marker(&reason);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// An event's payload (a triggered execution's input): it needs the event's read scope.
    pub fn shape_event(&self, event: &mut Value) -> bool {
        let event_type = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let scope = crate::events::read_scope(event_type)
            .and_then(|s| Scopes::parse(&[s]).ok())
            .unwrap_or(Scopes::EVERY);
        let reason = if !self.principal.scopes.contains(scope) {
            Some(format!(
                "`{event_type}` events need a scope {} does not hold",
                self.principal.name
            ))
        } else if self.restricted {
            Some(format!(
                "field rules, row conditions or object grants apply to {}",
                self.principal.name
            ))
        } else {
            None
        };
        match (reason, event.get_mut("payload")) {
            (Some(reason), Some(payload)) => {
                *payload = marker(&reason);
                true
            }
            _ => false,
        }
    }
}

/// What stands in for a value the reader may not see.
pub fn marker(reason: &str) -> Value {
    json!({ "redacted": true, "reason": reason })
}
