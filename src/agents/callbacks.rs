//! Callbacks: a scheduled run's result POSTed to its schedule's `callback_url`, the raw body
//! signed with HMAC-SHA256 under the schedule's secret in `X-Hub-Signature-256`. Queued in
//! the transaction that ends the run; delivered by a worker in every serving process that
//! claims due callbacks under a lease, logs each attempt, and retries with backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::App;
use crate::error::ToolError;
use crate::jobs::webhooks::{SIGNATURE_HEADER, TIMESTAMP_HEADER, backoff, describe, sign};
use crate::store::StoreError;

pub const CHANNEL: &str = "agentcrm_agent_callbacks";
pub const RUN_HEADER: &str = "X-Agentcrm-Run";
/// After this many attempts a callback is `failed`.
pub const MAX_ATTEMPTS: i32 = 8;
const MAX_IN_FLIGHT: usize = 8;
const POLL: Duration = Duration::from_millis(500);

/// Queues the callback of `schedule_id` (if it has one) for run `run_id`.
pub async fn queue(
    app: &App,
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    schedule_id: Uuid,
    run_id: Uuid,
    body: &Value,
) -> Result<(), ToolError> {
    let target: Option<(Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT callback_url, callback_secret_encrypted FROM agent_schedules
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant_id)
    .bind(schedule_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let Some((Some(url), Some(sealed))) = target else {
        return Ok(());
    };
    let Some(vault) = &app.vault else {
        tracing::warn!(run = %run_id, "no encryption key: the run's callback cannot be signed and is not sent");
        return Ok(());
    };
    // Sealed again for this callback, so it can be sent after its schedule changed or went.
    let secret = vault
        .open(&sealed, schedule_id.as_bytes())
        .map_err(|e| ToolError::Internal(e.to_string()))?;
    let body =
        serde_json::to_vec(body).map_err(|e| ToolError::Internal(format!("callback body: {e}")))?;
    sqlx::query(
        "INSERT INTO agent_callbacks (tenant_id, run_id, url, secret_encrypted, body)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant_id)
    .bind(run_id)
    .bind(url)
    .bind(vault.seal(&secret, run_id.as_bytes()))
    .bind(body)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    Ok(())
}

/// A callback and its attempts, as `get_agent_run` shows them.
#[derive(Debug, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Callback {
    pub url: String,
    /// `pending`, `delivering`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Every attempt: `{attempt, started_at, duration_ms, status_code, error}`.
    pub log: Value,
}

pub async fn of_run(app: &App, tenant_id: Uuid, run_id: Uuid) -> Result<Vec<Callback>, ToolError> {
    let callbacks = sqlx::query_as(
        "SELECT c.url, c.status, c.attempts, c.last_error, c.created_at, c.finished_at,
                coalesce((SELECT jsonb_agg(jsonb_build_object('attempt', a.attempt,
                              'started_at', a.started_at, 'duration_ms', a.duration_ms,
                              'status_code', a.status_code, 'error', a.error) ORDER BY a.attempt)
                          FROM agent_callback_attempts a WHERE a.callback_id = c.id), '[]') AS log
         FROM agent_callbacks c WHERE c.tenant_id = $1 AND c.run_id = $2 ORDER BY c.id",
    )
    .bind(tenant_id)
    .bind(run_id)
    .fetch_all(app.store.pool())
    .await
    .map_err(StoreError::from)?;
    Ok(callbacks)
}

#[derive(sqlx::FromRow)]
struct Claimed {
    id: i64,
    run_id: Uuid,
    url: String,
    secret_encrypted: Vec<u8>,
    body: Vec<u8>,
    attempts: i32,
}

/// Delivers due callbacks until `shutdown`.
pub fn start(app: Arc<App>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pool = app.store.pool().clone();
        let lease = app.outbound.timeout + Duration::from_secs(5);
        let mut listener = crate::store::listen(&pool, CHANNEL).await;
        let mut in_flight = JoinSet::new();
        loop {
            let free = MAX_IN_FLIGHT - in_flight.len();
            if free > 0 && !shutdown.is_cancelled() {
                match claim(&pool, free, lease).await {
                    Ok(claimed) => {
                        for callback in claimed {
                            in_flight.spawn(attempt(app.clone(), callback));
                        }
                    }
                    Err(_) if pool.is_closed() => break,
                    Err(error) => tracing::warn!(%error, "agent callbacks: could not claim"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = in_flight.join_next() => {}
                notified = crate::store::recv(&mut listener) => {
                    if notified.is_err() {
                        listener = crate::store::listen(&pool, CHANNEL).await;
                    }
                }
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
    })
}

async fn claim(
    pool: &sqlx::PgPool,
    limit: usize,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE agent_callbacks c SET status = 'delivering', attempts = c.attempts + 1,
             lease_until = now() + make_interval(secs => $2)
         WHERE c.id IN (SELECT id FROM agent_callbacks
                        WHERE (status = 'pending' AND next_attempt_at <= now())
                           OR (status = 'delivering' AND lease_until < now())
                        ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING c.id, c.run_id, c.url, c.secret_encrypted, c.body, c.attempts",
    )
    .bind(limit as i64)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

async fn attempt(app: Arc<App>, callback: Claimed) {
    let started_at = Utc::now();
    let clock = Instant::now();
    let (status_code, error) = post(&app, &callback).await;
    let duration_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
    let pool = app.store.pool();
    let logged = sqlx::query(
        "INSERT INTO agent_callback_attempts (callback_id, attempt, started_at, duration_ms, status_code, error)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (callback_id, attempt) DO NOTHING",
    )
    .bind(callback.id)
    .bind(callback.attempts)
    .bind(started_at)
    .bind(duration_ms)
    .bind(status_code.map(i32::from))
    .bind(&error)
    .execute(pool)
    .await;
    if let Err(e) = logged {
        tracing::warn!(error = %e, callback = callback.id, "agent callbacks: could not log an attempt");
    }
    let (status, next) = match (&error, callback.attempts >= MAX_ATTEMPTS) {
        (None, _) => ("delivered", None),
        (Some(_), true) => ("failed", None),
        (Some(_), false) => ("pending", Some(backoff(callback.attempts))),
    };
    let finished = sqlx::query(
        "UPDATE agent_callbacks SET status = $3, lease_until = NULL, last_error = $4,
             next_attempt_at = now() + make_interval(secs => coalesce($5, 0)),
             finished_at = CASE WHEN $3 IN ('delivered', 'failed') THEN now() END
         WHERE id = $1 AND attempts = $2 AND status = 'delivering'",
    )
    .bind(callback.id)
    .bind(callback.attempts)
    .bind(status)
    .bind(&error)
    .bind(next.map(|d| d.as_secs_f64()))
    .execute(pool)
    .await;
    if let Err(e) = finished {
        tracing::warn!(error = %e, callback = callback.id, "agent callbacks: could not record an outcome; retried when the lease ends");
    }
}

async fn post(app: &App, callback: &Claimed) -> (Option<u16>, Option<String>) {
    let Some(vault) = &app.vault else {
        return (None, Some("this process has no encryption key".into()));
    };
    let secret = match vault.open(&callback.secret_encrypted, callback.run_id.as_bytes()) {
        Ok(secret) => secret,
        Err(error) => return (None, Some(error.to_string())),
    };
    let client = match app.http() {
        Ok(client) => client,
        Err(error) => return (None, Some(error.to_string())),
    };
    let request = client
        .post(&callback.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sign(&secret, &callback.body))
        .header(TIMESTAMP_HEADER, Utc::now().timestamp().to_string())
        .header(RUN_HEADER, callback.run_id.to_string())
        .body(callback.body.clone());
    match request.send().await {
        Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None),
        Ok(response) => (
            Some(response.status().as_u16()),
            Some(format!("the receiver answered {}", response.status())),
        ),
        Err(error) => (None, Some(describe(&error))),
    }
}
