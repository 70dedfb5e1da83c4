//! Failed client authentications are throttled, per client id and per source address:
//! after a few free failures each one refuses further attempts for a growing while (1 s,
//! 2 s, 4 s, … up to 15 minutes), answered with `retry_after` and without checking the
//! secret. Argon2 verifications (deliberately costly in memory and time) run at most two at
//! a time, so a flood of guesses queues instead of multiplying memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Failures allowed before attempts are refused for a while: per client id, and per source
/// address (more, since many clients may share one behind a proxy).
const FREE_FAILURES: u32 = 5;
const FREE_FAILURES_PER_ADDRESS: u32 = 20;
const MAX_REFUSAL: Duration = Duration::from_secs(900);
/// A key with no failure for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Keys tracked at most: a flood of made-up client ids cannot grow memory without bound.
const MAX_KEYS: usize = 100_000;

/// Argon2 verifications in flight at once, in this process.
pub static VERIFICATIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

struct Entry {
    failures: u32,
    last: Instant,
    refused_until: Option<Instant>,
}

#[derive(Default)]
pub struct Throttle {
    entries: Mutex<HashMap<String, Entry>>,
}

/// What an attempt is counted against.
pub fn keys(client_id: &str, source: Option<IpAddr>) -> Vec<String> {
    let mut keys = vec![format!("client:{client_id}")];
    if let Some(address) = source {
        keys.push(format!("address:{address}"));
    }
    keys
}

impl Throttle {
    /// The process's throttle.
    pub fn global() -> &'static Throttle {
        static THROTTLE: OnceLock<Throttle> = OnceLock::new();
        THROTTLE.get_or_init(Throttle::default)
    }

    /// `Err(seconds)` while any of `keys` is refused.
    pub fn check(&self, keys: &[String]) -> Result<(), u64> {
        let now = Instant::now();
        let Ok(entries) = self.entries.lock() else {
            return Ok(());
        };
        let wait = keys
            .iter()
            .filter_map(|k| entries.get(k)?.refused_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match wait {
            Some(wait) => Err(wait.as_secs_f64().ceil().max(1.0) as u64),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt against every key.
    pub fn failed(&self, keys: &[String]) {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_KEYS {
            entries.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        }
        for key in keys {
            if !entries.contains_key(key) && entries.len() >= MAX_KEYS {
                continue;
            }
            let entry = entries.entry(key.clone()).or_insert(Entry {
                failures: 0,
                last: now,
                refused_until: None,
            });
            if now.duration_since(entry.last) >= FORGET_AFTER {
                entry.failures = 0;
            }
            entry.failures += 1;
            entry.last = now;
            let free = if key.starts_with("address:") {
                FREE_FAILURES_PER_ADDRESS
            } else {
                FREE_FAILURES
            };
            if entry.failures > free {
                let doublings = (entry.failures - free - 1).min(20);
                let refusal = Duration::from_secs(1u64 << doublings).min(MAX_REFUSAL);
                entry.refused_until = Some(now + refusal);
            }
        }
    }

    /// A client that proved itself starts afresh (its address keeps its count).
    pub fn succeeded(&self, client_key: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(client_key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_past_the_free_ones_refuse_for_a_growing_while() {
        let throttle = Throttle::default();
        let keys = keys("agt_x", None);
        for _ in 0..FREE_FAILURES {
            assert!(throttle.check(&keys).is_ok());
            throttle.failed(&keys);
        }
        assert!(throttle.check(&keys).is_ok());
        throttle.failed(&keys);
        assert_eq!(throttle.check(&keys), Err(1));
        throttle.failed(&keys);
        throttle.failed(&keys);
        assert_eq!(throttle.check(&keys), Err(4));
        throttle.succeeded(&keys[0]);
        assert!(throttle.check(&keys).is_ok());
    }
}
