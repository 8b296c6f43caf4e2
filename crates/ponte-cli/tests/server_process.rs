//! The real `ponte server` process: it prints its address, `address` prints
//! it again and `invite` works (both refuse a directory no server started
//! in), nonsense settings are refused, and a message acknowledged to the
//! sender survives SIGKILL of the server and is delivered after restart.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey};
use ponte_transport::{connect, Channel, ClientConfig, Keypair};
use ponte_wire::address::ServerAddress;
use ponte_wire::messages::{
    self, client_frame, server_frame, ClientFrame, DeviceKeys, ServerFrame,
};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;

mod common;
use common::{stderr, Server};

const WAIT: Duration = Duration::from_secs(30);

/// A `ponte server` process (killed when dropped) and its address, parsed.
struct ServerProcess {
    server: Server,
    address: ServerAddress,
}

fn start(data: &Path) -> ServerProcess {
    let server = Server::spawn(Server::command(data, &[]).env("RUST_LOG", "warn"));
    let address = server.address().parse().expect("server prints its address");
    ServerProcess { server, address }
}

struct Device {
    noise: Keypair,
    signing: SigningKey,
}

impl Device {
    fn new() -> Self {
        Self {
            noise: Keypair::generate(),
            signing: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }
}

async fn open(addr: &ServerAddress, dev: &Device) -> Channel<TcpStream> {
    let sock = TcpStream::connect(addr.socket_addr_string()).await.unwrap();
    connect(sock, &ClientConfig::new(dev.noise.clone(), addr.key))
        .await
        .unwrap()
}

async fn call(
    ch: &mut Channel<TcpStream>,
    rid: u64,
    body: client_frame::Body,
) -> server_frame::Body {
    ch.send(&ClientFrame {
        request_id: rid,
        body: Some(body),
    })
    .await
    .unwrap();
    loop {
        let f = next_frame(ch).await;
        if f.request_id == rid {
            return f.body.unwrap();
        }
    }
}

/// The next frame from the server, within `WAIT`.
async fn next_frame(ch: &mut Channel<TcpStream>) -> ServerFrame {
    tokio::time::timeout(WAIT, ch.recv())
        .await
        .unwrap()
        .unwrap()
        .expect("connection closed")
}

async fn register(addr: &ServerAddress, dev: &Device, handle: &str) -> Channel<TcpStream> {
    let mut ch = open(addr, dev).await;
    let curve = [7u8; 32];
    let ed = dev.signing.verifying_key().to_bytes();
    let s = messages::registration_signing_string(handle, &curve, &ed, &dev.noise.public());
    let body = client_frame::Body::Register(messages::Register {
        handle: handle.into(),
        keys: Some(DeviceKeys {
            curve25519: Bytes::copy_from_slice(&curve),
            ed25519: Bytes::copy_from_slice(&ed),
        }),
        signature: Bytes::copy_from_slice(&dev.signing.sign(s.as_bytes()).to_bytes()),
        invite: String::new(),
    });
    let r = call(&mut ch, 1, body).await;
    assert!(matches!(r, server_frame::Body::Registered(_)), "{r:?}");
    ch
}

#[tokio::test]
async fn acked_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data);
    let addr = server.address.clone();
    assert_eq!(addr.host, "127.0.0.1");

    let bob = Device::new();
    drop(register(&addr, &bob, "bob").await);
    let alice = Device::new();
    let mut ach = register(&addr, &alice, "alice").await;
    const N: u8 = 50;
    for i in 0..N {
        let r = call(
            &mut ach,
            100 + u64::from(i),
            client_frame::Body::Send(messages::SendMessage {
                message_id: Bytes::copy_from_slice(&[i; 16]),
                recipient: "bob".into(),
                body: Bytes::copy_from_slice(&[i; 40]),
            }),
        )
        .await;
        assert!(matches!(r, server_frame::Body::SendAck(_)), "{r:?}");
    }
    // SIGKILL right after the last ack: no chance to flush anything.
    drop(server);
    drop(ach);

    let server = start(&data);
    assert_eq!(server.address.key, addr.key, "same key after restart");
    let mut bch = open(&server.address, &bob).await;
    let r = call(&mut bch, 1, client_frame::Body::Login(messages::Login {})).await;
    assert!(
        matches!(&r, server_frame::Body::LoggedIn(l) if l.pending == u32::from(N)),
        "{r:?}"
    );
    let mut got = Vec::new();
    while got.len() < usize::from(N) {
        let f = next_frame(&mut bch).await;
        if let Some(server_frame::Body::Deliver(d)) = f.body {
            assert_eq!(d.sender, "alice");
            got.push(d.body[0]);
        }
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>());
}

