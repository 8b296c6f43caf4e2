//! The client commands: `register`, `send`, `sync`, `listen`, `history`,
//! `contacts`, `verify`, `status` and `via add|list|remove|clear` (over
//! `ponte-client`).
//!
//! Routes: every command reaches the server directly or through relays
//! given with `--via URL` (repeatable; `tls://HOST:PORT`, `tcp://HOST:PORT`
//! or a share link) and those saved with `ponte via add`.
//!
//! Output: one line per message or tick change on stdout (`--json`: one JSON
//! object per line with `id`, `from`, `to`, `text`, `sent_at`, `status`);
//! warnings and connection notices on stderr. Exit code 0 on success
//! (including `send` leaving a message queued because the server is
//! unreachable), 1 on errors, 2 on usage errors (clap).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ponte_client::client::{Event, SendOutcome};
use ponte_client::profile::{self, KeySource};
use ponte_client::route::RelayUrl;
use ponte_client::{Client, ClientError, Contact, MessageView, Status, Update};
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options every client command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Profile directory (default: $PONTE_PROFILE, else $XDG_DATA_HOME/ponte or ~/.local/share/ponte).
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Seconds to wait when connecting to the server.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    connect_timeout: u64,
    /// Also try this relay (tls://HOST:PORT, tcp://HOST:PORT or a share link); repeatable.
    #[arg(long = "via", value_name = "URL")]
    via: Vec<String>,
}

impl Common {
    fn vias(&self) -> anyhow::Result<Vec<RelayUrl>> {
        self.via
            .iter()
            .map(|v| v.parse::<RelayUrl>().map_err(anyhow::Error::from))
            .collect()
    }
}

/// `ponte via …`: the relays saved in the profile.
#[derive(Debug, Subcommand)]
pub enum ViaCommand {
    /// Save a relay: tls://HOST:PORT, tcp://HOST:PORT, or a share link.
    Add {
        /// The relay's URL or share link.
        url: String,
        #[command(flatten)]
        common: Common,
    },
    /// List the saved relays.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Forget a saved relay.
    Remove {
        /// The relay's URL (or share link) as added.
        url: String,
        #[command(flatten)]
        common: Common,
    },
    /// Forget every saved relay.
    Clear {
        #[command(flatten)]
        common: Common,
    },
}

