//! Parsing of the TLS settings; the connections themselves are tested
//! against real PostgreSQL servers in `tests/store_pg_tls.rs`.
#![allow(clippy::unwrap_used)]

use super::*;

fn err(address: &str) -> String {
    match Target::parse(address) {
        Ok(t) => panic!("{address} parsed: {t:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn modes_parse_and_reach_the_driver_as_it_understands_them() {
    let base = "postgres://ponte@db.internal:5433/ponte";
    for (given, mode, driver) in [
        ("", SslMode::Prefer, DriverMode::Prefer),
        ("?sslmode=disable", SslMode::Disable, DriverMode::Disable),
        ("?sslmode=prefer", SslMode::Prefer, DriverMode::Prefer),
        ("?sslmode=require", SslMode::Require, DriverMode::Require),
        ("?sslmode=verify-ca", SslMode::VerifyCa, DriverMode::Require),
        (
            "?sslmode=verify-full",
            SslMode::VerifyFull,
            DriverMode::Require,
        ),
    ] {
        let t = Target::parse(&format!("{base}{given}")).unwrap();
        assert_eq!(t.ssl_mode(), mode, "{given}");
        assert_eq!(t.cfg.get_ssl_mode(), driver, "{given}");
        assert_eq!(t.cfg.get_dbname(), Some("ponte"));
        assert_eq!(t.hosts(), "db.internal:5433");
    }
}

#[test]
fn unknown_and_unsupported_modes_are_refused_by_name() {
    let e = err("postgres://p@h/d?sslmode=verify_full");
    assert!(
        e.contains("sslmode=\"verify_full\" is not a known sslmode"),
        "{e}"
    );
    assert!(e.contains("verify-full"), "{e}");
    let e = err("postgres://p@h/d?sslmode=allow");
    assert!(e.contains("sslmode=allow is not supported"), "{e}");
    let e = err("host=h sslmode=nope");
    assert!(e.contains("\"nope\""), "{e}");
}

#[test]
fn our_settings_are_taken_out_and_the_rest_stays() {
    let t = Target::parse(
        "postgres://p:s%40cret@h:1/d?application_name=ponte%20node&sslrootcert=%2Ftmp%2Fca%20x.pem\
         &sslmode=verify-full&connect_timeout=3&sslcert=/c.pem&sslkey=/k.pem",
    )
    .unwrap();
    assert_eq!(t.cfg.get_application_name(), Some("ponte node"));
    assert_eq!(t.cfg.get_password(), Some(&b"s@cret"[..]));
    assert_eq!(
        t.cfg.get_connect_timeout(),
        Some(&std::time::Duration::from_secs(3))
    );
    assert_eq!(
        t.tls.root_cert,
        Some(Roots::File(PathBuf::from("/tmp/ca x.pem")))
    );
    assert_eq!(
        t.tls.client,
        Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
    );
    assert_eq!(t.tls.effective(), SslMode::VerifyFull);
}

#[test]
fn key_value_form_keeps_quoted_values() {
    let t = Target::parse(
        "host=db port=6000 user=ponte password='it\\'s a secret' sslmode = 'verify-ca' \
         sslrootcert='/etc/ponte/pg ca.pem' dbname=ponte",
    )
    .unwrap();
    assert_eq!(t.cfg.get_password(), Some(&b"it's a secret"[..]));
    assert_eq!(t.cfg.get_user(), Some("ponte"));
    assert_eq!(t.ssl_mode(), SslMode::VerifyCa);
    assert_eq!(
        t.tls.root_cert,
        Some(Roots::File(PathBuf::from("/etc/ponte/pg ca.pem")))
    );
    assert_eq!(t.hosts(), "db:6000");
    let e = err("host=db sslrootcert='/x");
    assert!(e.contains("not closed"), "{e}");
}

#[test]
fn require_with_a_root_certificate_checks_as_verify_ca_as_libpq_does() {
    let t = Target::parse("postgres://p@h/d?sslmode=require&sslrootcert=/ca.pem").unwrap();
    assert_eq!(t.ssl_mode(), SslMode::Require);
    assert_eq!(t.tls.effective(), SslMode::VerifyCa);
    let t = Target::parse("postgres://p@h/d?sslmode=require&sslrootcert=system").unwrap();
    assert_eq!(t.tls.effective(), SslMode::Require);
}

#[test]
fn half_a_client_certificate_and_empty_files_are_refused() {
    let e = err("postgres://p@h/d?sslcert=/c.pem");
    assert!(e.contains("sslcert is given without sslkey"), "{e}");
    let e = err("postgres://p@h/d?sslkey=/k.pem");
    assert!(e.contains("sslkey is given without sslcert"), "{e}");
    let e = err("postgres://p@h/d?sslrootcert=");
    assert!(e.contains("sslrootcert is empty"), "{e}");
    let e = err("postgres://p@h/d?sslrootcert=%ZZ");
    assert!(e.contains("sslrootcert: the value is not valid"), "{e}");
}

#[test]
fn a_missing_or_empty_root_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.pem");
    let t = Target::parse(&format!(
        "postgres://p@h/d?sslmode=verify-full&sslrootcert={}",
        missing.display()
    ))
    .unwrap();
    let e = t.connector().map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains(&format!("sslrootcert={}", missing.display())),
        "{e}"
    );
    assert!(e.contains("cannot be read"), "{e}");

    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let t = Target::parse(&format!(
        "postgres://p@h/d?sslmode=verify-ca&sslrootcert={}",
        empty.display()
    ))
    .unwrap();
    let e = t.connector().map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("holds no PEM certificate"), "{e}");
}

#[test]
fn hosts_are_listed_with_their_ports() {
    let t = Target::parse("postgres://p@a:1,b:2/d").unwrap();
    assert_eq!(t.hosts(), "a:1, b:2");
    let t = Target::parse("postgres://p@a,b/d").unwrap();
    assert_eq!(t.hosts(), "a:5432, b:5432");
}