/// Runs `ponte server ARGS… --data DATA` to completion.
fn server_cmd(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ponte"))
        .arg("server")
        .args(args)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// The first line `child` prints on stdout (a server: its address).
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

/// `ponte server address ARGS… --data DATA`, parsed.
fn address_of(data: &Path, args: &[&str]) -> ServerAddress {
    let mut all = vec!["address"];
    all.extend_from_slice(args);
    let out = server_cmd(&all, data);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn address_and_invite_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No server ever started there (a mistyped --data, say): both refuse,
    // naming the directory and what to do, and create nothing.
    for sub in ["address", "invite"] {
        let out = server_cmd(&[sub], &data);
        assert_eq!(out.status.code(), Some(1), "{sub}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("in {}", data.display()))
                && err.contains("start the server there first")
                && err.contains("check --data"),
            "{sub}: {err}"
        );
        assert!(out.stdout.is_empty(), "{sub}");
        assert!(!data.exists(), "{sub} created {}", data.display());
    }
    assert!(stderr(&server_cmd(&["address"], &data)).contains("no server key"));
    assert!(stderr(&server_cmd(&["invite"], &data)).contains("no server database"));
    // A path that is a file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    for sub in ["address", "invite"] {
        let out = server_cmd(&[sub], &file);
        assert_eq!(out.status.code(), Some(1), "{sub}");
        assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
    }

    // Once a server has started there, invite works (also while it runs).
    let server = start(&data);
    let out = server_cmd(&["invite"], &data);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().len(), 32, "{token:?}");
    assert!(
        token.trim().bytes().all(|b| b.is_ascii_hexdigit()),
        "{token:?}"
    );
    drop(server);
    assert!(server_cmd(&["invite"], &data).status.success());
    let addr = address_of(&data, &["--host", "chat.example.org", "--port", "443"]);
    assert_eq!(addr.host, "chat.example.org");
    assert_eq!(addr.port, 443);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for (file, want) in [
            ("server.key", 0o600),
            ("ponte.db", 0o600),
            ("server.address", 0o644),
        ] {
            let mode = std::fs::metadata(data.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, want, "{file}");
        }
    }
}

#[test]
fn address_prints_what_the_server_printed_at_its_last_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data);
    let printed = server.address.clone();
    assert_eq!(
        (printed.host.as_str(), printed.port != 0),
        ("127.0.0.1", true)
    );
    assert_eq!(address_of(&data, &[]), printed, "while it runs");
    drop(server);
    assert_eq!(address_of(&data, &[]), printed, "after it stopped");
    // Each flag overrides only its part.
    let a = address_of(&data, &["--port", "443"]);
    assert_eq!(
        (a.host.as_str(), a.port, a.key),
        ("127.0.0.1", 443, printed.key)
    );
    let a = address_of(&data, &["--host", "relay.example.net"]);
    assert_eq!(
        (a.host.as_str(), a.port),
        ("relay.example.net", printed.port)
    );
    // The next start replaces the record.
    let server = start(&data);
    assert_eq!(address_of(&data, &[]), server.address);
    drop(server);
    // A directory whose server never recorded its address (an older
    // version): the defaults, this machine's name and port 5222.
    std::fs::remove_file(data.join("server.address")).unwrap();
    let a = address_of(&data, &[]);
    assert_eq!((a.port, a.key), (5222, printed.key));
}

