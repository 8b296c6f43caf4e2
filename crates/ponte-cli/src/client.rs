//! The client commands: `register`, `send`, `sync`, `listen`, `history`,
//! `contacts`, `verify`, `status`, `timer`, `via add|list|remove|clear` and
//! `group create|add|remove|promote|rename|leave|list|info` (over
//! `ponte-client`). Where a command takes a contact's NAME it also takes a
//! group, `g:ID` or `g:TITLE`.
//!
//! Routes: every command reaches the server directly or through relays
//! given with `--via URL` (repeatable; `tls://HOST:PORT`, `tcp://HOST:PORT`
//! or a share link) and those saved with `ponte via add`.
//!
//! Output: one line per message or tick change on stdout (`--json`: one JSON
//! object per line with `id`, `from`, `to`, `text`, `sent_at`, `status`, and
//! for a group message `group`, and `delivered_to`, `read_by`, `of` on an
//! outgoing one);
//! warnings and connection notices on stderr. Exit code 0 on success
//! (including `send` leaving a message queued because the server is
//! unreachable), 1 on errors, 2 on usage errors (clap).
//!
//! A passphrase typed at the prompt is asked again when it is wrong (and
//! at `register`, when the two entries differ), three tries in all.
//!
//! Text others control (message text, handles, server and relay messages)
//! goes through [`clean`] before it reaches a terminal, so it cannot forge
//! lines or send escape sequences; `--json` keeps it raw (JSON escapes it).
//! Every stdout write goes through [`out`]: a closed stdout (`ponte sync |
//! head`) ends the command quietly with exit 0, and a message that was not
//! printed is not marked as shown (the next `sync` or `listen` prints it).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ponte_client::client::{Event, RegisterOptions, SendOutcome};
use ponte_client::profile::{self, KeySource};
use ponte_client::route::RelayUrl;
use ponte_client::store::Conversation;
use ponte_client::{Client, ClientError, Contact, MessageView, ServerCode, Status, Update};
use std::borrow::Cow;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod group;
mod handoff;
mod output;
mod passphrase;
mod timer;
pub use group::GroupCommand;
use output::*;
use passphrase::*;

/// Largest `--connect-timeout` (an hour: anything longer is a mistake).
const MAX_CONNECT_TIMEOUT_SECS: u64 = 3600;

/// Options every client command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Profile directory (default: $PONTE_PROFILE, else $XDG_DATA_HOME/ponte or ~/.local/share/ponte).
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Seconds to wait when connecting to the server (1 to 3600).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=MAX_CONNECT_TIMEOUT_SECS)
    )]
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

