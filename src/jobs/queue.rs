//! The one lease queue of every kind of background work (workflow executions, agent runs,
//! bulk tasks). Each kind is a table of rows with `status`, `lease_owner`, `lease_until`,
//! `started_at` and `created_at`. A process claims a due row (queued, or running under a
//! lease that expired or was handed back) with `FOR UPDATE SKIP LOCKED`, renews its lease
//! while it works (on connections of its own, so renewals never queue behind tool calls),
//! and writes every result fenced on `lease_owner`: once another process holds the row, the
//! first one can no longer write to it. On shutdown, work stops at its next boundary and
//! hands its lease back, so another process takes it up at once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::App;
use crate::store::Store;

/// How long a leased item stays with a process that stops renewing it (default 30 s;
/// `AGENTCRM_WORKFLOW_LEASE_SECS`, 2 to 3600). Renewed every third of it.
pub fn lease() -> Duration {
    static LEASE: OnceLock<Duration> = OnceLock::new();
    *LEASE.get_or_init(|| {
        let seconds = std::env::var("AGENTCRM_WORKFLOW_LEASE_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| (2..=3600).contains(s))
            .unwrap_or(30);
        Duration::from_secs(seconds)
    })
}

/// This process, as a lease holder.
pub fn process_id() -> Uuid {
    static ID: OnceLock<Uuid> = OnceLock::new();
    *ID.get_or_init(Uuid::new_v4)
}

/// One kind of leased work.
pub struct Queue {
    /// Its table (a constant of ours, never a caller's string).
    pub table: &'static str,
    /// NOTIFY channel that says new work is due.
    pub channel: &'static str,
    /// Items one process runs at once.
    pub parallel: usize,
    /// How often due work is looked for without a notification.
    pub poll: Duration,
}

impl Queue {
    /// Claims the oldest due item: queued, or running under a lease that expired or was
    /// handed back.
    pub async fn claim(&self, pool: &PgPool) -> Result<Option<Uuid>, sqlx::Error> {
        let table = self.table;
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET status = 'running', lease_owner = $1,
                 lease_until = now() + make_interval(secs => $2),
                 started_at = coalesce(started_at, now())
             WHERE id = (SELECT id FROM {table}
                         WHERE status IN ('queued', 'running')
                           AND (lease_until IS NULL OR lease_until < now())
                         ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1)
             RETURNING id"
        )))
        .bind(process_id())
        .bind(lease().as_secs_f64())
        .fetch_optional(pool)
        .await
    }

    /// A span for running item `id`, in the trace of the call that queued it (read only
    /// when traces are on).
    pub async fn span(&self, pool: &PgPool, id: Uuid, span: tracing::Span) -> tracing::Span {
        if crate::telemetry::enabled() {
            let table = self.table;
            let stored: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT traceparent FROM {table} WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
            crate::telemetry::continue_from(&span, stored.as_deref());
        }
        span
    }

    /// Gives the lease of `id` up (it stays running): the next claim, here or in another
    /// process, takes it up at once instead of after the lease.
    pub async fn hand_back(&self, pool: &PgPool, id: Uuid) {
        let table = self.table;
        let handed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET lease_until = NULL, lease_owner = NULL
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'"
        )))
        .bind(id)
        .bind(process_id())
        .execute(pool)
        .await;
        match handed {
            Ok(_) => tracing::info!(%id, table, "stopping: lease handed back"),
            Err(error) => {
                tracing::warn!(%error, %id, table, "could not hand a lease back; it expires")
            }
        }
    }

    /// Renews the lease of `id` while the returned heartbeat lives.
    pub fn heartbeat(&'static self, app: &App, id: Uuid) -> Heartbeat {
        Heartbeat::start(app.store.lease_pool().clone(), self.table, id)
    }

    /// The worker of a serving process: each round runs `before` (work that makes work due:
    /// schedules, triggers), then claims due items while a slot is free and runs each with
    /// `run` in a task of its own, counted in `app.background` so shutdown can wait for it.
    pub fn worker<B, BF, R, RF>(
        &'static self,
        app: Arc<App>,
        shutdown: CancellationToken,
        before: B,
        run: R,
    ) -> tokio::task::JoinHandle<()>
    where
        B: Fn(Arc<App>) -> BF + Send + 'static,
        BF: Future<Output = ()> + Send,
        R: Fn(Arc<App>, Uuid) -> RF + Send + 'static,
        RF: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            let pool = app.store.pool().clone();
            let slots = Arc::new(Semaphore::new(self.parallel));
            let mut listener = crate::store::listen(&pool, self.channel).await;
            let mut deaf = false;
            loop {
                if pool.is_closed() || shutdown.is_cancelled() {
                    return;
                }
                before(app.clone()).await;
                while let Ok(permit) = slots.clone().try_acquire_owned() {
                    if shutdown.is_cancelled() {
                        break;
                    }
                    match self.claim(&pool).await {
                        Ok(Some(id)) => {
                            let work = run(app.clone(), id);
                            let app = app.clone();
                            tokio::spawn(async move {
                                let _counted = app.background.enter();
                                work.await;
                                drop(permit);
                            });
                        }
                        Ok(None) => break,
                        Err(error) => {
                            app.store.observe(&error);
                            tracing::warn!(%error, queue = self.table, "could not claim work");
                            break;
                        }
                    }
                }
                if !wait(
                    &shutdown,
                    (&mut listener, &mut deaf),
                    &app.store,
                    self.channel,
                    self.poll,
                )
                .await
                {
                    return;
                }
            }
        })
    }
}

