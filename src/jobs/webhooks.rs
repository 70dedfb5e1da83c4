//! Webhook delivery. Deliveries are queued by a trigger in the transaction that wrote their
//! event (migration 0014); this worker claims due ones under a lease, POSTs the signed body,
//! logs the attempt and records the outcome, fenced by the attempt number so a process whose
//! lease ran out cannot overwrite a newer attempt. Failures are retried with exponential
//! backoff and jitter; a delivery whose process died is due again when its lease expires.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::outbound::{self, OutboundOptions};
use crate::access::delegation::{self, Cause, Member};
use crate::access::vault::Vault;
use crate::error::ToolError;
use crate::events;

/// Woken by the fan-out trigger whenever deliveries are queued.
pub const CHANNEL: &str = "agentcrm_webhooks";
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
pub const TIMESTAMP_HEADER: &str = "X-Agentcrm-Timestamp";
pub const EVENT_HEADER: &str = "X-Agentcrm-Event";
pub const DELIVERY_HEADER: &str = "X-Agentcrm-Delivery";
/// After this many attempts a delivery is `failed`.
pub const MAX_ATTEMPTS: i32 = 15;
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
const MAX_IN_FLIGHT: usize = 16;
/// Without a notification, due retries are looked for this often.
const POLL: Duration = Duration::from_millis(500);

/// `sha256=<hex HMAC-SHA256 of body>`, the value of `X-Hub-Signature-256`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait before attempt `attempt + 1`: 1 s doubling per attempt up to an hour, then a
/// random point in its upper half, so receivers coming back are not hit all at once.
pub fn backoff(attempt: i32) -> Duration {
    let exp = attempt.clamp(1, 31) as u32 - 1;
    let full = Duration::from_secs(1u64 << exp.min(20)).min(MAX_BACKOFF);
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    let fraction = 0.5 + f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX) / 2.0;
    full.mul_f64(fraction)
}

/// Runs until `shutdown`, then lets the attempts in flight finish.
pub fn start(
    pool: PgPool,
    vault: Vault,
    options: OutboundOptions,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, reqwest::Error> {
    let worker = Worker {
        client: outbound::client(options)?,
        pool,
        vault,
        // Longer than any attempt can take, so a live process never loses its lease.
        lease: options.timeout + Duration::from_secs(5),
    };
    Ok(tokio::spawn(worker.run(shutdown)))
}

#[derive(Clone)]
struct Worker {
    pool: PgPool,
    vault: Vault,
    client: reqwest::Client,
    lease: Duration,
}

#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: i64,
    tenant_id: Uuid,
    webhook_id: Uuid,
    /// Whom the webhook reads events for (a stored chain), or, for webhooks made before
    /// chains were kept, its creator.
    acting: Option<Value>,
    created_by_kind: Option<String>,
    created_by_id: Option<Uuid>,
    attempts: i32,
    /// The previous attempt's process stopped before recording an outcome.
    interrupted: bool,
    url: String,
    secret_encrypted: Vec<u8>,
    event_id: i64,
    event_type: String,
    subject_id: Option<Uuid>,
    payload: Value,
    principal_kind: Option<String>,
    principal_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
    /// The trace of the call whose event this delivers.
    traceparent: Option<String>,
}

struct Outcome {
    status_code: Option<u16>,
    error: Option<String>,
    /// Not sent, and never will be: its reader may not read it.
    withheld: bool,
}

