//! Event triggers: active workflows with `trigger_type: event` start on matching events of
//! their tenant's outbox. One process at a time reads the outbox past a shared cursor
//! (`FOR UPDATE SKIP LOCKED`), and an execution is unique per (workflow, event), so an
//! event starts a workflow once however many processes run.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::engine::CHANNEL;
use super::expr::Condition;
use crate::access::Principal;
use crate::access::audit::AuditEvent;
use crate::access::delegation::{self, Cause, MAX_CAUSE_DEPTH, Member};
use crate::app::App;

/// Events are read once they are this old: a transaction that wrote a lower event id and
/// commits later is still seen (one that takes longer would be missed).
const SETTLE_SECS: f64 = 1.0;

/// A workflow started by a trigger: it acts for its owner and its last editor, with the
/// intersection of their permissions of the moment (never every scope).
#[derive(sqlx::FromRow)]
pub(super) struct Triggered {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub version: i32,
    pub trigger_config: Value,
    pub variables: Value,
    pub steps: Value,
    pub owner: Value,
    pub behaviour_by: Value,
}

pub(super) const TRIGGERED_COLUMNS: &str = "id, tenant_id, name, version, trigger_config, \
     variables, steps, owner, behaviour_by";

impl Triggered {
    fn chain(&self) -> Vec<Member> {
        delegation::distinct(delegation::stored_members([
            &self.owner,
            &self.behaviour_by,
        ]))
    }

    /// Who it acts for, now; `Err` with the reason when someone of its chain is gone.
    pub(super) async fn acting(&self, pool: &PgPool, cause: Cause) -> Result<Principal, String> {
        delegation::resolve(pool, self.tenant_id, &self.chain(), cause)
            .await
            .map_err(|e| e.to_string())
    }

    /// Queues an execution (once per event: a second insert for the same event is a no-op).
    pub(super) async fn queue(
        &self,
        tx: &mut sqlx::PgConnection,
        acting: &Principal,
        source: &str,
        input: Value,
        event_id: Option<i64>,
    ) -> Result<u64, sqlx::Error> {
        let definition = json!({
            "trigger_type": source, "trigger_config": self.trigger_config,
            "variables": self.variables, "steps": self.steps,
        });
        let cause = acting
            .delegation
            .as_ref()
            .map(|d| d.cause.clone())
            .unwrap_or_default();
        let inserted = sqlx::query(
            "INSERT INTO workflow_executions (tenant_id, workflow_id, workflow_name,
                 workflow_version, definition, input, source, trigger_event_id,
                 started_by_kind, started_by_id, started_by_name, scopes, chain, cause,
                 traceparent)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                     (SELECT traceparent FROM events WHERE id = $8))
             ON CONFLICT (workflow_id, trigger_event_id) DO NOTHING",
        )
        .bind(self.tenant_id)
        .bind(self.id)
        .bind(&self.name)
        .bind(self.version)
        .bind(definition)
        .bind(input)
        .bind(source)
        .bind(event_id)
        .bind(acting.kind.as_str())
        .bind(acting.id)
        .bind(&acting.name)
        .bind(acting.scopes.names())
        .bind(delegation::chain_json(&self.chain()))
        .bind(cause.json())
        .execute(tx)
        .await?;
        Ok(inserted.rows_affected())
    }

    /// A trigger that did not start its workflow, in the audit trail and the log.
    async fn refused(&self, app: &App, event_id: i64, event_type: &str, code: &str, reason: &str) {
        tracing::warn!(workflow = %self.id, event = event_id, reason, "workflow trigger stopped");
        let owner = serde_json::from_value::<Member>(self.owner.clone()).ok();
        let mut audit = AuditEvent::anonymous("tool", "workflow.trigger", "refused");
        audit.tenant_id = Some(self.tenant_id);
        audit.principal_kind = owner.as_ref().map(|o| o.kind);
        audit.principal_id = owner.as_ref().map(|o| o.id);
        audit.principal_name = owner.map(|o| o.name);
        audit.chain = Some(delegation::chain_json(&self.chain()));
        audit.error_code = Some(code.to_owned());
        audit.transport = Some("workflow");
        audit.arguments = Some(json!({
            "workflow_id": self.id, "workflow": self.name, "event_id": event_id,
            "event_type": event_type, "reason": reason,
        }));
        app.audit.record(audit).await;
    }
}

