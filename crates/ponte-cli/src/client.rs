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
use ponte_client::{Client, ClientError, Contact, MessageView, ServerCode, Status, Update};
use std::borrow::Cow;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
        /// Recipient handle.
        name: String,
        /// The text (with --file: the caption, optional).
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Send this file (encrypted; the upload resumes after a lost connection).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
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

/// How many times a passphrase typed at the prompt is asked for (as sudo
/// does) before the command gives up.
const PASSPHRASE_TRIES: u32 = 3;

/// The passphrase to open a profile: `PONTE_PASSPHRASE`, else a prompt
/// (and then `prompted` is set: a wrong one may be asked again).
fn unlock_passphrase(prompted: &std::cell::Cell<bool>) -> Result<String, ClientError> {
    if let Some(p) = passphrase_from_env() {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::PassphraseRequired);
    }
    prompted.set(true);
    prompt_hidden("Passphrase for this profile: ").map_err(|_| ClientError::PassphraseRequired)
}

/// Runs `open` with a passphrase source ([`unlock_passphrase`]) until it
/// does not fail for a wrong passphrase typed at the prompt, at most
/// [`PASSPHRASE_TRIES`] times. A wrong `PONTE_PASSPHRASE` fails at once:
/// the same value would fail again.
fn with_passphrase<T>(
    mut open: impl FnMut(&dyn Fn() -> Result<String, ClientError>) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let mut tries = 0;
    loop {
        let prompted = std::cell::Cell::new(false);
        match open(&|| unlock_passphrase(&prompted)) {
            Err(ClientError::WrongPassphrase) if prompted.get() => {
                tries += 1;
                if tries == PASSPHRASE_TRIES {
                    return Err(ClientError::WrongPassphrase);
                }
                notice("wrong passphrase, try again");
            }
            // Nothing was typed: say where the wrong one came from (set for
            // another profile, say), since no prompt appeared.
            Err(ClientError::WrongPassphrase) => {
                return Err(ClientError::Invalid(
                    "wrong passphrase for this profile in PONTE_PASSPHRASE (unset it to be \
                     asked on the terminal)"
                        .into(),
                ))
            }
            r => return r,
        }
    }
}

