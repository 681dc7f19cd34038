//! Counters the store keeps about its own work, for `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Cheap to clone; all clones count together.
#[derive(Clone, Default)]
pub struct StoreMetrics {
    inner: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    jobs: AtomicU64,
    failed_batches: AtomicU64,
    events: AtomicU64,
}

/// A point-in-time copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMetricsSnapshot {
    /// Committed write transactions (group commits).
    pub transactions: u64,
    /// Write operations committed; `jobs / transactions` is the mean batch.
    pub jobs: u64,
    /// Batches that failed and were retried job by job.
    pub failed_batches: u64,
    /// Events appended.
    pub events: u64,
}

impl StoreMetrics {
    pub(crate) fn committed(&self, jobs: usize, events: usize) {
        let c = &self.inner;
        c.transactions.fetch_add(1, Ordering::Relaxed);
        c.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
        c.events.fetch_add(events as u64, Ordering::Relaxed);
    }

    pub(crate) fn batch_failed(&self) {
        self.inner.failed_batches.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StoreMetricsSnapshot {
        let c = &self.inner;
        StoreMetricsSnapshot {
            transactions: c.transactions.load(Ordering::Relaxed),
            jobs: c.jobs.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
        }
    }
}
