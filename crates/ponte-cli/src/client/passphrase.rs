//! Asking for the profile's passphrase: from `PONTE_PASSPHRASE` or the
//! terminal, three tries as sudo gives.

use super::*;

pub(super) fn passphrase_from_env() -> Option<String> {
    std::env::var("PONTE_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty())
}

/// Read a line from the terminal without echo (via `stty`, best effort).
pub(super) fn prompt_hidden(prompt: &str) -> std::io::Result<String> {
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
pub(super) const PASSPHRASE_TRIES: u32 = 3;

/// The passphrase to open a profile: `PONTE_PASSPHRASE`, else a prompt
/// (and then `prompted` is set: a wrong one may be asked again).
pub(super) fn unlock_passphrase(prompted: &std::cell::Cell<bool>) -> Result<String, ClientError> {
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
pub(super) fn with_passphrase<T>(
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
pub(super) fn new_profile_key(no_passphrase: bool) -> anyhow::Result<KeySource> {
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
