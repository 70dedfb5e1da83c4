//! The policy API every domain toolset calls instead of writing its own: tenant scoping,
//! field rules, row conditions, object exceptions, explicit grants and the approval hook.
//!
//! A toolset describes each resource once (`Resource`: its table's filterable fields and
//! their columns) and then, for every query, asks the policy to add its predicates, to
//! strip restricted fields from what it returns, and to refuse writes to them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::principal::{Principal, PrincipalKind};
use crate::error::ToolError;
use crate::store::StoreError;

/// A resource as the policy sees it: its table, the fields a field rule may name, and the
/// fields that map to columns a row condition may name.
pub struct Resource {
    /// Also its table's name.
    pub name: &'static str,
    /// The alias its table has in every query (`c` for customers).
    pub alias: &'static str,
    /// (field, SQL column), for row conditions. Only these fields can be conditioned on.
    pub columns: &'static [(&'static str, &'static str)],
    /// Fields every reader may see whatever the field rules (e.g. `id`).
    pub always_visible: &'static [&'static str],
    /// Every field of its records, the ones a field rule may name.
    pub fields: &'static [&'static str],
}

impl Resource {
    fn column(&self, field: &str) -> Option<&'static str> {
        self.columns
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, c)| *c)
    }
}

/// Customers: the one resource whose field rules, row conditions and object grants are
/// enforced. Interactions, annotations, quotes and invoices are reached only through a
/// customer, so the customer's conditions and grants hold for them too.
pub const CUSTOMERS: Resource = Resource {
    name: "customers",
    alias: "c",
    columns: &[
        ("first_name", "first_name"),
        ("last_name", "last_name"),
        ("email", "email"),
        ("phone", "phone"),
        ("company", "company"),
        ("status", "status"),
        ("assigned_to", "assigned_to"),
    ],
    always_visible: &["id", "version", "created_at", "updated_at"],
    fields: &[
        "id",
        "first_name",
        "last_name",
        "email",
        "phone",
        "company",
        "status",
        "assigned_to",
        "tags",
        "custom_fields",
        "version",
        "created_at",
        "updated_at",
    ],
};

/// Every resource the policy enforces; field rules and conditions name one of these.
pub const POLICED: [&Resource; 1] = [&CUSTOMERS];

/// Scopes a grant may carry object exceptions for: each is enforced on every path that
/// touches a customer (reading it is `customers:read`, and its grant also holds for writes,
/// deletes, exports, its interactions, annotations, quotes and invoices).
pub const GRANTABLE_SCOPES: [&str; 4] = [
    "customers:read",
    "customers:write",
    "customers:delete",
    "customers:export",
];

/// What a query does with the rows of a policed resource: it picks the grants in play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Delete,
    Export,
}

impl Access {
    fn action(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Delete => "delete",
            Access::Export => "export",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    /// `value` is a list.
    In,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub field: String,
    pub op: Op,
    /// String, number or boolean.
    ///
    /// A list of them for `in`.
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The scope this grant makes explicit, e.g. `customers:delete`.
    pub scope: String,
    /// Only these objects.
    ///
    /// Absent: every object.
    #[serde(default)]
    pub only_ids: Option<Vec<Uuid>>,
    /// Never these objects.
    #[serde(default)]
    pub except_ids: Vec<Uuid>,
}

/// The restrictions that apply to one principal. Humans have none beyond their scopes.
///
/// Made only by [`Policy::load`]: a query over a policed table is built from
/// [`Policy::rows`], so no handler can reach rows without the caller's policy.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Policy {
    /// Resource -> the only fields visible and writable.
    pub field_rules: BTreeMap<String, BTreeSet<String>>,
    /// Resource -> conditions every row read or written must match.
    pub conditions: BTreeMap<String, Vec<Condition>>,
    pub grants: Vec<Grant>,
    #[serde(skip)]
    tenant_id: Uuid,
    #[serde(skip)]
    is_agent: bool,
}