/// `ponte file …`: received files.
#[derive(Debug, Subcommand)]
pub enum FileCommand {
    /// Download, check and decrypt the file of a message (any size).
    Get {
        /// The message id (as `history --json` or `sync --json` print it).
        message_id: String,
        /// Write it here (default: the profile's files directory).
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
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
    /// Send a message or, with --file, a file (works offline: it waits in the outbox).
    Send {
        /// Recipient handle, or a group: g:ID or g:TITLE.
        name: String,
        /// The text (with --file: the caption, optional).
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Send this file (encrypted; the upload resumes after a lost connection).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Reply to (quote) this message of the conversation (a contact's
        /// or a group's, whoever sent it): its id, as `--json` output shows
        /// it. Works with --file too.
        #[arg(long, value_name = "ID")]
        reply_to: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Connect, send what waits, receive what is pending, print what is new, exit.
    Sync {
        /// Fetch received files up to this many bytes (0: none; default 16 MiB).
        #[arg(long, value_name = "BYTES")]
        auto_download: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// Stay connected and print messages and tick changes as they happen.
    Listen {
        /// Fetch received files up to this many bytes (0: none; default 16 MiB).
        #[arg(long, value_name = "BYTES")]
        auto_download: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// Received files: fetch one that was not fetched automatically.
    #[command(subcommand)]
    File(FileCommand),
    /// Groups: create, add, remove, promote, rename, leave, list, info.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Show the conversation with a contact or a group.
    History {
        /// Contact handle, or a group: g:ID or g:TITLE.
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Search the whole local history (every word must appear; a word of
    /// 3 letters or more also matches longer words it starts), newest first.
    Search {
        /// The words to look for.
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// At most this many messages.
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: usize,
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
    /// Disappearing messages: show or set a conversation's timer (5s to 90d, or off).
    Timer {
        /// Contact handle.
        name: String,
        /// How long messages live once read: 30s, 5m, 1h, 7d, 2w, or `off`
        /// (omitted: show the current timer).
        duration: Option<String>,
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Shares the profile lock for the rest of this process: refused while
/// `ponte app` holds the profile (see `ponte_client::lock`).
fn hold_profile(dir: &std::path::Path) -> anyhow::Result<()> {
    static HELD: std::sync::Mutex<Vec<ponte_client::lock::ProfileLock>> =
        std::sync::Mutex::new(Vec::new());
    if let Some(lock) = ponte_client::lock::ProfileLock::shared(dir)? {
        HELD.lock()
            .map_err(|_| anyhow::anyhow!("profile lock poisoned"))?
            .push(lock);
    }
    Ok(())
}

fn open_client(common: &Common) -> anyhow::Result<Client> {
    let dir = profile::resolve_dir(common.profile.clone())?;
    hold_profile(&dir)?;
    let mut client = with_passphrase(|pass| Client::open(&dir, pass))?;
    client.set_connect_timeout(Duration::from_secs(common.connect_timeout));
    client.set_extra_vias(common.vias()?);
    Ok(client)
}

/// Refuse a malformed handle before anything else happens, with the same
/// error in every command that takes a NAME.
fn check_handle(name: &str) -> anyhow::Result<()> {
    ponte_wire::messages::validate_handle(name)
        .map_err(|e| anyhow::anyhow!("invalid handle {name:?}: {e}"))
}

/// A conversation argument: a handle (checked like [`check_handle`]) or
/// a group, `g:…` (resolved against the profile later).
fn check_conversation(name: &str) -> anyhow::Result<()> {
    if name.starts_with("g:") {
        return Ok(());
    }
    check_handle(name)
}

/// Run a client command.
pub fn run(cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    match run_command(cmd) {
        // The reader went away (`ponte sync | head`): nothing left to do,
        // and nothing unprinted was marked as shown.
        Err(e) if stdout_closed_in(&e) => Ok(ExitCode::SUCCESS),
        // Errors can quote the server (its refusal details) or arguments:
        // the terminal gets them cleaned too.
        Err(e) => {
            let full = format!("{e:#}");
            let text = clean(&full);
            Err(match hint(&e) {
                Some(hint) => anyhow::anyhow!("{text}\nponte: hint: {hint}"),
                None => anyhow::anyhow!("{text}"),
            })
        }
        ok => ok,
    }
}

fn run_command(cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClientCommand::Register {
            server,
            invite,
            no_passphrase,
            name,
            common,
        } => {
            check_handle(&name)?;
            let dir = profile::resolve_dir(common.profile.clone())?;
            hold_profile(&dir)?;
            // An existing profile keeps its key: asking how to protect a
            // new one would only be ignored.
            let source = if profile::Profile::exists(&dir) {
                KeySource::KeyFile
            } else {
                new_profile_key(no_passphrase)?
            };
            let timeout = Duration::from_secs(common.connect_timeout);
            let vias = common.vias()?;
            let rt = runtime()?;
            // A wrong passphrase for an existing profile fails before
            // anything reaches the server, so asking again is safe.
            let client = with_passphrase(|pass| {
                let mut options = RegisterOptions::new(server.as_str(), name.as_str())
                    .connect_timeout(timeout)
                    .vias(vias.clone());
                options.invite.clone_from(&invite);
                rt.block_on(Client::register(&dir, source.clone(), pass, options))
            })?;
            if common.json {
                out(serde_json::json!({
                    "handle": client.handle(),
                    "server": client.server().to_string(),
                    "profile": dir.display().to_string(),
                }))?;
            } else {
                out(format_args!(
                    "registered as {} on {}",
                    client.handle(),
                    client.server()
                ))?;
                if let Some(route) = client.route_in_use() {
                    out(format_args!("reached over: {}", clean(route)))?;
                }
                out(format_args!("profile: {}", dir.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Send {
            name,
            text,
            file,
            reply_to,
            common,
        } => {
            check_conversation(&name)?;
            let reply_to = match &reply_to {
                Some(id) => Some(ponte_e2e::MessageId::from_hex(id.trim()).ok_or_else(|| {
                    ClientError::Invalid(format!(
                        "--reply-to {id:?}: a message id is 32 hex digits (see --json output)"
                    ))
                })?),
                None => None,
            };
            let mut client = open_client(&common)?;
            let to = client.resolve(&name)?;
            let me = client.handle().to_owned();
            let rt = runtime()?;
            // `ponte listen` holds this profile's connection: it sends the
            // text, or uploads the file and sends it.
            let live = handoff::holder(&common)?;
            let outcome = match (&file, live) {
                (None, Some(holder)) => handoff::send(
                    &client,
                    &rt,
                    &to,
                    text.as_deref().unwrap_or(""),
                    reply_to.as_ref(),
                    &holder,
                )?,
                (Some(path), Some(holder)) => handoff::send_file(
                    &client,
                    &rt,
                    &to,
                    path,
                    text.as_deref().unwrap_or(""),
                    reply_to.as_ref(),
                    &holder,
                )?,
                (Some(path), None) => {
                    let mut bar = ProgressBar::new(!common.json);
                    let caption = text.as_deref().unwrap_or("");
                    let r = rt.block_on(client.send_file_reply_to(
                        &to,
                        path,
                        caption,
                        reply_to.as_ref(),
                        &mut |d, t| bar.update(d, t),
                    ));
                    bar.finish();
                    r?
                }
                (None, None) => rt.block_on(client.send_reply_to(
                    &to,
                    text.as_deref().unwrap_or(""),
                    reply_to.as_ref(),
                ))?,
            };
            let SendOutcome {
                message,
                note,
                warnings,
                key_changed,
            } = outcome;
            if key_changed {
                // This send found the change: it fails exactly as the next
                // ones will. Its message stays held in the outbox (queued,
                // never encrypted to the new key) until `verify --confirm`.
                return Err(ClientError::KeyChanged(name).into());
            }
            // Each on its own line: a warning about the outbox is not part
            // of why this message is queued.
            for w in &warnings {
                notice(&format!("WARNING: {w}"));
            }
            if let Some(note) = note {
                notice(&note);
            }
            match print_message(&me, &message, common.json) {
                // Sent or queued all the same: the exit code says which.
                Err(e) if is_stdout_closed(&e) => {}
                r => r?,
            }
            // Queued (server unreachable) is success; refused for good is not.
            if message.status == Status::Failed {
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Sync {
            auto_download,
            common,
        } => {
            let mut client = open_client(&common)?;
            // `ponte listen` holds this profile's connection: it sends what
            // waits and receives and shows what comes, so this sync has
            // nothing to do (logging in would push the listener off).
            if let Some(holder) = handoff::holder(&common)? {
                notice(&format!(
                    "{holder} holds this profile's connection: it sends, receives and shows \
                     messages; nothing to sync"
                ));
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(bytes) = auto_download {
                client.set_auto_download(bytes);
            }
            let me = client.handle().to_owned();
            let json = common.json;
            runtime()?.block_on(client.sync_to(&mut |e| print_event(&me, e, json)))?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Listen {
            auto_download,
            common,
        } => {
            let mut client = open_client(&common)?;
            let _live = handoff::claim(&common)?;
            if let Some(bytes) = auto_download {
                client.set_auto_download(bytes);
            }
            let me = client.handle().to_owned();
            let json = common.json;
            let rt = runtime()?;
            rt.block_on(async {
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                client
                    .listen_to(&mut |e| print_event(&me, e, json), shutdown)
                    .await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Status { common } => {
            let mut client = open_client(&common)?;
            let status = runtime()?.block_on(client.status())?;
            match print_status(&client, &status, common.json) {
                // The exit code still tells whether a route works.
                Err(e) if is_stdout_closed(&e) => {}
                r => r?,
            }
            // The table shows each route's failure; a security refusal is
            // also an error of the command, said on stderr like elsewhere.
            if let (true, Err(e)) = (status.refused, &status.in_use) {
                anyhow::bail!("{e}");
            }
            Ok(if status.in_use.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ClientCommand::Via(cmd) => via(cmd),
        ClientCommand::Timer {
            name,
            duration,
            common,
        } => timer::run(name, duration, common),
        ClientCommand::Group(cmd) => group::run(cmd),
        ClientCommand::File(FileCommand::Get {
            message_id,
            out: target,
            common,
        }) => {
            let id = ponte_e2e::MessageId::from_hex(message_id.trim()).ok_or_else(|| {
                anyhow::anyhow!("{:?} is not a message id (32 hex digits)", message_id)
            })?;
            let mut client = open_client(&common)?;
            let path = match handoff::holder(&common)? {
                // `ponte listen` holds this profile's connection: it
                // fetches the file (no progress bar here then).
                Some(holder) => {
                    handoff::file_get(&mut client, &runtime()?, &id, target.as_deref(), &holder)?
                }
                None => {
                    let mut bar = ProgressBar::new(!common.json);
                    let r = runtime()?.block_on(client.fetch_file(
                        &id,
                        target.as_deref(),
                        &mut |d, t| bar.update(d, t),
                    ));
                    bar.finish();
                    r?
                }
            };
            if common.json {
                out(serde_json::json!({ "id": id.to_hex(), "path": path.display().to_string() }))?;
            } else {
                out(format_args!("{}", clean(&path.display().to_string())))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::History { name, common } => {
            check_conversation(&name)?;
            let client = open_client(&common)?;
            let to = client.resolve(&name)?;
            let me = client.handle().to_owned();
            let (mut printed, mut unreadable) = (0usize, 0usize);
            client.history_of(&to, &mut |m| {
                printed += 1;
                unreadable += usize::from(m.unreadable);
                print_message(&me, m, common.json)
            })?;
            if unreadable > 0 {
                // The others were shown; the command still says it failed.
                anyhow::bail!(
                    "{unreadable} of {printed} messages with {name} could not be read: the \
                     profile's stored data is corrupt or was altered (they are marked \
                     UNREADABLE; their text is not shown)"
                );
            }
            if printed == 0 {
                // A mistyped name must not look like an empty conversation.
                if matches!(to, Conversation::Contact(_))
                    && client.store().contact(&name)?.is_none()
                {
                    anyhow::bail!(
                        "no conversation with {name}: not a contact of this profile \
                         (see `ponte contacts`; `ponte send {name} TEXT` starts one)"
                    );
                }
                notice(&format!("no messages with {name} yet"));
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Search {
            text,
            limit,
            common,
        } => {
            let client = open_client(&common)?;
            let me = client.handle().to_owned();
            let hits = client.search(&text.join(" "), limit)?;
            if hits.is_empty() && !common.json {
                notice("no message holds all of these words");
            }
            for h in &hits {
                if common.json {
                    let mut v = output::message_json(&me, &h.message);
                    v["chat"] = h.chat.clone().into();
                    out(v)?;
                } else {
                    print_message(&me, &h.message, false)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Contacts { common } => {
            let client = open_client(&common)?;
            let contacts = client.contacts()?;
            if contacts.is_empty() && !common.json {
                // On stderr: stdout stays a list (empty) for scripts.
                notice("no contacts yet: `ponte send NAME TEXT` or `ponte verify NAME` adds one");
            }
            for c in contacts {
                print_contact(&c, common.json)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Verify {
            name,
            confirm,
            common,
        } => {
            check_handle(&name)?;
            let mut client = open_client(&common)?;
            if confirm && client.store().contact(&name)?.is_none() {
                // Fetching the key and trusting it in one step would mark
                // verified a number nobody compared.
                anyhow::bail!(
                    "{name}'s key is not known here yet, so there is no safety number to \
                     confirm: run `ponte verify {name}` first, compare the number with {name}, \
                     then run `ponte verify {name} --confirm`"
                );
            }
            let (number, contact) = runtime()?.block_on(client.safety_number(&name, !confirm))?;
            if confirm {
                client.confirm(&name)?;
            }
            let changed = contact.changed_identity.is_some();
            if common.json {
                out(serde_json::json!({
                    "handle": name,
                    "safety_number": number.digits(),
                    "qr_payload": number.qr_payload(),
                    "verified": confirm || contact.verified,
                    "key_changed": changed && !confirm,
                }))?;
                return Ok(ExitCode::SUCCESS);
            }
            if changed && !confirm {
                warn(&format!(
                    "WARNING: {name}'s identity key has CHANGED since you first talked. The number \
                     below is for the NEW key. Compare it with {name} in person or over a trusted \
                     channel before confirming."
                ));
            }
            out(format_args!("Safety number with {name}:\n"))?;
            out(format_args!("{}\n", number.grouped()))?;
            match qrcode::QrCode::new(number.qr_payload().as_bytes()) {
                Ok(code) => {
                    let art = code
                        .render::<qrcode::render::unicode::Dense1x2>()
                        .dark_color(qrcode::render::unicode::Dense1x2::Light)
                        .light_color(qrcode::render::unicode::Dense1x2::Dark)
                        .build();
                    out(art)?;
                }
                Err(e) => notice(&format!("cannot draw the QR code: {e}")),
            }
            if confirm {
                out(format_args!("{name} is now marked verified."))?;
            } else if contact.verified {
                out(format_args!("{name} is verified."))?;
            } else {
                out(format_args!(
                    "Compare these digits with {name}'s screen (or scan the code). If they match, run:\n  ponte verify {name} --confirm"
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open_profile(common: &Common) -> anyhow::Result<profile::Profile> {
    let dir = profile::resolve_dir(common.profile.clone())?;
    hold_profile(&dir)?;
    if !profile::Profile::exists(&dir) {
        anyhow::bail!(
            "no profile in {} yet: run `ponte register --server ADDRESS [--via URL] NAME` first",
            dir.display()
        );
    }
    Ok(with_passphrase(|pass| profile::Profile::open(&dir, pass))?)
}

fn via(cmd: ViaCommand) -> anyhow::Result<ExitCode> {
    use ponte_client::client::{save_vias, saved_vias};
    match cmd {
        ViaCommand::Add { url, common } => {
            let url: RelayUrl = url.parse()?;
            let p = open_profile(&common)?;
            let mut list = saved_vias(p.store())?;
            // One answer on stdout, whichever it is: adding a saved relay
            // again changes nothing and is not an error.
            let shown = clean(&url.to_string()).into_owned();
            if list.contains(&url) {
                if common.json {
                    out(serde_json::json!({ "already_saved": url.to_string() }))?;
                } else {
                    out(format_args!("relay {shown} is already saved"))?;
                }
            } else {
                list.push(url.clone());
                save_vias(p.store(), &list)?;
                if common.json {
                    out(serde_json::json!({ "added": url.to_string() }))?;
                } else {
                    out(format_args!("saved relay {shown}"))?;
                }
            }
        }
        ViaCommand::List { common } => {
            let p = open_profile(&common)?;
            let last = ponte_client::client::last_route(p.store())?;
            let saved = saved_vias(p.store())?;
            if saved.is_empty() && !common.json {
                // On stderr: stdout stays a list (empty) for scripts.
                eprintln!(
                    "no relays saved: the client goes direct. Add one with `ponte via add URL` \
                     (tcp://HOST:PORT, tls://HOST:PORT or a ponte://relay?… share link)"
                );
            }
            for url in saved {
                let used_last = last.as_deref() == Some(format!("relay {url}").as_str());
                let shown = clean(&url.to_string()).into_owned();
                if common.json {
                    out(serde_json::json!({ "via": url.to_string(), "worked_last": used_last }))?;
                } else if used_last {
                    out(format_args!("{shown}  (worked last)"))?;
                } else {
                    out(shown)?;
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
                out(format_args!("removed relay {}", clean(&url.to_string())))?;
            }
        }
        ViaCommand::Clear { common } => {
            let p = open_profile(&common)?;
            let n = saved_vias(p.store())?.len();
            save_vias(p.store(), &[])?;
            if !common.json {
                out(format_args!("removed {n} saved relays"))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_078_300_123), "2025-11-25T13:45:00Z");
    }

    #[test]
    fn clean_escapes_what_a_terminal_would_act_on_and_keeps_the_rest() {
        let plain = "café, 日本語, emoji 🎉👍🏽, Ελληνικά, עברית, back\\slash";
        assert!(matches!(clean(plain), Cow::Borrowed(s) if s == plain));
        assert_eq!(clean("a\nb\rc\td"), r"a\nb\rc\td");
        assert_eq!(
            clean("\x1b[31mred\x07\x08\x00"),
            r"\u{1b}[31mred\u{7}\u{8}\u{0}"
        );
        assert_eq!(
            clean("del\x7f c1\u{80}\u{85}\u{9b}\u{9f}"),
            r"del\u{7f} c1\u{80}\u{85}\u{9b}\u{9f}"
        );
        for c in ('\u{202a}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            assert_eq!(
                clean(&format!("x{c}y")),
                format!("x\\u{{{:x}}}y", u32::from(c))
            );
        }
        assert_eq!(clean("a\u{2028}b\u{2029}"), r"a\u{2028}b\u{2029}");
        // Every C0 and C1 control, whatever its notation.
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(
                !clean(&c.to_string()).chars().any(char::is_control),
                "{c:?}"
            );
        }
        // Neighbours of the escaped ranges pass.
        for c in ['\u{a0}', '\u{2027}', '\u{2065}', '\u{206a}', '\u{202f}'] {
            assert_eq!(clean(&c.to_string()), c.to_string(), "{c:?}");
        }
    }

    #[test]
    fn status_word_and_ticks_are_not_doubled() {
        for s in [
            Status::Queued,
            Status::Sent,
            Status::Delivered,
            Status::Read,
            Status::Expired,
            Status::Failed,
        ] {
            assert!(!ticks(s).contains(s.as_str()), "{s:?}: {}", ticks(s));
        }
    }

    #[test]
    fn connect_timeout_zero_is_a_usage_error() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: ClientCommand,
        }
        let err = Cli::try_parse_from(["ponte", "sync", "--connect-timeout", "0"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let cli = Cli::try_parse_from(["ponte", "sync", "--connect-timeout", "1"]).unwrap();
        let ClientCommand::Sync { common, .. } = cli.cmd else {
            panic!("{cli:?}")
        };
        assert_eq!(common.connect_timeout, 1);
        assert!(Cli::try_parse_from(["ponte", "sync", "--connect-timeout", "3601"]).is_err());
    }
}
