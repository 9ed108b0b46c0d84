//! Per-route rate limiting: a token bucket per key (client IP or a header's
//! value). `burst` tokens at most, refilled at `requests` per `per`. The
//! map is sharded to keep lock contention low and bounded in size: past
//! `MAX_KEYS_PER_SHARD` keys a shard drops the buckets that are full again
//! (indistinguishable from new ones), then, if still too big, the oldest.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::RateLimitSpec;

const SHARDS: usize = 16;
/// 16 shards x 8192 keys: about 131k distinct clients tracked per route,
/// a few MiB at most.
const MAX_KEYS_PER_SHARD: usize = 8192;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    pub spec: RateLimitSpec,
    /// Tokens per second.
    rate: f64,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<Box<str>, Bucket>>>,
}

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Allow,
    /// Retry after this many whole seconds (at least 1).
    Limit(u64),
}

impl RateLimiter {
    pub fn new(spec: RateLimitSpec) -> RateLimiter {
        let rate = f64::from(spec.requests) / spec.per.as_secs_f64().max(1e-9);
        RateLimiter {
            spec,
            rate,
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes a token for `key` at `now`.
    pub fn check(&self, key: &str, now: Instant) -> Verdict {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let burst = f64::from(self.spec.burst);
        // A known key (the usual case): one lookup, no allocation. A new
        // key is copied in after room is made.
        if let Some(bucket) = map.get_mut(key) {
            return self.take(bucket, now);
        }
        if map.len() >= MAX_KEYS_PER_SHARD {
            self.evict(&mut map, now);
        }
        let mut bucket = Bucket {
            tokens: burst,
            last: now,
        };
        let verdict = self.take(&mut bucket, now);
        map.insert(key.into(), bucket);
        verdict
    }

    /// Refills `bucket` up to `now` and takes one token from it.
    fn take(&self, bucket: &mut Bucket, now: Instant) -> Verdict {
        let burst = f64::from(self.spec.burst);
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Verdict::Allow
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Verdict::Limit(Duration::from_secs_f64(wait).as_secs().max(1))
        }
    }

    fn evict(&self, map: &mut HashMap<Box<str>, Bucket>, now: Instant) {
        let burst = f64::from(self.spec.burst);
        let rate = self.rate;
        map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
        });
        if map.len() >= MAX_KEYS_PER_SHARD {
            // Everyone is mid-burst: forget the least recently seen half.
            let mut ages: Vec<Instant> = map.values().map(|b| b.last).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            map.retain(|_, b| b.last > cut);
        }
    }

    /// Keys currently tracked (for tests and metrics).
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateKey;

    fn limiter(requests: u32, per_ms: u64, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimitSpec {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
            key: RateKey::ClientIp,
        })
    }

    #[test]
    fn burst_then_limit_with_retry_after() {
        let l = limiter(1, 10_000, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check("a", t), Verdict::Allow);
        }
        assert_eq!(l.check("a", t), Verdict::Limit(10));
    }

    #[test]
    fn keys_are_limited_separately() {
        let l = limiter(1, 1000, 1);
        let t = Instant::now();
        assert_eq!(l.check("a", t), Verdict::Allow);
        assert_eq!(l.check("b", t), Verdict::Allow);
        assert!(matches!(l.check("a", t), Verdict::Limit(_)));
    }

    #[test]
    fn tokens_refill_at_the_rate() {
        let l = limiter(2, 1000, 2);
        let t = Instant::now();
        assert_eq!(l.check("a", t), Verdict::Allow);
        assert_eq!(l.check("a", t), Verdict::Allow);
        assert!(matches!(l.check("a", t), Verdict::Limit(1)));
        assert_eq!(l.check("a", t + Duration::from_millis(500)), Verdict::Allow);
    }

    #[test]
    fn memory_stays_bounded_under_many_keys() {
        let l = limiter(1, 1000, 5);
        let t = Instant::now();
        for i in 0..(SHARDS * MAX_KEYS_PER_SHARD * 3) {
            l.check(&format!("client-{i}"), t);
        }
        assert!(l.keys() <= SHARDS * MAX_KEYS_PER_SHARD, "{}", l.keys());
    }
}
