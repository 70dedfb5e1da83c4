//! Work done on someone's behalf (SPEC §1): workflow steps, event- and schedule-triggered
//! runs, agent runs and approved actions act for a **chain** of principals — who started
//! it, the owner of the workflow or agent, whoever last changed its behaviour, the agent
//! identity. A call made for a chain has the intersection of everyone's permissions, as
//! they stand when the call runs: scopes here, field rules, conditions and grants in
//! `Policy::load`. Nothing runs with more than every member of its chain may do.
//!
//! Ownership lives here too: only the owner of a workflow, runnable agent or schedule, or
//! an admin, changes it; an agent never changes what a person owns.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::principal::{Principal, PrincipalKind, Role};
use super::scopes::Scopes;
use crate::error::ToolError;
use crate::store::StoreError;

/// Work started by work (an event of a workflow's run triggering another workflow, a run
/// started by a step) stops at this depth: such chains are logged and audited, not run.
pub const MAX_CAUSE_DEPTH: u32 = 5;

/// One principal of a chain, as stored with the work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    pub kind: PrincipalKind,
    pub id: Uuid,
    pub name: String,
    /// The person behind a user, the local owner or an API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<Uuid>,
}

impl Member {
    /// The principal itself as a member (its identity, not its chain).
    pub fn of(principal: &Principal) -> Member {
        Member {
            kind: principal.kind,
            id: principal.id.unwrap_or_default(),
            name: principal.name.clone(),
            person: person_of(principal),
        }
    }

    fn same(&self, other: &Member) -> bool {
        self.kind == other.kind && self.id == other.id
    }
}

/// The person a principal is or acts for (none for agents).
pub(crate) fn person_of(principal: &Principal) -> Option<Uuid> {
    match principal.kind {
        PrincipalKind::User | PrincipalKind::LocalOwner => principal.id,
        PrincipalKind::ApiKey => principal.on_behalf_of,
        PrincipalKind::Agent => None,
    }
}

/// What caused a piece of work, carried by the events it writes and the work it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// 0 for a client's own call; each step of work started by work adds one.
    #[serde(default)]
    pub depth: u32,
    /// The workflows of the cause chain: none of them is triggered again by it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflows: Vec<Uuid>,
}

