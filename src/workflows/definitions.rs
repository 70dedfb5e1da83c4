//! Workflow definitions: create, list, get, update, delete; and `test_condition` and
//! `test_substitution`, which evaluate a condition or arguments against a context.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::expr::{Condition, Evaluation, Substitution, substitute};
use super::model::{Definition, Step, Trigger, validate};
use crate::access::delegation::{self, Member};
use crate::error::ToolError;
use crate::store::StoreError;
use crate::store::page::{PageArgs, PageInfo, fetch_page};
use crate::toolkit::catalog::{Hints, RegisteredTool, Toolset, check_stored_json, tool};
use crate::toolkit::context::ToolCtx;

const READ: &[&str] = &["workflows:read"];
const WRITE: &[&str] = &["workflows:write"];

pub fn tools() -> Vec<RegisteredTool> {
    let def = |name, title, description, scopes, hints| {
        Toolset::Workflows.def(name, title, description, scopes, hints)
    };
    vec![
        tool(
            def(
                "create_workflow",
                "Create a workflow",
                "Save a workflow: tool-calling steps and a trigger; checked, then saved as a \
                 draft.\n\n\
                 Ordered steps, each calling a tool with arguments that may reference \
                 `{{input.x}}`, `{{vars.y}}` and `{{steps.<id>.output.<path>}}`, an optional \
                 condition and an error policy (retries with backoff, then fail or continue); a \
                 trigger (manual, schedule, event). Checked before it is saved: errors name the \
                 step and field. Starts as a draft unless `status` says otherwise.",
                WRITE,
                Hints::CREATE,
            ),
            create_workflow,
        ),
        tool(
            def(
                "list_workflows",
                "List workflows",
                "List this tenant's workflows, newest first; filter by status, trigger, name.\n\n\
                 The name filter is a word of the name; the trigger filter is a trigger type.",
                READ,
                Hints::READ,
            ),
            list_workflows,
        ),
        tool(
            def(
                "get_workflow",
                "Get a workflow",
                "A workflow with its steps, trigger, variables, status and version.",
                READ,
                Hints::READ,
            ),
            get_workflow,
        ),
        tool(
            def(
                "update_workflow",
                "Update a workflow",
                "Change a workflow; give `version` to refuse the change if it moved on since you \
                 read it.\n\n\
                 Its name, description, status (draft, active, paused), trigger, variables or \
                 steps (the whole list). Changes to what it does raise its version.",
                WRITE,
                Hints::SET,
            ),
            update_workflow,
        ),
        tool(
            def(
                "delete_workflow",
                "Delete a workflow",
                "Delete a workflow and its execution history.",
                WRITE,
                Hints::REMOVE,
            ),
            delete_workflow,
        ),
        tool(
            def(
                "test_condition",
                "Test a condition",
                "Evaluate a step condition against a context (`{input, vars, steps}`).\n\n\
                 Answers the result, the field's value, the value compared with and the operator.",
                READ,
                Hints::READ,
            ),
            test_condition,
        ),
        tool(
            def(
                "test_substitution",
                "Test a substitution",
                "Replace the `{{…}}` references in step arguments from a context.\n\n\
                 The context is `{input, vars, steps}`. Answers the original and substituted \
                 parameters and every substitution made (references leading nowhere are reported \
                 and left in place).",
                READ,
                Hints::READ,
            ),
            test_substitution,
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Active,
    Paused,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Active => "active",
            Status::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Workflow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// `draft`, `active` or `paused`.
    pub status: String,
    pub version: i32,
    /// `manual`, `schedule` or `event`.
    pub trigger_type: String,
    pub trigger_config: Value,
    pub variables: Value,
    #[schemars(with = "Vec<Step>")]
    pub steps: Value,
    pub workflow_metadata: Value,
    pub created_by_name: String,
    /// Who owns it (only they or an admin change it) and who last changed what it does:
    /// it acts for both, never with more than either may do.
    #[schemars(with = "Member")]
    pub owner: Value,
    #[schemars(with = "Member")]
    pub behaviour_by: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const COLUMNS: &str = "id, name, description, status, version, trigger_type, trigger_config, \
     variables, steps, workflow_metadata, created_by_name, owner, behaviour_by, created_at, \
     updated_at";

impl Workflow {
    pub fn owner(&self) -> Option<Member> {
        serde_json::from_value(self.owner.clone()).ok()
    }

    /// Who an execution of it acts for besides whoever starts it: its owner and its last
    /// editor.
    pub fn acts_for(&self) -> Vec<Member> {
        delegation::stored_members([&self.owner, &self.behaviour_by])
    }

    /// The stored definition (valid: it was checked when saved).
    pub fn definition(&self) -> Result<Definition, ToolError> {
        let object = |v: &Value| v.as_object().cloned().unwrap_or_default();
        Ok(Definition {
            trigger_type: serde_json::from_value(Value::String(self.trigger_type.clone()))
                .map_err(|e| ToolError::Internal(format!("stored trigger: {e}")))?,
            trigger_config: object(&self.trigger_config),
            variables: object(&self.variables),
            steps: serde_json::from_value(self.steps.clone())
                .map_err(|e| ToolError::Internal(format!("stored steps: {e}")))?,
        })
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowOut {
    pub workflow: Workflow,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// Unique, 1 to 200 characters.
    ///
    /// Unique in the tenant.
    pub name: String,
    /// What it does.
    ///
    /// Up to 5,000 characters.
    #[serde(default)]
    pub description: String,
    /// Default `draft`.
    pub status: Option<Status>,
    /// How it starts (default `manual`).
    ///
    /// `schedule` and `event` take a `trigger_config`.
    #[serde(default)]
    pub trigger_type: Trigger,
    /// `{interval_seconds}`, `{cron, timezone}` or `{event}`.
    ///
    /// Schedule: `{"interval_seconds": 3600}` or
    /// `{"cron": "0 9 * * 1", "timezone": "Europe/Paris"}`. Event:
    /// `{"event": "customer.created", "condition": {…}}`.
    #[serde(default)]
    pub trigger_config: Map<String, Value>,
    /// Named values read as `{{vars.<name>}}`.
    #[serde(default)]
    pub variables: Map<String, Value>,
    /// 1 to 50 steps, run in order.
    pub steps: Vec<Step>,
    /// Free-form data.
    ///
    /// For categorising or display.
    #[serde(default)]
    pub workflow_metadata: Map<String, Value>,
}

pub(crate) fn check_text(name: &str, description: &str) -> Result<(), ToolError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ToolError::InvalidRequest(
            "name must be 1 to 200 characters".into(),
        ));
    }
    if description.chars().count() > 5000 {
        return Err(ToolError::InvalidRequest(
            "description must be at most 5,000 characters".into(),
        ));
    }
    Ok(())
}

fn db_error(error: sqlx::Error) -> ToolError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ToolError::Conflict("a workflow of this tenant already has that name".into())
        }
        _ => StoreError::from(error).into(),
    }
}

