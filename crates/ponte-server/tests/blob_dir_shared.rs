//! Nodes of a PostgreSQL service whose blob directories are not one
//! shared directory lose files between them (a file uploaded through one
//! node cannot be downloaded through another): a node that starts so says
//! it, in a warning and on `/healthz`; nodes that share one directory, and
//! a node alone, say nothing of the kind. In-process nodes on a fresh
//! database; skips with a reason when PostgreSQL is not reachable (unless
//! `PONTE_REQUIRE_PG=1`).
#![allow(clippy::unwrap_used)]

mod common;

use common::pg::{self, TestDb};
use common::{http_get, TestServer};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Every log line of this test binary (the tests tell theirs apart by
/// their temp directories, which the warning names).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Log(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The warning lines that name `dir`.
fn warnings_about(dir: &Path) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    let dir = dir.display().to_string();
    text.lines()
        .filter(|l| l.contains("WARN") && l.contains(&dir))
        .map(str::to_owned)
        .collect()
}

/// A node of the service on `db` in `data`, with `blob_dir`, the admin
/// endpoint on; every node but the first gets the first's key.
async fn node(
    db: &TestDb,
    data: &Path,
    blob_dir: Option<PathBuf>,
    first: Option<&Path>,
) -> TestServer {
    std::fs::create_dir_all(data).unwrap();
    if let Some(first) = first {
        std::fs::copy(first.join("server.key"), data.join("server.key")).unwrap();
    }
    let url = db.url.clone();
    TestServer::start_with_admin(
        data,
        |c| {
            c.store = Some(url);
            c.blob_dir = blob_dir;
        },
        true,
    )
    .await
}

async fn healthz(node: &TestServer) -> String {
    http_get(node.admin.unwrap(), "/healthz").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_blob_directory_is_not_shared_says_so() {
    logs();
    if !pg::reachable() {
        return;
    }
    let db = TestDb::create();
    let root = tempfile::tempdir().unwrap();
    let (d1, d2) = (root.path().join("node1"), root.path().join("node2"));
    // The first node is alone: nothing to warn about.
    let one = node(&db, &d1, None, None).await;
    let h = healthz(&one).await;
    assert!(h.contains("200 OK") && !h.contains("blob_dir"), "{h}");
    assert!(warnings_about(&d1).is_empty(), "{:?}", warnings_about(&d1));

    // The second keeps its files in its own data directory.
    let two = node(&db, &d2, None, Some(&d1)).await;
    let h = healthz(&two).await;
    assert!(h.contains("200 OK"), "{h}");
    assert!(
        h.contains(&format!(
            "blob_dir: not shared: the blob directory {} is not shared with the service's \
             other nodes (blob_dir is not set",
            d2.join("blobs").display()
        )),
        "{h}"
    );
    let w = warnings_about(&d2);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("a file uploaded through one node cannot be downloaded through another"),
        "{w:?}"
    );
    assert!(
        w[0].contains("Set blob_dir (--blob-dir) on every node"),
        "{w:?}"
    );

    // A third with a blob_dir of its own (not the others'): the same.
    let d3 = root.path().join("node3");
    let own = root.path().join("node3-blobs");
    let three = node(&db, &d3, Some(own.clone()), Some(&d1)).await;
    let h = healthz(&three).await;
    assert!(
        h.contains("blob_dir is not the directory the service's other nodes use"),
        "{h}"
    );
    assert_eq!(warnings_about(&own).len(), 1, "{:?}", warnings_about(&own));
    for n in [one, two, three] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_one_blob_directory_say_nothing() {
    logs();
    if !pg::reachable() {
        return;
    }
    let db = TestDb::create();
    let root = tempfile::tempdir().unwrap();
    let shared = root.path().join("shared-blobs");
    let (d1, d2) = (root.path().join("node1"), root.path().join("node2"));
    let one = node(&db, &d1, Some(shared.clone()), None).await;
    let two = node(&db, &d2, Some(shared.clone()), Some(&d1)).await;
    // A restart of the first finds the same directory.
    one.stop().await;
    let one = node(&db, &d1, Some(shared.clone()), None).await;
    for n in [&one, &two] {
        let h = healthz(n).await;
        assert!(h.contains("200 OK") && !h.contains("blob_dir"), "{h}");
    }
    assert!(shared.join(ponte_server::blobs::MARKER_FILE).is_file());
    for dir in [&shared, &d1, &d2] {
        assert!(warnings_about(dir).is_empty(), "{:?}", warnings_about(dir));
    }
    one.stop().await;
    two.stop().await;
}