/// Scopes an agent may use only with an explicit grant, whatever its scopes (SPEC §1).
pub const EXPLICIT_GRANT_SCOPES: [&str; 2] = ["customers:delete", "customers:export"];

impl Policy {
    fn empty(tenant_id: Uuid, is_agent: bool) -> Policy {
        Policy {
            field_rules: BTreeMap::new(),
            conditions: BTreeMap::new(),
            grants: Vec::new(),
            tenant_id,
            is_agent,
        }
    }

    /// The rows of `resource` this caller may use for `access`.
    pub fn rows(&self, resource: &'static Resource, access: Access) -> Rows<'_> {
        Rows {
            policy: self,
            resource,
            access,
        }
    }

    /// Loads the policy of `principal`: for work done on someone's behalf, the
    /// intersection of the policies of every agent in its chain (three small queries per
    /// agent; none for people, who have no restrictions beyond their scopes).
    pub async fn load(pool: &PgPool, principal: &Principal) -> Result<Policy, StoreError> {
        Ok(Arc::unwrap_or_clone(
            Policy::load_with(pool, None, principal).await?,
        ))
    }

    /// The same, each agent's policy from `cache` when nothing changed since it was read
    /// (the path of every tool call): shared, not copied, for an agent's own call.
    pub async fn load_cached(
        pool: &PgPool,
        cache: &super::cache::AuthCache,
        principal: &Principal,
    ) -> Result<Arc<Policy>, StoreError> {
        Policy::load_with(pool, Some(cache), principal).await
    }

    async fn load_with(
        pool: &PgPool,
        cache: Option<&super::cache::AuthCache>,
        principal: &Principal,
    ) -> Result<Arc<Policy>, StoreError> {
        let agents: Vec<Uuid> = match &principal.delegation {
            Some(delegation) => delegation
                .members
                .iter()
                .filter(|m| m.kind == PrincipalKind::Agent)
                .map(|m| m.id)
                .collect(),
            None => principal
                .is_agent()
                .then_some(principal.id)
                .flatten()
                .into_iter()
                .collect(),
        };
        let tenant_id = principal.tenant_id;
        let mut policy: Option<Arc<Policy>> = None;
        for agent_id in agents {
            let agent = match cache.and_then(|c| c.get_policy(tenant_id, agent_id)) {
                Some(cached) => cached,
                None => {
                    let generation = cache.map(|c| c.generation());
                    // An agent's policy as it applies to a call of its own: intersecting it
                    // further (a chain) gives what intersecting the rows as read would.
                    let read = Arc::new(
                        Policy::empty(tenant_id, false)
                            .intersect(&Policy::load_agent(pool, tenant_id, agent_id).await?),
                    );
                    if let (Some(cache), Some(generation)) = (cache, generation) {
                        cache.insert_policy(tenant_id, agent_id, read.clone(), generation);
                    }
                    read
                }
            };
            policy = Some(match policy {
                None => agent,
                Some(so_far) => Arc::new(so_far.intersect(&agent)),
            });
        }
        Ok(policy.unwrap_or_else(|| Arc::new(Policy::empty(tenant_id, false))))
    }

    /// One agent's own field rules, conditions and grants.
    async fn load_agent(
        pool: &PgPool,
        tenant_id: Uuid,
        agent_id: Uuid,
    ) -> Result<Policy, StoreError> {
        let mut policy = Policy::empty(tenant_id, true);
        let fields: Vec<(String, Vec<String>)> =
            sqlx::query_as("SELECT resource, allowed_fields FROM field_rules WHERE tenant_id = $1 AND agent_id = $2")
                .bind(tenant_id)
                .bind(agent_id)
                .fetch_all(pool)
                .await?;
        policy.field_rules = fields
            .into_iter()
            .map(|(r, f)| (r, f.into_iter().collect()))
            .collect();
        let conditions: Vec<(String, String, String, Value)> = sqlx::query_as(
            "SELECT resource, field, op, value FROM row_conditions WHERE tenant_id = $1 AND agent_id = $2 ORDER BY id",
        )
        .bind(tenant_id)
        .bind(agent_id)
        .fetch_all(pool)
        .await?;
        for (resource, field, op, value) in conditions {
            let op = match op.as_str() {
                "eq" => Op::Eq,
                "ne" => Op::Ne,
                _ => Op::In,
            };
            policy
                .conditions
                .entry(resource)
                .or_default()
                .push(Condition { field, op, value });
        }
        let grants: Vec<(String, Option<Vec<Uuid>>, Vec<Uuid>)> = sqlx::query_as(
            "SELECT scope, only_ids, except_ids FROM grants WHERE tenant_id = $1 AND agent_id = $2 ORDER BY scope",
        )
        .bind(tenant_id)
        .bind(agent_id)
        .fetch_all(pool)
        .await?;
        policy.grants = grants
            .into_iter()
            .map(|(scope, only_ids, except_ids)| Grant {
                scope,
                only_ids,
                except_ids,
            })
            .collect();
        Ok(policy)
    }

    /// What both policies allow: fields both show, rows both conditions match, objects
    /// both grants cover (an agent without a grant for an explicit-grant scope has none).
    pub fn intersect(&self, other: &Policy) -> Policy {
        let mut field_rules = self.field_rules.clone();
        for (resource, allowed) in &other.field_rules {
            field_rules
                .entry(resource.clone())
                .and_modify(|mine| mine.retain(|f| allowed.contains(f)))
                .or_insert_with(|| allowed.clone());
        }
        let mut conditions = self.conditions.clone();
        for (resource, list) in &other.conditions {
            conditions
                .entry(resource.clone())
                .or_default()
                .extend(list.iter().cloned());
        }
        let scopes: BTreeSet<String> = self
            .grants
            .iter()
            .chain(&other.grants)
            .map(|g| g.scope.clone())
            .collect();
        let grant_of = |policy: &Policy, scope: &str| -> Option<Grant> {
            match policy.grants.iter().find(|g| g.scope == scope) {
                Some(grant) => Some(grant.clone()),
                // No grant: every object, unless the scope needs an explicit one.
                None if policy.is_agent && EXPLICIT_GRANT_SCOPES.contains(&scope) => Some(Grant {
                    scope: scope.to_owned(),
                    only_ids: Some(Vec::new()),
                    except_ids: Vec::new(),
                }),
                None => None,
            }
        };
        let grants = scopes
            .into_iter()
            .filter_map(
                |scope| match (grant_of(self, &scope), grant_of(other, &scope)) {
                    (Some(a), Some(b)) => Some(Grant {
                        scope,
                        only_ids: match (a.only_ids, b.only_ids) {
                            (Some(a), Some(b)) => {
                                Some(a.into_iter().filter(|id| b.contains(id)).collect())
                            }
                            (Some(x), None) | (None, Some(x)) => Some(x),
                            (None, None) => None,
                        },
                        except_ids: a
                            .except_ids
                            .into_iter()
                            .chain(b.except_ids)
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect(),
                    }),
                    (Some(g), None) | (None, Some(g)) => Some(g),
                    (None, None) => None,
                },
            )
            .collect();
        Policy {
            field_rules,
            conditions,
            grants,
            tenant_id: self.tenant_id,
            is_agent: self.is_agent || other.is_agent,
        }
    }

    /// Does this policy restrict anything beyond scopes (fields, rows or objects)?
    pub fn is_restricted(&self) -> bool {
        !self.field_rules.is_empty()
            || !self.conditions.is_empty()
            || self
                .grants
                .iter()
                .any(|g| g.only_ids.is_some() || !g.except_ids.is_empty())
    }

    /// Does it restrict `resource` (its fields or rows)?
    pub fn restricts(&self, resource: &str) -> bool {
        self.field_rules.contains_key(resource) || self.conditions.contains_key(resource)
    }

    /// May this field of `resource` be read or written?
    pub fn field_allowed(&self, resource: &Resource, field: &str) -> bool {
        resource.always_visible.contains(&field)
            || self
                .field_rules
                .get(resource.name)
                .is_none_or(|allowed| allowed.contains(field))
    }

    /// Removes restricted fields from an object, or from every object of an array.
    pub fn redact(&self, resource: &Resource, value: &mut Value) {
        if !self.field_rules.contains_key(resource.name) {
            return;
        }
        match value {
            Value::Object(map) => map.retain(|field, _| self.field_allowed(resource, field)),
            Value::Array(items) => items
                .iter_mut()
                .for_each(|item| self.redact(resource, item)),
            _ => {}
        }
    }

    /// Refuses a write that touches a restricted field, naming it.
    pub fn check_write<'a>(
        &self,
        resource: &Resource,
        fields: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ToolError> {
        let denied: Vec<&str> = fields
            .into_iter()
            .filter(|f| !self.field_allowed(resource, f))
            .collect();
        if denied.is_empty() {
            return Ok(());
        }
        Err(ToolError::Forbidden(format!(
            "this caller may not write the {} field(s) {}",
            resource.name,
            denied.join(", ")
        )))
    }

    /// Adds `<tenant> AND <conditions>` over `resource`'s alias. Values are bound, never
    /// spliced; a condition on a field the resource does not declare matches nothing (fail
    /// closed).
    fn push_conditions(&self, resource: &Resource, query: &mut QueryBuilder<Postgres>) {
        self.push_conditions_at(resource, resource.alias, query);
    }

    /// The same over `alias`: another table with the resource's tenant and columns.
    fn push_conditions_at(
        &self,
        resource: &Resource,
        alias: &str,
        query: &mut QueryBuilder<Postgres>,
    ) {
        let qualified = |column: &str| format!("{alias}.{column}");
        query
            .push(qualified("tenant_id"))
            .push(" = ")
            .push_bind(self.tenant_id);
        for condition in self.conditions.get(resource.name).into_iter().flatten() {
            let Some(column) = resource.column(&condition.field) else {
                query.push(" AND false");
                continue;
            };
            let column = qualified(column);
            // Columns are compared as text so one binding type serves every column.
            match (condition.op, &condition.value) {
                (Op::Eq, value) => {
                    query
                        .push(" AND ")
                        .push(column)
                        .push("::text = ")
                        .push_bind(as_text(value));
                }
                (Op::Ne, value) => {
                    query
                        .push(" AND ")
                        .push(column.clone())
                        .push(" IS NOT NULL AND ")
                        .push(column)
                        .push("::text <> ")
                        .push_bind(as_text(value));
                }
                (Op::In, Value::Array(values)) => {
                    let values: Vec<String> = values.iter().map(as_text).collect();
                    query
                        .push(" AND ")
                        .push(column)
                        .push("::text = ANY(")
                        .push_bind(values)
                        .push(")");
                }
                (Op::In, value) => {
                    query
                        .push(" AND ")
                        .push(column)
                        .push("::text = ")
                        .push_bind(as_text(value));
                }
            }
        }
    }

    /// Does a row (as JSON) satisfy the row conditions? For checking a write's result
    /// before it is committed, and a create's input.
    pub fn row_allowed(&self, resource: &Resource, row: &Value) -> bool {
        self.conditions
            .get(resource.name)
            .into_iter()
            .flatten()
            .all(|c| {
                let Some(actual) = row
                    .get(&c.field)
                    .filter(|_| resource.column(&c.field).is_some())
                else {
                    return false;
                };
                let actual = as_text(actual);
                match (&c.op, &c.value) {
                    (Op::Eq, v) => actual == as_text(v),
                    (Op::Ne, v) => !actual.is_empty() && actual != as_text(v),
                    (Op::In, Value::Array(vs)) => vs.iter().any(|v| as_text(v) == actual),
                    (Op::In, v) => actual == as_text(v),
                }
            })
    }

    /// Object exceptions: may the caller use `scope` on object `id`? For agents, scopes in
    /// [`EXPLICIT_GRANT_SCOPES`] also need a grant.
    pub fn object_allowed(&self, scope: &str, id: Uuid) -> bool {
        match self.grants.iter().find(|g| g.scope == scope) {
            Some(grant) => {
                !grant.except_ids.contains(&id)
                    && grant
                        .only_ids
                        .as_ref()
                        .is_none_or(|only| only.contains(&id))
            }
            None => !(self.is_agent && EXPLICIT_GRANT_SCOPES.contains(&scope)),
        }
    }

    /// May the caller use `scope` at all? An agent needs an explicit grant for the scopes
    /// of [`EXPLICIT_GRANT_SCOPES`]; everyone else needs none.
    pub fn has_grant(&self, scope: &str) -> bool {
        !(self.is_agent && EXPLICIT_GRANT_SCOPES.contains(&scope))
            || self.grants.iter().any(|g| g.scope == scope)
    }

    /// Refuses `scope` on `id` with a clear error (not found would hide why).
    pub fn check_object(&self, scope: &str, id: Uuid) -> Result<(), ToolError> {
        if self.object_allowed(scope, id) {
            return Ok(());
        }
        Err(ToolError::Forbidden(format!(
            "`{scope}` on {id} needs an explicit grant that covers this object"
        )))
    }

    /// Adds the object exceptions of `scope` over the `id` column of `alias`.
    fn push_object_filter(&self, scope: &str, alias: &str, query: &mut QueryBuilder<Postgres>) {
        let id = format!("{alias}.id");
        match self.grants.iter().find(|g| g.scope == scope) {
            Some(grant) => {
                if !grant.except_ids.is_empty() {
                    query
                        .push(" AND NOT (")
                        .push(id.clone())
                        .push(" = ANY(")
                        .push_bind(grant.except_ids.clone())
                        .push("))");
                }
                if let Some(only) = &grant.only_ids {
                    query
                        .push(" AND ")
                        .push(id)
                        .push(" = ANY(")
                        .push_bind(only.clone())
                        .push(")");
                }
            }
            None if self.is_agent && EXPLICIT_GRANT_SCOPES.contains(&scope) => {
                query.push(" AND false");
            }
            None => {}
        }
    }
}

/// The rows of one policed resource as one caller may use them for one kind of access:
/// its tenant, its row conditions, and the object grants of `<resource>:read` and of the
/// access's own scope. Only [`Policy::rows`] makes one.
pub struct Rows<'p> {
    policy: &'p Policy,
    resource: &'static Resource,
    access: Access,
}

