use agentd_core::IllegalTransition;

/// What a store call can fail with. Domain outcomes (a taken id, a lost lease)
/// are their own variants so callers never inspect messages.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session already exists")]
    SessionExists,
    #[error("session not found")]
    SessionNotFound,
    #[error("idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    /// The run was claimed by another worker (or finished): stop writing.
    #[error("lease lost")]
    LeaseLost,
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// The database is unreachable or failed; the request may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    /// The embedded database failed under rusqlite, i.e. the writer or an
    /// inline read (a full disk, an I/O error).
    #[error("store unavailable: {0}")]
    Sqlite(rusqlite::Error),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// A write op reports a row it cannot decode as a conversion failure carrying
/// the [`StoreError`] (see `sqlite::ops::corrupt`); it comes back out here.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::FromSqlConversionFailure(column, kind, inner) => {
                match inner.downcast::<StoreError>() {
                    Ok(store) => *store,
                    Err(inner) => StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
                        column, kind, inner,
                    )),
                }
            }
            e => StoreError::Sqlite(e),
        }
    }
}
