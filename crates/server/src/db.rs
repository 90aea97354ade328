//! Stored results, which are both the result cache and the permalinks, in the
//! server's database (the queue's: SQLite in the data directory, or the shared
//! PostgreSQL), through sqlx's Any driver so one set of statements serves both.
//!
//! Stored results are bounded in bytes: past the bound, the least recently used
//! (run, served from cache, or opened by permalink) are dropped, so a permalink
//! lives as long as people keep using it or the store has room.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{AnyPool, Row};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS results (
        key        TEXT PRIMARY KEY,
        request    TEXT NOT NULL,
        result     TEXT NOT NULL,
        cacheable  BIGINT NOT NULL,
        bytes      BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        used_at    BIGINT NOT NULL,
        hits       BIGINT NOT NULL DEFAULT 0
    )",
    "CREATE INDEX IF NOT EXISTS results_used_at ON results (used_at)",
];

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
    pool: AnyPool,
    max_bytes: u64,
    /// Bytes stored, as far as this process knows: counted up on each store and
    /// recounted from the table whenever it passes the bound (other servers
    /// sharing the database store too), so eviction needs no scan per store.
    total_bytes: AtomicI64,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Db {
    /// Creates the results table in `pool`'s database when missing.
    pub async fn open(pool: AnyPool, max_bytes: u64) -> anyhow::Result<Db> {
        for ddl in SCHEMA {
            sqlx::query(ddl).execute(&pool).await?;
        }
        let db = Db {
            pool,
            max_bytes,
            total_bytes: AtomicI64::new(0),
        };
        db.recount().await?;
        Ok(db)
    }

    async fn recount(&self) -> sqlx::Result<i64> {
        let total: i64 =
            sqlx::query("SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS n FROM results")
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        self.total_bytes.store(total, Ordering::Relaxed);
        Ok(total)
    }

    /// The cached result for `key`, if one may be served from cache; counts the hit.
    pub async fn cached(&self, key: &str) -> sqlx::Result<Option<String>> {
        let row = sqlx::query(
            "UPDATE results SET hits = hits + 1, used_at = $1 WHERE key = $2 AND cacheable = 1 \
             RETURNING result",
        )
        .bind(now())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get::<String, _>("result")).transpose()
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
        // One statement: no read-then-write transaction to collide with others.
        sqlx::query(
            "INSERT INTO results (key, request, result, cacheable, bytes, created_at, used_at, hits)
             VALUES ($1, $2, $3, $4, $5, $6, $6, 0)
             ON CONFLICT (key) DO UPDATE SET request = excluded.request, result = excluded.result,
                 cacheable = excluded.cacheable, bytes = excluded.bytes,
                 created_at = excluded.created_at, used_at = excluded.used_at",
        )
        .bind(key)
        .bind(request)
        .bind(result)
        .bind(i64::from(cacheable))
        .bind(bytes)
        .bind(t)
        .execute(&self.pool)
        .await?;
        let total = self.total_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total as u64 > self.max_bytes && self.recount().await? as u64 > self.max_bytes {
            self.evict(key).await?;
        }
        Ok(())
    }

    /// Drops least recently used rows (never `keep`) until under the bound.
    async fn evict(&self, keep: &str) -> sqlx::Result<()> {
        while self.total_bytes.load(Ordering::Relaxed) as u64 > self.max_bytes {
            let victims = sqlx::query(
                "SELECT key, bytes FROM results WHERE key != $1 ORDER BY used_at, created_at LIMIT 64",
            )
            .bind(keep)
            .fetch_all(&self.pool)
            .await?;
            if victims.is_empty() {
                break;
            }
            for v in victims {
                let key: String = v.try_get("key")?;
                let bytes: i64 = v.try_get("bytes")?;
                let gone = sqlx::query("DELETE FROM results WHERE key = $1")
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
            "UPDATE results SET used_at = $1 WHERE key = $2
             RETURNING key, request, result, created_at, hits",
        )
        .bind(now())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(StoredRow {
                key: r.try_get("key")?,
                request: r.try_get("request")?,
                result: r.try_get("result")?,
                created_at: r.try_get("created_at")?,
                hits: r.try_get("hits")?,
            })
        })
        .transpose()
    }

    /// Forgets a stored result; whether it existed.
    pub async fn delete(&self, key: &str) -> sqlx::Result<bool> {
        let row = sqlx::query("DELETE FROM results WHERE key = $1 RETURNING bytes")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(r) = &row {
            self.total_bytes
                .fetch_sub(r.try_get::<i64, _>("bytes")?, Ordering::Relaxed);
        }
        Ok(row.is_some())
    }

    /// Rows and bytes stored.
    pub async fn usage(&self) -> sqlx::Result<(i64, i64)> {
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM results")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok((count, self.total_bytes.load(Ordering::Relaxed)))
    }
}
