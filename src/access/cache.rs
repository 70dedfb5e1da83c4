//! A per-process cache of resolved credentials (API keys, access tokens) and of agents'
//! policies (field rules, conditions, grants), so a request costs no authentication or
//! policy query when nothing changed.
//!
//! Every change to agents, API keys, users, revoked tokens, field rules, row conditions or
//! grants fires `NOTIFY agentcrm_auth`
//! from a trigger (migration 0006), however it was made; every process LISTENs and empties
//! its cache when one arrives, which PostgreSQL delivers at commit, before the changing
//! request has even answered. While the LISTEN connection is down the cache is not used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::policy::Policy;
use super::principal::Principal;

pub const CHANNEL: &str = "agentcrm_auth";
/// Even unchanged, an entry is re-read after this long.
const TTL: Duration = Duration::from_secs(60);
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// SHA-256 of an API key.
    ApiKey(Vec<u8>),
    /// An access token: every claim the resolved principal depends on (id, agent, tenant,
    /// scope), not the id alone.
    Token {
        jti: Uuid,
        sub: Uuid,
        tid: Uuid,
        scope: String,
    },
}

/// An agent's own field rules, conditions and grants, by tenant and agent.
type PolicyKey = (Uuid, Uuid);

#[derive(Default)]
struct Inner {
    entries: Mutex<HashMap<CacheKey, (Principal, Instant)>>,
    policies: Mutex<HashMap<PolicyKey, (Arc<Policy>, Instant)>>,
    /// Bumped by every invalidation: a lookup that raced one is not cached.
    generation: AtomicU64,
    listening: AtomicBool,
}

#[derive(Clone, Default)]
pub struct AuthCache {
    inner: Arc<Inner>,
}

impl AuthCache {
    /// Starts listening for changes; until the LISTEN is up, nothing is cached.
    pub fn start(pool: PgPool) -> AuthCache {
        let cache = AuthCache::default();
        let weak = Arc::downgrade(&cache.inner);
        tokio::spawn(async move {
            loop {
                let listener = crate::store::listen(&pool, CHANNEL).await;
                let Some(inner) = weak.upgrade() else { return };
                if pool.is_closed() {
                    return;
                }
                let mut listener = match listener {
                    Some(listener) => listener,
                    None => {
                        tracing::warn!("auth cache: cannot LISTEN; authenticating every request");
                        drop(inner);
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                };
                inner.invalidate();
                inner.listening.store(true, Ordering::SeqCst);
                drop(inner);
                loop {
                    let received =
                        tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await;
                    let Some(inner) = weak.upgrade() else { return };
                    match received {
                        // Nothing for a while: loop to notice when the cache is gone.
                        Err(_) => continue,
                        Ok(Ok(Some(_))) => inner.invalidate(),
                        Ok(Ok(None)) | Ok(Err(_)) => {
                            // The connection dropped: notifications may have been missed.
                            inner.listening.store(false, Ordering::SeqCst);
                            inner.invalidate();
                            break;
                        }
                    }
                }
            }
        });
        cache
    }

    /// The generation to pass back to [`AuthCache::insert`] after a lookup.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    pub fn get(&self, key: &CacheKey) -> Option<Principal> {
        if !self.inner.listening.load(Ordering::SeqCst) {
            return None;
        }
        let entries = self.inner.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(principal, _)| principal.clone())
    }

    /// Caches a lookup begun at `generation`, unless an invalidation came in between.
    pub fn insert(&self, key: CacheKey, principal: Principal, generation: u64) {
        if !self.inner.listening.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut entries) = self.inner.entries.lock() {
            if self.inner.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(key, (principal, Instant::now()));
        }
    }

    /// Forgets everything (also called by the process that made a change, at once).
    pub fn invalidate(&self) {
        self.inner.invalidate();
    }

    /// An agent's own policy as last read, unless anything changed since (field rules,
    /// conditions and grants fire the same NOTIFY as credentials).
    pub fn get_policy(&self, tenant_id: Uuid, agent_id: Uuid) -> Option<Arc<Policy>> {
        if !self.inner.listening.load(Ordering::SeqCst) {
            return None;
        }
        let policies = self.inner.policies.lock().ok()?;
        policies
            .get(&(tenant_id, agent_id))
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(policy, _)| policy.clone())
    }

    /// Caches a policy read begun at `generation`, unless an invalidation came in between.
    pub fn insert_policy(
        &self,
        tenant_id: Uuid,
        agent_id: Uuid,
        policy: Arc<Policy>,
        generation: u64,
    ) {
        if !self.inner.listening.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut policies) = self.inner.policies.lock() {
            if self.inner.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if policies.len() >= MAX_ENTRIES {
                policies.clear();
            }
            policies.insert((tenant_id, agent_id), (policy, Instant::now()));
        }
    }
}

impl Inner {
    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
        if let Ok(mut policies) = self.policies.lock() {
            policies.clear();
        }
    }
}