#[test]
fn nonsense_settings_are_refused_naming_the_flag_or_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (flag, value) in [
        ("--handshake-timeout", "0s"),
        ("--idle-timeout", "0s"),
        ("--retention", "0s"),
        ("--expiry-interval", "0s"),
        ("--idle-timeout", "10s"),
        ("--handshake-timeout", "30d"),
        ("--expiry-interval", "365d"),
        ("--max-connections", "0"),
        ("--max-pending", "0"),
    ] {
        let out = server_cmd(
            &["--listen", "127.0.0.1:0", "--no-admin", flag, value],
            &data,
        );
        assert!(!out.status.success(), "{flag} {value} accepted");
        let err = stderr(&out);
        assert!(
            err.contains(flag) && err.contains("must be"),
            "{flag} {value}: {err}"
        );
        assert!(!data.exists(), "{flag} {value}: started anyway");
    }
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nadmin = \"off\"\nidle_timeout = \"0s\"\n",
    )
    .unwrap();
    let out = server_cmd(&["--config", cfg.to_str().unwrap()], &data);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("server.toml:3:") && err.contains(": idle_timeout: must be 90s to 1d"),
        "{err}"
    );
    assert!(!data.exists());
}

#[test]
fn errors_say_what_is_wrong_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = server_cmd(
        &["--config", missing.to_str().unwrap()],
        &dir.path().join("data"),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("missing.toml"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");

    // --data naming a regular file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let out = server_cmd(&["--listen", "127.0.0.1:0", "--no-admin"], &file);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("not a directory"), "{err}");
    assert!(!err.contains("File exists"), "{err}");
    // Named once, with what to do (as `address` and `invite` say it).
    assert_eq!(err.matches(file.to_str().unwrap()).count(), 1, "{err}");
    assert!(err.contains("not a directory: check --data"), "{err}");
}

/// `ponte server --help` names every subcommand and says what each flag
/// takes; `backup` errors name the right thing once, with what to do.
#[test]
fn server_help_and_backup_errors_name_the_right_thing() {
    let help = Command::new(env!("CARGO_BIN_EXE_ponte"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let line = help
        .lines()
        .find(|l| l.trim_start().starts_with("server "))
        .unwrap_or_default();
    for sub in ["address", "invite", "back"] {
        assert!(line.contains(sub), "{sub}: {line}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_ponte"))
        .args(["server", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for flag in [
        "--config <FILE>",
        "--data <DIR>",
        "--host <NAME>",
        "--retention <DUR>",
        "--expiry-interval <DUR>",
        "--max-connections <N>",
        "--max-pending <N>",
        "--handshake-timeout <DUR>",
        "--idle-timeout <DUR>",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }

    let dir = tempfile::tempdir().unwrap();
    let backup = |data: &Path, dest: &Path| {
        let child = Command::new(env!("CARGO_BIN_EXE_ponte"))
            .args(["server", "backup", "--data"])
            .arg(data)
            .arg(dest)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        common::wait_output(child, WAIT)
    };
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let out = backup(&file, &dir.path().join("b1"));
    assert_refused(
        &out,
        &["not a directory: check --data"],
        "backup --data FILE",
    );
    let named = stderr(&out).matches(file.to_str().unwrap()).count();
    assert_eq!(named, 1, "{}", stderr(&out));
    let data = dir.path().join("data");
    let (line, _) = started_log(&["--listen", "127.0.0.1:0", "--no-admin"], &data);
    assert!(line.starts_with("ponte://"), "{line}");
    let out = backup(&data, &file);
    assert_refused(
        &out,
        &["is a file, not a directory: back up into a new directory"],
        "backup into a file",
    );
    let named = stderr(&out).matches(file.to_str().unwrap()).count();
    assert_eq!(named, 1, "{}", stderr(&out));
    assert!(std::fs::read(&file).unwrap().is_empty());
}

#[test]
fn an_admin_endpoint_off_loopback_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The listen port is taken, so the server stops at its first bind and
    // never listens on the wildcard admin address: the warning comes before.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let out = server_cmd(&["--listen", &listen, "--admin", "0.0.0.0:0"], &data);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("WARN") && err.contains("admin endpoint 0.0.0.0:0 is not on loopback"),
        "{err}"
    );
    assert!(err.contains("cannot listen on"), "{err}");
    drop(taken);

    // On loopback: no warning.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ponte"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    assert!(line.starts_with("ponte://"), "{line:?}");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!stderr(&out).contains("loopback"), "{}", stderr(&out));
}

#[test]
fn config_file_sets_options_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "data = {:?}\nlisten = \"127.0.0.1:0\"\nadmin = \"off\"\nhost = \"cfg.example.org\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ponte"))
        .args(["server", "--host", "flag.example.org", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    let addr: ServerAddress = line.trim().parse().unwrap();
    assert_eq!(addr.host, "flag.example.org");
    assert_ne!(addr.port, 0);
    assert!(dir.path().join("data/server.key").exists());
    // An unknown key is refused, naming the file and the key.
    std::fs::write(&cfg, "retension = \"1d\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ponte"))
        .args(["server", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.toml") && err.contains("retension"),
        "{err}"
    );
}

/// Resident memory of a process in KiB (Linux).
#[cfg(target_os = "linux")]
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn idle_connections_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"));
    let pid = server.server.child.0.id();
    let before = rss_kib(pid);
    let addr = server.address.socket_addr_string();
    // 1,500 silent TCP connections and 300 finished handshakes that never log in.
    let mut idle = Vec::new();
    for _ in 0..1500 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut sessions = Vec::new();
    for _ in 0..300 {
        sessions.push(open(&server.address, &Device::new()).await);
    }
    // Someone else is still served meanwhile.
    let dev = Device::new();
    let mut ch = register(&server.address, &dev, "still_here").await;
    let r = call(
        &mut ch,
        2,
        client_frame::Body::Ping(messages::Ping { nonce: 1 }),
    )
    .await;
    assert!(matches!(r, server_frame::Body::Pong(_)));
    let during = rss_kib(pid);
    eprintln!("server RSS: {before} KiB idle, {during} KiB with 1,800 idle connections");
    // About 7 KiB each in a debug build today; 24 KiB each leaves room for
    // allocator noise but catches a per-connection buffer (a 64 KiB Noise
    // buffer held before login would be 115 MiB here).
    assert!(
        during < before + 1_800 * 24,
        "RSS grew from {before} to {during} KiB for 1,800 connections"
    );
    drop(idle);
    drop(sessions);
}

/// Alice reaches the server only through a `ponte proxy` relay (which adds a
/// PROXY v2 header); Bob connects directly. The Noise channel is end to end,
/// so the relay cannot pose as the server.
#[tokio::test]
async fn messages_flow_through_a_ponte_relay() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"));
    let relay_cfg = dir.path().join("relay.toml");
    std::fs::write(
        &relay_cfg,
        format!(
            "[upstream.server]\nservers = [\"{}\"]\nsend_proxy = \"v2\"\n\n\
             [[listener]]\nname = \"plain\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"server\"\n",
            server.address.socket_addr_string()
        ),
    )
    .unwrap();
    let relay = tokio::task::spawn_blocking(move || {
        common::Proxy::start(&relay_cfg, &["plain"], Duration::from_secs(10))
    })
    .await
    .unwrap();
    // The server address as a user of this relay would be given it.
    let via_relay = ServerAddress {
        host: "127.0.0.1".into(),
        port: relay.addr("plain").port(),
        key: server.address.key,
    };

    let bob = Device::new();
    let mut bch = register(&server.address, &bob, "bob").await;
    let alice = Device::new();
    let mut ach = register(&via_relay, &alice, "alice").await;
    let r = call(
        &mut ach,
        2,
        client_frame::Body::Send(messages::SendMessage {
            message_id: Bytes::copy_from_slice(&[5; 16]),
            recipient: "bob".into(),
            body: Bytes::from_static(b"through the bridge"),
        }),
    )
    .await;
    assert!(matches!(r, server_frame::Body::SendAck(_)), "{r:?}");
    let deliver = loop {
        let f = next_frame(&mut bch).await;
        if let Some(server_frame::Body::Deliver(d)) = f.body {
            break d;
        }
    };
    assert_eq!(deliver.sender, "alice");
    assert_eq!(&deliver.body[..], b"through the bridge");

    // Expecting another key through the same relay: refused.
    let sock = TcpStream::connect(via_relay.socket_addr_string())
        .await
        .unwrap();
    let err = connect(sock, &ClientConfig::new(Keypair::generate(), [9; 32]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ponte_transport::TransportError::ServerKeyMismatch { .. }
        ),
        "{err:?}"
    );
}