/// Client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create a profile and an account on a server.
    Register {
        /// The server's address, as its operator printed it: ponte://HOST:PORT#KEY.
        #[arg(long, value_name = "ADDRESS")]
        server: String,
        /// Invite token (for invite-only servers).
        // Hyphen values allowed: older servers issued base64url tokens, and
        // one in 64 of those starts with `-`.
        #[arg(long, value_name = "TOKEN", allow_hyphen_values = true)]
        invite: Option<String>,
        /// Do not ask for a passphrase: protect the profile with a key file.
        #[arg(long)]
        no_passphrase: bool,
        /// Your handle: 3 to 32 of a-z, 0-9, _.
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Send a message (works offline: it waits in the outbox).
    Send {
        /// Recipient handle.
        name: String,
        /// The text.
        text: String,
        #[command(flatten)]
        common: Common,
    },
    /// Connect, send what waits, receive what is pending, print what is new, exit.
    Sync {
        #[command(flatten)]
        common: Common,
    },
    /// Stay connected and print messages and tick changes as they happen.
    Listen {
        #[command(flatten)]
        common: Common,
    },
    /// Show the conversation with a contact.
    History {
        /// Contact handle.
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// List contacts and their verification state.
    Contacts {
        #[command(flatten)]
        common: Common,
    },
    /// Show which route reaches the server now (direct or which relay), and each route's state.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Relays saved in the profile: add, list, remove, clear.
    #[command(subcommand)]
    Via(ViaCommand),
    /// Show the safety number (and QR code) to compare with a contact.
    Verify {
        /// Contact handle.
        name: String,
        /// Mark the contact verified (after comparing the numbers).
        #[arg(long)]
        confirm: bool,
        #[command(flatten)]
        common: Common,
    },
}

fn passphrase_from_env() -> Option<String> {
    std::env::var("PONTE_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty())
}

/// Read a line from the terminal without echo (via `stty`, best effort).
fn prompt_hidden(prompt: &str) -> std::io::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let hidden = stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if hidden {
        stty("echo");
    }
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The passphrase to open a profile: `PONTE_PASSPHRASE`, else a prompt.
fn unlock_passphrase() -> Result<String, ClientError> {
    if let Some(p) = passphrase_from_env() {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::PassphraseRequired);
    }
    prompt_hidden("Passphrase for this profile: ").map_err(|_| ClientError::PassphraseRequired)
}

/// How to protect a new profile.
fn new_profile_key(no_passphrase: bool) -> anyhow::Result<KeySource> {
    if no_passphrase {
        return Ok(KeySource::KeyFile);
    }
    if let Some(p) = passphrase_from_env() {
        return Ok(KeySource::Passphrase(
            p,
            ponte_client::atrest::KdfParams::DEFAULT,
        ));
    }
    if !std::io::stdin().is_terminal() {
        return Ok(KeySource::KeyFile);
    }
    let first = prompt_hidden("Passphrase to protect this profile (empty: use a key file): ")?;
    if first.is_empty() {
        return Ok(KeySource::KeyFile);
    }
    let again = prompt_hidden("Repeat the passphrase: ")?;
    anyhow::ensure!(first == again, "the passphrases differ");
    Ok(KeySource::Passphrase(
        first,
        ponte_client::atrest::KdfParams::DEFAULT,
    ))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn open_client(common: &Common) -> anyhow::Result<Client> {
    let dir = profile::resolve_dir(common.profile.clone())?;
    let mut client = Client::open(&dir, unlock_passphrase)?;
    client.set_connect_timeout(Duration::from_secs(common.connect_timeout.max(1)));
    client.set_extra_vias(common.vias()?);
    Ok(client)
}

/// Run a client command.
pub fn run(cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClientCommand::Register {
            server,
            invite,
            no_passphrase,
            name,
            common,
        } => {
            let dir = profile::resolve_dir(common.profile.clone())?;
            let source = new_profile_key(no_passphrase)?;
            let timeout = Duration::from_secs(common.connect_timeout.max(1));
            let vias = common.vias()?;
            let client = runtime()?.block_on(Client::register_via(
                &dir,
                source,
                unlock_passphrase,
                &server,
                &name,
                invite.as_deref(),
                timeout,
                &vias,
            ))?;
            if common.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "handle": client.handle(),
                        "server": client.server().to_string(),
                        "profile": dir.display().to_string(),
                    })
                );
            } else {
                println!("registered as {} on {}", client.handle(), client.server());
                if let Some(route) = client.route_in_use() {
                    println!("reached over: {route}");
                }
                println!("profile: {}", dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Send { name, text, common } => {
            let mut client = open_client(&common)?;
            let me = client.handle().to_owned();
            let SendOutcome { message, note } = runtime()?.block_on(client.send(&name, &text))?;
            if let Some(note) = note {
                eprintln!("ponte: {note}");
            }
            print_message(&me, &message, common.json);
            // Queued (server unreachable) is success; refused for good is not.
            if message.status == Status::Failed {
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Sync { common } => {
            let mut client = open_client(&common)?;
            let me = client.handle().to_owned();
            let json = common.json;
            runtime()?.block_on(client.sync(&mut |e| print_event(&me, e, json)))?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Listen { common } => {
            let mut client = open_client(&common)?;
            let me = client.handle().to_owned();
            let json = common.json;
            let rt = runtime()?;
            rt.block_on(async {
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                client
                    .listen(&mut |e| print_event(&me, e, json), shutdown)
                    .await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Status { common } => {
            let mut client = open_client(&common)?;
            let status = runtime()?.block_on(client.status())?;
            print_status(&client, &status, common.json);
            Ok(if status.in_use.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ClientCommand::Via(cmd) => via(cmd),
        ClientCommand::History { name, common } => {
            let client = open_client(&common)?;
            let me = client.handle().to_owned();
            for m in client.history(&name)? {
                print_message(&me, &m, common.json);
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Contacts { common } => {
            let client = open_client(&common)?;
            for c in client.contacts()? {
                print_contact(&c, common.json);
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Verify {
            name,
            confirm,
            common,
        } => {
            let mut client = open_client(&common)?;
            let (number, contact) = runtime()?.block_on(client.safety_number(&name, !confirm))?;
            if confirm {
                client.confirm(&name)?;
            }
            let changed = contact.changed_identity.is_some();
            if common.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "handle": name,
                        "safety_number": number.digits(),
                        "qr_payload": number.qr_payload(),
                        "verified": confirm || contact.verified,
                        "key_changed": changed && !confirm,
                    })
                );
                return Ok(ExitCode::SUCCESS);
            }
            if changed && !confirm {
                eprintln!(
                    "WARNING: {name}'s identity key has CHANGED since you first talked. The number \
                     below is for the NEW key. Compare it with {name} in person or over a trusted \
                     channel before confirming."
                );
            }
            println!("Safety number with {name}:\n");
            println!("{}\n", number.grouped());
            match qrcode::QrCode::new(number.qr_payload().as_bytes()) {
                Ok(code) => {
                    let art = code
                        .render::<qrcode::render::unicode::Dense1x2>()
                        .dark_color(qrcode::render::unicode::Dense1x2::Light)
                        .light_color(qrcode::render::unicode::Dense1x2::Dark)
                        .build();
                    println!("{art}");
                }
                Err(e) => eprintln!("ponte: cannot draw the QR code: {e}"),
            }
            if confirm {
                println!("{name} is now marked verified.");
            } else if contact.verified {
                println!("{name} is verified.");
            } else {
                println!(
                    "Compare these digits with {name}'s screen (or scan the code). If they match, run:\n  ponte verify {name} --confirm"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open_profile(common: &Common) -> anyhow::Result<profile::Profile> {
    let dir = profile::resolve_dir(common.profile.clone())?;
    if !profile::Profile::exists(&dir) {
        anyhow::bail!(
            "no profile in {} yet: run `ponte register --server ADDRESS [--via URL] NAME` first",
            dir.display()
        );
    }
    Ok(profile::Profile::open(&dir, unlock_passphrase)?)
}

fn via(cmd: ViaCommand) -> anyhow::Result<ExitCode> {
    use ponte_client::client::{save_vias, saved_vias};
    match cmd {
        ViaCommand::Add { url, common } => {
            let url: RelayUrl = url.parse()?;
            let p = open_profile(&common)?;
            let mut list = saved_vias(p.store())?;
            if list.contains(&url) {
                eprintln!("ponte: {url} is already saved");
            } else {
                list.push(url.clone());
                save_vias(p.store(), &list)?;
            }
            if common.json {
                println!("{}", serde_json::json!({ "added": url.to_string() }));
            } else {
                println!("saved relay {url}");
            }
        }
        ViaCommand::List { common } => {
            let p = open_profile(&common)?;
            let last = ponte_client::client::last_route(p.store())?;
            for url in saved_vias(p.store())? {
                let used_last = last.as_deref() == Some(format!("relay {url}").as_str());
                if common.json {
                    println!(
                        "{}",
                        serde_json::json!({ "via": url.to_string(), "worked_last": used_last })
                    );
                } else if used_last {
                    println!("{url}  (worked last)");
                } else {
                    println!("{url}");
                }
            }
        }
        ViaCommand::Remove { url, common } => {
            let url: RelayUrl = url.parse()?;
            let p = open_profile(&common)?;
            let mut list = saved_vias(p.store())?;
            let before = list.len();
            list.retain(|u| *u != url);
            if list.len() == before {
                anyhow::bail!("{url} is not a saved relay (see `ponte via list`)");
            }
            save_vias(p.store(), &list)?;
            if !common.json {
                println!("removed relay {url}");
            }
        }
        ViaCommand::Clear { common } => {
            let p = open_profile(&common)?;
            let n = saved_vias(p.store())?.len();
            save_vias(p.store(), &[])?;
            if !common.json {
                println!("removed {n} saved relays");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(client: &Client, s: &ponte_client::client::RouteStatus, json: bool) {
    if json {
        let probes: Vec<serde_json::Value> = s
            .probes
            .iter()
            .map(|p| match &p.result {
                Ok(ms) => serde_json::json!({ "route": p.route, "ok": true, "ms": ms }),
                Err(e) => serde_json::json!({ "route": p.route, "ok": false, "error": e }),
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "handle": client.handle(),
                "server": client.server().to_string(),
                "in_use": s.in_use.as_ref().ok(),
                "error": s.in_use.as_ref().err(),
                "last_route": s.last_route,
                "routes": probes,
            })
        );
        return;
    }
    println!("{} on {}", client.handle(), client.server());
    match &s.in_use {
        Ok(route) => println!("in use: {route}"),
        Err(e) => println!("in use: none: {e}"),
    }
    println!("routes, in the order they are tried:");
    for p in &s.probes {
        match &p.result {
            Ok(ms) => println!("  ok    {}  ({ms} ms)", p.route),
            Err(e) => println!("  FAIL  {}  ({e})", p.route),
        }
    }
}

/// Format ms since the epoch as RFC 3339 UTC (`2026-11-25T13:45:00Z`).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn ticks(status: Status) -> &'static str {
    match status {
        Status::Queued => "🕓",
        Status::Sent => "✓",
        Status::Delivered => "✓✓",
        Status::Read => "✓✓",
        Status::Expired => "✗ expired",
        Status::Failed => "✗ failed",
        _ => "",
    }
}

fn message_json(me: &str, m: &MessageView) -> serde_json::Value {
    let (from, to) = if m.outgoing {
        (me, m.peer.as_str())
    } else {
        (m.peer.as_str(), me)
    };
    let mut v = serde_json::json!({
        "id": m.id.to_hex(),
        "from": from,
        "to": to,
        "text": m.text,
        "sent_at": rfc3339(m.sent_at_ms),
        "status": m.status.as_str(),
    });
    if m.key_changed {
        v["key_changed"] = serde_json::Value::Bool(true);
    }
    v
}

fn print_message(me: &str, m: &MessageView, json: bool) {
    if json {
        println!("{}", message_json(me, m));
        return;
    }
    let when = rfc3339(m.sent_at_ms);
    let warn = if m.key_changed {
        "[UNVERIFIED NEW KEY] "
    } else {
        ""
    };
    if m.outgoing {
        println!(
            "{when} {me} -> {}: {} [{} {}]",
            m.peer,
            m.text,
            m.status.as_str(),
            ticks(m.status)
        );
    } else {
        println!("{when} {warn}{} -> {me}: {}", m.peer, m.text);
    }
}

fn print_event(me: &str, event: Event, json: bool) {
    match event {
        Event::Update(Update::Message(m)) | Event::Update(Update::Status(m)) => {
            print_message(me, &m, json)
        }
        Event::Connection(c) => eprintln!("ponte: {c}"),
        Event::Warning(w) => eprintln!("ponte: WARNING: {w}"),
        other => eprintln!("ponte: {other:?}"),
    }
    let _ = std::io::stdout().flush();
}

fn print_contact(c: &Contact, json: bool) {
    let state = if c.changed_identity.is_some() {
        "KEY CHANGED (run ponte verify)"
    } else if c.verified {
        "verified"
    } else {
        "unverified"
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "handle": c.handle,
                "verified": c.verified,
                "key_changed": c.changed_identity.is_some(),
            })
        );
    } else {
        println!("{}  {state}", c.handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_078_300_123), "2025-11-25T13:45:00Z");
    }
}