impl Worker {
    async fn run(self, shutdown: CancellationToken) {
        let mut listener = crate::store::listen(&self.pool, CHANNEL).await;
        let mut in_flight = JoinSet::new();
        loop {
            let free = MAX_IN_FLIGHT - in_flight.len();
            let mut claimed_all = false;
            if free > 0 && !shutdown.is_cancelled() {
                match self.claim(free).await {
                    Ok(claimed) => {
                        claimed_all = claimed.len() == free;
                        for delivery in claimed {
                            in_flight.spawn(self.clone().attempt(delivery));
                        }
                    }
                    Err(error) if self.pool.is_closed() => {
                        tracing::debug!(%error, "webhook worker: pool closed");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "webhook worker: could not claim deliveries")
                    }
                }
            }
            if claimed_all {
                // There may be more due: claim again as soon as a slot frees.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = in_flight.join_next() => {}
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = in_flight.join_next() => {}
                notified = crate::store::recv(&mut listener) => {
                    if notified.is_err() {
                        listener = None;
                    }
                }
                _ = tokio::time::sleep(POLL) => {
                    if listener.is_none() {
                        listener = crate::store::listen(&self.pool, CHANNEL).await;
                    }
                }
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// Takes up to `limit` due deliveries: pending ones whose time came, and ones whose
    /// lease expired. Rows another process is claiming are skipped, not waited for.
    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, sqlx::Error> {
        sqlx::query_as(
            "WITH due AS (
                 SELECT id, status = 'delivering' AS interrupted FROM webhook_deliveries
                 WHERE (status = 'pending' AND next_attempt_at <= now())
                    OR (status = 'delivering' AND lease_until < now())
                 ORDER BY next_attempt_at, id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             UPDATE webhook_deliveries d
             SET status = 'delivering', attempts = d.attempts + 1,
                 lease_until = now() + make_interval(secs => $2)
             FROM due, webhooks w, events e
             WHERE d.id = due.id AND w.id = d.webhook_id AND e.id = d.event_id
             RETURNING d.id, d.tenant_id, d.webhook_id, w.acting, w.created_by_kind, w.created_by_id,
                       d.attempts, due.interrupted, w.url, w.secret_encrypted,
                       e.id AS event_id, e.type AS event_type, e.subject_id, e.payload,
                       e.principal_kind, e.principal_id, e.created_at AS occurred_at,
                       e.traceparent",
        )
        .bind(limit as i64)
        .bind(self.lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await
    }

    async fn attempt(self, delivery: Claimed) {
        if delivery.interrupted {
            self.log_attempt(
                delivery.id,
                delivery.attempts - 1,
                Utc::now(),
                0,
                &Outcome {
                    status_code: None,
                    error: Some(
                        "no outcome recorded: the process delivering it stopped; retried".into(),
                    ),
                    withheld: false,
                },
            )
            .await;
        }
        let started_at = Utc::now();
        let clock = Instant::now();
        let span = tracing::info_span!(
            "webhook.delivery",
            otel.kind = "client",
            delivery = delivery.id,
            event = %delivery.event_type,
            attempt = delivery.attempts,
            http.response.status_code = tracing::field::Empty,
        );
        crate::telemetry::continue_from(&span, delivery.traceparent.as_deref());
        let outcome = match self.withheld(&delivery).await {
            Ok(Some(reason)) => Outcome {
                status_code: None,
                error: Some(format!("not delivered: {reason}")),
                withheld: true,
            },
            Err(error) => Outcome {
                status_code: None,
                error: Some(format!("not sent yet: {error}")),
                withheld: false,
            },
            Ok(None) => tracing::Instrument::instrument(self.post(&delivery), span.clone()).await,
        };
        if let Some(status) = outcome.status_code {
            span.record("http.response.status_code", status);
        }
        let duration_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
        self.log_attempt(
            delivery.id,
            delivery.attempts,
            started_at,
            duration_ms,
            &outcome,
        )
        .await;
        if let Err(error) = self.finish(&delivery, &outcome).await {
            tracing::warn!(%error, delivery = delivery.id, "webhook worker: could not record an outcome; the lease will expire and the delivery be retried");
        }
    }

    /// Why the delivery may not be sent: a webhook reads events for whoever made it, as
    /// they stand now. Gone, disabled or revoked, without the event's read scope, or limited
    /// by field rules, row conditions or object grants (events carry whole records), they
    /// receive nothing. `Err`: not decided yet (the database), so not sent yet.
    async fn withheld(&self, delivery: &Claimed) -> Result<Option<String>, String> {
        let mut members = delivery
            .acting
            .as_ref()
            .map(delegation::read_chain)
            .unwrap_or_default();
        if delivery.acting.is_none()
            && let (Some(kind), Some(id)) = (&delivery.created_by_kind, delivery.created_by_id)
            && let Ok(kind) = serde_json::from_value(Value::String(kind.clone()))
        {
            members.push(Member {
                kind,
                id,
                name: "the webhook's creator".into(),
                person: None,
            });
        }
        let reader =
            match delegation::resolve(&self.pool, delivery.tenant_id, &members, Cause::default())
                .await
            {
                Ok(reader) => reader,
                Err(ToolError::Forbidden(reason)) => return Ok(Some(reason)),
                // Not decided (the database): tried again later.
                Err(error) => return Err(error.to_string()),
            };
        let undecided =
            |e: crate::store::StoreError| format!("its reader could not be checked: {e}");
        if let Some(refusal) = events::reader_refusal(&self.pool, &reader, &delivery.event_type)
            .await
            .map_err(undecided)?
        {
            return Ok(Some(refusal));
        }
        events::subject_refusal(
            &self.pool,
            &reader,
            &delivery.event_type,
            delivery.subject_id,
        )
        .await
        .map_err(undecided)
    }

    async fn post(&self, delivery: &Claimed) -> Outcome {
        let secret = match self
            .vault
            .open(&delivery.secret_encrypted, delivery.webhook_id.as_bytes())
        {
            Ok(secret) => secret,
            Err(error) => {
                return Outcome {
                    status_code: None,
                    error: Some(error.to_string()),
                    withheld: false,
                };
            }
        };
        let timestamp = Utc::now().timestamp();
        let body = json!({
            "event_id": delivery.event_id,
            "type": delivery.event_type,
            "occurred_at": delivery.occurred_at,
            "subject_id": delivery.subject_id,
            "actor": { "kind": delivery.principal_kind, "id": delivery.principal_id },
            "data": delivery.payload,
            "delivery_id": delivery.id,
            "attempt": delivery.attempts,
            // Signed with the body, so a replayed request carries its old time.
            "timestamp": timestamp,
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let request = self
            .client
            .post(&delivery.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(&secret, &body))
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(EVENT_HEADER, &delivery.event_type)
            .header(DELIVERY_HEADER, delivery.id.to_string())
            .body(body);
        // The receiver may join the trace of the call that caused the event.
        let request = crate::telemetry::propagate(request);
        match request.send().await {
            Ok(response) if response.status().is_success() => Outcome {
                status_code: Some(response.status().as_u16()),
                error: None,
                withheld: false,
            },
            Ok(response) => Outcome {
                status_code: Some(response.status().as_u16()),
                error: Some(format!("the receiver answered {}", response.status())),
                withheld: false,
            },
            Err(error) => Outcome {
                status_code: None,
                error: Some(describe(&error)),
                withheld: false,
            },
        }
    }

    async fn log_attempt(
        &self,
        delivery_id: i64,
        attempt: i32,
        started_at: DateTime<Utc>,
        duration_ms: i32,
        outcome: &Outcome,
    ) {
        let logged = sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (delivery_id, attempt) DO UPDATE
             SET started_at = excluded.started_at, duration_ms = excluded.duration_ms,
                 status_code = excluded.status_code, error = excluded.error",
        )
        .bind(delivery_id)
        .bind(attempt)
        .bind(started_at)
        .bind(duration_ms)
        .bind(outcome.status_code.map(i32::from))
        .bind(&outcome.error)
        .execute(&self.pool)
        .await;
        if let Err(error) = logged {
            tracing::warn!(%error, delivery = delivery_id, "webhook worker: could not log an attempt");
        }
    }

    /// Records the outcome if this attempt still holds the delivery.
    async fn finish(&self, delivery: &Claimed, outcome: &Outcome) -> Result<(), sqlx::Error> {
        let (status, next) = match (&outcome.error, delivery.attempts >= MAX_ATTEMPTS) {
            _ if outcome.withheld => ("failed", None),
            (None, _) => ("delivered", None),
            (Some(_), true) => ("failed", None),
            (Some(_), false) => ("pending", Some(backoff(delivery.attempts))),
        };
        sqlx::query(
            "UPDATE webhook_deliveries
             SET status = $3, lease_until = NULL, last_error = $4,
                 next_attempt_at = now() + make_interval(secs => coalesce($5, 0)),
                 finished_at = CASE WHEN $3 IN ('delivered', 'failed') THEN now() END
             WHERE id = $1 AND attempts = $2 AND status = 'delivering'",
        )
        .bind(delivery.id)
        .bind(delivery.attempts)
        .bind(status)
        .bind(&outcome.error)
        .bind(next.map(|d| d.as_secs_f64()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// A sentence about a failed request, without the URL's query (which may carry tokens).
pub fn describe(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_redirect() {
        "redirected (redirects are not followed)"
    } else {
        "failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        format!("the request {what}")
    } else {
        format!("the request {what}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_github_scheme() {
        // HMAC-SHA256("It's a Secret to Everybody", "Hello, World!") from GitHub's docs.
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_an_hour() {
        for attempt in 1..=20 {
            let full = Duration::from_secs(1 << (attempt - 1).min(20)).min(MAX_BACKOFF);
            let wait = backoff(attempt);
            assert!(wait >= full / 2 && wait <= full, "{attempt}: {wait:?}");
        }
    }
}
