//! PostgreSQL for tests: a fresh database per test, created as `postgres`
//! through the `test` database (or `PONTE_TEST_PG`) and dropped when its
//! guard is (also when the test fails). Without a reachable PostgreSQL the
//! tests say why and pass, unless `PONTE_REQUIRE_PG=1` (CI) makes that a
//! failure.
#![allow(clippy::unwrap_used)]

use std::future::Future;

/// The file in a scratch directory that holds its database's address.
pub const URL_FILE: &str = "pg-url";

/// The address the tests connect to for creating and dropping databases.
pub fn admin_url() -> String {
    std::env::var("PONTE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `f` on a runtime of its own on a thread of its own (so that it
/// works from inside a test's runtime and from `Drop`).
fn on_own_thread<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
}

/// `e` with its causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// A connection to `url` (its driver task spawned on the current runtime),
/// through the store's TLS settings (`sslmode` and the rest in the URL).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    ponte_server::store::pg::connect(url)
        .await
        .map_err(|e| chain(&e))
}

/// Whether PostgreSQL is there. When it is not: with `PONTE_REQUIRE_PG=1`
/// this panics, otherwise it prints why the test skips.
pub fn reachable() -> bool {
    let url = admin_url();
    let probe = url.clone();
    let result = on_own_thread(async move {
        let c = connect(&probe).await?;
        c.simple_query("SELECT 1").await.map_err(|e| chain(&e))?;
        Ok::<_, String>(())
    });
    match result {
        Ok(()) => true,
        Err(e) if std::env::var("PONTE_REQUIRE_PG").as_deref() == Ok("1") => {
            panic!("PostgreSQL at {url} is required (PONTE_REQUIRE_PG=1) but not reachable: {e}")
        }
        Err(e) => {
            eprintln!(
                "skipped: PostgreSQL at {url} is not reachable ({e}); \
                 set PONTE_TEST_PG to its address, or PONTE_REQUIRE_PG=1 to fail instead"
            );
            false
        }
    }
}

/// A database of one test's own, dropped with this guard.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    /// Its address.
    pub url: String,
}

impl TestDb {
    /// Creates `ponte_test_<random>`.
    pub fn create() -> Self {
        let name = format!("ponte_test_{:016x}", rand::random::<u64>());
        let admin = admin_url();
        let stmt = format!("CREATE DATABASE {name}");
        on_own_thread(async move {
            let c = connect(&admin).await.unwrap();
            c.batch_execute(&stmt).await.unwrap();
        });
        // The admin address with this database, its parameters (sslmode,
        // sslrootcert=/a/path) kept.
        let base = admin_url();
        let (base, query) = base.split_once('?').unwrap_or((&base, ""));
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let q = if query.is_empty() { "" } else { "?" };
        let url = format!("{prefix}/{name}{q}{query}");
        Self { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = admin_url();
        let stmt = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = on_own_thread(async move {
            let c = connect(&admin).await?;
            c.batch_execute(&stmt).await.map_err(|e| chain(&e))
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
