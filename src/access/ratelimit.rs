//! Sliding-window rate limits per principal and class, shared by every process on the
//! database, exact, and without a round trip on most calls.
//!
//! Each window is split into 60 buckets in `rate_counters`. A process takes calls from the
//! database in leases: `rate_take` (migration 0031) counts a lease only if the window has
//! room, atomically per principal and class, so every call made anywhere was counted
//! before it was made and no process can let a call past the limit. A busy caller's leases
//! grow (one round trip per many calls); no taker gets more than a quarter of what is left,
//! so near the limit each call is its own take. What a lease has left after `LEASE_LIFE`
//! is given back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::principal::Principal;
use crate::store::StoreError;

/// How often unused leases are given back.
const SYNC_EVERY: Duration = Duration::from_millis(250);
const BUCKETS: i64 = 60;
/// Overrides are re-read this often.
const LIMITS_TTL: Duration = Duration::from_secs(5);
/// A lease's unused calls are given back this long after it was taken, so a caller that
/// slows down does not hold calls that others could use.
const LEASE_LIFE: Duration = Duration::from_secs(1);
/// The most calls one take asks for.
const MAX_LEASE: i64 = 1024;
/// A window unused this long is forgotten (it has no lease by then).
const IDLE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Every tool call.
    Calls,
    /// Search queries.
    Search,
    /// Bulk operations.
    Bulk,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Calls, Class::Search, Class::Bulk];

    pub fn name(self) -> &'static str {
        match self {
            Class::Calls => "calls",
            Class::Search => "search",
            Class::Bulk => "bulk",
        }
    }

    pub fn parse(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }

    /// SPEC §1 defaults.
    pub fn default_limit(self) -> Limit {
        match self {
            Class::Calls => Limit {
                max: 1000,
                window_seconds: 3600,
            },
            Class::Search => Limit {
                max: 100,
                window_seconds: 60,
            },
            Class::Bulk => Limit {
                max: 10,
                window_seconds: 3600,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Limit {
    /// Calls allowed per window.
    pub max: i64,
    pub window_seconds: i64,
}

/// Where a principal stands in one class.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Standing {
    pub class: Class,
    pub limit: Limit,
    /// Calls counted in the current window.
    pub used: i64,
}

/// A refused call: retry after this many seconds.
#[derive(Debug, Clone, Copy)]
pub struct Limited {
    pub class: Class,
    pub limit: Limit,
    pub retry_after: u64,
}

impl Limited {
    pub fn quota(&self) -> Quota {
        Quota {
            class: self.class,
            limit: self.limit,
            remaining: 0,
            reset: Utc::now().timestamp() + self.retry_after as i64,
            retry_after: Some(self.retry_after),
        }
    }
}

/// Where a request left its caller in the class it counted against (the HTTP
/// `X-RateLimit-*` headers): of the classes a call counts in, the one with the fewest calls
/// left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub class: Class,
    pub limit: Limit,
    pub remaining: i64,
    /// Unix time at which a call is freed (the oldest counted one leaves the window).
    pub reset: i64,
    /// Set when the call was refused.
    pub retry_after: Option<u64>,
}

/// Where the HTTP layer waits for the quota of the call its request makes: filled once by
/// the call path when it counts the call (or refuses it); dropped unfilled when the request
/// counted nothing.
#[derive(Clone)]
pub struct QuotaSlot(Arc<Mutex<Option<tokio::sync::oneshot::Sender<Quota>>>>);

impl QuotaSlot {
    pub fn new() -> (QuotaSlot, tokio::sync::oneshot::Receiver<Quota>) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (QuotaSlot(Arc::new(Mutex::new(Some(sender)))), receiver)
    }

    pub fn fill(&self, quota: Quota) {
        if let Some(sender) = self.0.lock().ok().and_then(|mut s| s.take()) {
            let _ = sender.send(quota);
        }
    }
}

/// Whose calls a window counts: a principal, or a tenant's principals without an id. Kept
/// as ids (a copy, no text) and written as text only in statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    Principal(Uuid),
    Tenant(Uuid),
}

impl Who {
    /// The `principal_key` stored in `rate_counters`.
    fn text(self) -> String {
        match self {
            Who::Principal(id) => id.to_string(),
            Who::Tenant(id) => format!("tenant:{id}"),
        }
    }
}

type Key = (Who, Class);

/// Calls taken from the database and not yet made.
struct Lease {
    /// The bucket (start, unix seconds) they were counted in: they are made only in it.
    bucket: i64,
    left: i64,
    taken: Instant,
}

