//! The audit trail. A call answers only after its record is committed, but concurrent
//! calls share one INSERT (group commit): no record is lost once a call has answered, and
//! no call pays for a round trip of its own under load.

use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool, QueryBuilder};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::principal::{Principal, PrincipalKind};

/// Records written in one INSERT at most.
const MAX_BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub tenant_id: Option<Uuid>,
    /// `tool` or `auth`.
    pub kind: &'static str,
    /// The tool name, or the auth event (`token.issued`, `auth.refused`, ...).
    pub action: String,
    pub principal_kind: Option<PrincipalKind>,
    pub principal_id: Option<Uuid>,
    pub principal_name: Option<String>,
    pub on_behalf_of: Option<Uuid>,
    /// For work done on someone's behalf: everyone the call acted for (identity first).
    pub chain: Option<Value>,
    /// Already redacted.
    pub arguments: Option<Value>,
    /// `ok`, `error` or `refused`.
    pub outcome: &'static str,
    pub error_code: Option<String>,
    pub duration_ms: Option<f64>,
    pub transport: Option<&'static str>,
    pub session_id: Option<String>,
    pub request_id: Option<String>,
}

impl AuditEvent {
    /// An event with no known principal (refused authentication).
    pub fn anonymous(
        kind: &'static str,
        action: impl Into<String>,
        outcome: &'static str,
    ) -> AuditEvent {
        AuditEvent {
            tenant_id: None,
            kind,
            action: action.into(),
            principal_kind: None,
            principal_id: None,
            principal_name: None,
            on_behalf_of: None,
            chain: None,
            arguments: None,
            outcome,
            error_code: None,
            duration_ms: None,
            transport: None,
            session_id: None,
            request_id: None,
        }
    }

    pub fn by(
        principal: &Principal,
        kind: &'static str,
        action: impl Into<String>,
        outcome: &'static str,
    ) -> AuditEvent {
        AuditEvent {
            tenant_id: Some(principal.tenant_id),
            kind,
            action: action.into(),
            principal_kind: Some(principal.kind),
            principal_id: principal.id,
            principal_name: Some(principal.name.clone()),
            on_behalf_of: principal.on_behalf_of,
            chain: principal.chain_json(),
            arguments: None,
            outcome,
            error_code: None,
            duration_ms: None,
            transport: None,
            session_id: None,
            request_id: None,
        }
    }
}

/// Keys whose values never reach the audit trail.
const SECRET_KEYS: [&str; 8] = [
    "secret",
    "password",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "private_key",
];

/// Replaces the value of every key that names a secret, at any depth, and makes what is
/// left storable: NUL characters become U+FFFD, and floating-point numbers beyond ±2^53
/// become their text (jsonb would keep every digit of 1e308 and not read it back).
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => redact_object(map),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(s) => Value::String(text(s)),
        Value::Number(n)
            if n.is_f64()
                && n.as_f64()
                    .is_some_and(|x| x.abs() > 9_007_199_254_740_992.0) =>
        {
            Value::String(n.to_string())
        }
        other => other.clone(),
    }
}

/// [`redact`] for a call's arguments, without copying them into a `Value` first.
pub fn redact_object(map: &serde_json::Map<String, Value>) -> Value {
    Value::Object(
        map.iter()
            .map(|(key, v)| {
                if is_secret(key) {
                    (text(key), Value::String("[redacted]".into()))
                } else {
                    (text(key), redact(v))
                }
            })
            .collect(),
    )
}

/// Whether `key` names a secret, in any case (compared in place: no lowercase copy).
fn is_secret(key: &str) -> bool {
    SECRET_KEYS.iter().any(|secret| {
        key.as_bytes()
            .windows(secret.len())
            .any(|part| part.eq_ignore_ascii_case(secret.as_bytes()))
    })
}

/// `s` without NUL characters, which PostgreSQL text and jsonb refuse.
pub fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

/// What the audit trail keeps of one call's arguments, at most (their JSON text, roughly).
pub const MAX_AUDIT_ARGUMENTS: usize = 64 * 1024;

/// Replaces arguments larger than [`MAX_AUDIT_ARGUMENTS`] with a marker saying so, with their
/// size and top-level keys: a 5 MB argument must not be stored whole on every call.
fn cap_arguments(arguments: &mut Value) {
    let mut budget = MAX_AUDIT_ARGUMENTS;
    if fits(arguments, &mut budget) {
        return;
    }
    let keys: Vec<Value> = match &*arguments {
        Value::Object(map) => map
            .keys()
            .take(50)
            .map(|k| Value::String(text(k)))
            .collect(),
        _ => Vec::new(),
    };
    let bytes = serde_json::to_string(arguments).map_or(0, |s| s.len());
    *arguments = serde_json::json!({
        "truncated": true,
        "bytes": bytes,
        "keys": keys,
        "reason": format!("arguments over {} KB are not kept whole", MAX_AUDIT_ARGUMENTS / 1024),
    });
}

