//! The one budget for bytes of intercepted requests buffered at once, across all connections
//! (`max_intercepted_buffer`), and the proxy's counters of its bounded state.
//!
//! A PullImage or CreateContainer body is read whole before the decision; each chunk is taken
//! from the budget before it is kept, and the bytes go back when the buffered request is
//! dropped (after the decision and the forward). A call that would take more than is left is
//! refused: many slow or large requests cannot grow the process past the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

/// Counters of the proxy's bounded state, readable while it runs (see [`super::Proxy::stats`]).
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) budget: Option<Arc<Budget>>,
    pub(crate) unknown_tracked: AtomicUsize,
    pub(crate) refused_over_budget: AtomicU64,
    pub(crate) refused_over_deadline: AtomicU64,
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
}
