//! Sliding-window rate limits per principal and class, shared by every process on the
//! database without a round trip on most calls.
//!
//! Each window is split into 60 buckets. A process counts its own calls locally and a
//! background task adds them to `rate_counters` and reads everyone's totals back every
//! `SYNC_EVERY`. A key seen for the first time, or a caller close to its limit, is synced
//! before the decision, so the limit is exact where it matters and cheap elsewhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::principal::Principal;
use crate::store::StoreError;

const SYNC_EVERY: Duration = Duration::from_millis(250);
const BUCKETS: i64 = 60;
/// Overrides are re-read this often.
const LIMITS_TTL: Duration = Duration::from_secs(5);
/// Within this many calls of the limit, decisions are made on fresh totals.
const EXACT_MARGIN: i64 = 5;

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
/// as ids (a copy, no text) and written as text only when synced.
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

    fn parse(text: &str) -> Option<Who> {
        match text.strip_prefix("tenant:") {
            Some(id) => id.parse().ok().map(Who::Tenant),
            None => text.parse().ok().map(Who::Principal),
        }
    }
}

type Key = (Who, Class);

#[derive(Default)]
struct Window {
    /// Everyone's count per bucket start (unix seconds), as of the last sync.
    synced: HashMap<i64, i64>,
    /// This process's calls not yet written.
    pending: HashMap<i64, i64>,
    synced_at: Option<Instant>,
    bucket_seconds: i64,
}

impl Window {
    fn new(limit: Limit) -> Window {
        Window {
            bucket_seconds: (limit.window_seconds / BUCKETS).max(1),
            ..Window::default()
        }
    }

    /// Adds `n` calls (or takes them back) in the bucket of `now`, to be written.
    fn count(&mut self, now: i64, n: i64) {
        *self
            .pending
            .entry(now - now.rem_euclid(self.bucket_seconds))
            .or_default() += n;
    }

    fn used(&self, now: i64, window: i64) -> (i64, Option<i64>) {
        let from = now - window;
        let mut used = 0;
        let mut oldest = None;
        for (start, count) in self.synced.iter().chain(self.pending.iter()) {
            if *start > from - self.bucket_seconds && *count > 0 {
                used += count;
                oldest = Some(oldest.map_or(*start, |o: i64| o.min(*start)));
            }
        }
        (used, oldest)
    }

