//! `ponte timer NAME|g:GROUP [DURATION|off]`: show or set the
//! disappearing-messages timer of a conversation (with a contact, or a
//! group's, which any member sets), and how timers read in the other
//! commands' output (a notice line for a setting, the timer of a message).

use super::*;
use ponte_client::client::{format_timer, parse_timer};
use ponte_client::{Conversation, Notice};
use ponte_e2e::Timer;

/// The prefix that names a group conversation (`g:GROUP`).
const GROUP_PREFIX: &str = "g:";

fn describe(timer: Option<Timer>) -> String {
    timer.map_or_else(|| "off".to_owned(), format_timer)
}

/// `ponte timer NAME|g:GROUP [DURATION]`.
pub(super) fn run(
    name: String,
    duration: Option<String>,
    common: Common,
) -> anyhow::Result<ExitCode> {
    if !name.starts_with(GROUP_PREFIX) {
        check_handle(&name)?;
    }
    // The duration first: a typo is a usage error before anything opens.
    let timer = duration.as_deref().map(parse_timer).transpose()?;
    let mut client = open_client(&common)?;
    let conversation = if name.starts_with(GROUP_PREFIX) {
        client.resolve(&name)?
    } else {
        Conversation::contact(&name)
    };
    let Some(timer) = timer else {
        let current = client.timer(&conversation)?;
        let (with, group) = match &conversation {
            Conversation::Group(g) => (
                format!("in {}", clean(&client.group_info(g)?.title)),
                Some(g.to_hex()),
            ),
            _ => (format!("with {name}"), None),
        };
        if common.json {
            let mut v = serde_json::json!({
                "conversation": name,
                "timer": describe(current),
                "timer_secs": current.map_or(0, Timer::secs),
            });
            if let Some(g) = group {
                v["group"] = g.into();
            }
            out(v)?;
        } else {
            out(format_args!(
                "disappearing messages {with}: {}",
                describe(current)
            ))?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let me = client.handle().to_owned();
    let SendOutcome {
        message,
        note,
        warnings,
        key_changed,
    } = match super::handoff::holder(&common)? {
        // `ponte listen` holds this profile's connection: it sends the
        // setting (a group's is encrypted for the group here).
        Some(holder) => super::handoff::timer(&client, &runtime()?, &conversation, timer, &holder)?,
        None => runtime()?.block_on(client.set_timer(&conversation, timer))?,
    };
    if key_changed {
        // As for `send`: held until `verify --confirm`.
        return Err(ClientError::KeyChanged(name).into());
    }
    for w in &warnings {
        notice(&format!("WARNING: {w}"));
    }
    if let Some(note) = note {
        notice(&note);
    }
    match print_message(&me, &message, common.json) {
        Err(e) if is_stdout_closed(&e) => {}
        r => r?,
    }
    if message.status == Status::Failed {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// A timer-setting notice as a line: `WHEN alice set disappearing messages
/// to 1 h` (with the ticks of our own; `in [GROUP]` for a group's).
pub(super) fn notice_line(me: &str, m: &MessageView, n: &Notice) -> String {
    let when = rfc3339(m.sent_at.0);
    let who = if m.outgoing {
        Cow::Borrowed(me)
    } else {
        clean(&m.peer)
    };
    let what = match n {
        Notice::TimerSet(Some(t)) => format!("set disappearing messages to {}", format_timer(*t)),
        Notice::TimerSet(None) => "turned disappearing messages off".to_owned(),
        _ => "changed something in this conversation".to_owned(),
    };
    let group = m.group.map(|g| match &m.group_title {
        Some(t) => clean(t).into_owned(),
        None => format!("g:{}", g.to_hex()),
    });
    match (m.outgoing, group) {
        (true, Some(g)) => format!(
            "{when} {who} {what} in [{g}] [{} {}]",
            m.status.as_str(),
            ticks(m.status)
        ),
        (true, None) => format!(
            "{when} {who} {what} (with {}) [{} {}]",
            clean(&m.peer),
            m.status.as_str(),
            ticks(m.status)
        ),
        (false, Some(g)) => format!("{when} {who} {what} in [{g}]"),
        (false, None) => format!("{when} {who} {what}"),
    }
}

/// The timer fields of a message's JSON: `timer_secs` and `expires_at`
/// for a message that disappears; `notice: "timer"` with `timer_set`
/// (`"1 h"` or `"off"`) and `timer_set_secs` (0: off) for a setting, whose
/// `text` is null.
pub(super) fn add_json(v: &mut serde_json::Value, m: &MessageView) {
    if let Some(t) = m.timer {
        v["timer_secs"] = t.secs().into();
        v["expires_at"] = m
            .expires_at
            .map_or(serde_json::Value::Null, |at| rfc3339(at.0).into());
    }
    if let Some(Notice::TimerSet(t)) = m.notice {
        v["notice"] = "timer".into();
        v["text"] = serde_json::Value::Null;
        v["timer_set"] = describe(t).into();
        v["timer_set_secs"] = t.map_or(0, Timer::secs).into();
    }
}

/// What follows a message that disappears on its line: `[⏱ 1 h]`.
pub(super) fn suffix(m: &MessageView) -> String {
    m.timer
        .map(|t| format!(" [⏱ {}]", format_timer(t)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bad_duration_is_refused_before_opening_anything() {
        let common = || Common {
            profile: Some(PathBuf::from("/nonexistent/ponte-timer-test")),
            json: false,
            connect_timeout: 5,
            via: Vec::new(),
        };
        // A group too: the duration is checked before the group is looked up.
        let e = run("g:team".into(), Some("1y".into()), common()).unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
        let e = run("bob".into(), Some("1y".into()), common()).unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
        let e = run("bob".into(), Some("3s".into()), common()).unwrap_err();
        assert!(e.to_string().contains("between 5 s and 90 d"), "{e}");
    }
}
