//! `ponte app`: the messenger in the browser, served by this binary on
//! loopback.
//!
//! What lives where:
//! - this module: the command line, the profile lock, the per-launch
//!   secret, printing the address and opening the browser, Ctrl-C;
//! - `guard`: what every request must pass (exact `Host`, `Origin` on every
//!   state-changing request, the secret) and the headers every response
//!   carries (CSP, no CORS, `nosniff`, `no-referrer`);
//! - `api`: the JSON API over `ponte-client` and the live channel;
//! - `net`: the one task that owns the client's connection (`listen`),
//!   taking commands (reconnect now, fetch a file) between connections;
//! - `assets/`: the page, its script and style, embedded at build time.
//!
//! The app holds no business logic: chats, unread counts, read receipts,
//! files and routes are `ponte-client`'s.

mod api;
mod guard;
mod net;

use anyhow::Context as _;
use clap::Args;
use ponte_client::lock::ProfileLock;
use ponte_client::profile;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// `ponte app` options.
#[derive(Debug, Args)]
pub struct AppArgs {
    /// Profile directory (default: $PONTE_PROFILE, else $XDG_DATA_HOME/ponte or ~/.local/share/ponte).
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Where to serve the app: a loopback address (127.0.0.1 or [::1]) and port; port 0 picks one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Do not open the browser (print the address only).
    #[arg(long)]
    no_open: bool,
}

/// The per-launch secret: 32 random bytes, hex.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a browser can be shown here (a graphical session).
fn has_display() -> bool {
    if cfg!(target_os = "macos") || cfg!(windows) {
        return true;
    }
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

/// Hand the address to the desktop's browser; failure is only a notice
/// (the address is printed anyway).
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let spawned = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("ponte: could not open the browser ({opener}: {e}); open the address above");
    }
}

/// Run `ponte app` until Ctrl-C (or SIGTERM).
pub fn run(args: AppArgs) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: the app serves loopback only (127.0.0.1 or [::1]); anyone who can \
             reach it could read your messages",
            args.listen
        );
    }
    crate::init_logging();
    let dir = profile::resolve_dir(args.profile.clone())?;
    let lock = ProfileLock::exclusive(&dir, &format!("ponte app, pid {}", std::process::id()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(serve(args, dir));
    drop(lock);
    result
}

async fn serve(args: AppArgs, dir: PathBuf) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let secret = new_secret();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (app, control) = api::App::new(dir, addr, secret.clone());
    let app = Arc::new(app);
    let router = api::router(app.clone());
    let url = format!("http://{addr}/#{secret}");
    crate::write_stdout(&format!("Open {url}\n")).context("writing the address")?;
    if !args.no_open && has_display() {
        open_browser(&url);
    }
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let shutdown = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    // The client's connection runs here, on this thread (its futures are
    // not `Send`); the HTTP server on the runtime's workers.
    let outcome = tokio::select! {
        r = net::control(app.clone(), control, stop_rx) => r,
        () = shutdown => Ok(()),
    };
    let _ = stop_tx.send(true);
    app.close_live();
    match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(e))) => eprintln!("ponte: the app's server stopped: {e}"),
        Ok(Err(e)) => eprintln!("ponte: the app's server stopped: {e}"),
    }
    outcome?;
    eprintln!("ponte: app stopped");
    Ok(ExitCode::SUCCESS)
}