/// A second server on the same data directory is refused while the first
/// runs; the lock goes with the process, even when it is killed.
#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = start(&data);
    let mut second = Server::command(&data, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..300 {
        status = second.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = second.kill();
        panic!("a second server on the same data directory kept running");
    };
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("already running"), "{err}");
    // The message names the directory itself; no context repeats it.
    assert!(!err.contains("starting the server in"), "{err}");
    // SIGKILL the first: the kernel drops its lock, and a new server starts.
    first.server.kill();
    let again = start(&data);
    assert_eq!(again.address.key, first.address.key);
}

/// `ponte server ARGS… --data DATA` with a deadline (a command that should
/// be refused must not hang the test if it starts instead).
fn server_run(args: &[&str], data: &Path) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_ponte"))
        .arg("server")
        .args(args)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_output(child, WAIT)
}

/// Checks that `out` is a refusal whose message has every one of `want`,
/// with nothing on stdout.
fn assert_refused(out: &Output, want: &[&str], what: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "{what}: accepted\nstdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    for w in want {
        assert!(err.contains(w), "{what}: no {w:?} in {err}");
    }
}

/// `address --port 0` and a `--host` no client parses were printed with
/// exit 0; now they are refused naming the flag, and whatever is printed
/// is an address a client accepts. The server's own `--host` (flag or
/// config key) is checked the same way, before anything is created.
#[test]
fn addresses_no_client_accepts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = start(&data).address.key;
    for (args, want) in [
        (&["--port", "0"][..], &["--port", "1..=65535"][..]),
        (&["--port", "65536"], &["--port", "1..=65535"]),
        (
            &["--host", "bad host#x"],
            &["--host", "bad host#x", "cannot be used in a server address"],
        ),
        (&["--host", ""], &["--host", "cannot be used"]),
        (&["--host", "a/b"], &["--host", "cannot be used"]),
        (
            &["--host", "chat.example.org:443"],
            &["--host", "give the host alone"],
        ),
    ] {
        let mut all = vec!["address"];
        all.extend_from_slice(args);
        assert_refused(&server_run(&all, &data), want, &format!("{args:?}"));
    }
    // The edges of what is accepted, each printed as a client parses it.
    for (args, host, port) in [
        (&["--port", "1"][..], None, Some(1)),
        (&["--port", "65535"], None, Some(65535)),
        (&["--host", "[::1]"], Some("::1"), None),
        (&["--host", "::1", "--port", "443"], Some("::1"), Some(443)),
        (
            &["--host", "my_host-1.example"],
            Some("my_host-1.example"),
            None,
        ),
        (&["--host", "192.0.2.7"], Some("192.0.2.7"), None),
    ] {
        let a = address_of(&data, args);
        assert_eq!(a.key, key, "{args:?}");
        if let Some(h) = host {
            assert_eq!(a.host, h, "{args:?}");
        }
        if let Some(p) = port {
            assert_eq!(a.port, p, "{args:?}");
        }
    }

    // The server itself: --host, and the config file key host.
    let fresh = dir.path().join("fresh");
    for host in ["bad host#x", "chat.example.org:5222"] {
        let out = server_run(
            &["--listen", "127.0.0.1:0", "--no-admin", "--host", host],
            &fresh,
        );
        assert_refused(&out, &["--host", host], host);
    }
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "host = \"bad host#x\"\n").unwrap();
    let out = server_run(
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-admin",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &fresh,
    );
    assert_refused(
        &out,
        &[
            "server.toml:1:",
            ": host: \"bad host#x\" cannot be used in a server address",
        ],
        "config host",
    );
    assert!(
        !fresh.exists(),
        "a refused server created its data directory"
    );
    // A bracketed IPv6 host is printed as a client expects it.
    let server = Server::spawn(&mut Server::command(&fresh, &["--host", "[::1]"]));
    let a: ServerAddress = server.address().parse().unwrap();
    drop(server);
    assert_eq!(address_of(&fresh, &[]).host, "::1");
    assert_eq!(address_of(&fresh, &[]).port, a.port);
}

