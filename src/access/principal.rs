//! Who is calling: resolved once per request (HTTP) or per process (stdio) and handed to
//! every tool the same way.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::delegation::{Delegation, Member};
use super::scopes::Scopes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// The owner of the embedded local default: a human admin of the local tenant.
    LocalOwner,
    /// A human user of the tenant.
    User,
    /// An AI agent with its own identity and credentials.
    Agent,
    /// An API key, acting for the user who owns it.
    ApiKey,
}

impl PrincipalKind {
    /// The name stored in the audit trail, events and records' `created_by_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::LocalOwner => "local_owner",
            PrincipalKind::User => "user",
            PrincipalKind::Agent => "agent",
            PrincipalKind::ApiKey => "api_key",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn parse(role: &str) -> Option<Role> {
        match role {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant_id: Uuid,
    pub kind: PrincipalKind,
    /// The user, agent or API key id (the local owner's user row for the local owner).
    pub id: Option<Uuid>,
    pub name: String,
    /// For humans (and API keys, their owner's role).
    pub role: Option<Role>,
    /// The user an API key acts for.
    pub on_behalf_of: Option<Uuid>,
    /// Effective scopes: what this principal may do, already intersected with its owner's
    /// (and, for work done on someone's behalf, with every member of its chain).
    pub scopes: Scopes,
    /// Work done on someone's behalf (workflow steps, triggered runs, agent runs, approved
    /// actions): the chain it acts for and what caused it. `None` for a client's own call.
    pub delegation: Option<Arc<Delegation>>,
}

impl Principal {
    /// The embedded default's owner, backed by the local tenant's admin user `user_id`.
    pub fn local_owner(tenant_id: Uuid, user_id: Uuid) -> Principal {
        Principal {
            tenant_id,
            kind: PrincipalKind::LocalOwner,
            id: Some(user_id),
            name: "local owner".into(),
            role: Some(Role::Admin),
            on_behalf_of: None,
            scopes: Scopes::EVERY,
            delegation: None,
        }
    }

    /// The identity itself is an agent.
    pub fn is_agent(&self) -> bool {
        self.kind == PrincipalKind::Agent
    }

    /// An agent is the identity or anywhere in the chain the call acts for: the call is an
    /// agent's as far as the approval policy and tools reserved for people are concerned.
    pub fn involves_agent(&self) -> bool {
        self.is_agent()
            || self
                .delegation
                .as_ref()
                .is_some_and(|d| d.members.iter().any(|m| m.kind == PrincipalKind::Agent))
    }

    /// The first agent of the chain the call acts for (the agent itself, for its own call):
    /// whose held calls and handoff tickets they are.
    pub fn chain_agent(&self) -> Option<Member> {
        match &self.delegation {
            Some(delegation) => delegation
                .members
                .iter()
                .find(|m| m.kind == PrincipalKind::Agent)
                .cloned(),
            None => self.is_agent().then(|| Member::of(self)),
        }
    }

    /// A person (or an API key of one) at a client: no agent, no work on someone's behalf.
    pub fn is_person_at_client(&self) -> bool {
        self.delegation.is_none() && !self.is_agent()
    }

    /// Everyone this call acts for, the identity first (just the identity for a direct call).
    pub fn members(&self) -> Vec<Member> {
        match &self.delegation {
            Some(delegation) => delegation.members.clone(),
            None => vec![Member::of(self)],
        }
    }

    /// The chain for the audit trail (`None` for a direct call).
    pub fn chain_json(&self) -> Option<serde_json::Value> {
        self.delegation
            .as_ref()
            .and_then(|d| serde_json::to_value(&d.members).ok())
    }

    /// Scopes a human of `role` holds: admins every scope, members those granted.
    pub fn human_scopes(role: Role, granted: Scopes) -> Scopes {
        match role {
            Role::Admin => Scopes::EVERY,
            Role::Member => granted,
        }
    }
}