impl Cause {
    /// The cause of work that `principal` starts now: one deeper than the work it does,
    /// refused past [`MAX_CAUSE_DEPTH`].
    pub fn started_by(principal: &Principal) -> Result<Cause, ToolError> {
        let Some(delegation) = &principal.delegation else {
            return Ok(Cause::default());
        };
        let depth = delegation.cause.depth + 1;
        if depth > MAX_CAUSE_DEPTH {
            return Err(ToolError::Forbidden(format!(
                "work started by work stops at depth {MAX_CAUSE_DEPTH}: this would be depth \
                 {depth} (a loop of triggers or runs?)"
            )));
        }
        Ok(Cause {
            depth,
            workflows: delegation.cause.workflows.clone(),
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    pub fn read(value: &serde_json::Value) -> Cause {
        serde_json::from_value(value.clone()).unwrap_or_default()
    }
}

/// The chain a call acts for (the identity first) and its cause.
#[derive(Debug, Clone, Default)]
pub struct Delegation {
    pub members: Vec<Member>,
    pub cause: Cause,
}

/// `principal`'s chain followed by `more`, each principal once.
pub fn chain(principal: &Principal, more: impl IntoIterator<Item = Member>) -> Vec<Member> {
    distinct(principal.members().into_iter().chain(more))
}

/// `members` in order, each principal once (its first place).
pub fn distinct(members: impl IntoIterator<Item = Member>) -> Vec<Member> {
    let mut out: Vec<Member> = Vec::new();
    for member in members {
        if !out.iter().any(|m| m.same(&member)) {
            out.push(member);
        }
    }
    out
}

/// The members stored as JSON values (an owner, a last editor), skipping absent ones.
pub fn stored_members<'a>(values: impl IntoIterator<Item = &'a serde_json::Value>) -> Vec<Member> {
    values
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Member>(v.clone()).ok())
        .collect()
}

/// Who owns what `principal` creates: the person behind a user or an API key (so a key
/// edits what its person owns), or the agent itself.
pub async fn owner_member(pool: &PgPool, principal: &Principal) -> Result<Member, StoreError> {
    if principal.kind != PrincipalKind::ApiKey {
        return Ok(Member::of(principal));
    }
    let person = principal.on_behalf_of.unwrap_or_default();
    let name: Option<String> =
        sqlx::query_scalar("SELECT name FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(principal.tenant_id)
            .bind(person)
            .fetch_optional(pool)
            .await?;
    Ok(Member {
        kind: PrincipalKind::User,
        id: person,
        name: name.unwrap_or_else(|| principal.name.clone()),
        person: Some(person),
    })
}

/// May `caller` change, delete, pause or cancel something `owner` owns? Its owner or an
/// admin may (see [`is_admin_person`]); a narrowed API key only what its own person owns;
/// an agent only what it owns itself. Work done on someone's behalf may only if everyone
/// it acts for owns it: an admin running a member's workflow lends it no admin authority.
/// `owner: None` (its creator is gone) leaves it to admins.
pub fn may_manage(caller: &Principal, owner: Option<&Member>, what: &str) -> Result<(), ToolError> {
    let allowed = is_admin_person(caller)
        || owner.is_some_and(|o| caller.members().iter().all(|m| owns(m, o)));
    if allowed {
        return Ok(());
    }
    let whose = owner.map_or_else(
        || "nobody (its creator is gone)".to_owned(),
        |o| format!("{} ({})", o.name, o.kind.as_str()),
    );
    Err(ToolError::Forbidden(format!(
        "{what} belongs to {whose}: only its owner or an admin may change it{}",
        if caller.involves_agent() {
            ", and agents never change what a person owns"
        } else if caller.kind == PrincipalKind::ApiKey {
            " (a narrowed API key acts only on what its own person owns)"
        } else {
            ""
        }
    )))
}

/// Does `member` own what `owner` owns: the same agent, or the same person (directly or
/// through an API key)?
fn owns(member: &Member, owner: &Member) -> bool {
    match owner.kind {
        PrincipalKind::Agent => member.kind == PrincipalKind::Agent && member.id == owner.id,
        _ => {
            member.kind != PrincipalKind::Agent
                && member.person.is_some()
                && member.person == owner.person
        }
    }
}

/// An admin with an admin's authority over others' work: the person, or an API key of
/// theirs that carries all of their permissions, at their own client. A narrowed key is a
/// machine credential and acts only on what its own person owns; no agent is an admin, nor
/// work done on someone's behalf.
pub fn is_admin_person(principal: &Principal) -> bool {
    principal.role == Some(Role::Admin)
        && principal.delegation.is_none()
        && !principal.is_agent()
        && match principal.kind {
            PrincipalKind::User | PrincipalKind::LocalOwner => true,
            PrincipalKind::ApiKey => principal.scopes == Scopes::EVERY,
            PrincipalKind::Agent => false,
        }
}

/// Making an agent identity run (attaching it to a definition, running or scheduling it)
/// needs at least the identity's scopes, or an admin: nobody borrows an agent's identity
/// to do what they may not do themselves.
pub fn may_run_as(caller: &Principal, identity: Scopes, agent: &str) -> Result<(), ToolError> {
    if is_admin_person(caller) || caller.scopes.contains(identity) {
        return Ok(());
    }
    Err(ToolError::Forbidden(format!(
        "agent `{agent}` holds scopes you do not ({}): only an admin or someone holding all \
         of its scopes may run it or give it work",
        identity.without(caller.scopes).names().join(", ")
    )))
}

/// May `reader` see the record of work done for `members`? Admins (people, not agents)
/// and the members themselves (a person also through its API keys) may. Work done on
/// someone's behalf reads as its whole chain: only records every member of it may read
/// (a member's step, run by an admin, does not read the admin's records).
pub fn may_read(reader: &Principal, members: &[Member]) -> bool {
    is_admin_person(reader) || members_may_read(&reader.members(), members)
}

/// May work done for `readers` see the record of work done for `members`: is each of them
/// (or its person) among the members? Stored chains know no roles: admins are not special.
pub fn members_may_read(readers: &[Member], members: &[Member]) -> bool {
    !readers.is_empty()
        && readers.iter().all(|me| {
            members
                .iter()
                .any(|m| m.same(me) || (me.person.is_some() && m.person == me.person))
        })
}

/// Adds ` AND <reader may read it>` to a query over rows with a `chain` column: admins read
/// every row, anyone else the rows of work done for them (for a chain: for each of them).
pub fn push_readable(query: &mut sqlx::QueryBuilder<sqlx::Postgres>, reader: &Principal) {
    push_readable_in(query, reader, "chain");
}

/// [`push_readable`] over the members in `members` (an expression of this code's, never a
/// caller's: a jsonb array of members).
pub fn push_readable_in(
    query: &mut sqlx::QueryBuilder<sqlx::Postgres>,
    reader: &Principal,
    members: &'static str,
) {
    if is_admin_person(reader) {
        return;
    }
    for me in reader.members() {
        query
            .push(" AND EXISTS (SELECT 1 FROM jsonb_array_elements(")
            .push(members)
            .push(") m WHERE (m->>'kind' = ")
            .push_bind(me.kind.as_str())
            .push(" AND m->>'id' = ")
            .push_bind(me.id.to_string())
            .push(")");
        if let Some(person) = me.person {
            query
                .push(" OR m->>'person' = ")
                .push_bind(person.to_string());
        }
        query.push(")");
    }
}

/// `SELECT <columns> FROM <table> WHERE tenant_id = … AND id = …`, limited to the rows of
/// work `reader` may read ([`push_readable`]): one record of a log of work.
pub fn select_readable(
    columns_and_table: &str,
    reader: &Principal,
    id: Uuid,
) -> sqlx::QueryBuilder<sqlx::Postgres> {
    let mut query =
        sqlx::QueryBuilder::new(format!("SELECT {columns_and_table} WHERE tenant_id = "));
    query.push_bind(reader.tenant_id);
    query.push(" AND id = ").push_bind(id);
    push_readable(&mut query, reader);
    query
}

/// The principal `members` make, as they stand now: the first member's identity with the
/// intersection of everyone's scopes. A member that is gone, disabled or revoked stops
/// the work: nobody's permission is borrowed.
pub async fn resolve(
    pool: &PgPool,
    tenant_id: Uuid,
    members: &[Member],
    cause: Cause,
) -> Result<Principal, ToolError> {
    let Some(first) = members.first() else {
        return Err(ToolError::Forbidden(
            "this work names nobody it acts for, so it runs for nobody".into(),
        ));
    };
    let mut scopes = Scopes::EVERY;
    let mut identity_role = None;
    let mut identity_person = None;
    for (index, member) in members.iter().enumerate() {
        let (role, member_scopes, person) =
            current(pool, tenant_id, member).await?.ok_or_else(|| {
                ToolError::Forbidden(format!(
                    "{} ({}), on whose behalf this runs, no longer exists, is disabled or was \
                 revoked",
                    member.name,
                    member.kind.as_str()
                ))
            })?;
        scopes = scopes.intersect(member_scopes);
        if index == 0 {
            identity_role = role;
            identity_person = person;
        }
    }
    Ok(Principal {
        tenant_id,
        kind: first.kind,
        id: Some(first.id),
        name: first.name.clone(),
        role: identity_role,
        on_behalf_of: (first.kind == PrincipalKind::ApiKey)
            .then_some(identity_person)
            .flatten(),
        scopes,
        delegation: Some(Arc::new(Delegation {
            members: members.to_vec(),
            cause,
        })),
    })
}

/// The same principal, for work with another cause.
pub fn with_cause(principal: &Principal, cause: Cause) -> Principal {
    let members = principal.members();
    Principal {
        delegation: Some(Arc::new(Delegation { members, cause })),
        ..principal.clone()
    }
}

/// A member's role (people and keys), scopes and person now; `None` when it is gone.
async fn current(
    pool: &PgPool,
    tenant_id: Uuid,
    member: &Member,
) -> Result<Option<(Option<Role>, Scopes, Option<Uuid>)>, StoreError> {
    let known = |names: &[String]| Scopes::parse(names).unwrap_or(Scopes::NONE);
    Ok(match member.kind {
        PrincipalKind::User | PrincipalKind::LocalOwner => {
            let row: Option<(String, Vec<String>)> =
                sqlx::query_as("SELECT role, scopes FROM users WHERE tenant_id = $1 AND id = $2")
                    .bind(tenant_id)
                    .bind(member.id)
                    .fetch_optional(pool)
                    .await?;
            row.and_then(|(role, granted)| {
                let role = Role::parse(&role)?;
                Some((
                    Some(role),
                    Principal::human_scopes(role, known(&granted)),
                    Some(member.id),
                ))
            })
        }
        PrincipalKind::ApiKey => {
            let row: Option<(Vec<String>, Uuid, String, Vec<String>)> = sqlx::query_as(
                "SELECT k.scopes, u.id, u.role, u.scopes FROM api_keys k
                 JOIN users u ON u.tenant_id = k.tenant_id AND u.id = k.owner_user_id
                 WHERE k.tenant_id = $1 AND k.id = $2 AND k.revoked_at IS NULL",
            )
            .bind(tenant_id)
            .bind(member.id)
            .fetch_optional(pool)
            .await?;
            row.and_then(|(own, person, role, granted)| {
                let role = Role::parse(&role)?;
                // The key's own scopes, never its owner's (an empty list inherits them).
                let scopes = super::store::api_key_scopes(&own, role, &granted);
                Some((Some(role), scopes, Some(person)))
            })
        }
        PrincipalKind::Agent => super::store::get_agent(pool, tenant_id, member.id)
            .await?
            .filter(|a| a.enabled)
            .map(|a| (None, known(&a.scopes), None)),
    })
}

/// Reads a stored chain (`[]` or unreadable: nobody, which runs nothing).
pub fn read_chain(value: &serde_json::Value) -> Vec<Member> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

pub fn chain_json(members: &[Member]) -> serde_json::Value {
    serde_json::to_value(members).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(kind: PrincipalKind, role: Option<Role>) -> Principal {
        Principal {
            tenant_id: Uuid::nil(),
            kind,
            id: Some(Uuid::new_v4()),
            name: "p".into(),
            role,
            on_behalf_of: (kind == PrincipalKind::ApiKey).then(Uuid::new_v4),
            scopes: Scopes::EVERY,
            delegation: None,
        }
    }

    #[test]
    fn owners_admins_and_nobody_else_manage() {
        let member = principal(PrincipalKind::User, Some(Role::Member));
        let admin = principal(PrincipalKind::User, Some(Role::Admin));
        let agent = principal(PrincipalKind::Agent, None);
        let admin_key = principal(PrincipalKind::ApiKey, Some(Role::Admin));
        let owned_by_member = Member::of(&member);
        let owned_by_agent = Member::of(&agent);
        assert!(may_manage(&member, Some(&owned_by_member), "it").is_ok());
        assert!(may_manage(&admin, Some(&owned_by_member), "it").is_ok());
        assert!(may_manage(&admin, None, "it").is_ok());
        assert!(may_manage(&member, None, "it").is_err());
        assert!(may_manage(&agent, Some(&owned_by_member), "it").is_err());
        assert!(may_manage(&agent, Some(&owned_by_agent), "it").is_ok());
        assert!(may_manage(&member, Some(&owned_by_agent), "it").is_err());
        // A key of an admin with all of its person's permissions acts as the admin; a
        // narrowed one is a machine: no admin powers over others' work.
        assert!(may_manage(&admin_key, Some(&owned_by_member), "it").is_ok());
        let mut narrowed = admin_key.clone();
        narrowed.scopes = Scopes::parse(&["workflows:write"]).unwrap();
        assert!(may_manage(&narrowed, Some(&owned_by_member), "it").is_err());
        let own = Member {
            kind: PrincipalKind::User,
            id: admin_key.on_behalf_of.unwrap(),
            name: "a".into(),
            person: admin_key.on_behalf_of,
        };
        assert!(may_manage(&narrowed, Some(&own), "it").is_ok());
        // An admin running a member's workflow: the work acts for both, and the member owns
        // neither the admin's things nor a third person's.
        let mut delegated = admin.clone();
        delegated.delegation = Some(Arc::new(Delegation {
            members: vec![Member::of(&admin), Member::of(&member)],
            cause: Cause::default(),
        }));
        assert!(may_manage(&delegated, Some(&Member::of(&admin)), "it").is_err());
        assert!(may_manage(&delegated, Some(&owned_by_agent), "it").is_err());
        assert!(!is_admin_person(&delegated));
    }

    #[test]
    fn causes_deepen_and_stop() {
        let mut p = principal(PrincipalKind::User, Some(Role::Admin));
        assert_eq!(Cause::started_by(&p).unwrap().depth, 0);
        p.delegation = Some(Arc::new(Delegation {
            members: vec![],
            cause: Cause {
                depth: MAX_CAUSE_DEPTH - 1,
                ..Cause::default()
            },
        }));
        assert_eq!(Cause::started_by(&p).unwrap().depth, MAX_CAUSE_DEPTH);
        p.delegation = Some(Arc::new(Delegation {
            members: vec![],
            cause: Cause {
                depth: MAX_CAUSE_DEPTH,
                ..Cause::default()
            },
        }));
        assert!(Cause::started_by(&p).is_err());
    }
}
