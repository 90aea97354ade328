//! `scripts/postgres` and [`TestPostgres`] against the real server: queries
//! through sqlx, isolated fresh databases, and nothing left running or on disk
//! after a drop or after the owning process is killed.

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};

use runbox_testkit::postgres::TestPostgres;
use sqlx::{Connection, PgConnection};

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Whether a table of that name exists in the connection's database.
async fn has_table(conn: &mut PgConnection, table: &str) -> bool {
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(table)
        .fetch_one(conn)
        .await
        .unwrap();
    found.is_some()
}

fn assert_nothing_listens(port: u16) {
    match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "port {port}: {e}"),
        Ok(_) => panic!("something still listens on 127.0.0.1:{port}"),
    }
}

#[tokio::test]
async fn query_fresh_databases_and_stop_on_drop() {
    let pg = TestPostgres::start();
    assert_eq!(
        pg.url,
        format!("postgres://postgres@127.0.0.1:{}/runbox", pg.port())
    );

    let mut conn = connect(&pg.url).await;
    sqlx::query("CREATE TABLE jobs (id BIGINT PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO jobs (id, name) VALUES ($1, $2)")
        .bind(7_i64)
        .bind("hello")
        .execute(&mut conn)
        .await
        .unwrap();
    let row: (i64, String) = sqlx::query_as("SELECT id, name FROM jobs")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row, (7, "hello".to_owned()));

    // Two fresh databases: empty, and what one holds the other does not see.
    let a = pg.fresh_database("isolation");
    let b = pg.fresh_database("isolation");
    assert_ne!(a, b);
    let mut conn_a = connect(&a).await;
    let mut conn_b = connect(&b).await;
    assert!(!has_table(&mut conn_a, "jobs").await, "{a} is not empty");
    sqlx::query("CREATE TABLE only_in_a (x INT)")
        .execute(&mut conn_a)
        .await
        .unwrap();
    assert!(has_table(&mut conn_a, "only_in_a").await);
    assert!(!has_table(&mut conn_b, "only_in_a").await);
    assert!(!has_table(&mut conn, "only_in_a").await);
    for (url, conn) in [(&a, &mut conn_a), (&b, &mut conn_b)] {
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(conn)
            .await
            .unwrap();
        assert!(
            url.ends_with(&format!("/{name}")),
            "{url} is database {name}"
        );
    }
    for c in [conn, conn_a, conn_b] {
        c.close().await.unwrap();
    }

    let port = pg.port();
    let dir = pg.dir().to_path_buf();
    drop(pg);
    assert_nothing_listens(port);
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[tokio::test]
async fn shared_cluster_gives_each_caller_its_own_database() {
    let pg = TestPostgres::shared();
    assert!(std::ptr::eq(pg, TestPostgres::shared()));
    // Concurrent callers, as parallel tests are.
    let urls: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| pg.fresh_database("Shared-Test!")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(urls.iter().collect::<HashSet<_>>().len(), urls.len());
    for url in &urls {
        assert!(url.contains("/shared_test__"), "{url}");
        let mut conn = connect(url).await;
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(one, 1);
        conn.close().await.unwrap();
    }
}

/// The watchdog of `start --watch-stdin` stops the cluster and removes its
/// directory when the process holding its stdin is SIGKILLed: here a `sleep`
/// stands in for a test process that dies without running any cleanup.
#[test]
fn watchdog_stops_the_cluster_when_its_owner_is_killed() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("pg");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    // The pipe's write end goes to `sleep`; this process keeps only the read
    // end, which it hands to the script and closes.
    let mut owner = Command::new("sleep")
        .arg("600")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut start = Command::new(&script)
        .arg("start")
        .arg("--watch-stdin")
        .arg(&dir)
        .stdin(owner.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    start
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut url)
        .unwrap();
    // The watchdog inherits the script's stderr and holds it until it is done.
    let mut stderr = start.stderr.take().unwrap();
    assert!(start.wait().unwrap().success());
    let port: u16 = url
        .trim()
        .strip_prefix("postgres://postgres@127.0.0.1:")
        .and_then(|rest| rest.strip_suffix("/runbox"))
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("not the URL expected: {url:?}"));
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("the server listens");
    assert!(dir.join("data").is_dir());

    owner.kill().unwrap();
    owner.wait().unwrap();
    let mut messages = String::new();
    stderr.read_to_string(&mut messages).unwrap();
    assert_eq!(messages, "", "the watchdog complained");
    assert_nothing_listens(port);
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
