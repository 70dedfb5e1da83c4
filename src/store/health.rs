//! Whether the database is reachable, as this process last saw it. A call that meets a
//! database that is down would otherwise wait out the pool's acquire timeout, and so would
//! every call after it: once an outage is confirmed (a direct connection fails too), calls
//! are refused at once with `retry_after` until a probe connects again, which it tries
//! every half second. A pool that timed out while the server still accepts connections is
//! starvation, not an outage, and changes nothing here.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;

use super::Store;

/// Seconds a caller is told to wait while the database is down.
pub const RETRY_AFTER_SECS: u64 = 2;
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Health {
    /// Since when the database is known to be down.
    down_since: Mutex<Option<Instant>>,
    /// A probe is running (one at a time).
    probing: AtomicBool,
    /// Calls refused during the current outage.
    refused: AtomicU64,
}

/// An outage the caller sees: the database is down, try again in `retry_after` seconds.
#[derive(Debug, Clone, Copy)]
pub struct Down {
    pub retry_after: u64,
    pub for_secs: u64,
}

impl Health {
    fn down_since(&self) -> Option<Instant> {
        *self.guard()
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        match self.down_since.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Marks the outage's first moment; true when it just began.
    fn mark_down(&self) -> bool {
        let mut guard = self.guard();
        if guard.is_some() {
            return false;
        }
        *guard = Some(Instant::now());
        true
    }

    fn set(&self, value: Option<Instant>) -> Option<Instant> {
        std::mem::replace(&mut *self.guard(), value)
    }
}

/// Errors that may mean the server is gone (a refused or broken connection, a pool that
/// timed out, a server shutting down) rather than a bad query.
pub fn may_be_outage(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // admin_shutdown, crash_shutdown, cannot_connect_now; connection exceptions
            matches!(code.as_ref(), "57P01" | "57P02" | "57P03") || code.starts_with("08")
        }),
        _ => false,
    }
}

impl Store {
    /// `Some` while the database is known to be down: refuse the work now.
    pub fn unavailable(&self) -> Option<Down> {
        let since = self.health.down_since()?;
        self.health.refused.fetch_add(1, Ordering::Relaxed);
        Some(Down {
            retry_after: RETRY_AFTER_SECS,
            for_secs: since.elapsed().as_secs(),
        })
    }

    /// Whether the database is known to be down (a check, not a refused call).
    pub fn is_down(&self) -> bool {
        self.health.down_since().is_some()
    }

    /// Looks at an error from the database: one that may mean an outage starts a probe,
    /// which marks the database down if it cannot connect either.
    pub fn observe(&self, error: &sqlx::Error) {
        if may_be_outage(error) {
            self.probe();
        }
    }

    /// The same, for an error of this layer.
    pub fn observe_store(&self, error: &super::StoreError) {
        if let super::StoreError::Database(error) = error {
            self.observe(error);
        }
    }

    fn probe(&self) {
        if self.health.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let health = self.health.clone();
        let options = self.options.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            health.probing.store(false, Ordering::SeqCst);
            return;
        };
        runtime.spawn(async move {
            loop {
                if connects(&options).await {
                    if let Some(since) = health.set(None) {
                        let refused = health.refused.swap(0, Ordering::Relaxed);
                        tracing::warn!(
                            down_secs = since.elapsed().as_secs_f64(),
                            refused,
                            "the database is reachable again"
                        );
                    }
                    break;
                }
                if health.mark_down() {
                    tracing::error!("the database is unreachable: refusing calls until it returns");
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
            health.probing.store(false, Ordering::SeqCst);
        });
    }
}

async fn connects(options: &PgConnectOptions) -> bool {
    use sqlx::Connection;
    match tokio::time::timeout(PROBE_TIMEOUT, sqlx::PgConnection::connect_with(options)).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            true
        }
        _ => false,
    }
}