/// The first line on stdout of `ponte server ARGS… --data DATA` (with
/// info logs), and its log once killed.
fn started_log(args: &[&str], data: &Path) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ponte"))
        .arg("server")
        .args(args)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (line, stderr(&out))
}

/// `--admin off` was refused ("invalid socket address syntax") although
/// the docs name it: it is `--no-admin`, and wins over the config file.
#[test]
fn admin_off_on_the_command_line_disables_the_admin_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    // The file's admin endpoint is served, and logged.
    let (line, log) = started_log(&["--config", cfg], &data);
    assert!(line.starts_with("ponte://"), "{line:?}\n{log}");
    assert!(log.contains("admin endpoint on http://127.0.0.1:"), "{log}");
    // --admin off: none.
    for args in [
        &["--config", cfg, "--admin", "off"][..],
        &["--config", cfg, "--no-admin"],
    ] {
        let (line, log) = started_log(args, &data);
        assert!(line.starts_with("ponte://"), "{args:?}: {line:?}\n{log}");
        assert!(log.contains("listening on 127.0.0.1:"), "{args:?}: {log}");
        assert!(!log.contains("admin endpoint"), "{args:?}: {log}");
    }
}

/// `--listen localhost:…` and `--admin localhost:…` said only "invalid
/// socket address syntax". Host names are refused (as in the config file),
/// with what to write instead; nothing is created.
#[test]
fn listen_and_admin_take_an_ip_address_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (args, flag) in [
        (&["--listen", "localhost:0", "--no-admin"][..], "--listen"),
        (&["--listen", "127.0.0.1"], "--listen"),
        (
            &["--listen", "127.0.0.1:0", "--admin", "localhost:0"],
            "--admin",
        ),
        (
            &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1"],
            "--admin",
        ),
    ] {
        let out = server_run(args, &data);
        assert_refused(
            &out,
            &[flag, "use an IP address and port, e.g.", "[::"],
            &format!("{args:?}"),
        );
    }
    let out = server_run(&["--listen", "localhost:0"], &data);
    assert_refused(
        &out,
        &["host names such as localhost are not resolved"],
        "localhost",
    );
    // The config file takes the same and says the same.
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "listen = \"localhost:0\"\nadmin = \"off\"\n").unwrap();
    let out = server_run(&["--config", cfg.to_str().unwrap()], &data);
    assert_refused(
        &out,
        &[
            "server.toml:1:",
            ": listen: \"localhost:0\" is not an IP address and port",
            "not resolved",
        ],
        "config listen",
    );
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nadmin = \"localhost:0\"\n").unwrap();
    let out = server_run(&["--config", cfg.to_str().unwrap()], &data);
    assert_refused(
        &out,
        &["server.toml", "admin", "127.0.0.1:8299"],
        "config admin",
    );
    assert!(
        !data.exists(),
        "a refused server created its data directory"
    );
}

