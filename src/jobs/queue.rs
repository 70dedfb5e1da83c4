//! The loop shared by the PostgreSQL work queues (workflow executions, agent runs): take due
//! items while a slot is free, then wait for a notification or the next poll.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