/// How to protect a new profile. Passphrases typed twice that differ are
/// asked for again, at most [`PASSPHRASE_TRIES`] times.
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
    for tries in 1..=PASSPHRASE_TRIES {
        let first = prompt_hidden("Passphrase to protect this profile (empty: use a key file): ")?;
        if first.is_empty() {
            return Ok(KeySource::KeyFile);
        }
        let again = prompt_hidden("Repeat the passphrase: ")?;
        if first == again {
            return Ok(KeySource::Passphrase(
                first,
                ponte_client::atrest::KdfParams::DEFAULT,
            ));
        }
        if tries < PASSPHRASE_TRIES {
            notice("the passphrases differ, try again");
        }
    }
    anyhow::bail!("the passphrases differ ({PASSPHRASE_TRIES} tries): nothing was created")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn open_client(common: &Common) -> anyhow::Result<Client> {
    let dir = profile::resolve_dir(common.profile.clone())?;
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
            common,
        } => {
            check_handle(&name)?;
            let mut client = open_client(&common)?;
            let me = client.handle().to_owned();
            let rt = runtime()?;
            let outcome = match &file {
                Some(path) => {
                    let mut bar = ProgressBar::new(!common.json);
                    let caption = text.as_deref().unwrap_or("");
                    let r = rt.block_on(
                        client.send_file(&name, path, caption, &mut |d, t| bar.update(d, t)),
                    );
                    bar.finish();
                    r?
                }
                None => rt.block_on(client.send(&name, text.as_deref().unwrap_or("")))?,
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
        ClientCommand::File(FileCommand::Get {
            message_id,
            out: target,
            common,
        }) => {
            let id = ponte_e2e::MessageId::from_hex(message_id.trim()).ok_or_else(|| {
                anyhow::anyhow!("{:?} is not a message id (32 hex digits)", message_id)
            })?;
            let mut client = open_client(&common)?;
            let mut bar = ProgressBar::new(!common.json);
            let r = runtime()?
                .block_on(client.fetch_file(&id, target.as_deref(), &mut |d, t| bar.update(d, t)));
            bar.finish();
            let path = r?;
            if common.json {
                out(serde_json::json!({ "id": id.to_hex(), "path": path.display().to_string() }))?;
            } else {
                out(format_args!("{}", clean(&path.display().to_string())))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::History { name, common } => {
            check_handle(&name)?;
            let client = open_client(&common)?;
            let me = client.handle().to_owned();
            let (mut printed, mut unreadable) = (0usize, 0usize);
            client.history_to(&name, &mut |m| {
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
                if client.store().contact(&name)?.is_none() {
                    anyhow::bail!(
                        "no conversation with {name}: not a contact of this profile \
                         (see `ponte contacts`; `ponte send {name} TEXT` starts one)"
                    );
                }
                notice(&format!("no messages with {name} yet"));
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

fn print_status(
    client: &Client,
    s: &ponte_client::client::RouteStatus,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let probes: Vec<serde_json::Value> = s
            .probes
            .iter()
            .map(|p| match &p.result {
                Ok(ms) => serde_json::json!({ "route": p.route, "ok": true, "ms": ms }),
                Err(e) => serde_json::json!({ "route": p.route, "ok": false, "error": e }),
            })
            .collect();
        return out(serde_json::json!({
            "handle": client.handle(),
            "server": client.server().to_string(),
            "in_use": s.in_use.as_ref().ok(),
            "error": s.in_use.as_ref().err(),
            "last_route": s.last_route,
            "routes": probes,
        }));
    }
    out(format_args!("{} on {}", client.handle(), client.server()))?;
    // Route descriptions and errors can quote what a relay or the network
    // sent: cleaned.
    match &s.in_use {
        Ok(route) => out(format_args!("in use: {}", clean(route)))?,
        Err(e) => out(format_args!("in use: none: {}", clean(e)))?,
    }
    out("routes, in the order they are tried:")?;
    for p in &s.probes {
        match &p.result {
            Ok(ms) => out(format_args!("  ok    {}  ({ms} ms)", clean(&p.route)))?,
            Err(e) => out(format_args!("  FAIL  {}  ({})", clean(&p.route), clean(e)))?,
        }
    }
    Ok(())
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
    // The status word is printed next to these: `[failed ✗]`, not
    // `[failed ✗ failed]`.
    match status {
        Status::Queued => "🕓",
        Status::Sent => "✓",
        Status::Delivered => "✓✓",
        Status::Read => "✓✓",
        Status::Expired => "✗",
        Status::Failed => "✗",
        _ => "",
    }
}

/// Says that stdout is closed (EPIPE): carried inside the `io::Error` that
/// [`out`] returns, so [`run`] can tell it from every other failure.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output is closed")
    }
}

impl std::error::Error for StdoutClosed {}

fn is_stdout_closed(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<StdoutClosed>())
}

/// What to do about a server's refusal, for the errors whose next step is
/// not obvious from the message.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let code = e.chain().find_map(|cause| {
        cause
            .downcast_ref::<ClientError>()
            .and_then(ClientError::server_code)
    })?;
    Some(match code {
        ServerCode::NotRegistered => {
            "the server no longer knows this device (its data was reset, or restored from an \
             older backup). Register this profile again with the same name and server: ponte \
             register --server ADDRESS NAME; your contacts keep your safety number"
        }
        ServerCode::InviteRequired => {
            "ask the server's operator for an invite (they run `ponte server invite`), then \
             register with --invite TOKEN"
        }
        ServerCode::InviteInvalid => {
            "each invite works once; ask the server's operator for a new one"
        }
        ServerCode::HandleTaken => "someone has that name on this server; choose another",
        ServerCode::RateLimited => "wait a while and try again (failed attempts count too)",
        _ => return None,
    })
}

fn stdout_closed_in(e: &anyhow::Error) -> bool {
    // The library's display error keeps the io::Error as its source.
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(is_stdout_closed)
}

/// Write one line to stdout and flush it. Never panics (unlike
/// `println!`): a closed pipe returns an error marked [`StdoutClosed`], and
/// the caller knows the line was not shown.
fn out(line: impl std::fmt::Display) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
            } else {
                e
            }
        })
}

/// A notice on stderr, prefixed `ponte: ` and cleaned. A closed stderr is
/// ignored: notices are not worth failing a command for.
fn notice(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "ponte: {}", clean(text));
}

/// A warning line on stderr as is (our own text, handles already checked).
fn warn(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Whether `c` must not reach a terminal raw: C0 controls (newline, CR,
/// tab, ESC, BEL, backspace...), DEL, C1 controls (U+0080–U+009F), the
/// bidirectional embeddings, overrides and isolates (U+202A–U+202E,
/// U+2066–U+2069), which reorder what follows on the line, and the Unicode
/// line and paragraph separators (U+2028, U+2029).
fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
        || c == '\u{2028}'
        || c == '\u{2029}'
}

/// Text that someone else controls (a contact's message or handle, a
/// server's or relay's words), made safe to print on a terminal: each
/// character of [`is_unsafe_for_terminal`] is shown escaped, `\n`, `\r`,
/// `\t` or `\u{1b}` (Rust's notation), so a message stays on one line and
/// can neither forge another line nor send escape sequences. Everything
/// else, emoji, accents and CJK included, passes unchanged.
fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_for_terminal) {
        return Cow::Borrowed(text);
    }
    let mut s = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if is_unsafe_for_terminal(c) => {
                s.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => s.push(c),
        }
    }
    Cow::Owned(s)
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
        "sent_at": rfc3339(m.sent_at.0),
        "status": m.status.as_str(),
    });
    if m.key_changed {
        v["key_changed"] = serde_json::Value::Bool(true);
    }
    if m.unreadable {
        v["text"] = serde_json::Value::Null;
        v["unreadable"] = serde_json::Value::Bool(true);
    }
    if let Some(f) = &m.file {
        v["file"] = serde_json::json!({
            "name": f.name,
            "size": f.size,
            "mime": f.mime,
            "sha256": f.sha256,
            "path": f.path.as_ref().map(|p| p.display().to_string()),
        });
    }
    v
}