/// Does `value`'s JSON text fit in `budget` bytes (roughly: strings, keys and a few bytes of
/// punctuation per item)? Stops as soon as it does not, without serializing anything.
fn fits(value: &Value, budget: &mut usize) -> bool {
    fn spend(budget: &mut usize, n: usize) -> bool {
        match budget.checked_sub(n) {
            Some(left) => {
                *budget = left;
                true
            }
            None => false,
        }
    }
    match value {
        Value::String(s) => spend(budget, s.len() + 2),
        Value::Array(items) => {
            spend(budget, 2)
                && items
                    .iter()
                    .all(|item| spend(budget, 1) && fits(item, budget))
        }
        Value::Object(map) => {
            spend(budget, 2)
                && map
                    .iter()
                    .all(|(k, v)| spend(budget, k.len() + 4) && fits(v, budget))
        }
        _ => spend(budget, 24),
    }
}

/// An event and who waits to learn whether it is durable.
type Pending = (AuditEvent, oneshot::Sender<bool>);

/// Group commit. A call that finds no batch being written writes its record itself, at once:
/// no hop to another task and back when the server is quiet. Calls that come while a batch
/// is written queue; the writer task takes over and writes them in batches (gathering the
/// calls about to finish) until the queue is empty, then leaves the next call to write
/// its own record again.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    /// The connection batches are written on, kept between them: batches are written one
    /// at a time, and taking a connection from the pool for each would cost two more round
    /// trips (sqlx checks a connection as it returns to the pool). With when it was last used.
    /// Detached from the pool: a pool closing at shutdown waits for the connections it lent.
    conn: tokio::sync::Mutex<Option<(PgConnection, Instant)>>,
    group: Mutex<Group>,
    /// Wakes the writer task when a caller's write ends with others queued.
    queued: tokio::sync::Notify,
}

#[derive(Default)]
struct Group {
    /// A batch is being written (by a caller or by the writer task).
    writing: bool,
    waiting: Vec<Pending>,
}

impl AuditLog {
    /// Starts the writer task; it ends when every `AuditLog` clone is dropped.
    pub fn start(pool: PgPool) -> AuditLog {
        let shared = Arc::new(Shared {
            pool,
            conn: tokio::sync::Mutex::new(None),
            group: Mutex::default(),
            queued: tokio::sync::Notify::new(),
        });
        tokio::spawn(writer(Arc::downgrade(&shared)));
        AuditLog { shared }
    }

    /// Returns once the event is committed (`true`), or could not be (`false`, logged).
    pub async fn record(&self, mut event: AuditEvent) -> bool {
        prepare(&mut event);
        let (done, committed) = oneshot::channel();
        let queued = {
            let mut group = self.shared.lock();
            crate::metrics::audit_queue(group.waiting.len());
            if group.writing {
                group.waiting.push((event, done));
                None
            } else {
                group.writing = true;
                Some(event)
            }
        };
        let Some(event) = queued else {
            return committed.await.unwrap_or(false);
        };
        let turn = Turn {
            shared: &self.shared,
        };
        let written = write_batch(&self.shared, std::slice::from_ref(&event), |e| e).await;
        drop(turn);
        written.first().copied().unwrap_or(false)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Group> {
        // The lock guards a flag and a list, never held across an await: a poisoned one (a
        // panic elsewhere) still holds consistent data.
        self.group.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts events on the kept connection. One idle for a while is checked first; one
    /// that fails is let go (a fresh one is taken next time), and so is one whose write was
    /// cancelled halfway: it is taken out while in use.
    async fn insert<'a>(
        &self,
        events: impl Iterator<Item = &'a AuditEvent> + Clone,
    ) -> Result<(), sqlx::Error> {
        let mut kept = self.conn.lock().await;
        let mut conn = match kept.take() {
            Some((conn, used)) if used.elapsed() <= crate::store::CHECK_IDLE_AFTER => conn,
            Some((mut conn, _)) => match conn.ping().await {
                Ok(()) => conn,
                Err(_) => self.pool.acquire().await?.detach(),
            },
            None => self.pool.acquire().await?.detach(),
        };
        insert_events(&mut conn, events).await?;
        *kept = Some((conn, Instant::now()));
        Ok(())
    }

    /// A caller's write ended: the writer task takes the queue, or the next call writes.
    fn pass_on(&self) {
        let mut group = self.lock();
        if group.waiting.is_empty() {
            group.writing = false;
        } else {
            drop(group);
            self.queued.notify_one();
        }
    }
}

/// A caller's turn at writing; passes on when it ends, even if the call is cancelled
/// mid-write, so nobody queued behind it waits forever.
struct Turn<'a> {
    shared: &'a Shared,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.shared.pass_on();
    }
}