/// The imported catalog tools that `definition`'s steps name.
async fn imported(ctx: &ToolCtx, definition: &Definition) -> Result<Vec<String>, ToolError> {
    let remote: Vec<String> = definition
        .steps
        .iter()
        .map(|s| s.tool.clone())
        .filter(|t| crate::connections::catalog::is_remote(t))
        .collect();
    if remote.is_empty() {
        return Ok(remote);
    }
    let entries = crate::connections::catalog::remote_entries(
        &ctx.app,
        ctx.principal.tenant_id,
        Some(&remote),
    )
    .await?;
    Ok(entries.into_iter().map(|e| e.name).collect())
}

/// Event triggers hand a workflow whole records of the events' resources: who it acts for
/// must be able to read that resource, and an agent limited by field rules, row conditions
/// or object grants cannot have one at all (as with webhooks).
pub(crate) async fn check_trigger_for(
    ctx: &ToolCtx,
    definition: &Definition,
) -> Result<(), ToolError> {
    if definition.trigger_type != Trigger::Event {
        return Ok(());
    }
    let event = definition
        .trigger_config
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(refusal) = crate::events::read_refusal(&ctx.principal, event) {
        return Err(ToolError::Forbidden(refusal));
    }
    if ctx.policy().await?.is_restricted() {
        return Err(ToolError::Forbidden(
            "a caller limited by field rules, row conditions or object grants cannot create \
             event triggers: events carry whole records; ask an admin"
                .into(),
        ));
    }
    Ok(())
}