impl Rows<'_> {
    /// Adds `<tenant> AND <conditions> AND <grants>` over the resource's alias.
    fn push_all(&self, query: &mut QueryBuilder<Postgres>) {
        let (policy, resource) = (self.policy, self.resource);
        policy.push_conditions(resource, query);
        for scope in self.scopes() {
            policy.push_object_filter(&scope, resource.alias, query);
        }
    }

    /// The scopes whose grants hold: reading always, and the access's own.
    fn scopes(&self) -> Vec<String> {
        let read = format!("{}:read", self.resource.name);
        let own = format!("{}:{}", self.resource.name, self.access.action());
        if own == read {
            vec![read]
        } else {
            vec![read, own]
        }
    }

    /// ` FROM <table> <alias> WHERE <policy>`: the caller goes on with ` AND …`.
    pub fn push_from(&self, query: &mut QueryBuilder<Postgres>) {
        query.push(format!(
            " FROM {} {} WHERE ",
            self.resource.name, self.resource.alias
        ));
        self.push_all(query);
    }

    /// `SELECT <columns> FROM <table> <alias> WHERE <policy>`.
    pub fn select(&self, columns: &str) -> QueryBuilder<Postgres> {
        let mut query = QueryBuilder::new(format!("SELECT {columns}"));
        self.push_from(&mut query);
        query
    }

    /// ` JOIN <table> <alias> ON <same tenant> AND <alias>.id = <other>.<key> AND <policy>`: rows of another
    /// table reached through this resource (an interaction through its customer).
    pub fn push_join(
        &self,
        query: &mut QueryBuilder<Postgres>,
        other: &'static str,
        key: &'static str,
    ) {
        let alias = self.resource.alias;
        query.push(format!(
            " JOIN {} {alias} ON {alias}.tenant_id = {other}.tenant_id AND {alias}.id = {other}.{key} AND ",
            self.resource.name
        ));
        self.push_all(query);
    }

    /// `UPDATE <table> <alias> SET <set> WHERE <policy>`: the caller goes on with ` AND …`.
    pub fn push_update(
        &self,
        query: &mut QueryBuilder<Postgres>,
        set: impl FnOnce(&mut QueryBuilder<Postgres>),
    ) {
        query.push(format!(
            "UPDATE {} {} SET ",
            self.resource.name, self.resource.alias
        ));
        set(query);
        query.push(" WHERE ");
        self.push_all(query);
    }

    /// `DELETE FROM <table> <alias> WHERE <policy>`: the caller goes on with ` AND …`.
    pub fn delete(&self) -> QueryBuilder<Postgres> {
        let mut query = QueryBuilder::new(format!(
            "DELETE FROM {} {} WHERE ",
            self.resource.name, self.resource.alias
        ));
        self.push_all(&mut query);
        query
    }

    /// Refuses an object the grants in play exclude, saying why (for writes, where
    /// "not found" would hide that a grant is missing).
    pub fn check_object(&self, id: Uuid) -> Result<(), ToolError> {
        for scope in self.scopes() {
            self.policy.check_object(&scope, id)?;
        }
        Ok(())
    }

    /// `SELECT` the number of these customers in `status` (any when `None`) from the
    /// per-status counts (migration 0029) instead of counting rows. Possible when every
    /// row condition of the caller is on the status and its grants only exclude ids (those
    /// few are counted and taken off); `None` otherwise, and the caller counts the rows.
    pub fn counted(&self, status: Option<&str>) -> Option<QueryBuilder<Postgres>> {
        let (policy, resource) = (self.policy, self.resource);
        if resource.name != CUSTOMERS.name {
            return None;
        }
        let conditions = policy.conditions.get(resource.name).into_iter().flatten();
        if conditions.into_iter().any(|c| c.field != "status") {
            return None;
        }
        let mut except = Vec::new();
        for scope in self.scopes() {
            match policy.grants.iter().find(|g| g.scope == scope) {
                Some(grant) if grant.only_ids.is_some() => return None,
                Some(grant) => except.extend(grant.except_ids.iter().copied()),
                None if policy.is_agent && EXPLICIT_GRANT_SCOPES.contains(&scope.as_str()) => {
                    return None;
                }
                None => {}
            }
        }
        let mut query = QueryBuilder::new(
            "SELECT ((SELECT coalesce(sum(k.n), 0) FROM customer_counts k WHERE ",
        );
        policy.push_conditions_at(resource, "k", &mut query);
        if let Some(status) = status {
            query.push(" AND k.status = ").push_bind(status.to_owned());
        }
        query.push(")");
        if !except.is_empty() {
            query.push(" - (SELECT count(*) FROM customers c WHERE ");
            policy.push_conditions(resource, &mut query);
            if let Some(status) = status {
                query.push(" AND c.status = ").push_bind(status.to_owned());
            }
            query.push(" AND c.id = ANY(").push_bind(except).push("))");
        }
        query.push(")::bigint");
        Some(query)
    }
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Refuses field rules, conditions or grants the policy would not enforce, naming what it
/// does enforce: a restriction that is stored but not applied is worse than none.
pub fn check_enforced(
    field_rules: Option<&BTreeMap<String, Vec<String>>>,
    conditions: Option<&BTreeMap<String, Vec<Condition>>>,
    grants: Option<&[Grant]>,
) -> Result<(), String> {
    let policed = |resource: &str, what: &str| {
        POLICED
            .iter()
            .copied()
            .find(|r| r.name == resource)
            .ok_or_else(|| {
                format!(
                    "{what} on `{resource}` would not be enforced; they are enforced on: {} \
                     (interactions, annotations, quotes and invoices follow their customer's)",
                    POLICED.map(|r| r.name).join(", ")
                )
            })
    };
    for (resource, fields) in field_rules.into_iter().flatten() {
        let resource = policed(resource, "field rules")?;
        if let Some(unknown) = fields
            .iter()
            .find(|f| !resource.fields.contains(&f.as_str()))
        {
            return Err(format!(
                "field rules: `{unknown}` is not a field of {}; its fields are: {}",
                resource.name,
                resource.fields.join(", ")
            ));
        }
    }
    for (resource, list) in conditions.into_iter().flatten() {
        let resource = policed(resource, "conditions")?;
        if let Some(unknown) = list.iter().find(|c| resource.column(&c.field).is_none()) {
            return Err(format!(
                "conditions: {} cannot be conditioned on `{}`; only on: {}",
                resource.name,
                unknown.field,
                resource
                    .columns
                    .iter()
                    .map(|(f, _)| *f)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if let Some(grant) = grants
        .into_iter()
        .flatten()
        .find(|g| !GRANTABLE_SCOPES.contains(&g.scope.trim()))
    {
        return Err(format!(
            "grants: object exceptions on `{}` would not be enforced; grants are enforced for: {}",
            grant.scope,
            GRANTABLE_SCOPES.join(", ")
        ));
    }
    Ok(())
}

/// Replaces an agent's field rules, conditions or grants (each only when given).
pub async fn set_agent_policy(
    pool: &PgPool,
    tenant_id: Uuid,
    agent_id: Uuid,
    field_rules: Option<&BTreeMap<String, Vec<String>>>,
    conditions: Option<&BTreeMap<String, Vec<Condition>>>,
    grants: Option<&[Grant]>,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    if let Some(rules) = field_rules {
        sqlx::query("DELETE FROM field_rules WHERE tenant_id = $1 AND agent_id = $2")
            .bind(tenant_id)
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        for (resource, fields) in rules {
            sqlx::query("INSERT INTO field_rules (tenant_id, agent_id, resource, allowed_fields) VALUES ($1, $2, $3, $4)")
                .bind(tenant_id)
                .bind(agent_id)
                .bind(resource)
                .bind(fields)
                .execute(&mut *tx)
                .await?;
        }
    }
    if let Some(conditions) = conditions {
        sqlx::query("DELETE FROM row_conditions WHERE tenant_id = $1 AND agent_id = $2")
            .bind(tenant_id)
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        for (resource, list) in conditions {
            for c in list {
                let op = match c.op {
                    Op::Eq => "eq",
                    Op::Ne => "ne",
                    Op::In => "in",
                };
                sqlx::query(
                    "INSERT INTO row_conditions (tenant_id, agent_id, resource, field, op, value) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(tenant_id)
                .bind(agent_id)
                .bind(resource)
                .bind(&c.field)
                .bind(op)
                .bind(&c.value)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    if let Some(grants) = grants {
        sqlx::query("DELETE FROM grants WHERE tenant_id = $1 AND agent_id = $2")
            .bind(tenant_id)
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        for g in grants {
            sqlx::query("INSERT INTO grants (tenant_id, agent_id, scope, only_ids, except_ids) VALUES ($1, $2, $3, $4, $5)")
                .bind(tenant_id)
                .bind(agent_id)
                .bind(&g.scope)
                .bind(&g.only_ids)
                .bind(&g.except_ids)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// A record after the policy shaped it (restricted fields removed), documented by the
/// schema of `T`, whose optional fields may be absent.
#[derive(Debug, Clone)]
pub struct Shaped<T> {
    value: Value,
    _record: std::marker::PhantomData<T>,
}

impl<T> Shaped<T> {
    pub fn new(value: Value) -> Shaped<T> {
        Shaped {
            value,
            _record: std::marker::PhantomData,
        }
    }
}

impl<T> Serialize for Shaped<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<T: JsonSchema> JsonSchema for Shaped<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}