/// How many times the writer task lets other tasks run before it takes a batch: calls that
/// are about to finish join it, instead of each paying for a round trip of its own.
/// Measured on `get_customer` with 16 callers: batches of ~9 events instead of ~4, and 0.82
/// of the bare handler's calls/s instead of 0.70.
const GATHER_YIELDS: usize = 2;

async fn writer(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        // Woken by a caller whose write ended with others queued; the wait ends when the
        // last handle goes (checked every few seconds).
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), strong.queued.notified()).await;
        loop {
            for _ in 0..GATHER_YIELDS {
                tokio::task::yield_now().await;
            }
            let batch: Vec<Pending> = {
                let mut group = strong.lock();
                if group.waiting.is_empty() {
                    // Nobody queued (or a stray wake-up): the next caller writes its own, unless
                    // a caller is writing right now.
                    break;
                }
                let take = group.waiting.len().min(MAX_BATCH);
                group.waiting.drain(..take).collect()
            };
            let written = write_batch(&strong, &batch, |(e, _)| e).await;
            for ((_, done), ok) in batch.into_iter().zip(written) {
                let _ = done.send(ok);
            }
            let mut group = strong.lock();
            if group.waiting.is_empty() {
                group.writing = false;
                break;
            }
        }
    }
}

/// Makes an event storable: text a caller chose (a tool name, a session id) must not stop
/// the INSERT, and a huge argument is kept as a marker.
fn prepare(event: &mut AuditEvent) {
    {
        for field in [
            Some(&mut event.action),
            event.principal_name.as_mut(),
            event.session_id.as_mut(),
            event.error_code.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if field.contains('\0') {
                *field = text(field);
            }
        }
        if let Some(arguments) = event.arguments.as_mut() {
            cap_arguments(arguments);
        }
    }
}

/// Waits before writing a refused event again.
const RETRY_WAITS: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(50),
    std::time::Duration::from_millis(250),
    std::time::Duration::from_millis(1000),
];

/// Writes a batch; each event's outcome. One event the database refuses must not take the
/// others with it: after a refused batch each is tried again alone, a few times (a pool
/// briefly exhausted, a restart), before it counts as lost.
async fn write_batch<T: Sync>(
    shared: &Shared,
    batch: &[T],
    event: fn(&T) -> &AuditEvent,
) -> Vec<bool> {
    let mut written = vec![true; batch.len()];
    let started = std::time::Instant::now();
    let inserted = shared.insert(batch.iter().map(event)).await;
    crate::metrics::audit_batch(batch.len(), started.elapsed().as_secs_f64());
    if let Err(error) = inserted {
        tracing::warn!(%error, events = batch.len(), "audit batch refused; writing events one by one");
        for (i, one) in batch.chunks(1).enumerate() {
            let mut outcome = shared.insert(one.iter().map(event)).await;
            for wait in RETRY_WAITS {
                if outcome.is_ok() {
                    break;
                }
                tokio::time::sleep(wait).await;
                outcome = shared.insert(one.iter().map(event)).await;
            }
            if let Err(error) = outcome {
                tracing::error!(%error, action = %event(&one[0]).action, "could not write an audit event");
                written[i] = false;
            }
        }
    }
    written
}

/// One event, on a connection of the caller's (inside a tool's own transaction).
pub async fn insert_one(
    conn: &mut sqlx::PgConnection,
    event: &AuditEvent,
) -> Result<(), sqlx::Error> {
    let mut event = event.clone();
    prepare(&mut event);
    insert_events(conn, std::iter::once(&event)).await
}

