//! TLS to PostgreSQL with real servers: a test-owned PostgreSQL with
//! `ssl = on` and a certificate for `localhost` issued by a test CA (made
//! here with rcgen), and one with `ssl = off`. Each `sslmode` is tried
//! against them through the store's own connector: what must connect
//! connects (over TLS where it must: `pg_stat_ssl` says so), what must not
//! fails saying where and why. Skips with a reason when PostgreSQL's
//! binaries are not installed (unless `PONTE_REQUIRE_PG=1`).
#![allow(clippy::unwrap_used)]

mod common;

use common::own_pg::OwnPg;
use common::{registered, Client, Device, TestServer};
use ponte_server::store::pg::{self, PgStore};
use ponte_server::store::{Store as _, StoreError};
use ponte_wire::messages::server_frame;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// `e` with its causes.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    ponte_wire::diag::Report(e).to_string()
}

/// A CA: its certificate (PEM) and what signs with it.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A leaf for `names` (DNS) with common name `cn`, for `usage`:
    /// (certificate PEM, key PEM).
    fn issue(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes its certificate to `path`.
    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).unwrap();
        path.to_owned()
    }
}

/// Writes a private key `pem` to `path`, mode 0600 (PostgreSQL and libpq
/// refuse a key others can read).
fn write_key(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Whether the session behind `client` is encrypted.
async fn over_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The error of connecting to `url` through the store's connector.
async fn refused(url: &str) -> String {
    match pg::connect(url).await {
        Ok(_) => panic!("{url} connected"),
        Err(e) => chain(&e),
    }
}

/// The PostgreSQL with TLS (certificate for `localhost` only, so that
/// 127.0.0.1 is a name it is not valid for), which also takes a client
/// certificate for role `certuser`.
struct TlsPg {
    pg: OwnPg,
    ca_file: PathBuf,
    wrong_ca_file: PathBuf,
    client: (PathBuf, PathBuf),
    _tmp: tempfile::TempDir,
}

fn tls_pg() -> TlsPg {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("ponte test CA");
    let dir = tmp.path().join("pg");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ca.issue(
        "localhost",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_file, cert).unwrap();
    write_key(&key_file, &key);
    let server_ca = ca.write(&dir.join("ca.crt"));
    let hba = "local all all trust\n\
               hostssl all certuser 127.0.0.1/32 cert\n\
               host all all 127.0.0.1/32 trust\n";
    let settings = [
        ("ssl", "on".to_owned()),
        ("ssl_cert_file", cert_file.display().to_string()),
        ("ssl_key_file", key_file.display().to_string()),
        ("ssl_ca_file", server_ca.display().to_string()),
    ];
    let pg = OwnPg::start(&dir, hba, &settings);
    let ca_file = ca.write(&tmp.path().join("ca.pem"));
    let wrong_ca_file = Ca::new("some other CA").write(&tmp.path().join("wrong-ca.pem"));
    let (cert, key) = ca.issue("certuser", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let client = (tmp.path().join("client.crt"), tmp.path().join("client.key"));
    std::fs::write(&client.0, cert).unwrap();
    write_key(&client.1, &key);
    TlsPg {
        pg,
        ca_file,
        wrong_ca_file,
        client,
        _tmp: tmp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_against_a_postgresql_with_tls() {
    if !OwnPg::available() {
        return;
    }
    let t = tls_pg();
    let ca = t.ca_file.display().to_string();
    let wrong = t.wrong_ca_file.display().to_string();
    let url = |host: &str, params: &str| t.pg.url("postgres", host, "postgres", params);

    // verify-full with the right CA, on the name the certificate is for.
    let c = pg::connect(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap();
    assert!(over_tls(&c).await);
    c.batch_execute("CREATE ROLE certuser LOGIN").await.unwrap();

    // verify-full with another CA: not trusted, said so, with where.
    let e = refused(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={wrong}"),
    ))
    .await;
    let at = format!("PostgreSQL at localhost:{}", t.pg.port);
    assert!(e.starts_with(&at), "{e}");
    assert!(
        e.contains("presented a certificate that is not trusted"),
        "{e}"
    );
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert!(e.contains(&format!("sslrootcert={wrong}")), "{e}");
    assert!(e.contains("(sslmode=verify-full)"), "{e}");

    // verify-full on an address the certificate is not for: refused;
    // verify-ca checks the issuer only and connects.
    let e = refused(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(
        e.contains(&format!(
            "PostgreSQL at 127.0.0.1:{} presented a certificate that is not valid for the host name",
            t.pg.port
        )),
        "{e}"
    );
    let c = pg::connect(&url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .await
    .unwrap();
    assert!(over_tls(&c).await);
    let e = refused(&url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={wrong}"),
    ))
    .await;
    assert!(e.contains("not trusted"), "{e}");

    // require: TLS without a check (as libpq); with sslrootcert it checks
    // the issuer (as libpq does).
    let c = pg::connect(&url("127.0.0.1", "sslmode=require"))
        .await
        .unwrap();
    assert!(over_tls(&c).await);
    let e = refused(&url(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={wrong}"),
    ))
    .await;
    assert!(
        e.contains("not trusted") && e.contains("(sslmode=require)"),
        "{e}"
    );

    // prefer (and no sslmode, libpq's default) take the TLS offered;
    // disable does not.
    for params in ["sslmode=prefer", ""] {
        let c = pg::connect(&url("127.0.0.1", params)).await.unwrap();
        assert!(over_tls(&c).await, "{params}");
    }
    let c = pg::connect(&url("127.0.0.1", "sslmode=disable"))
        .await
        .unwrap();
    assert!(!over_tls(&c).await);

    // A client certificate: `certuser` may only log in with one.
    let cert_url = |extra: &str| {
        t.pg.url(
            "certuser",
            "localhost",
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}{extra}"),
        )
    };
    let e = refused(&cert_url("")).await;
    assert!(e.contains("certificate"), "{e}");
    let with_cert = cert_url(&format!(
        "&sslcert={}&sslkey={}",
        t.client.0.display(),
        t.client.1.display()
    ));
    let c = pg::connect(&with_cert).await.unwrap();
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "certuser");
}

/// The store itself over verify-full: `init`'s migration, a write and a
/// read; then a server node on it, with a message from one client to
/// another; and the store refusing the wrong CA with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_postgresql_over_verify_full() {
    if !OwnPg::available() {
        return;
    }
    let t = tls_pg();
    let ca = t.ca_file.display().to_string();
    let url = t.pg.url(
        "postgres",
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );

    // What `ponte server init --store` and `invite --store` do.
    pg::migrate(&url).unwrap();
    assert!(!pg::create_invite(&url, common::at(1)).unwrap().is_empty());

    // The store: a write, and a read of it.
    let u = url.clone();
    let store = tokio::task::spawn_blocking(move || PgStore::open(&u))
        .await
        .unwrap()
        .unwrap();
    let id = common::store_account(&store, "tls-alice", 3).await;
    let info = store
        .account_by_handle("tls-alice".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.id, id);
    store.close();

    let wrong = t.pg.url(
        "postgres",
        "localhost",
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            t.wrong_ca_file.display()
        ),
    );
    let e = tokio::task::spawn_blocking(move || PgStore::open(&wrong))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, StoreError::Postgres(_)), "{e:?}");
    let e = chain(&e);
    assert!(
        e.contains("presented a certificate that is not trusted"),
        "{e}"
    );

    // A node: bob registers, alice sends, bob receives.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| c.store = Some(url.clone())).await;
    let bob_dev = Device::new();
    let mut bob = Client::connect(&server, &bob_dev).await;
    assert!(matches!(
        bob.register("bob").await,
        server_frame::Body::Registered(_)
    ));
    let mut alice = registered(&server, "alice").await;
    let r = alice
        .send_msg("bob", [1; 16], b"over TLS to PostgreSQL")
        .await;
    assert!(matches!(r, server_frame::Body::SendAck(_)), "{r:?}");
    let d = bob.next_deliver().await;
    assert_eq!(&d.body[..], b"over TLS to PostgreSQL");
    assert_eq!(d.sender, "alice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_against_a_postgresql_without_tls() {
    if !OwnPg::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pg = OwnPg::start(
        &tmp.path().join("pg"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
        &[("ssl", "off".to_owned())],
    );
    let url = |params: &str| pg.url("postgres", "127.0.0.1", "postgres", params);
    let at = format!("PostgreSQL at 127.0.0.1:{}", pg.port);
    for mode in ["require", "verify-ca", "verify-full"] {
        let e = refused(&url(&format!("sslmode={mode}"))).await;
        assert!(
            e.starts_with(&format!("{at} refused TLS (sslmode={mode})")),
            "{e}"
        );
    }
    // And so says the store, when a node or `init` starts on it.
    let u = url("sslmode=require");
    let e = chain(&pg::migrate(&u).unwrap_err());
    assert!(
        e.starts_with(&format!("{at} refused TLS (sslmode=require)")),
        "{e}"
    );
    // prefer falls back to plain, as libpq's default does.
    for params in ["sslmode=prefer", "", "sslmode=disable"] {
        let c = pg::connect(&url(params)).await.unwrap();
        assert!(!over_tls(&c).await, "{params}");
    }
    pg::migrate(&url("sslmode=prefer")).unwrap();
}

/// An sslmode libpq does not know, or this server does not support, is
/// refused before anything connects, naming the value.
#[tokio::test]
async fn an_unknown_sslmode_is_refused_by_name() {
    let e =
        chain(&pg::migrate("postgres://p@127.0.0.1:1/d?sslmode=verify-everything").unwrap_err());
    assert!(
        e.contains("sslmode=\"verify-everything\" is not a known sslmode")
            && e.contains("disable, prefer, require, verify-ca or verify-full"),
        "{e}"
    );
    let e = chain(
        &pg::connect("postgres://p@127.0.0.1:1/d?sslmode=allow")
            .await
            .unwrap_err(),
    );
    assert!(e.contains("sslmode=allow is not supported"), "{e}");
    // As the config check says it (`store` in server.toml, `--store`).
    let e = ponte_server::config::check_store("postgres://p@h/d?sslmode=Require").unwrap_err();
    assert!(
        e.contains("sslmode=\"Require\" is not a known sslmode"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ponte_server::ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.store = Some("postgres://p@127.0.0.1:1/d?sslmode=full".into());
    let e = match ponte_server::Server::bind(cfg, None).await {
        Ok(_) => panic!("bound"),
        Err(e) => chain(&e),
    };
    assert!(e.contains("sslmode=\"full\" is not a known sslmode"), "{e}");
}
