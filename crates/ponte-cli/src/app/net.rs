//! The one task that owns the client's connection.
//!
//! First it gets a client: opened at start (key file, or `PONTE_PASSPHRASE`),
//! or from the first-run screen (register) or the unlock screen. Then it
//! runs `listen` (the same connection life as `ponte listen`: routes,
//! relays, reconnects, the outbox flushed as it fills) with reported
//! messages left unread until their chat is opened. A command from the API
//! (reconnect now: a file queued, a relay added; fetch a file; check the
//! routes) ends the current connection, runs, and `listen` starts again.
//!
//! Its futures are not `Send` (the display callback), so it runs on the
//! thread of `block_on`, next to the HTTP server's tasks.

use super::api::{App, Phase};
use ponte_client::client::{Event, GroupChange, GroupInfo, RegisterOptions, RouteStatus};
use ponte_client::profile::{KeySource, Profile};
use ponte_client::route::RelayUrl;
use ponte_client::{Client, ClientError, Report};
use ponte_e2e::group::GroupId;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// What the first-run and unlock screens ask for.
#[derive(Debug)]
pub enum Setup {
    /// Create the profile and register.
    Register {
        server: String,
        handle: String,
        passphrase: Option<String>,
        invite: Option<String>,
        relay: Option<RelayUrl>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Open the passphrase-protected profile.
    Unlock {
        passphrase: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// What the API asks of the connection.
#[derive(Debug)]
pub enum Command {
    /// Reconnect now (a file waits to be uploaded, the relays changed, the
    /// user asked to retry).
    Reconnect,
    /// Check each route (the relays page).
    Routes {
        reply: oneshot::Sender<Result<RouteStatus, String>>,
    },
    /// Create or change a group on a connection of its own: a change
    /// adding someone who is not a contact yet, whose key comes from the
    /// server's directory (the API writes the others itself).
    Group {
        /// The group (`None`: create one).
        group: Option<GroupId>,
        change: GroupChange,
        reply: oneshot::Sender<Result<GroupInfo, String>>,
    },
}

/// The receiving ends, for [`control`].
#[derive(Debug)]
pub struct Control {
    pub setup: mpsc::Receiver<Setup>,
    pub commands: mpsc::Receiver<Command>,
}

fn err(e: &ClientError) -> String {
    Report(e).to_string()
}

/// Both clients on the profile: one for the connection, one for the API
/// (reads and queueing only; it never connects, so its copy of the Olm
/// account is never used to encrypt).
fn open_pair(dir: &std::path::Path, pass: Option<&str>) -> Result<(Client, Client), ClientError> {
    let get = || {
        pass.map(str::to_owned)
            .ok_or(ClientError::PassphraseRequired)
    };
    let net = Client::open(dir, get)?;
    let local = Client::open(dir, get)?;
    Ok((net, local))
}

fn env_passphrase() -> Option<String> {
    std::env::var("PONTE_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty())
}

/// The client at start, if the profile opens without asking.
fn open_at_start(app: &App) -> Option<(Client, Client)> {
    let dir = app.dir();
    if !Profile::exists(dir) {
        app.set_phase(Phase::Setup);
        return None;
    }
    let needs = match Profile::needs_passphrase(dir) {
        Ok(n) => n,
        Err(e) => {
            app.set_phase(Phase::Failed(err(&e)));
            return None;
        }
    };
    let pass = env_passphrase();
    if needs && pass.is_none() {
        app.set_phase(Phase::Locked);
        return None;
    }
    match open_pair(dir, pass.as_deref()) {
        Ok(pair) => Some(pair),
        // Created, never registered (a first run stopped half-way).
        Err(ClientError::NotRegistered(_)) => {
            app.set_phase(Phase::Setup);
            None
        }
        Err(ClientError::WrongPassphrase) => {
            app.set_phase(Phase::Locked);
            None
        }
        Err(e) => {
            app.set_phase(Phase::Failed(err(&e)));
            None
        }
    }
}

async fn register(
    app: &App,
    server: String,
    handle: String,
    passphrase: Option<String>,
    invite: Option<String>,
    relay: Option<RelayUrl>,
) -> Result<(Client, Client), String> {
    let dir = app.dir();
    let source = match &passphrase {
        Some(p) => KeySource::Passphrase(p.clone(), ponte_client::atrest::KdfParams::DEFAULT),
        None => KeySource::KeyFile,
    };
    let mut options = RegisterOptions::new(server, handle).vias(relay.into_iter().collect());
    options.invite = invite;
    let pass = passphrase.clone();
    let net = Client::register(
        dir,
        source,
        move || pass.ok_or(ClientError::PassphraseRequired),
        options,
    )
    .await
    .map_err(|e| err(&e))?;
    let local = Client::open(dir, || {
        passphrase.clone().ok_or(ClientError::PassphraseRequired)
    })
    .map_err(|e| err(&e))?;
    Ok((net, local))
}

/// Wait for the first-run or unlock screen until the profile opens.
/// The answer for the screen that opened the profile, sent once the app
/// is ready (so it reports the open profile).
type Opened = (Client, Client, Option<oneshot::Sender<Result<(), String>>>);

async fn until_open(
    app: &App,
    setup: &mut mpsc::Receiver<Setup>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Opened> {
    if let Some((net, local)) = open_at_start(app) {
        return Some((net, local, None));
    }
    loop {
        let request = tokio::select! {
            r = setup.recv() => r?,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match request {
            Setup::Register {
                server,
                handle,
                passphrase,
                invite,
                relay,
                reply,
            } => {
                if !matches!(app.phase(), Phase::Setup) {
                    let _ = reply.send(Err("this profile is registered already".into()));
                    continue;
                }
                match register(app, server, handle, passphrase, invite, relay).await {
                    Ok((net, local)) => return Some((net, local, Some(reply))),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Setup::Unlock { passphrase, reply } => {
                if !matches!(app.phase(), Phase::Locked) {
                    let _ = reply.send(Err("the profile is not locked".into()));
                    continue;
                }
                match open_pair(app.dir(), Some(&passphrase)) {
                    Ok((net, local)) => return Some((net, local, Some(reply))),
                    Err(e) => {
                        let _ = reply.send(Err(err(&e)));
                    }
                }
            }
        }
    }
}

/// Run until `stop`: get the client, then keep its connection.
pub async fn control(
    app: Arc<App>,
    control: Control,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Control {
        mut setup,
        mut commands,
    } = control;
    let Some((mut client, local, reply)) = until_open(&app, &mut setup, &mut stop).await else {
        return Ok(());
    };
    client.set_read_when_opened(true);
    app.ready(local, client.handle());
    app.index_in_background();
    if let Some(reply) = reply {
        let _ = reply.send(Ok(()));
    }
    // Later setup requests are answered: nothing to set up.
    tokio::spawn(async move {
        while let Some(r) = setup.recv().await {
            let reply = match r {
                Setup::Register { reply, .. } | Setup::Unlock { reply, .. } => reply,
            };
            let _ = reply.send(Err("the profile is open already".into()));
        }
    });
    loop {
        let mut got: Option<Option<Command>> = None;
        let result = {
            let events = app.clone();
            let mut display = move |e: Event| {
                events.on_event(e);
                Ok(())
            };
            let wake = async {
                tokio::select! {
                    c = commands.recv() => got = Some(c),
                    _ = stop.wait_for(|s| *s) => {}
                }
            };
            client.listen_to(&mut display, wake).await
        };
        if let Err(e) = &result {
            // Retrying at once cannot fix it (the server does not know this
            // account, the profile's files): said on the page; a command
            // (the user's retry) tries again, and so does the timer for the
            // database (busy past its timeout: it frees up by itself).
            app.set_offline(&format!("stopped: {}", err(e)));
            let retry_in = if matches!(e, ClientError::Db(_)) {
                std::time::Duration::from_secs(5)
            } else {
                std::time::Duration::MAX
            };
            got = tokio::select! {
                c = commands.recv() => Some(c),
                () = tokio::time::sleep(retry_in.min(std::time::Duration::from_secs(86_400 * 365))) => Some(Some(Command::Reconnect)),
                _ = stop.wait_for(|s| *s) => None,
            };
        }
        let first = match got {
            None | Some(None) => return Ok(()),
            Some(Some(c)) => c,
        };
        app.set_connecting();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            run_command(&app, &mut client, command).await;
            next = commands.try_recv().ok();
        }
    }
}

async fn run_command(app: &App, client: &mut Client, command: Command) {
    match command {
        Command::Reconnect => {}
        Command::Routes { reply } => {
            let _ = reply.send(client.status().await.map_err(|e| err(&e)));
        }
        Command::Group {
            group,
            change,
            reply,
        } => {
            let r = client.group_change(group.as_ref(), &change).await;
            if let Ok(outcome) = &r {
                for w in &outcome.warnings {
                    app.on_event(Event::Warning(w.clone()));
                }
            }
            let _ = reply.send(r.map(|o| o.info).map_err(|e| err(&e)));
        }
    }
}