fn bucket_seconds(limit: Limit) -> i64 {
    (limit.window_seconds / BUCKETS).max(1)
}

/// Buckets after this one (unix seconds) are in the window at `now`.
fn window_from(limit: Limit, now: i64) -> i64 {
    now - limit.window_seconds - bucket_seconds(limit)
}

/// What this process knows of one principal's class.
struct Window {
    bucket_seconds: i64,
    leases: Vec<Lease>,
    /// How many calls the next take asks for: doubled while leases run out fast, halved
    /// when one is given back unused.
    next_lease: i64,
    /// Every process's calls and leases in the window, as the last take or read found it.
    used: i64,
    /// The oldest bucket with a call in it, then.
    oldest: Option<i64>,
    last_take: Option<Instant>,
    /// When `used` and `oldest` were last read or taken.
    read_at: Option<Instant>,
    /// A refusal is repeated, without asking, for `SYNC_EVERY`: a caller hammering at its
    /// limit costs the database one statement per interval, not one per call.
    refused_at: Option<Instant>,
    seen: Instant,
}

impl Window {
    fn new(limit: Limit) -> Window {
        Window {
            bucket_seconds: bucket_seconds(limit),
            leases: Vec::new(),
            next_lease: 1,
            used: 0,
            oldest: None,
            last_take: None,
            read_at: None,
            refused_at: None,
            seen: Instant::now(),
        }
    }

    /// Follows a change of the limit's window: buckets of its new size, and nothing known
    /// of the new window yet. Leases keep the buckets they were counted in (and, being of no
    /// current bucket, are given back).
    fn fit(&mut self, limit: Limit) {
        let bucket_seconds = bucket_seconds(limit);
        if bucket_seconds != self.bucket_seconds {
            self.bucket_seconds = bucket_seconds;
            self.read_at = None;
            self.refused_at = None;
        }
    }

    fn bucket(&self, now: i64) -> i64 {
        now - now.rem_euclid(self.bucket_seconds)
    }

    fn left(&self) -> i64 {
        self.leases.iter().map(|l| l.left).sum()
    }

    /// Makes one call from a lease of the current bucket, if there is one.
    fn spend(&mut self, now: i64) -> bool {
        let bucket = self.bucket(now);
        match self
            .leases
            .iter_mut()
            .find(|l| l.bucket == bucket && l.left > 0)
        {
            Some(lease) => {
                lease.left -= 1;
                true
            }
            None => false,
        }
    }

    fn quota(&self, class: Class, limit: Limit, now: i64) -> Quota {
        Quota {
            class,
            limit,
            remaining: limit
                .max
                .saturating_sub(self.used)
                .saturating_add(self.left())
                .clamp(0, limit.max.max(0)),
            reset: self
                .oldest
                .map_or(now, |o| o + self.bucket_seconds + limit.window_seconds),
            retry_after: None,
        }
    }

    fn limited(&self, class: Class, limit: Limit, now: i64) -> Limited {
        // The oldest call leaves the window with its whole bucket.
        let frees_at = self.oldest.unwrap_or(now) + self.bucket_seconds + limit.window_seconds;
        Limited {
            class,
            limit,
            retry_after: (frees_at - now).clamp(1, limit.window_seconds + self.bucket_seconds)
                as u64,
        }
    }
}

struct CachedLimits {
    limits: Arc<HashMap<Class, Limit>>,
    at: Instant,
}

#[derive(Clone)]
pub struct RateLimiter {
    pool: PgPool,
    windows: Arc<Mutex<HashMap<Key, Window>>>,
    limits: Arc<Mutex<HashMap<Who, CachedLimits>>>,
    /// Odd while unused calls are being given back: taken from the leases, not yet written.
    /// [`RateLimiter::standing`] reads around it, so a call is not counted as made then.
    returning: Arc<AtomicU64>,
}

fn principal_key(principal: &Principal) -> Who {
    match principal.id {
        Some(id) => Who::Principal(id),
        None => Who::Tenant(principal.tenant_id),
    }
}

fn timestamp(unix: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(unix, 0).unwrap_or_default()
}

/// One call's outcome in one class.
enum Taken {
    /// Made, counted in this bucket.
    Made(Quota, i64),
    Refused(Limited),
}

