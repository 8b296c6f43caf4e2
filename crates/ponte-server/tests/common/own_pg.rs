//! A PostgreSQL server of the test's own (initdb into a temp directory,
//! then `postgres -D`), for what the machine's cannot be made to do: TLS
//! on or off with the test's certificates, a `pg_hba.conf` of the test's.
//! Run as the `postgres` user (with `setpriv`) when the tests run as root,
//! which initdb refuses. Stopped with its guard (fast shutdown, then
//! immediate, then SIGKILL, each after a bound).
//! Without the PostgreSQL binaries [`OwnPg::available`] says why and the
//! test skips, unless `PONTE_REQUIRE_PG=1` makes that a failure.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts the server binaries (`PONTE_PG_BIN` to override).
fn pg_bin() -> PathBuf {
    std::env::var_os("PONTE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Bound on initdb and on the server's start.
const START: Duration = Duration::from_secs(60);

/// A running PostgreSQL of the test's own on 127.0.0.1.
pub struct OwnPg {
    pub dir: PathBuf,
    pub port: u16,
    /// uid and gid the server runs as, when the tests run as root.
    pub user: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The uid and gid of `name`, from `id`.
fn ids_of(name: &str) -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, name])
            .output()
            .map_err(|e| format!("id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("no user {name}"))
    };
    Ok((id("-u")?, id("-g")?))
}

impl OwnPg {
    /// Whether the binaries are here. When not: with `PONTE_REQUIRE_PG=1`
    /// this panics, otherwise it prints why the test skips.
    pub fn available() -> bool {
        let initdb = pg_bin().join("initdb");
        if initdb.is_file() {
            return true;
        }
        if std::env::var("PONTE_REQUIRE_PG").as_deref() == Ok("1") {
            panic!(
                "PostgreSQL's binaries are required (PONTE_REQUIRE_PG=1) but {} is not there \
                 (set PONTE_PG_BIN to their directory)",
                initdb.display()
            );
        }
        eprintln!(
            "skipped: {} is not installed (set PONTE_PG_BIN to PostgreSQL's bin directory, \
             or PONTE_REQUIRE_PG=1 to fail instead)",
            initdb.display()
        );
        false
    }

    /// initdb into `dir` (created if need be; it and the files already in
    /// it, such as TLS keys, handed to the server's user), writes `hba` as
    /// its `pg_hba.conf`, and starts it with `settings` (`-c`).
    pub fn start(dir: &Path, hba: &str, settings: &[(&str, String)]) -> Self {
        let me = Command::new("id").arg("-u").output().unwrap();
        let user = (String::from_utf8_lossy(&me.stdout).trim() == "0")
            .then(|| ids_of("postgres").expect("running as root needs a postgres user"));
        std::fs::create_dir_all(dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = Self {
            dir: dir.to_owned(),
            port,
            user,
            child: None,
        };
        pg.give(dir);
        for f in std::fs::read_dir(dir).unwrap() {
            pg.give(&f.unwrap().path());
        }
        let data = dir.join("data");
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hba_file = dir.join("pg_hba.conf");
        std::fs::write(&hba_file, hba).unwrap();
        pg.give(&hba_file);
        let log = dir.join("postgres.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = pg.command("postgres");
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-c")
            .arg(format!("hba_file={}", hba_file.display()));
        for (k, v) in settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        pg.child = Some(child);
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("ready to accept connections") {
                return pg;
            }
            let exited = pg.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || start.elapsed() > START {
                panic!("postgres did not start ({exited:?}):\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes `path` the server user's (for the data directory, its
    /// configuration and key files).
    pub fn give(&self, path: &Path) {
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    /// A command running `prog` from the binaries as the server's user.
    fn command(&self, prog: &str) -> Command {
        let bin = pg_bin().join(prog);
        match self.user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }

    /// The address of database `db` as user `user` on `host`, with
    /// `params` (`k=v&k=v`) after it.
    pub fn url(&self, user: &str, host: &str, db: &str, params: &str) -> String {
        let q = if params.is_empty() { "" } else { "?" };
        format!("postgres://{user}@{host}:{}/{db}{q}{params}", self.port)
    }
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: fast shutdown (clients cut off); SIGQUIT
            // (immediate) after a bound, then SIGKILL.
            for (signal, wait) in [("-INT", 10), ("-QUIT", 5)] {
                let _ = Command::new("kill")
                    .args([signal, &c.id().to_string()])
                    .status();
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(wait) {
                    if !matches!(c.try_wait(), Ok(None)) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
