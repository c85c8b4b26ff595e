//! The one budget for bytes of intercepted requests buffered at once, across all connections
//! (`max_intercepted_buffer`), and the proxy's counters: its bounded state, calls and errors
//! per CRI method, and connections to the runtime (the hook metrics read, [`Stats`]).
//!
//! A PullImage or CreateContainer body is read whole before the decision; each chunk is taken
//! from the budget before it is kept, and the bytes go back when the buffered request is
//! dropped (after the decision and the forward). A call that would take more than is left is
//! refused: many slow or large requests cannot grow the process past the budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::cri::KNOWN_METHODS;
use crate::metrics::METRICS;

/// Bytes of intercepted requests buffered now, against a maximum.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            max,
        })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Bytes taken now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` more bytes into `held`, or returns false (and takes nothing) if that would
    /// go over the maximum.
    pub(crate) fn take(self: &Arc<Self>, held: &mut Held, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(n).filter(|v| *v <= self.max) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        held.bytes += n;
        true
    }
}

/// Bytes taken from a [`Budget`]; they go back when this is dropped.
#[derive(Debug)]
pub(crate) struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Held {
    pub(crate) fn new(budget: &Arc<Budget>) -> Held {
        Held {
            budget: budget.clone(),
            bytes: 0,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The index of a gRPC path in [`KNOWN_METHODS`], or `KNOWN_METHODS.len()` for any other path:
/// what the per-method metrics take ([`crate::metrics::Metrics::relayed`]).
pub fn method_index(path: &[u8]) -> usize {
    static INDEX: OnceLock<HashMap<&'static [u8], usize>> = OnceLock::new();
    let index = INDEX.get_or_init(|| {
        KNOWN_METHODS
            .iter()
            .enumerate()
            .map(|(i, m)| (m.as_bytes(), i))
            .collect()
    });
    index.get(path).copied().unwrap_or(KNOWN_METHODS.len())
}

/// Counters of the proxy, readable while it runs (see [`super::Proxy::stats`]): bounded state
/// and refusals. All are relaxed atomics, bumped where the event happens. Calls and errors per
/// CRI method and connections to the runtime are counted once, in the process's metrics
/// ([`crate::metrics::METRICS`]), through the `count_*` hooks below.
#[derive(Debug)]
pub struct Stats {
    pub(crate) budget: Option<Arc<Budget>>,
    pub(crate) unknown_tracked: AtomicUsize,
    pub(crate) refused_over_budget: AtomicU64,
    pub(crate) refused_over_deadline: AtomicU64,
    pub(crate) upstream_lost: AtomicU64,
    pub(crate) refused_connections: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            budget: None,
            unknown_tracked: AtomicUsize::new(0),
            refused_over_budget: AtomicU64::new(0),
            refused_over_deadline: AtomicU64::new(0),
            upstream_lost: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Bytes of intercepted requests buffered right now.
    pub fn intercepted_bytes_buffered(&self) -> usize {
        self.budget.as_ref().map_or(0, |b| b.used())
    }

    /// Distinct unknown `runtime.v1` methods remembered (to log each once); bounded.
    pub fn unknown_methods_tracked(&self) -> usize {
        self.unknown_tracked.load(Ordering::Relaxed)
    }

    /// Intercepted calls refused because the buffer budget was used up.
    pub fn refused_over_budget(&self) -> u64 {
        self.refused_over_budget.load(Ordering::Relaxed)
    }

    /// Intercepted calls refused because the request did not arrive in time.
    pub fn refused_over_deadline(&self) -> u64 {
        self.refused_over_deadline.load(Ordering::Relaxed)
    }

    /// Relayed runtime connections that broke or were closed by the runtime while in use.
    pub fn upstream_lost(&self) -> u64 {
        self.upstream_lost.load(Ordering::Relaxed)
    }

    /// Client connections refused because `max_connections` were being served.
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn count_call(&self, method: usize) {
        METRICS.relayed(method);
    }

    #[inline]
    pub(crate) fn count_error(&self, method: usize) {
        METRICS.relay_failed(method);
    }

    pub(crate) fn count_connect(&self, ok: bool) {
        METRICS.upstream_connect(ok);
    }

    pub(crate) fn count_lost(&self) {
        self.upstream_lost.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes never exceed the maximum, and dropping a holder gives its bytes back.
    #[test]
    fn take_and_give_back() {
        let b = Budget::new(100);
        let mut a = Held::new(&b);
        assert!(b.take(&mut a, 60));
        let mut c = Held::new(&b);
        assert!(!b.take(&mut c, 41));
        assert!(b.take(&mut c, 40));
        assert_eq!(b.used(), 100);
        assert!(!b.take(&mut c, 1));
        drop(a);
        assert_eq!(b.used(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
        assert!(!b.take(&mut Held::new(&b), usize::MAX));
    }

    /// Known methods have their own index; anything else shares the one past them.
    #[test]
    fn method_indexes() {
        let v = method_index(b"/runtime.v1.RuntimeService/Version");
        assert_eq!(KNOWN_METHODS[v], "/runtime.v1.RuntimeService/Version");
        assert_eq!(method_index(b"/runtime.v1.X/Y"), KNOWN_METHODS.len());
    }
}