    fn quota(&self, class: Class, limit: Limit, now: i64) -> Quota {
        let (used, oldest) = self.used(now, limit.window_seconds);
        Quota {
            class,
            limit,
            remaining: (limit.max - used).max(0),
            reset: oldest.map_or(now, |o| o + self.bucket_seconds + limit.window_seconds),
            retry_after: None,
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
}

fn principal_key(principal: &Principal) -> Who {
    match principal.id {
        Some(id) => Who::Principal(id),
        None => Who::Tenant(principal.tenant_id),
    }
}

impl RateLimiter {
    /// Starts the background sync; it ends with the last clone.
    pub fn start(pool: PgPool) -> RateLimiter {
        let limiter = RateLimiter {
            pool,
            windows: Arc::default(),
            limits: Arc::default(),
        };
        let weak = Arc::downgrade(&limiter.windows);
        let background = limiter.clone_without_task();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut rounds: u64 = 0;
            loop {
                tick.tick().await;
                if weak.strong_count() <= 1 {
                    break;
                }
                let keys: Vec<Key> = match background.windows.lock() {
                    Ok(windows) => windows
                        .iter()
                        .filter(|(_, w)| !w.pending.is_empty())
                        .map(|(k, _)| *k)
                        .collect(),
                    Err(_) => break,
                };
                if !keys.is_empty()
                    && let Err(error) = background.sync(&keys).await
                {
                    tracing::warn!(%error, "rate limit sync failed; counting locally");
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

    fn clone_without_task(&self) -> RateLimiter {
        RateLimiter {
            pool: self.pool.clone(),
            windows: self.windows.clone(),
            limits: self.limits.clone(),
        }
    }

    /// Counts one call of `principal` in each of `classes`, or refuses it (counting nothing).
    pub async fn check(
        &self,
        principal: &Principal,
        classes: &[Class],
    ) -> Result<Result<Quota, Limited>, StoreError> {
        let limits = self.limits_for(principal).await?;
        let who = principal_key(principal);
        let now = Utc::now().timestamp();
        // Fresh totals for keys never seen here or close to their limit.
        let mut stale = Vec::new();
        for class in classes {
            let limit = limits[class];
            let key = (who, *class);
            let windows = self.lock()?;
            let needs_sync = match windows.get(&key) {
                None => true,
                Some(w) => {
                    w.synced_at.is_none()
                        || w.used(now, limit.window_seconds).0 + EXACT_MARGIN >= limit.max
                }
            };
            if needs_sync {
                stale.push(key);
            }
        }
        // Near the limit, the call is counted in the database before it is decided on: every
        // process then decides on totals that include every earlier call, wherever it was
        // made. Two processes racing for the last call may both be refused; none is let past.
        if !stale.is_empty() {
            {
                let mut windows = self.lock()?;
                for key in &stale {
                    let limit = limits[&key.1];
                    let window = windows.entry(*key).or_insert_with(|| Window::new(limit));
                    window.count(now, 1);
                }
            }
            self.sync(&stale).await?;
        }
        let refused = {
            let mut windows = self.lock()?;
            let mut refused = None;
            for class in classes {
                let limit = limits[class];
                let key = (who, *class);
                let counted = stale.contains(&key);
                let window = windows.entry(key).or_insert_with(|| Window::new(limit));
                let (used, oldest) = window.used(now, limit.window_seconds);
                let over = if counted {
                    used > limit.max
                } else {
                    used >= limit.max
                };
                if over {
                    let frees_at =
                        oldest.unwrap_or(now) + window.bucket_seconds + limit.window_seconds;
                    refused = Some(Limited {
                        class: *class,
                        limit,
                        retry_after: (frees_at - now).clamp(1, limit.window_seconds) as u64,
                    });
                    break;
                }
            }
            if refused.is_some() {
                // A refused call counts nothing: take back what was written for it.
                for key in &stale {
                    if let Some(window) = windows.get_mut(key) {
                        window.count(now, -1);
                    }
                }
            }
            refused
        };
        if let Some(limited) = refused {
            if !stale.is_empty() {
                self.sync(&stale).await?;
            }
            return Ok(Err(limited));
        }
        let mut windows = self.lock()?;
        let mut quota: Option<Quota> = None;
        for class in classes {
            let key = (who, *class);
            let counted = stale.contains(&key);
            if let Some(window) = windows.get_mut(&key) {
                if !counted {
                    window.count(now, 1);
                }
                let here = window.quota(*class, limits[class], now);
                if quota.is_none_or(|q| here.remaining <= q.remaining) {
                    quota = Some(here);
                }
            }
        }
        let class = classes.first().copied().unwrap_or(Class::Calls);
        Ok(Ok(quota.unwrap_or(Quota {
            class,
            limit: limits[&class],
            remaining: limits[&class].max,
            reset: now,
            retry_after: None,
        })))
    }

    /// Where `principal` stands in `class`, counting nothing (synced first only when this
    /// process has not seen them yet).
    pub async fn peek(&self, principal: &Principal, class: Class) -> Result<Quota, StoreError> {
        let limits = self.limits_for(principal).await?;
        let limit = limits[&class];
        let key = (principal_key(principal), class);
        let known = self
            .lock()?
            .get(&key)
            .is_some_and(|w| w.synced_at.is_some());
        if !known {
            self.lock()?
                .entry(key)
                .or_insert_with(|| Window::new(limit));
            self.sync(std::slice::from_ref(&key)).await?;
        }
        let now = Utc::now().timestamp();
        let windows = self.lock()?;
        Ok(match windows.get(&key) {
            Some(window) => window.quota(class, limit, now),
            None => Quota {
                class,
                limit,
                remaining: limit.max,
                reset: now,
                retry_after: None,
            },
        })
    }

    /// Writes every pending count (at shutdown, so another process sees them).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let keys: Vec<Key> = self
            .lock()?
            .iter()
            .filter(|(_, w)| !w.pending.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        self.sync(&keys).await
    }

    /// Where `principal` stands in every class (for `whoami`).
    pub async fn standing(&self, principal: &Principal) -> Result<Vec<Standing>, StoreError> {
        let limits = self.limits_for(principal).await?;
        let who = principal_key(principal);
        let keys: Vec<Key> = Class::ALL.iter().map(|c| (who, *c)).collect();
        for (key, class) in keys.iter().zip(Class::ALL) {
            let limit = limits[&class];
            self.lock()?
                .entry(*key)
                .or_insert_with(|| Window::new(limit));
        }
        self.sync(&keys).await?;
        let now = Utc::now().timestamp();
        let windows = self.lock()?;
        Ok(Class::ALL
            .iter()
            .map(|class| {
                let limit = limits[class];
                let used = windows
                    .get(&(who, *class))
                    .map_or(0, |w| w.used(now, limit.window_seconds).0);
                Standing {
                    class: *class,
                    limit,
                    used,
                }
            })
            .collect())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<Key, Window>>, StoreError> {
        self.windows.lock().map_err(|_| {
            StoreError::Database(sqlx::Error::Protocol("rate limiter state poisoned".into()))
        })
    }

    /// Writes pending counts of `keys` and reads back everyone's totals.
    async fn sync(&self, keys: &[Key]) -> Result<(), StoreError> {
        let mut who = Vec::new();
        let mut class = Vec::new();
        let mut bucket = Vec::new();
        let mut count = Vec::new();
        let mut oldest = i64::MAX;
        {
            let mut windows = self.lock()?;
            for key in keys {
                if let Some(window) = windows.get_mut(key) {
                    for (start, n) in window.pending.drain() {
                        who.push(key.0.text());
                        class.push(key.1.name());
                        bucket.push(DateTime::<Utc>::from_timestamp(start, 0).unwrap_or_default());
                        count.push(n);
                    }
                    oldest =
                        oldest.min(Utc::now().timestamp() - window.bucket_seconds * (BUCKETS + 1));
                }
            }
        }
        if !who.is_empty() {
            sqlx::query(
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
            .await?;
        }
        let key_who: Vec<String> = keys.iter().map(|k| k.0.text()).collect();
        let key_class: Vec<&str> = keys.iter().map(|k| k.1.name()).collect();
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT c.principal_key, c.class, extract(epoch FROM c.bucket)::bigint, c.count
             FROM rate_counters c
             JOIN unnest($1::text[], $2::text[]) AS k(principal_key, class)
               ON k.principal_key = c.principal_key AND k.class = c.class
             WHERE c.bucket >= to_timestamp($3)",
        )
        .bind(&key_who)
        .bind(&key_class)
        .bind(oldest.max(0) as f64)
        .fetch_all(&self.pool)
        .await?;
        let mut windows = self.lock()?;
        let at = Instant::now();
        for key in keys {
            if let Some(window) = windows.get_mut(key) {
                window.synced.clear();
                window.synced_at = Some(at);
            }
        }
        for (who, class, start, n) in rows {
            if let Some(class) = Class::parse(&class)
                && let Some(who) = Who::parse(&who)
                && let Some(window) = windows.get_mut(&(who, class))
            {
                window.synced.insert(start, n);
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
        for who in [Who::Principal(id), Who::Tenant(id)] {
            assert_eq!(Who::parse(&who.text()), Some(who));
        }
        assert_eq!(Who::parse("tenant:x"), None);
        assert_eq!(Who::parse("'; DROP TABLE rate_counters; --"), None);
    }
}