/// Starts event-triggered workflows for the events past the shared cursor. An event starts
/// a workflow only if who it acts for may read what the event carries; never a workflow of
/// the event's own cause chain; and never past the cause depth limit.
pub async fn on_events(app: &App) -> Result<(), sqlx::Error> {
    let pool = app.store.pool();
    let mut tx = pool.begin().await?;
    let Some(last): Option<i64> = sqlx::query_scalar(
        "SELECT last_event_id FROM workflow_event_cursor WHERE id = 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let events: Vec<(i64, Uuid, String, Option<Uuid>, Value, Value)> = sqlx::query_as(
        "SELECT id, tenant_id, type, subject_id, payload, cause FROM events
         WHERE id > $1 AND created_at < now() - make_interval(secs => $2)
         ORDER BY id LIMIT 500",
    )
    .bind(last)
    .bind(SETTLE_SECS)
    .fetch_all(&mut *tx)
    .await?;
    let Some(newest) = events.last().map(|e| e.0) else {
        return Ok(());
    };
    let mut started = 0;
    // Who each workflow acts for, and whether its events may reach them, is the same for
    // every event of the batch: found once per workflow.
    let mut admitted: HashMap<Uuid, Result<Principal, String>> = HashMap::new();
    for (event_id, tenant_id, event_type, subject_id, payload, cause) in events {
        let workflows: Vec<Triggered> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TRIGGERED_COLUMNS}
             FROM workflows WHERE tenant_id = $1 AND status = 'active' AND trigger_type = 'event'
               AND trigger_config ->> 'event' = $2"
        )))
        .bind(tenant_id)
        .bind(&event_type)
        .fetch_all(&mut *tx)
        .await?;
        if workflows.is_empty() {
            continue;
        }
        let cause = Cause::read(&cause);
        let event = json!({ "id": event_id, "type": event_type, "payload": payload });
        for workflow in workflows {
            // Work of this workflow's own run (directly or further down) never restarts it.
            if cause.workflows.contains(&workflow.id) {
                tracing::debug!(workflow = %workflow.id, event = event_id, "own event: not triggered");
                continue;
            }
            let condition = workflow
                .trigger_config
                .get("condition")
                .and_then(|c| serde_json::from_value::<Condition>(c.clone()).ok());
            if condition.is_some_and(|c| !c.evaluate(&json!({ "event": event })).result) {
                continue;
            }
            let depth = cause.depth + 1;
            if depth > MAX_CAUSE_DEPTH {
                let reason = format!(
                    "the event was written by work {} levels deep; triggered work stops at \
                     {MAX_CAUSE_DEPTH} (a loop of workflows?)",
                    cause.depth
                );
                workflow
                    .refused(app, event_id, &event_type, "loop_stopped", &reason)
                    .await;
                continue;
            }
            if let Entry::Vacant(slot) = admitted.entry(workflow.id) {
                let verdict = match workflow.acting(pool, Cause::default()).await {
                    Ok(acting) => {
                        match crate::events::reader_refusal(pool, &acting, &event_type).await {
                            Ok(None) => Ok(acting),
                            Ok(Some(reason)) => Err(reason),
                            Err(error) => Err(format!("its policy could not be read: {error}")),
                        }
                    }
                    Err(reason) => Err(reason),
                };
                slot.insert(verdict);
            }
            // This event's own: a run's completion reaches only those who may read the run.
            if let Ok(acting) = &admitted[&workflow.id]
                && let Some(reason) =
                    match crate::events::subject_refusal(pool, acting, &event_type, subject_id)
                        .await
                    {
                        Ok(refusal) => refusal,
                        Err(error) => Some(format!("the event could not be checked: {error}")),
                    }
            {
                workflow
                    .refused(app, event_id, &event_type, "forbidden", &reason)
                    .await;
                continue;
            }
            let acting = match &admitted[&workflow.id] {
                Ok(acting) => delegation::with_cause(
                    acting,
                    Cause {
                        depth,
                        workflows: cause.workflows.clone(),
                    },
                ),
                Err(reason) => {
                    workflow
                        .refused(app, event_id, &event_type, "forbidden", reason)
                        .await;
                    continue;
                }
            };
            started += workflow
                .queue(
                    &mut tx,
                    &acting,
                    "event",
                    json!({ "event": event }),
                    Some(event_id),
                )
                .await?;
        }
    }
    sqlx::query("UPDATE workflow_event_cursor SET last_event_id = $1 WHERE id = 1")
        .bind(newest)
        .execute(&mut *tx)
        .await?;
    if started > 0 {
        sqlx::query("SELECT pg_notify($1, 'event')")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
