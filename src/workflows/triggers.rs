//! Event triggers: active workflows with `trigger_type: event` start on matching events of
//! their tenant's outbox. One process at a time reads the outbox past a shared cursor
//! (`FOR UPDATE SKIP LOCKED`), and an execution is unique per (workflow, event), so an
//! event starts a workflow once however many processes run.

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::engine::CHANNEL;
use super::expr::Condition;
use crate::access::Scopes;

/// Events are read once they are this old: a transaction that wrote a lower event id and
/// commits later is still seen (one that takes longer would be missed).
const SETTLE_SECS: f64 = 1.0;

#[derive(sqlx::FromRow)]
struct Triggered {
    id: Uuid,
    name: String,
    version: i32,
    trigger_config: Value,
    variables: Value,
    steps: Value,
    created_by_kind: String,
    created_by_id: Option<Uuid>,
    created_by_name: String,
}

pub async fn on_events(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(last): Option<i64> = sqlx::query_scalar(
        "SELECT last_event_id FROM workflow_event_cursor WHERE id = 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let events: Vec<(i64, Uuid, String, Value)> = sqlx::query_as(
        "SELECT id, tenant_id, type, payload FROM events
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
    for (event_id, tenant_id, event_type, payload) in events {
        let workflows: Vec<Triggered> = sqlx::query_as(
            "SELECT id, name, version, trigger_config, variables, steps, created_by_kind,
                    created_by_id, created_by_name
             FROM workflows WHERE tenant_id = $1 AND status = 'active' AND trigger_type = 'event'
               AND trigger_config ->> 'event' = $2",
        )
        .bind(tenant_id)
        .bind(&event_type)
        .fetch_all(&mut *tx)
        .await?;
        let event = json!({ "id": event_id, "type": event_type, "payload": payload });
        for workflow in workflows {
            let condition = workflow
                .trigger_config
                .get("condition")
                .and_then(|c| serde_json::from_value::<Condition>(c.clone()).ok());
            if condition.is_some_and(|c| !c.evaluate(&json!({ "event": event })).result) {
                continue;
            }
            let definition = json!({
                "trigger_type": "event", "trigger_config": workflow.trigger_config,
                "variables": workflow.variables, "steps": workflow.steps,
            });
            // It runs as whoever created the workflow, with their permissions of the moment.
            let inserted = sqlx::query(
                "INSERT INTO workflow_executions (tenant_id, workflow_id, workflow_name,
                     workflow_version, definition, input, source, trigger_event_id,
                     started_by_kind, started_by_id, started_by_name, scopes)
                 VALUES ($1, $2, $3, $4, $5, $6, 'event', $7, $8, $9, $10, $11)
                 ON CONFLICT (workflow_id, trigger_event_id) DO NOTHING",
            )
            .bind(tenant_id)
            .bind(workflow.id)
            .bind(&workflow.name)
            .bind(workflow.version)
            .bind(definition)
            .bind(json!({ "event": event }))
            .bind(event_id)
            .bind(&workflow.created_by_kind)
            .bind(workflow.created_by_id)
            .bind(&workflow.created_by_name)
            .bind(Scopes::EVERY.names())
            .execute(&mut *tx)
            .await?;
            started += inserted.rows_affected();
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
