//! The PostgreSQL store: one pool, migrations embedded in the binary, and the private
//! embedded server used when no `DATABASE_URL` is given.

pub mod embedded;
pub mod health;
pub mod page;
pub mod tenants;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use embedded::{EmbeddedError, EmbeddedPostgres};
pub use tenants::Tenant;

/// A pooled connection idle for longer than this is checked (a round trip) before it is
/// handed out; one used moments ago is not. sqlx checks every connection as it comes back
/// to the pool already, and checking it on the way out too cost every query a second round
/// trip: under load, as much database time as the query itself.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > CHECK_IDLE_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("could not apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// The database cannot be reached or used as configured: what is wrong and what to do.
    #[error("database error: {0}")]
    Connect(String),
    /// Work handed to a blocking thread (hashing) did not come back.
    #[error("a background task failed: {0}")]
    Task(String),
}

/// Where the data lives: a private server this process started, or a shared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseKind {
    Embedded,
    External,
}

pub struct Store {
    pool: PgPool,
    /// For the audit writer: commits without waiting for the WAL flush. An audit record
    /// must survive agentcrm being killed, which a commit acknowledged by the server
    /// guarantees; only a crash of PostgreSQL itself could lose the last few.
    audit_pool: PgPool,
    /// Lease renewals of background work: they must not queue behind tool calls, or a busy
    /// process loses its leases to another one while it is still working.
    lease_pool: PgPool,
    kind: DatabaseKind,
    embedded: std::sync::Arc<Mutex<Option<EmbeddedPostgres>>>,
    options: PgConnectOptions,
    health: std::sync::Arc<health::Health>,
}

/// The size of a process's main pool: at most `max_connections` at once; a call that finds
/// them all in use waits up to `acquire_timeout`, then is refused with a `retry_after`.
/// Besides it, a process holds 2 connections for the audit writer, 2 for lease renewals and
/// one per LISTEN channel it follows (7).
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolSize {
    fn default() -> PoolSize {
        PoolSize {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl Store {
    /// Connects to `database_url`, or starts the embedded server under `data_dir`,
    /// then applies pending migrations.
    pub async fn open(database_url: Option<&str>, data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_waiting(database_url, data_dir, Duration::ZERO, PoolSize::default()).await
    }

    /// The same, waiting up to `wait` for a server that refuses connections (containers
    /// start out of order), and saying so in the log.
    pub async fn open_waiting(
        database_url: Option<&str>,
        data_dir: &Path,
        wait: Duration,
        size: PoolSize,
    ) -> Result<Store, StoreError> {
        let (options, embedded) = match database_url {
            Some(url) => (
                url.parse::<PgConnectOptions>().map_err(|e| {
                    StoreError::Connect(format!(
                        "DATABASE_URL is not a PostgreSQL URL ({e}); it looks like \
                         postgres://USER:PASSWORD@HOST:5432/DATABASE"
                    ))
                })?,
                None,
            ),
            None => {
                let pg = EmbeddedPostgres::start(data_dir)?;
                (pg.connect_options(), Some(pg))
            }
        };
        let kind = if embedded.is_some() {
            DatabaseKind::Embedded
        } else {
            DatabaseKind::External
        };
        // Build the store before connecting so the embedded server is stopped on any error.
        let pool = pool_options()
            .max_connections(size.max_connections.max(1))
            .acquire_timeout(size.acquire_timeout)
            .connect_lazy_with(options.clone());
        let audit_pool = pool_options()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        let lease_pool = pool_options()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options.clone());
        let store = Store {
            pool,
            audit_pool,
            lease_pool,
            kind,
            embedded: std::sync::Arc::new(Mutex::new(embedded)),
            options: options.clone(),
            health: Default::default(),
        };
        if let Err(error) = store.init(&options, wait).await {
            store.close().await;
            return Err(error);
        }
        if kind == DatabaseKind::Embedded {
            store.supervise();
        }
        Ok(store)
    }

    async fn init(&self, options: &PgConnectOptions, wait: Duration) -> Result<(), StoreError> {
        // One direct connection first: it fails fast with the real reason (a pool would
        // retry until its timeout and then only say that it timed out).
        use sqlx::Connection;
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(500);
        let connection = loop {
            match sqlx::PgConnection::connect_with(options).await {
                Ok(connection) => break connection,
                Err(error) if refused(&error) && started.elapsed() + pause <= wait => {
                    if started.elapsed() < pause {
                        let why = match &error {
                            sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000") => {
                                format!(
                                    "has no database `{}` yet (create it with `createdb` if \
                                     nothing else will)",
                                    options.get_database().unwrap_or("agentcrm")
                                )
                            }
                            _ => "does not accept connections yet".to_owned(),
                        };
                        tracing::warn!(
                            "PostgreSQL at {} {why}; trying again for up to {} s",
                            where_(options),
                            wait.as_secs()
                        );
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(4));
                }
                Err(error) => return Err(explain(options, error)),
            }
        };
        connection.close().await?;
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Checks the embedded server every second and starts it again if it exited; ends when
    /// the store is closed (the server taken out).
    fn supervise(&self) {
        let embedded = std::sync::Arc::downgrade(&self.embedded);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(embedded) = embedded.upgrade() else {
                    return;
                };
                let checked = tokio::task::spawn_blocking(move || {
                    let mut guard = match embedded.lock() {
                        Ok(guard) => guard,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    guard.as_mut().map(EmbeddedPostgres::restart_if_exited)
                })
                .await;
                match checked {
                    Ok(None) | Err(_) => return, // closed
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(error))) => {
                        tracing::error!(%error, "embedded PostgreSQL could not be restarted; trying again")
                    }
                }
            }
        });
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn audit_pool(&self) -> &PgPool {
        &self.audit_pool
    }

    pub fn lease_pool(&self) -> &PgPool {
        &self.lease_pool
    }

    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// The newest migration applied to this database.
    pub async fn migration_version(&self) -> Result<Option<i64>, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(version)
    }

    /// Closes the pool and stops the embedded server, if this process started one.
    pub async fn close(&self) {
        self.lease_pool.close().await;
        self.audit_pool.close().await;
        self.pool.close().await;
        let embedded = match self.embedded.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(pg) = embedded {
            // Stopping waits on the child process: keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
        }
    }
}

