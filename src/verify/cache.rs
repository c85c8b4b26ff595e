//! The decision cache: verified digests stay verified for a while, so the hot path costs a hash
//! lookup.
//!
//! - Decisions are keyed by (repository or signed identity, digest, policy generation, rule):
//!   a policy reload changes the generation, so nothing decided under the old policy is found
//!   again (invariant I5). A tag is never part of an allow key (I1).
//! - Verifications are run (and denials kept) per credential fingerprint: a denial that a
//!   caller's missing or refused credentials caused is never served to a caller with other
//!   credentials. An allow is stored under the key without a credential and shared: it says
//!   the signature verified, whoever asked (the runtime checks each caller's access to the
//!   image on its own pull). [`Cache::get_or_fill_with`] lets the filler say where a result goes.
//! - Positive decisions live `ttl`; denials live `negative_ttl` (short: it absorbs the kubelet's
//!   retries of a failing pull without hammering the registry).
//! - Concurrent lookups of the same key share one verification (single flight): the first caller
//!   verifies, the others wait for its result. If the first caller is cancelled, a waiter takes over.
//! - Tag -> digest resolutions are kept `resolve_ttl`; they only say which digest to check.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// What a decision is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The repository (`registry/path`), or the exact reference under `signedIdentity = "exact"`.
    pub scope: Arc<str>,
    /// The manifest digest, raw sha256.
    pub digest: [u8; 32],
    pub generation: u64,
    pub rule: usize,
    /// Whose credentials the entry depends on (a fingerprint, never the secret); `None` for
    /// results anyone may share.
    pub credential: Option<[u8; 32]>,
}

/// Counters, for logs and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Verifications actually run (after single flight).
    pub verifications: AtomicU64,
}

/// An LRU of `V` by key with per-entry expiry and single-flight fill.
pub struct Cache<K, V> {
    entries: Mutex<LruCache<K, (V, Instant)>>,
    inflight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
    pub stats: Stats,
    /// Count evictions in the process's metrics (the decision cache does).
    count_evictions: bool,
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    pub fn new(size: usize) -> Self {
        Cache {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(size.max(1)).unwrap_or(NonZeroUsize::MIN),
            )),
            inflight: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            count_evictions: false,
        }
    }

    /// This cache, with evictions counted in `cri_guard_cache_evictions_total`.
    pub fn counting_evictions(mut self) -> Self {
        self.count_evictions = true;
        self
    }

    /// The cached value, if present and not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((v, exp)) if *exp > Instant::now() => Some(v.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let evicted = !entries.contains(&key) && entries.len() == entries.cap().get();
        entries.put(key, (value, Instant::now() + ttl));
        if evicted && self.count_evictions {
            crate::metrics::METRICS.cache_eviction();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached value, counted as a hit when found.
    pub fn lookup(&self, key: &K) -> Option<V> {
        let v = self.get(key);
        if v.is_some() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        v
    }

    /// The cached value, or the result of `fill` (run once however many callers ask at the same
    /// time), cached for the lifetime `ttl_of` gives it. Returns (value, was it a cache hit).
    pub async fn get_or_fill<F, Fut>(
        &self,
        key: K,
        fill: F,
        ttl_of: impl Fn(&V) -> Duration,
    ) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let stored = key.clone();
        self.get_or_fill_with(key, fill, move |v| Some((stored, ttl_of(v))))
            .await
    }

    /// Like [`Cache::get_or_fill`], but `store` decides under which key and for how long the
    /// filled value is kept, or that it is not kept at all (`None`). Single flight is per `key`.
    pub async fn get_or_fill_with<F, Fut>(
        &self,
        key: K,
        fill: F,
        store: impl FnOnce(&V) -> Option<(K, Duration)>,
    ) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        if let Some(v) = self.lookup(&key) {
            return (v, true);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight.entry(key.clone()).or_default().clone()
        };
        let mut filled_here = false;
        let v = cell
            .get_or_init(|| async {
                filled_here = true;
                self.stats.verifications.fetch_add(1, Ordering::Relaxed);
                fill().await
            })
            .await
            .clone();
        if filled_here {
            if let Some((at, ttl)) = store(&v) {
                self.insert(at, v.clone(), ttl);
            }
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&key);
            }
        }
        (v, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Entries expire after their TTL (virtual time).
    #[tokio::test(start_paused = true)]
    async fn ttl_expiry() {
        let c: Cache<u32, &str> = Cache::new(10);
        c.insert(1, "a", Duration::from_secs(10));
        assert_eq!(c.get(&1), Some("a"));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.get(&1), None);
    }

    /// The LRU holds at most `size` entries, evicting the least recently used.
    #[test]
    fn bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let c: Cache<u32, u32> = Cache::new(2);
            c.insert(1, 1, Duration::from_secs(60));
            c.insert(2, 2, Duration::from_secs(60));
            c.get(&1);
            c.insert(3, 3, Duration::from_secs(60));
            assert_eq!((c.get(&1), c.get(&2), c.get(&3)), (Some(1), None, Some(3)));
        });
    }

    /// 200 concurrent lookups of one missing key run the fill exactly once, and all see its value.
    #[tokio::test]
    async fn single_flight() {
        let c: Arc<Cache<u32, u32>> = Arc::new(Cache::new(10));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (c, runs) = (c.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_fill(
                    7,
                    || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        42
                    },
                    |_| Duration::from_secs(60),
                )
                .await
                .0
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(c.stats.verifications.load(Ordering::SeqCst), 1);
    }

    /// The filler decides where a value goes: a shared key, or nowhere (not cached).
    #[tokio::test]
    async fn store_elsewhere_or_nowhere() {
        let c: Cache<(u32, Option<u8>), bool> = Cache::new(10);
        let shared = |ok: &bool| ok.then_some(((1, None), Duration::from_secs(60)));
        c.get_or_fill_with((1, Some(7)), || async { true }, shared)
            .await;
        assert_eq!(
            (c.get(&(1, None)), c.get(&(1, Some(7)))),
            (Some(true), None)
        );
        c.get_or_fill_with((2, Some(7)), || async { false }, shared)
            .await;
        assert_eq!(c.len(), 1, "a value the filler did not place is not kept");
        assert_eq!(c.lookup(&(1, None)), Some(true));
        assert_eq!(c.stats.hits.load(Ordering::Relaxed), 1);
    }

    /// The TTL can depend on the value (short for denials).
    #[tokio::test(start_paused = true)]
    async fn ttl_by_value() {
        let c: Cache<u32, bool> = Cache::new(10);
        let ttl = |ok: &bool| {
            if *ok {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs(10)
            }
        };
        c.get_or_fill(1, || async { true }, ttl).await;
        c.get_or_fill(2, || async { false }, ttl).await;
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!((c.get(&1), c.get(&2)), (Some(true), None));
    }
}