/// A first start whose database cannot be opened (here `ponte.db` is a
/// directory) fails naming it and leaves no key behind: the start that
/// succeeds later creates the key and warns that it did.
#[test]
fn a_failed_first_start_leaves_no_key_and_the_next_one_warns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("ponte.db")).unwrap();
    let out = server_run(&["--listen", "127.0.0.1:0", "--no-admin"], &data);
    assert_refused(
        &out,
        &["ponte.db: not a file, so not a server database"],
        "ponte.db a directory",
    );
    assert!(!data.join("server.key").exists());
    assert!(!data.join("server.lock").exists());
    std::fs::remove_dir(data.join("ponte.db")).unwrap();
    let (line, log) = started_log(&["--listen", "127.0.0.1:0", "--no-admin"], &data);
    let addr: ServerAddress = line.trim().parse().unwrap();
    assert!(log.contains("created a NEW server key"), "{log}");
    assert_eq!(log.matches("created a NEW server key").count(), 1, "{log}");
    assert_eq!(
        addr.key,
        ponte_server::keyfile::load(&data).unwrap().public()
    );
}

/// An admin address that is taken is reported as the admin endpoint's,
/// not to be mistaken for the client port, with how to move it or turn it
/// off; nothing is created.
#[test]
fn a_taken_admin_address_is_named_as_the_admin_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = server_run(&["--listen", "127.0.0.1:0", "--admin", &addr], &data);
    assert_refused(
        &out,
        &[
            &format!("cannot listen on {addr} for the admin endpoint"),
            "--admin",
            "--no-admin",
        ],
        "admin address taken",
    );
    assert_eq!(stderr(&out).matches(&addr).count(), 1, "{}", stderr(&out));
    assert!(!data.exists());
    // The client port: named as such.
    let out = server_run(&["--listen", &addr, "--no-admin"], &data);
    assert_refused(&out, &[&format!("cannot listen on {addr}")], "listen taken");
    assert!(!stderr(&out).contains("admin"), "{}", stderr(&out));
    drop(taken);
}