/// Saves a checked workflow (also used by templates and extraction), owned by the caller.
pub(crate) async fn insert(ctx: &ToolCtx, args: CreateArgs) -> Result<Workflow, ToolError> {
    check_text(&args.name, &args.description)?;
    check_stored_json("workflow_metadata", &args.workflow_metadata)?;
    let definition = Definition {
        trigger_type: args.trigger_type,
        trigger_config: args.trigger_config,
        variables: args.variables,
        steps: args.steps,
    };
    validate(
        &definition,
        ctx.app.catalog,
        &imported(ctx, &definition).await?,
    )?;
    check_trigger_for(ctx, &definition).await?;
    let principal = &ctx.principal;
    let owner = delegation::owner_member(ctx.app.store.pool(), principal).await?;
    let mut tx = ctx.begin().await?;
    let workflow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO workflows (tenant_id, name, description, status, trigger_type, trigger_config,
             variables, steps, workflow_metadata, created_by_kind, created_by_id, created_by_name,
             owner, behaviour_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING {COLUMNS}"
    )))
    .bind(principal.tenant_id)
    .bind(args.name.trim())
    .bind(&args.description)
    .bind(args.status.unwrap_or(Status::Draft).as_str())
    .bind(definition.trigger_type.as_str())
    .bind(Value::Object(definition.trigger_config))
    .bind(Value::Object(definition.variables))
    .bind(serde_json::to_value(&definition.steps).unwrap_or_default())
    .bind(Value::Object(args.workflow_metadata))
    .bind(principal.kind.as_str())
    .bind(principal.id)
    .bind(&principal.name)
    .bind(serde_json::to_value(owner).unwrap_or_default())
    .bind(serde_json::to_value(Member::of(principal)).unwrap_or_default())
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    ctx.commit(tx).await?;
    Ok(workflow)
}

async fn create_workflow(ctx: ToolCtx, args: CreateArgs) -> Result<WorkflowOut, ToolError> {
    Ok(WorkflowOut {
        workflow: insert(&ctx, args).await?,
    })
}

pub async fn load(
    executor: impl sqlx::PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
    for_update: bool,
) -> Result<Workflow, ToolError> {
    let mut query = QueryBuilder::<Postgres>::new(format!(
        "SELECT {COLUMNS} FROM workflows WHERE tenant_id = "
    ));
    query.push_bind(tenant_id).push(" AND id = ").push_bind(id);
    if for_update {
        query.push(" FOR UPDATE");
    }
    query
        .build_query_as()
        .fetch_optional(executor)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ToolError::NotFound(format!("no workflow {id} in this tenant")))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowIdArgs {
    /// From list_workflows.
    pub workflow_id: Uuid,
}

