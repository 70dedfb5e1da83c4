//! The loop shared by the PostgreSQL work queues (workflow executions, agent runs): take due
//! items while a slot is free, then wait for a notification or the next poll.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a leased item (a workflow execution, an agent run) stays with a process that
/// stops renewing it (default 30 s; `AGENTCRM_WORKFLOW_LEASE_SECS`, 2 to 3600). Renewed
/// every third of it.
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

/// Claims items with `claim` and runs each in a task of its own, while `slots` has room.
pub async fn start_due<C, CF, R, RF>(slots: &Arc<Semaphore>, what: &str, claim: C, run: R)
where
    C: Fn() -> CF,
    CF: Future<Output = Result<Option<Uuid>, sqlx::Error>>,
    R: Fn(Uuid) -> RF,
    RF: Future<Output = ()> + Send + 'static,
{
    while let Ok(permit) = slots.clone().try_acquire_owned() {
        match claim().await {
            Ok(Some(id)) => {
                let work = run(id);
                tokio::spawn(async move {
                    work.await;
                    drop(permit);
                });
            }
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(%error, what, "could not claim work");
                break;
            }
        }
    }
}

/// Waits for `channel` or `poll`; false once `shutdown` is cancelled.
pub async fn wait(
    shutdown: &CancellationToken,
    listener: &mut Option<PgListener>,
    pool: &PgPool,
    channel: &str,
    poll: Duration,
) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(poll) => true,
        notified = crate::store::recv(listener) => {
            if notified.is_err() {
                *listener = crate::store::listen(pool, channel).await;
            }
            true
        }
    }
}

/// Renews the lease of row `id` of `table` (a queue of `lease_owner`, `lease_until` and a
/// `running` status) every third of the lease while the work runs; `lost` turns true once
/// the lease is gone (another process holds the work). Stops when dropped.
pub struct Heartbeat {
    pub lost: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    pub fn start(pool: PgPool, table: &'static str, id: Uuid) -> Heartbeat {
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
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                match renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    Err(error) => tracing::warn!(%error, %id, table, "lease renewal failed"),
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