/// What stands for the text of a message whose stored data did not open.
const UNREADABLE: &str =
    "[UNREADABLE: its stored data is corrupt or was altered; the text is not shown]";

/// How a file message reads on a terminal: `[file NAME, SIZE]`, the name
/// escaped, then where it is once fetched.
fn file_label(f: &ponte_client::FileSummary) -> String {
    let mut s = format!("[file {}, {}", clean(&f.name), human_bytes(f.size));
    if let Some(p) = &f.path {
        s.push_str(&format!(", at {}", clean(&p.display().to_string())));
    }
    s.push(']');
    s
}

/// `1.5 MiB`-style sizes.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A transfer's progress bar on stderr (indicatif) with bytes, rate and
/// time left, drawn only when wanted and both stdout and stderr are
/// terminals (never in --json or a pipe).
struct ProgressBar(Option<indicatif::ProgressBar>);

impl ProgressBar {
    fn new(wanted: bool) -> Self {
        let enabled = wanted && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        Self(enabled.then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "[{bar:30}] {percent:>3}% {bytes} / {total_bytes}  {binary_bytes_per_sec}  {eta} left",
            ) {
                bar.set_style(style.progress_chars("#>-"));
            }
            bar
        }))
    }

    fn update(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.0 {
            if bar.length() != Some(total) {
                bar.set_length(total);
                // A resumed transfer counts its rate from where it starts.
                bar.reset_eta();
            }
            bar.set_position(done);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish();
        }
    }
}

fn print_message(me: &str, m: &MessageView, json: bool) -> std::io::Result<()> {
    if json {
        // Raw text: JSON escapes control characters itself.
        return out(message_json(me, m));
    }
    let when = rfc3339(m.sent_at.0);
    let peer = clean(&m.peer);
    let text = if m.unreadable {
        Cow::Borrowed(UNREADABLE)
    } else {
        clean(&m.text)
    };
    let text = match &m.file {
        Some(f) if text.is_empty() => Cow::Owned(file_label(f)),
        Some(f) => Cow::Owned(format!("{} {text}", file_label(f))),
        None => text,
    };
    if m.outgoing {
        out(format_args!(
            "{when} {me} -> {peer}: {text} [{} {}]",
            m.status.as_str(),
            ticks(m.status)
        ))
    } else {
        let warn = if m.key_changed {
            "[UNVERIFIED NEW KEY] "
        } else {
            ""
        };
        out(format_args!("{when} {warn}{peer} -> {me}: {text}"))
    }
}

/// Show one event: updates on stdout (an error when it is closed, so the
/// update is not marked as shown), notices on stderr.
fn print_event(me: &str, event: Event, json: bool) -> std::io::Result<()> {
    match event {
        Event::Update(Update::Message(m)) | Event::Update(Update::Status(m)) => {
            print_message(me, &m, json)
        }
        Event::Connection(c) => {
            notice(&c);
            Ok(())
        }
        Event::Warning(w) => {
            notice(&format!("WARNING: {w}"));
            Ok(())
        }
        Event::FileFetched { peer, id, path } => {
            let path = path.display().to_string();
            if json {
                out(serde_json::json!({ "id": id.to_hex(), "from": peer, "file_fetched": path }))
            } else {
                out(format_args!(
                    "file from {} saved: {}",
                    clean(&peer),
                    clean(&path)
                ))
            }
        }
        other => {
            notice(&format!("{other:?}"));
            Ok(())
        }
    }
}

fn print_contact(c: &Contact, json: bool) -> std::io::Result<()> {
    let state = if c.changed_identity.is_some() {
        "KEY CHANGED (run ponte verify)"
    } else if c.verified {
        "verified"
    } else {
        "unverified"
    };
    if json {
        out(serde_json::json!({
            "handle": c.handle,
            "verified": c.verified,
            "key_changed": c.changed_identity.is_some(),
        }))
    } else {
        out(format_args!("{}  {state}", clean(&c.handle)))
    }
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