impl RateLimiter {
    /// Starts the background task that gives back unused leases; it ends with the last clone.
    pub fn start(pool: PgPool) -> RateLimiter {
        let limiter = RateLimiter {
            pool,
            windows: Arc::default(),
            limits: Arc::default(),
            returning: Arc::default(),
        };
        let weak = Arc::downgrade(&limiter.windows);
        let background = limiter.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut rounds: u64 = 0;
            loop {
                tick.tick().await;
                if weak.strong_count() <= 1 {
                    break;
                }
                if let Err(error) = background.give_back(false).await {
                    tracing::warn!(%error, "giving back unused rate-limit leases failed");
                }
                rounds += 1;
                if rounds.is_multiple_of(2400) {
                    let _ = sqlx::query(
                        "DELETE FROM rate_counters WHERE bucket < now() - interval '1 day'",
                    )
                    .execute(&background.pool)
                    .await;
                }
            }
        });
        limiter
    }

    /// Counts one call of `principal` in each of `classes`, or refuses it (counting nothing).
    pub async fn check(
        &self,
        principal: &Principal,
        classes: &[Class],
    ) -> Result<Result<Quota, Limited>, StoreError> {
        let limits = self.limits_for(principal).await?;
        let who = principal_key(principal);
        let mut made: Vec<(Key, i64)> = Vec::new();
        let mut quota: Option<Quota> = None;
        for class in classes {
            let key = (who, *class);
            let taken = match self.take(key, limits[class]).await {
                Ok(taken) => taken,
                Err(error) => {
                    self.unspend(&made);
                    return Err(error);
                }
            };
            match taken {
                Taken::Made(here, bucket) => {
                    made.push((key, bucket));
                    if quota.is_none_or(|q| here.remaining <= q.remaining) {
                        quota = Some(here);
                    }
                }
                Taken::Refused(limited) => {
                    self.unspend(&made);
                    return Ok(Err(limited));
                }
            }
        }
        let class = classes.first().copied().unwrap_or(Class::Calls);
        Ok(Ok(quota.unwrap_or(Quota {
            class,
            limit: limits[&class],
            remaining: limits[&class].max,
            reset: Utc::now().timestamp(),
            retry_after: None,
        })))
    }

    /// One call in one class: from a lease if one is left, else from a new take.
    async fn take(&self, key: Key, limit: Limit) -> Result<Taken, StoreError> {
        let now = Utc::now().timestamp();
        let (bucket, from, want) = {
            let mut windows = self.lock()?;
            let window = windows.entry(key).or_insert_with(|| Window::new(limit));
            window.fit(limit);
            window.seen = Instant::now();
            if window.spend(now) {
                return Ok(Taken::Made(
                    window.quota(key.1, limit, now),
                    window.bucket(now),
                ));
            }
            if window
                .refused_at
                .is_some_and(|at| at.elapsed() < SYNC_EVERY)
            {
                return Ok(Taken::Refused(window.limited(key.1, limit, now)));
            }
            if window
                .last_take
                .is_some_and(|at| at.elapsed() < LEASE_LIFE / 4)
            {
                window.next_lease = (window.next_lease * 2).min(MAX_LEASE);
            }
            window.last_take = Some(Instant::now());
            (
                window.bucket(now),
                window_from(limit, now),
                window.next_lease,
            )
        };
        let (granted, used, oldest): (i64, i64, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT granted, used, oldest FROM rate_take($1, $2, $3, $4, $5, $6)")
                .bind(key.0.text())
                .bind(key.1.name())
                .bind(timestamp(bucket))
                .bind(timestamp(from))
                .bind(want)
                .bind(limit.max)
                .fetch_one(&self.pool)
                .await?;
        let mut windows = self.lock()?;
        let window = windows.entry(key).or_insert_with(|| Window::new(limit));
        window.used = used;
        window.oldest = oldest.map(|o| o.timestamp());
        window.read_at = Some(Instant::now());
        if granted <= 0 {
            window.refused_at = Some(Instant::now());
            return Ok(Taken::Refused(window.limited(key.1, limit, now)));
        }
        window.refused_at = None;
        // One of the calls is this one.
        if granted > 1 {
            window.leases.push(Lease {
                bucket,
                left: granted - 1,
                taken: Instant::now(),
            });
        }
        Ok(Taken::Made(window.quota(key.1, limit, now), bucket))
    }

    /// Takes back calls counted for a call that another class refused: they go back to this
    /// process's leases (and, unused, to the database with them).
    fn unspend(&self, made: &[(Key, i64)]) {
        let Ok(mut windows) = self.lock() else {
            return;
        };
        for (key, bucket) in made {
            let bucket = *bucket;
            if let Some(window) = windows.get_mut(key) {
                match window.leases.iter_mut().find(|l| l.bucket == bucket) {
                    Some(lease) => lease.left += 1,
                    None => window.leases.push(Lease {
                        bucket,
                        left: 1,
                        taken: Instant::now(),
                    }),
                }
            }
        }
    }

    /// Where `principal` stands in `class`, counting nothing (read first when this process
    /// knows nothing of it yet).
    pub async fn peek(&self, principal: &Principal, class: Class) -> Result<Quota, StoreError> {
        let limits = self.limits_for(principal).await?;
        let limit = limits[&class];
        let key = (principal_key(principal), class);
        let now = Utc::now().timestamp();
        let from = {
            let mut windows = self.lock()?;
            let window = windows.entry(key).or_insert_with(|| Window::new(limit));
            window.fit(limit);
            // Calls leave the window as time passes, and other processes make theirs.
            if window.read_at.is_some_and(|at| at.elapsed() < SYNC_EVERY) {
                return Ok(window.quota(class, limit, now));
            }
            window_from(limit, now)
        };
        let asked = Instant::now();
        let (used, oldest) = self.read(key, from).await?;
        let mut windows = self.lock()?;
        let window = windows.entry(key).or_insert_with(|| Window::new(limit));
        // Unless a take said more since.
        if window.read_at.is_none_or(|at| at < asked) {
            window.used = used;
            window.oldest = oldest;
            window.read_at = Some(asked);
        }
        Ok(window.quota(class, limit, now))
    }

    /// Every process's calls (and leases) in `key`'s window, and its oldest bucket in use.
    async fn read(&self, key: Key, from: i64) -> Result<(i64, Option<i64>), StoreError> {
        let (used, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT coalesce(sum(count), 0)::bigint, min(bucket) FILTER (WHERE count > 0)
             FROM rate_counters WHERE principal_key = $1 AND class = $2 AND bucket > $3",
        )
        .bind(key.0.text())
        .bind(key.1.name())
        .bind(timestamp(from))
        .fetch_one(&self.pool)
        .await?;
        Ok((used, oldest.map(|o| o.timestamp())))
    }

    /// Gives back every unused lease (at shutdown, so other processes can use them).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.give_back(true).await
    }

    /// Where `principal` stands in every class (for `whoami`): calls made, wherever they
    /// were, not counting the calls this process holds unmade.
    pub async fn standing(&self, principal: &Principal) -> Result<Vec<Standing>, StoreError> {
        let limits = self.limits_for(principal).await?;
        let who = principal_key(principal);
        let now = Utc::now().timestamp();
        let mut standing = Vec::new();
        for class in Class::ALL {
            let limit = limits[&class];
            let key = (who, class);
            let from = window_from(limit, now);
            let mut tries = 0;
            let (used, unmade) = loop {
                tries += 1;
                let before = self.returning.load(Ordering::Acquire);
                let unmade = self.lock()?.get(&key).map_or(0, Window::left);
                let (used, _) = self.read(key, from).await?;
                let settled =
                    before.is_multiple_of(2) && self.returning.load(Ordering::Acquire) == before;
                if settled || tries == 5 {
                    break (used, unmade);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            standing.push(Standing {
                class,
                limit,
                used: (used - unmade).max(0),
            });
        }
        Ok(standing)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<Key, Window>>, StoreError> {
        self.windows.lock().map_err(|_| {
            StoreError::Database(sqlx::Error::Protocol("rate limiter state poisoned".into()))
        })
    }

    /// Gives back the unused calls of leases older than `LEASE_LIFE` (or of every lease),
    /// and forgets idle windows.
    async fn give_back(&self, all: bool) -> Result<(), StoreError> {
        // Several leases of one key may share a bucket: one row each, or the statement
        // would update a row twice.
        let mut unused: HashMap<(Key, i64), i64> = HashMap::new();
        {
            let mut windows = self.lock()?;
            self.returning.fetch_add(1, Ordering::AcqRel);
            let now = Utc::now().timestamp();
            for (key, window) in windows.iter_mut() {
                let current = window.bucket(now);
                let mut returned = 0;
                window.leases.retain(|lease| {
                    let keep =
                        !all && lease.bucket == current && lease.taken.elapsed() < LEASE_LIFE;
                    if !keep && lease.left > 0 {
                        *unused.entry((*key, lease.bucket)).or_default() += lease.left;
                        returned += lease.left;
                    }
                    keep
                });
                if returned > 0 {
                    window.used -= returned;
                    window.next_lease = (window.next_lease / 2).max(1);
                }
            }
            windows.retain(|_, w| !w.leases.is_empty() || w.seen.elapsed() < IDLE);
        }
        if let Ok(mut limits) = self.limits.lock() {
            limits.retain(|_, cached| cached.at.elapsed() < IDLE);
        }
        if unused.is_empty() {
            self.returning.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        }
        let (mut who, mut class, mut bucket, mut count) = (vec![], vec![], vec![], vec![]);
        for (((w, c), b), n) in &unused {
            who.push(w.text());
            class.push(c.name());
            bucket.push(timestamp(*b));
            count.push(-n);
        }
        let written = sqlx::query(
            "INSERT INTO rate_counters (principal_key, class, bucket, count)
             SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[])
             ON CONFLICT (principal_key, class, bucket)
             DO UPDATE SET count = rate_counters.count + EXCLUDED.count",
        )
        .bind(&who)
        .bind(&class)
        .bind(&bucket)
        .bind(&count)
        .execute(&self.pool)
        .await;
        let restored = self.restore_if(written.is_err(), unused);
        self.returning.fetch_add(1, Ordering::AcqRel);
        restored?;
        written.map(|_| ()).map_err(StoreError::from)
    }

    /// After a failed give-back: the calls are still counted in the database, so they are
    /// held again, to be given back next time.
    fn restore_if(&self, failed: bool, unused: HashMap<(Key, i64), i64>) -> Result<(), StoreError> {
        if failed {
            let mut windows = self.lock()?;
            let long_ago = Instant::now()
                .checked_sub(LEASE_LIFE)
                .unwrap_or_else(Instant::now);
            for ((key, bucket), left) in unused {
                if let Some(window) = windows.get_mut(&key) {
                    window.used += left;
                    window.leases.push(Lease {
                        bucket,
                        left,
                        taken: long_ago,
                    });
                }
            }
        }
        Ok(())
    }

    /// The limits of `principal`: its agent's overrides, else its tenant's, else the defaults.
    async fn limits_for(
        &self,
        principal: &Principal,
    ) -> Result<Arc<HashMap<Class, Limit>>, StoreError> {
        let who = principal_key(principal);
        if let Ok(cache) = self.limits.lock()
            && let Some(cached) = cache.get(&who)
            && cached.at.elapsed() < LIMITS_TTL
        {
            return Ok(cached.limits.clone());
        }
        let agent_id = principal.is_agent().then_some(principal.id).flatten();
        let rows: Vec<(String, i64, i64, bool)> = sqlx::query_as(
            "SELECT class, max_calls, window_seconds, agent_id IS NOT NULL
             FROM rate_limits WHERE tenant_id = $1 AND (agent_id IS NULL OR agent_id = $2)",
        )
        .bind(principal.tenant_id)
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?;
        let mut limits: HashMap<Class, Limit> =
            Class::ALL.iter().map(|c| (*c, c.default_limit())).collect();
        // Tenant rows first, then the agent's own, which win.
        for specific in [false, true] {
            for (class, max, window_seconds, is_agent) in &rows {
                if *is_agent == specific
                    && let Some(class) = Class::parse(class)
                {
                    limits.insert(
                        class,
                        Limit {
                            max: *max,
                            window_seconds: *window_seconds,
                        },
                    );
                }
            }
        }
        let limits = Arc::new(limits);
        if let Ok(mut cache) = self.limits.lock() {
            cache.insert(
                who,
                CachedLimits {
                    limits: limits.clone(),
                    at: Instant::now(),
                },
            );
        }
        Ok(limits)
    }
}

/// Sets (or with `None`, removes) an override for a tenant or one of its agents.
pub async fn set_limit(
    pool: &PgPool,
    tenant_id: Uuid,
    agent_id: Option<Uuid>,
    class: Class,
    limit: Option<Limit>,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "DELETE FROM rate_limits WHERE tenant_id = $1 AND agent_id IS NOT DISTINCT FROM $2 AND class = $3",
    )
    .bind(tenant_id)
    .bind(agent_id)
    .bind(class.name())
    .execute(&mut *tx)
    .await?;
    if let Some(limit) = limit {
        sqlx::query(
            "INSERT INTO rate_limits (tenant_id, agent_id, class, max_calls, window_seconds)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant_id)
        .bind(agent_id)
        .bind(class.name())
        .bind(limit.max)
        .bind(limit.window_seconds)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys in `rate_counters` are shared by every replica, of every version during a
    /// rolling upgrade: their text must stay as it was.
    #[test]
    fn counter_keys_keep_their_stored_text() {
        let id = Uuid::parse_str("0190a0b0-0000-7000-8000-000000000001").unwrap();
        assert_eq!(
            Who::Principal(id).text(),
            "0190a0b0-0000-7000-8000-000000000001"
        );
        assert_eq!(
            Who::Tenant(id).text(),
            "tenant:0190a0b0-0000-7000-8000-000000000001"
        );
    }
}
