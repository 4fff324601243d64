//! The job store: [`Store`], the one interface (in `interface`), and [`open`], which picks the
//! engine from a location: a file path (or `:memory:`) for SQLite, a `postgresql://` DSN for
//! PostgreSQL. Each engine only has its SQL (migrations as `.sql` files under `migrations/`,
//! one version sequence); the `ledger` keeps what both count the same way.

mod interface;
mod ledger;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use crate::error::Error;

pub use crate::postgres::{is_postgres, redact};
pub(crate) use interface::{check_unique, check_version};
pub use interface::{Store, StoreFuture, SCHEMA_VERSION};

/// Open the store at `location`: a `postgresql://` DSN, or a SQLite file path (`:memory:`
/// for a store in memory only).
pub async fn open(location: &str) -> Result<Arc<dyn Store>, Error> {
    if is_postgres(location) {
        Ok(Arc::new(postgres::PgStore::open(location).await?))
    } else {
        let path = location.to_string();
        let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&path))
            .await
            .map_err(|e| Error::Store {
                operation: "opening the store",
                message: e.to_string(),
            })??;
        Ok(Arc::new(store))
    }
}
