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

/// A workflow started by a trigger: it runs as whoever created it, with their
/// permissions of the moment.
#[derive(sqlx::FromRow)]
pub(super) struct Triggered {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub version: i32,
    pub trigger_config: Value,
    pub variables: Value,
    pub steps: Value,
    pub created_by_kind: String,
    pub created_by_id: Option<Uuid>,
    pub created_by_name: String,
}

pub(super) const TRIGGERED_COLUMNS: &str = "id, tenant_id, name, version, trigger_config, \
     variables, steps, created_by_kind, created_by_id, created_by_name";

impl Triggered {
    /// Queues an execution (once per event: a second insert for the same event is a no-op).
    pub(super) async fn queue(
        &self,
        tx: &mut sqlx::PgConnection,
        source: &str,
        input: Value,
        event_id: Option<i64>,
    ) -> Result<u64, sqlx::Error> {
        let definition = json!({
            "trigger_type": source, "trigger_config": self.trigger_config,
            "variables": self.variables, "steps": self.steps,
        });
        let inserted = sqlx::query(
            "INSERT INTO workflow_executions (tenant_id, workflow_id, workflow_name,
                 workflow_version, definition, input, source, trigger_event_id,
                 started_by_kind, started_by_id, started_by_name, scopes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
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
        .bind(&self.created_by_kind)
        .bind(self.created_by_id)
        .bind(&self.created_by_name)
        .bind(Scopes::EVERY.names())
        .execute(tx)
        .await?;
        Ok(inserted.rows_affected())
    }
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
        let workflows: Vec<Triggered> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TRIGGERED_COLUMNS}
             FROM workflows WHERE tenant_id = $1 AND status = 'active' AND trigger_type = 'event'
               AND trigger_config ->> 'event' = $2"
        )))
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
            started += workflow
                .queue(&mut tx, "event", json!({ "event": event }), Some(event_id))
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
