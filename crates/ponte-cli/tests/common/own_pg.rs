//! A PostgreSQL of the test's own for the multi-node tests, restartable
//! on its port (the crash test in `scale_out.rs`). Included with `#[path]`
//! beside `mod common` and `mod cluster`.
#![allow(dead_code)]

use crate::cluster::{drain_into, free_port};
use crate::common::{stderr, wait_output, WAIT};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of the test's own in a temp directory (initdb, then
/// `postgres -D`), restartable on the same port. Run as the `postgres` user
/// (with `setpriv`) when the test runs as root, which initdb refuses.
pub struct OwnPg {
    dir: PathBuf,
    pub port: u16,
    /// uid and gid to run as, when the tests run as root.
    user: Option<(u32, u32)>,
    child: Option<Child>,
    pub log: Arc<Mutex<String>>,
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
    /// initdb into `dir` (which it owns) and starts it; `Err` with the
    /// reason when that cannot work here (the caller skips).
    pub fn start(dir: &Path) -> Result<Self, String> {
        if !Path::new(PG_BIN).join("initdb").is_file() {
            return Err(format!("{PG_BIN}/initdb is not installed"));
        }
        let me = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| format!("id -u: {e}"))?;
        let root = String::from_utf8_lossy(&me.stdout).trim() == "0";
        let user = if root {
            Some(ids_of("postgres").map_err(|e| format!("running as root, and {e}"))?)
        } else {
            None
        };
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let mut pg = Self {
            dir: dir.to_owned(),
            port: free_port(),
            user,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
        };
        let data = dir.join("data");
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let out = wait_output(
            initdb
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("initdb: {e}"))?,
            WAIT,
        );
        if !out.status.success() {
            return Err(format!("initdb failed: {}", stderr(&out)));
        }
        pg.spawn()?;
        Ok(pg)
    }

    /// A command running `PG_BIN/prog` as the cluster's user.
    fn command(&self, prog: &str) -> Command {
        let bin = Path::new(PG_BIN).join(prog);
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

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        let (tx, rx) = mpsc::channel();
        drain_into(child.stderr.take().unwrap(), self.log.clone(), Some(tx));
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let left = WAIT.saturating_sub(start.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("ready to accept connections") => return Ok(()),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "postgres did not start:\n{}",
                        self.log.lock().unwrap()
                    ))
                }
            }
        }
    }

    /// The address of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it as a crash would (SIGQUIT: immediate shutdown, crash
    /// recovery at the next start) and waits until it is gone.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &c.id().to_string()])
                .status();
            let start = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if start.elapsed() > WAIT {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.crash();
        self.spawn().unwrap();
    }
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        self.crash();
    }
}