/// A refused or not-yet-ready server: worth waiting for at start-up.
fn refused(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
        ),
        // Starting up; or up, with its database not created yet (an init script, or the
        // embedded server's first start, creates it a moment later).
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("57P03" | "3D000")),
        _ => false,
    }
}

fn where_(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(socket) => format!("socket {}", socket.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// A connection error as someone fixing DATABASE_URL needs it: what, where, and what to do.
fn explain(options: &PgConnectOptions, error: sqlx::Error) -> StoreError {
    let at = where_(options);
    let database = options.get_database().unwrap_or("(the user's)");
    let user = options.get_username();
    let text = match &error {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "nothing accepts connections at {at} (from DATABASE_URL): is PostgreSQL running \
             there, on that port?"
        ),
        sqlx::Error::Io(io) => format!("cannot reach {at} (from DATABASE_URL): {io}"),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("3D000") => format!(
                "database `{database}` does not exist at {at}: create it (createdb {database}) \
                 or fix the database name at the end of DATABASE_URL"
            ),
            Some("28P01") | Some("28000") => format!(
                "PostgreSQL at {at} refused user `{user}` ({}): fix the user or password in \
                 DATABASE_URL",
                db.message()
            ),
            _ => format!(
                "PostgreSQL at {at} refused the connection: {}",
                db.message()
            ),
        },
        other => format!("could not connect to {at} (from DATABASE_URL): {other}"),
    };
    StoreError::Connect(text)
}

/// The newest migration compiled into this binary.
pub fn latest_migration() -> Option<i64> {
    MIGRATOR.iter().map(|m| m.version).max()
}

/// A listener on `channel`, or `None` when LISTEN is not possible now (callers poll, and
/// try again later). It has a connection of its own, outside `pool`: a listener holds its
/// connection for as long as it lives, and the several a process keeps would otherwise take
/// that many connections from the calls' pool for good (with a pool of 7 or fewer, none
/// would be left).
pub async fn listen(pool: &PgPool, channel: &str) -> Option<sqlx::postgres::PgListener> {
    if pool.is_closed() {
        return None;
    }
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with((*pool.connect_options()).clone());
    let listener = async {
        let mut listener = sqlx::postgres::PgListener::connect_with(&own).await?;
        listener.listen(channel).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match listener.await {
        Ok(listener) => Some(listener),
        // Shutting down: nothing to listen for.
        Err(_) if pool.is_closed() => None,
        Err(error) => {
            tracing::warn!(%error, channel, "cannot LISTEN; polling");
            None
        }
    }
}

/// The next notification; never, without a listener.
pub async fn recv(listener: &mut Option<sqlx::postgres::PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(drop),
        None => std::future::pending().await,
    }
}

/// Locks the tenant's row for the rest of `tx` and counts its rows in `table`: a cap on a
/// tenant's webhooks or connections then holds under concurrent creation.
pub async fn lock_and_count(
    tx: &mut sqlx::PgConnection,
    tenant_id: uuid::Uuid,
    table: &'static str,
) -> Result<i64, StoreError> {
    sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    let count = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE tenant_id = $1"
    )))
    .bind(tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(count)
}
