//! The queue's tables. Column types are the portable subset (TEXT, BIGINT;
//! booleans as 0/1) so one set of statements serves SQLite and PostgreSQL.

use sqlx::{AnyPool, Row};

use crate::{Dialect, QueueError, Result};

/// Bumped on any incompatible change; a database of another version is refused
/// rather than misread.
pub const SCHEMA_VERSION: i64 = 1;

const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS runbox_queue_meta (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS jobs (
        id               TEXT PRIMARY KEY,
        cache_key        TEXT NOT NULL,
        request          TEXT NOT NULL,
        requires         TEXT NOT NULL,
        state            TEXT NOT NULL,
        attempts         BIGINT NOT NULL,
        max_attempts     BIGINT NOT NULL,
        worker_id        TEXT,
        lease_id         TEXT,
        lease_expires_ms BIGINT,
        cancel_requested BIGINT NOT NULL,
        created_ms       BIGINT NOT NULL,
        claimed_ms       BIGINT,
        started_ms       BIGINT,
        finished_ms      BIGINT,
        result           TEXT,
        error            TEXT
    )",
    "CREATE INDEX IF NOT EXISTS jobs_by_state_age ON jobs (state, created_ms, id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_lease ON jobs (state, lease_expires_ms)",
    "CREATE TABLE IF NOT EXISTS workers (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,
        token_hash   TEXT NOT NULL UNIQUE,
        created_ms   BIGINT NOT NULL,
        revoked_ms   BIGINT,
        last_seen_ms BIGINT,
        capabilities TEXT
    )",
];

/// Creates the tables when missing and checks the version of existing ones.
/// Several servers may start at once against one PostgreSQL: the DDL is
/// idempotent and the version row is inserted only if absent.
pub async fn migrate(pool: &AnyPool, dialect: Dialect) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let found = match dialect {
        Dialect::Postgres => {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            // Serializes concurrent first starts (CREATE TABLE IF NOT EXISTS can
            // still collide on the catalog's unique index otherwise).
            sqlx::query("SELECT pg_advisory_xact_lock(7317001)")
                .execute(&mut *tx)
                .await?;
            let found = create(&mut tx).await?;
            tx.commit().await?;
            found
        }
        // Each statement is idempotent and commits on its own: a deferred
        // transaction that read the schema and then wrote would fail outright
        // (SQLITE_BUSY_SNAPSHOT) when another process opened the queue at the
        // same moment, while a lone statement waits its turn (busy_timeout).
        Dialect::Sqlite => create(&mut conn).await?,
    };
    if found != SCHEMA_VERSION.to_string() {
        return Err(QueueError::Schema(format!(
            "has schema version {found}; this runbox uses version {SCHEMA_VERSION} \
             (use the runbox that made it, or a new database)"
        )));
    }
    Ok(())
}

/// Creates what is missing; returns the stored schema version.
async fn create(conn: &mut sqlx::AnyConnection) -> Result<String> {
    for ddl in TABLES {
        sqlx::query(ddl).execute(&mut *conn).await?;
    }
    sqlx::query(
        "INSERT INTO runbox_queue_meta (name, value) VALUES ('schema_version', $1) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(SCHEMA_VERSION.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(
        sqlx::query("SELECT value FROM runbox_queue_meta WHERE name = 'schema_version'")
            .fetch_one(&mut *conn)
            .await?
            .try_get("value")?,
    )
}
