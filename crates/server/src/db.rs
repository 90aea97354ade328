//! The server's database: stored results, which are both the result cache and the
//! permalinks. SQLite in the data directory (WAL mode), through sqlx.
//!
//! Stored results are bounded in bytes: past the bound, the least recently used
//! (run, served from cache, or opened by permalink) are dropped, so a permalink
//! lives as long as people keep using it or the store has room.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS results (
    key        TEXT PRIMARY KEY,
    request    TEXT NOT NULL,
    result     TEXT NOT NULL,
    cacheable  INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    used_at    INTEGER NOT NULL,
    hits       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS results_used_at ON results (used_at);
";

/// A stored result as the database has it (JSON texts).
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub key: String,
    pub request: String,
    pub result: String,
    pub created_at: i64,
    pub hits: i64,
}

#[derive(Debug)]
pub struct Db {
    pool: SqlitePool,
    max_bytes: u64,
    /// Sum of `bytes` over all rows, kept here so eviction needs no table scan.
    total_bytes: AtomicI64,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Db {
    /// Opens (creating) `path`, checking the schema version.
    pub async fn open(path: &Path, max_bytes: u64) -> anyhow::Result<Db> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| anyhow::anyhow!("opening the database {}: {e}", path.display()))?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&pool)
            .await?;
        if version > SCHEMA_VERSION {
            anyhow::bail!(
                "the database {} has schema version {version}, newer than this runbox's {SCHEMA_VERSION}: use a newer runbox or another --data-dir",
                path.display()
            );
        }
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        sqlx::raw_sql(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .execute(&pool)
            .await?;
        let total: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(bytes), 0) FROM results")
            .fetch_one(&pool)
            .await?;
        Ok(Db {
            pool,
            max_bytes,
            total_bytes: AtomicI64::new(total),
        })
    }

    /// The cached result for `key`, if one may be served from cache; counts the hit.
    pub async fn cached(&self, key: &str) -> sqlx::Result<Option<String>> {
        let row = sqlx::query(
            "UPDATE results SET hits = hits + 1, used_at = ?1 WHERE key = ?2 AND cacheable = 1 RETURNING result",
        )
        .bind(now())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    /// Stores (or replaces) the result for `key` with the request that made it,
    /// then drops the least recently used results while over the byte bound.
    pub async fn store(
        &self,
        key: &str,
        request: &str,
        result: &str,
        cacheable: bool,
    ) -> sqlx::Result<()> {
        let bytes = (key.len() + request.len() + result.len()) as i64;
        let t = now();
        let mut tx = self.pool.begin().await?;
        let old: Option<i64> = sqlx::query_scalar("SELECT bytes FROM results WHERE key = ?1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO results (key, request, result, cacheable, bytes, created_at, used_at, hits)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 0)
             ON CONFLICT (key) DO UPDATE SET request = excluded.request, result = excluded.result,
                 cacheable = excluded.cacheable, bytes = excluded.bytes,
                 created_at = excluded.created_at, used_at = excluded.used_at",
        )
        .bind(key)
        .bind(request)
        .bind(result)
        .bind(cacheable)
        .bind(bytes)
        .bind(t)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.total_bytes
            .fetch_add(bytes - old.unwrap_or(0), Ordering::Relaxed);
        self.evict(key).await
    }

    /// Drops least recently used rows (never `keep`) until under the bound.
    async fn evict(&self, keep: &str) -> sqlx::Result<()> {
        while self.total_bytes.load(Ordering::Relaxed) as u64 > self.max_bytes {
            let victims: Vec<(String, i64)> = sqlx::query_as(
                "SELECT key, bytes FROM results WHERE key != ?1 ORDER BY used_at, created_at LIMIT 64",
            )
            .bind(keep)
            .fetch_all(&self.pool)
            .await?;
            if victims.is_empty() {
                break;
            }
            for (key, bytes) in victims {
                let gone = sqlx::query("DELETE FROM results WHERE key = ?1")
                    .bind(&key)
                    .execute(&self.pool)
                    .await?;
                if gone.rows_affected() > 0 {
                    self.total_bytes.fetch_sub(bytes, Ordering::Relaxed);
                }
                if self.total_bytes.load(Ordering::Relaxed) as u64 <= self.max_bytes {
                    break;
                }
            }
        }
        Ok(())
    }

    /// A stored result by key (for permalinks); marks it used.
    pub async fn get(&self, key: &str) -> sqlx::Result<Option<StoredRow>> {
        let row = sqlx::query(
            "UPDATE results SET used_at = ?1 WHERE key = ?2
             RETURNING key, request, result, created_at, hits",
        )
        .bind(now())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| StoredRow {
            key: r.get(0),
            request: r.get(1),
            result: r.get(2),
            created_at: r.get(3),
            hits: r.get(4),
        }))
    }

    /// Forgets a stored result; whether it existed.
    pub async fn delete(&self, key: &str) -> sqlx::Result<bool> {
        let bytes: Option<i64> =
            sqlx::query_scalar("DELETE FROM results WHERE key = ?1 RETURNING bytes")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(b) = bytes {
            self.total_bytes.fetch_sub(b, Ordering::Relaxed);
        }
        Ok(bytes.is_some())
    }

    /// Rows and bytes stored.
    pub async fn usage(&self) -> sqlx::Result<(i64, i64)> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM results")
            .fetch_one(&self.pool)
            .await?;
        Ok((count, self.total_bytes.load(Ordering::Relaxed)))
    }
}