/// One statement for any batch size (column arrays through `unnest`), so it is prepared
/// once per connection rather than once per size.
async fn insert_events<'a, 'c, E>(
    executor: E,
    events: impl Iterator<Item = &'a AuditEvent> + Clone,
) -> Result<(), sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    // Columns borrow from the events: nothing is copied but the encoded parameters.
    let column = |f: for<'e> fn(&'e AuditEvent) -> Option<&'e str>| {
        events.clone().map(f).collect::<Vec<_>>()
    };
    sqlx::query(
        "INSERT INTO audit_events (tenant_id, kind, action, principal_kind, principal_id, \
         principal_name, on_behalf_of, arguments, outcome, error_code, duration_ms, transport, \
         session_id, request_id, chain) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], \
         $6::text[], $7::uuid[], $8::jsonb[], $9::text[], $10::text[], $11::float8[], $12::text[], \
         $13::text[], $14::text[], $15::jsonb[])",
    )
    .bind(events.clone().map(|e| e.tenant_id).collect::<Vec<_>>())
    .bind(column(|e| Some(e.kind)))
    .bind(column(|e| Some(&e.action)))
    .bind(column(|e| e.principal_kind.map(|k| k.as_str())))
    .bind(events.clone().map(|e| e.principal_id).collect::<Vec<_>>())
    .bind(column(|e| e.principal_name.as_deref()))
    .bind(events.clone().map(|e| e.on_behalf_of).collect::<Vec<_>>())
    .bind(
        events
            .clone()
            .map(|e| e.arguments.as_ref())
            .collect::<Vec<_>>(),
    )
    .bind(column(|e| Some(e.outcome)))
    .bind(column(|e| e.error_code.as_deref()))
    .bind(events.clone().map(|e| e.duration_ms).collect::<Vec<_>>())
    .bind(column(|e| e.transport))
    .bind(column(|e| e.session_id.as_deref()))
    .bind(column(|e| e.request_id.as_deref()))
    .bind(events.clone().map(|e| e.chain.as_ref()).collect::<Vec<_>>())
    .execute(executor)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let args = json!({
            "name": "x",
            "client_secret": "acs_123",
            "config": { "api_key": "k", "nested": [{ "Authorization": "Bearer t" }] },
            "DB_PASSWORD": "hunter2",
        });
        let redacted = redact(&args).to_string();
        assert!(
            !redacted.contains("acs_123")
                && !redacted.contains("Bearer t")
                && !redacted.contains("\"k\"")
                && !redacted.contains("hunter2")
        );
        assert!(redacted.contains("\"name\":\"x\""));
    }
}

/// The input of `list_audit_log`: filters (applied in this order) and paging.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    /// Only this user, agent or API key.
    pub principal_id: Option<Uuid>,
    /// Only this tool or auth event.
    ///
    /// E.g. `whoami`, `token.issued`.
    pub action: Option<String>,
    /// `ok`, `refused` or `error`.
    pub outcome: Option<String>,
    /// Only this MCP session.
    pub session_id: Option<String>,
    /// Events at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Events before this time.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Items per page, 1 to 100 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    ///
    /// Omit it for the first page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    /// `tool` or `auth`.
    pub kind: String,
    pub action: String,
    pub principal_kind: Option<String>,
    pub principal_id: Option<Uuid>,
    pub principal_name: Option<String>,
    pub on_behalf_of: Option<Uuid>,
    /// Work done on someone's behalf: every principal it acted for, the identity first.
    pub chain: Option<Value>,
    /// The call's arguments, secrets redacted.
    pub arguments: Option<Value>,
    pub outcome: String,
    pub error_code: Option<String>,
    pub duration_ms: Option<f64>,
    pub transport: Option<String>,
    pub session_id: Option<String>,
    pub request_id: Option<String>,
}

fn push_filters(query: &mut QueryBuilder<sqlx::Postgres>, tenant_id: Uuid, filter: &AuditFilter) {
    query.push(" WHERE tenant_id = ").push_bind(tenant_id);
    if let Some(id) = filter.principal_id {
        query.push(" AND principal_id = ").push_bind(id);
    }
    if let Some(action) = &filter.action {
        query.push(" AND action = ").push_bind(action.clone());
    }
    if let Some(outcome) = &filter.outcome {
        query.push(" AND outcome = ").push_bind(outcome.clone());
    }
    if let Some(session) = &filter.session_id {
        query.push(" AND session_id = ").push_bind(session.clone());
    }
    if let Some(since) = filter.since {
        query.push(" AND at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND at < ").push_bind(until);
    }
}

/// A tenant's audit events, newest first.
pub async fn list(
    pool: &PgPool,
    tenant_id: Uuid,
    filter: &AuditFilter,
    page: crate::store::page::Page,
) -> Result<(Vec<AuditRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(
        "SELECT id, at, kind, action, principal_kind, principal_id, principal_name, on_behalf_of, \
         chain, arguments, outcome, error_code, duration_ms, transport, session_id, request_id FROM audit_events",
    );
    push_filters(&mut query, tenant_id, filter);
    query
        .push(" ORDER BY at DESC, id DESC LIMIT ")
        .push_bind(page.limit);
    query.push(" OFFSET ").push_bind(page.offset);
    let records = query
        .build_query_as::<AuditRecord>()
        .fetch_all(pool)
        .await?;
    let mut count = QueryBuilder::new("SELECT count(*) FROM audit_events");
    push_filters(&mut count, tenant_id, filter);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
    Ok((records, total))
}
