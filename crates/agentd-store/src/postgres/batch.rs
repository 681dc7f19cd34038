//! What the writer keeps for one transaction: the database clock read at its
//! start, and event rows of plain appends not yet written.
//!
//! A plain append fences and allocates its seqs with one UPDATE of the run
//! row (which also locks it until the commit), then leaves its rows here, so
//! the appends of one batch cost one multi-row INSERT per 1000 rows. Every
//! other job flushes first, so it reads the log as the appends left it.

use agentd_core::{Event, TenantId};
use sqlx::{PgConnection, Postgres, QueryBuilder};

/// Rows per INSERT (6 parameters each), well under PostgreSQL's 65535.
const EVENT_ROWS_PER_INSERT: usize = 1000;

/// The SQL for "now" in milliseconds, on the database's clock: every node
/// compares lease times on this one clock, so their own clocks may drift.
pub(crate) const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

#[derive(Default)]
pub(crate) struct Ctx {
    /// The database clock when the transaction began (milliseconds).
    pub now: i64,
    /// Deferred rows, in append order.
    events: Vec<PendingRow>,
}

impl Ctx {
    /// Reads the database clock for the batch's timestamps and leases.
    pub async fn start(&mut self, c: &mut PgConnection) -> sqlx::Result<()> {
        let (now,): (i64,) = sqlx::query_as(&format!("SELECT {DB_NOW_MS}"))
            .fetch_one(c)
            .await?;
        self.now = now;
        self.events.clear();
        Ok(())
    }

    /// Queues `events` (seqs already allocated on the run row) for the flush.
    pub fn defer(&mut self, tenant: &TenantId, events: &[Event]) {
        self.events.extend(events.iter().map(|e| PendingRow {
            event: e.clone(),
            tenant: tenant.clone(),
        }));
    }

    /// Writes the deferred rows.
    pub async fn flush(&mut self, c: &mut PgConnection) -> sqlx::Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        for chunk in self.events.chunks(EVENT_ROWS_PER_INSERT) {
            let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO run_events (run_id, seq, tenant_id, type, payload, created_at) ",
            );
            qb.push_values(chunk, |mut b, row| {
                let e = &row.event;
                b.push_bind(&e.run_id)
                    .push_bind(e.seq)
                    .push_bind(row.tenant.as_str())
                    .push_bind(e.kind.as_str())
                    .push_bind(&**e.json())
                    .push_bind(e.created_at);
            });
            qb.build().execute(&mut *c).await?;
        }
        self.events.clear();
        Ok(())
    }
}

/// An event row waiting for the flush: the event (its payload text
/// included, shared, not copied) and its run's tenant.
struct PendingRow {
    event: Event,
    tenant: TenantId,
}