/// Waits for `channel` or `poll`; false once `shutdown` is cancelled. A listener that
/// breaks is often the first sign of a database going down: the store hears of it.
async fn wait(
    shutdown: &CancellationToken,
    (listener, deaf): (&mut Option<PgListener>, &mut bool),
    store: &Store,
    channel: &str,
    poll: Duration,
) -> bool {
    if *deaf && !store.is_down() {
        *listener = crate::store::listen(store.pool(), channel).await;
        *deaf = false;
    }
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(poll) => true,
        notified = crate::store::recv(listener) => {
            if let Err(error) = notified {
                store.observe(&error);
                // Listening again waits for the database to be back.
                *listener = None;
                *deaf = true;
            }
            true
        }
    }
}

/// Renews the lease of row `id` of `table` every third of the lease while the work runs;
/// `lost` turns true once the lease is gone (another process holds the work) or could not
/// be renewed for a whole lease (another process may take it: stop rather than race it).
/// Stops when dropped.
pub struct Heartbeat {
    pub lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    fn start(pool: PgPool, table: &'static str, id: Uuid) -> Heartbeat {
        let lease = lease();
        let renew = move || {
            let pool = pool.clone();
            async move {
                let renewed = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET lease_until = now() + make_interval(secs => $3)
                     WHERE id = $1 AND lease_owner = $2 AND status = 'running'"
                )))
                .bind(id)
                .bind(process_id())
                .bind(lease.as_secs_f64())
                .execute(&pool)
                .await?;
                Ok::<_, sqlx::Error>(renewed.rows_affected() == 1)
            }
        };
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            let mut renewed_at = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(lease / 3).await;
                match tokio::time::timeout(lease / 3, renew()).await {
                    Ok(Ok(true)) => renewed_at = tokio::time::Instant::now(),
                    Ok(Ok(false)) => {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Ok(Err(error)) => tracing::warn!(%error, %id, table, "lease renewal failed"),
                    Err(_) => tracing::warn!(%id, table, "lease renewal timed out"),
                }
                if renewed_at.elapsed() >= lease {
                    tracing::warn!(%id, table, "lease not renewed for a whole lease: stopping this work");
                    flag.store(true, Ordering::SeqCst);
                    return;
                }
            }
        });
        Heartbeat { lost, task }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