async fn get_workflow(ctx: ToolCtx, args: WorkflowIdArgs) -> Result<WorkflowOut, ToolError> {
    Ok(WorkflowOut {
        workflow: load(
            ctx.app.store.pool(),
            ctx.principal.tenant_id,
            args.workflow_id,
            false,
        )
        .await?,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only in this status.
    pub status: Option<Status>,
    /// Only with this trigger.
    pub trigger_type: Option<Trigger>,
    /// Text in the name (any case).
    ///
    /// Workflows whose name contains this text.
    pub search: Option<String>,
    /// 1 to 100 (default 50).
    ///
    /// Items per page.
    pub limit: Option<u32>,
    /// From `next_cursor`.
    ///
    /// The one of the previous page; omit it for the first page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowList {
    pub workflows: Vec<Workflow>,
    #[serde(flatten)]
    pub page: PageInfo,
}

async fn list_workflows(ctx: ToolCtx, args: ListArgs) -> Result<WorkflowList, ToolError> {
    let page = PageArgs::of(args.limit, &args.cursor)?;
    let tenant = ctx.principal.tenant_id;
    let (workflows, total) = fetch_page(
        ctx.app.store.pool(),
        COLUMNS,
        |q| {
            q.push(" FROM workflows WHERE tenant_id = ")
                .push_bind(tenant);
            if let Some(status) = args.status {
                q.push(" AND status = ").push_bind(status.as_str());
            }
            if let Some(trigger) = args.trigger_type {
                q.push(" AND trigger_type = ").push_bind(trigger.as_str());
            }
            if let Some(search) = &args.search {
                q.push(" AND strpos(lower(name), lower(")
                    .push_bind(search.clone())
                    .push(")) > 0");
            }
        },
        "created_at DESC, id",
        page,
    )
    .await
    .map_err(StoreError::from)?;
    Ok(WorkflowList {
        workflows,
        page: page.info(total),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateArgs {
    /// From list_workflows.
    pub workflow_id: Uuid,
    /// The `version` you read.
    ///
    /// The change is refused (`conflict`) if it moved on.
    pub version: Option<i32>,
    /// Unique in the tenant.
    pub name: Option<String>,
    /// What it does.
    pub description: Option<String>,
    /// Only `active` ones are triggered.
    pub status: Option<Status>,
    /// How it starts.
    pub trigger_type: Option<Trigger>,
    /// `{interval_seconds}`, `{cron, timezone}` or `{event}`.
    ///
    /// Replaces the current one (see create_workflow).
    pub trigger_config: Option<Map<String, Value>>,
    /// Named values read as `{{vars.<name>}}`.
    ///
    /// Replaces all of them.
    pub variables: Option<Map<String, Value>>,
    /// The whole new list of steps.
    pub steps: Option<Vec<Step>>,
    /// Free-form data.
    ///
    /// Replaces the current data.
    pub workflow_metadata: Option<Map<String, Value>>,
}

async fn update_workflow(ctx: ToolCtx, args: UpdateArgs) -> Result<WorkflowOut, ToolError> {
    let pool = ctx.app.store.pool();
    let tenant = ctx.principal.tenant_id;
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let current = load(&mut *tx, tenant, args.workflow_id, true).await?;
    delegation::may_manage(
        &ctx.principal,
        current.owner().as_ref(),
        &format!("workflow `{}`", current.name),
    )?;
    if let Some(version) = args.version
        && version != current.version
    {
        return Err(ToolError::Conflict(format!(
            "the workflow is at version {}, not {version}: read it again",
            current.version
        )));
    }
    if let Some(metadata) = &args.workflow_metadata {
        check_stored_json("workflow_metadata", metadata)?;
    }
    let name = args.name.unwrap_or_else(|| current.name.clone());
    let description = args
        .description
        .unwrap_or_else(|| current.description.clone());
    check_text(&name, &description)?;
    let mut definition = current.definition()?;
    let changes_behaviour = args.trigger_type.is_some()
        || args.trigger_config.is_some()
        || args.variables.is_some()
        || args.steps.is_some();
    if let Some(trigger) = args.trigger_type {
        definition.trigger_type = trigger;
    }
    if let Some(config) = args.trigger_config {
        definition.trigger_config = config;
    }
    if let Some(variables) = args.variables {
        definition.variables = variables;
    }
    if let Some(steps) = args.steps {
        definition.steps = steps;
    }
    validate(
        &definition,
        ctx.app.catalog,
        &imported(&ctx, &definition).await?,
    )?;
    if changes_behaviour {
        check_trigger_for(&ctx, &definition).await?;
    }
    // Whoever changes what it does is who it acts for from now on (with its owner).
    let behaviour_by = if changes_behaviour {
        serde_json::to_value(Member::of(&ctx.principal)).unwrap_or_default()
    } else {
        current.behaviour_by.clone()
    };
    let status = args
        .status
        .map_or(current.status.clone(), |s| s.as_str().to_owned());
    let workflow: Workflow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE workflows SET name = $3, description = $4, status = $5, trigger_type = $6,
             trigger_config = $7, variables = $8, steps = $9, workflow_metadata = $10,
             version = version + $11, updated_at = now(), behaviour_by = $12,
             next_run_at = CASE WHEN $11 = 1 OR status <> $5 THEN NULL ELSE next_run_at END
         WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
    )))
    .bind(tenant)
    .bind(current.id)
    .bind(name.trim())
    .bind(&description)
    .bind(&status)
    .bind(definition.trigger_type.as_str())
    .bind(Value::Object(definition.trigger_config))
    .bind(Value::Object(definition.variables))
    .bind(serde_json::to_value(&definition.steps).unwrap_or_default())
    .bind(
        args.workflow_metadata
            .map(Value::Object)
            .unwrap_or(current.workflow_metadata),
    )
    .bind(i32::from(changes_behaviour))
    .bind(behaviour_by)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    ctx.commit(tx).await?;
    Ok(WorkflowOut { workflow })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub workflow_id: Uuid,
    pub deleted: bool,
}

async fn delete_workflow(ctx: ToolCtx, args: WorkflowIdArgs) -> Result<Deleted, ToolError> {
    let current = load(
        ctx.app.store.pool(),
        ctx.principal.tenant_id,
        args.workflow_id,
        false,
    )
    .await?;
    delegation::may_manage(
        &ctx.principal,
        current.owner().as_ref(),
        &format!("workflow `{}`", current.name),
    )?;
    let mut tx = ctx.begin().await?;
    let deleted: Option<Uuid> =
        sqlx::query_scalar("DELETE FROM workflows WHERE tenant_id = $1 AND id = $2 RETURNING id")
            .bind(ctx.principal.tenant_id)
            .bind(args.workflow_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    let workflow_id = deleted.ok_or_else(|| {
        ToolError::NotFound(format!("no workflow {} in this tenant", args.workflow_id))
    })?;
    ctx.commit(tx).await?;
    Ok(Deleted {
        workflow_id,
        deleted: true,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestConditionArgs {
    /// The condition to evaluate.
    ///
    /// E.g. `{"field": "steps.find.output.total", "operator": "gt", "value": 0}`, or
    /// `{"and": […]}`, `{"or": […]}`, `{"not": {…}}`.
    pub condition: Condition,
    /// `{input, vars, steps}`.
    ///
    /// The data to evaluate against:
    /// `{"input": {…}, "vars": {…}, "steps": {"<id>": {"output": …}}}`.
    pub context: Map<String, Value>,
}

async fn test_condition(_ctx: ToolCtx, args: TestConditionArgs) -> Result<Evaluation, ToolError> {
    Ok(args.condition.evaluate(&Value::Object(args.context)))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSubstitutionArgs {
    /// Step arguments with `{{…}}`.
    pub parameters: Map<String, Value>,
    /// `{input, vars, steps}`.
    ///
    /// The data providing the values: `{"input": …, "vars": …, "steps": …}`.
    pub context: Map<String, Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SubstitutionOut {
    pub original_parameters: Map<String, Value>,
    pub substituted_parameters: Map<String, Value>,
    pub substitutions_made: Vec<Substitution>,
}

async fn test_substitution(
    _ctx: ToolCtx,
    args: TestSubstitutionArgs,
) -> Result<SubstitutionOut, ToolError> {
    let (substituted_parameters, substitutions_made) =
        substitute(&args.parameters, &Value::Object(args.context));
    Ok(SubstitutionOut {
        original_parameters: args.parameters,
        substituted_parameters,
        substitutions_made,
    })
}