/// `GLIBC_TUNABLES` of a running process, from `/proc/PID/environ`.
fn tunables_of(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    env.split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("GLIBC_TUNABLES=").map(str::to_owned))
}

/// On glibc and an AMD Zen 3 or later CPU, `ponte` starts itself again
/// with the tunable that keeps glibc's copies fast (see
/// `ponte_proxy::restart_with_fast_memcpy`): the same process, still
/// serving, under its own name; elsewhere, and when the operator set
/// `GLIBC_TUNABLES`, the environment is left as it was.
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_with_the_memcpy_tunable_where_glibc_needs_it() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let affected = cfg!(all(target_arch = "x86_64", target_env = "gnu"))
        && field("vendor_id").as_deref() == Some("AuthenticAMD")
        && field("cpu family")
            .and_then(|f| f.parse::<u32>().ok())
            .is_some_and(|f| f >= 0x19);
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Server::command(&tmp.path().join("a"), &[]);
    cmd.env_remove("GLIBC_TUNABLES");
    let server = Server::spawn(&mut cmd);
    let want = affected.then(|| ponte_proxy::FAST_MEMCPY_TUNABLE.to_owned());
    assert_eq!(
        tunables_of(server.child.0.id()),
        want,
        "affected: {affected}"
    );
    // It keeps its name for `ps` and `pkill` (the kernel named it `exe`,
    // after `/proc/self/exe`, until it took its name back).
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm(server.child.0.id()), "ponte\n");
    // The restarted process is the one serving: a client gets through.
    assert!(std::net::TcpStream::connect(server.addr).is_ok());
    drop(server);

    // The operator's own setting is kept as it is.
    let mut cmd = Server::command(&tmp.path().join("b"), &[]);
    cmd.env("GLIBC_TUNABLES", "glibc.malloc.check=0");
    let server = Server::spawn(&mut cmd);
    assert_eq!(
        tunables_of(server.child.0.id()).as_deref(),
        Some("glibc.malloc.check=0")
    );
}
