//! The client commands: `register`, `send`, `sync`, `listen`, `history`,
//! `contacts`, `verify` (over `ponte-client`).
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
        #[arg(long, value_name = "TOKEN")]
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
            let client = runtime()?.block_on(Client::register(
                &dir,
                source,
                unlock_passphrase,
                &server,
                &name,
                invite.as_deref(),
                timeout,
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
