//! Schedule triggers: `interval_seconds`, or a five-field cron expression (minute hour
//! day-of-month month day-of-week) read in `timezone` (IANA, default UTC; see `jobs::cron`).
//! Every serving process looks for due workflows; the row lock that moves a workflow's
//! `next_run_at` on makes each due time start one execution, however many processes run.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use super::engine::CHANNEL;
use super::triggers::{TRIGGERED_COLUMNS, Triggered};
use crate::access::delegation::Cause;
use crate::jobs::cron;

fn zone(config: &Map<String, Value>) -> Result<chrono_tz::Tz, String> {
    match config.get("timezone") {
        None | Some(Value::Null) => Ok(chrono_tz::Tz::UTC),
        Some(Value::String(name)) => cron::timezone(name),
        Some(_) => Err("timezone is an IANA zone name such as `Europe/Paris`".into()),
    }
}

/// Whether a schedule trigger's config is one this server runs; the reason if not.
pub fn check(config: &Map<String, Value>) -> Result<(), String> {
    zone(config)?;
    let interval = config.get("interval_seconds").and_then(Value::as_u64);
    let expression = config.get("cron").and_then(Value::as_str);
    match (interval, expression) {
        (Some(seconds), None) if seconds >= 60 => Ok(()),
        (None, Some(expression)) => cron::parse(expression).map(drop),
        _ => Err(
            "a schedule needs `interval_seconds` (60 or more) or `cron` (five fields), not both"
                .into(),
        ),
    }
}

/// When a schedule fires next after `after`.
pub fn next_run(config: &Value, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Some(seconds) = config.get("interval_seconds").and_then(Value::as_i64) {
        return Some(after + Duration::seconds(seconds));
    }
    let expression = cron::parse(config.get("cron")?.as_str()?).ok()?;
    let zone = zone(config.as_object()?).ok()?;
    cron::next_after(&expression, zone, after)
}

#[derive(sqlx::FromRow)]
struct Due {
    next_run_at: Option<DateTime<Utc>>,
    #[sqlx(flatten)]
    workflow: Triggered,
}

/// Starts the executions of due schedules and sets their next times. A workflow without a
/// next time (just activated or changed) gets one, without running now.
pub async fn fire_due(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due: Vec<Due> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT next_run_at, {TRIGGERED_COLUMNS} FROM workflows
         WHERE status = 'active' AND trigger_type = 'schedule'
           AND (next_run_at IS NULL OR next_run_at <= now())
         FOR UPDATE SKIP LOCKED LIMIT 50"
    )))
    .fetch_all(&mut *tx)
    .await?;
    let now = Utc::now();
    let mut started = 0;
    for Due {
        next_run_at,
        workflow,
    } in due
    {
        if let Some(due_at) = next_run_at {
            match workflow.acting(pool, Cause::default()).await {
                Ok(acting) => {
                    started += workflow
                        .queue(
                            &mut tx,
                            &acting,
                            "schedule",
                            json!({ "scheduled_for": due_at }),
                            None,
                        )
                        .await?;
                }
                Err(reason) => {
                    tracing::warn!(workflow = %workflow.id, reason, "scheduled workflow not started");
                }
            }
        }
        sqlx::query("UPDATE workflows SET next_run_at = $2 WHERE id = $1")
            .bind(workflow.id)
            .bind(next_run(&workflow.trigger_config, now))
            .execute(&mut *tx)
            .await?;
    }
    if started > 0 {
        sqlx::query("SELECT pg_notify($1, 'schedule')")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn schedule_configs_are_checked_and_read_in_their_zone() {
        assert!(check(&config(json!({ "interval_seconds": 3600 }))).is_ok());
        assert!(check(&config(json!({ "interval_seconds": 5 }))).is_err());
        assert!(
            check(&config(
                json!({ "cron": "0 9 * * 1", "timezone": "Europe/Paris" })
            ))
            .is_ok()
        );
        assert!(
            check(&config(
                json!({ "cron": "0 9 * * 1", "timezone": "Nowhere/Land" })
            ))
            .is_err()
        );
        assert!(check(&config(json!({ "cron": "0 9 * *" }))).is_err());
        assert!(
            check(&config(
                json!({ "cron": "0 9 * * 1", "interval_seconds": 60 })
            ))
            .is_err()
        );
        let after: DateTime<Utc> = "2026-11-23T06:00:00Z".parse().unwrap();
        // Monday 09:00 in Paris (UTC+1 in November) is 08:00 UTC.
        assert_eq!(
            next_run(
                &json!({ "cron": "0 9 * * 1", "timezone": "Europe/Paris" }),
                after
            ),
            Some("2026-11-23T08:00:00Z".parse().unwrap())
        );
        assert_eq!(
            next_run(&json!({ "cron": "0 9 * * 1" }), after),
            Some("2026-11-23T09:00:00Z".parse().unwrap())
        );
        assert_eq!(
            next_run(&json!({ "interval_seconds": 600 }), after),
            Some("2026-11-23T06:10:00Z".parse().unwrap())
        );
    }
}
