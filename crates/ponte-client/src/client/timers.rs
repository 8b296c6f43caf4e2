//! Disappearing messages: a conversation's timer (`ponte timer`), and the
//! sweep that deletes what expired.
//!
//! Setting a timer ([`Client::set_timer`]) is a message: a notice in both
//! sides' history and a kind 7 envelope to the contact, queued like a text
//! (it waits in the outbox when the server is unreachable). The timer in
//! force is the latest setting by sent time, whichever side set it, and
//! every text or file either side sends afterwards carries it in its
//! envelope. The sender's copy disappears that long after it was written
//! (once it left the outbox); the recipient's that long after it was first
//! displayed (`history`, `sync`, `listen`, on a terminal or as JSON: when
//! its read receipt is queued). The server deletes its copy on delivery,
//! as for any message.
//!
//! In a group, any current member sets the timer: the setting goes in the
//! group's Megolm channel to every member (a notice in each history), a
//! member who joins later is handed it pairwise with the group, and every
//! group text or file sent afterwards carries it. A setting from someone
//! who is not a member (a removed member's client that does not know yet)
//! is refused with a warning.
//!
//! The sweep ([`Client::sweep_expired`], see [`crate::store::Swept`]) runs
//! when a client opens its profile, at the end of every `sync`, and in
//! `listen`'s loop (at least every half second or so while idle).

use super::outbound::SendOutcome;
use super::{is_fatal, Client, Event};
use crate::store::{Conversation, Swept, UnixMillis};
use crate::{ClientError, Report, Result};
use ponte_e2e::envelope::{MAX_TIMER_SECS, MIN_TIMER_SECS};
use ponte_e2e::{MessageId, Timer};
use ponte_wire::messages::validate_handle;

/// Parse a timer as the command line takes it: a whole number and a unit
/// (`30s`, `5m`, `1h`, `7d`, `2w`; `min` for minutes works too), or `off`
/// (`None`). Between 5 seconds and 90 days.
pub fn parse_timer(text: &str) -> Result<Option<Timer>> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = |why: &str| ClientError::Invalid(format!("timer {text:?}: {why}"));
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| bad("needs a unit (30s, 5m, 1h, 7d, 2w) or `off`"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| bad("must start with a whole number (30s, 5m, 1h, 7d) or be `off`"))?;
    let per = match unit.trim() {
        "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => return Err(bad(&format!("unknown unit {other:?} (s, m, h, d, w)"))),
    };
    let secs = n.saturating_mul(per);
    u32::try_from(secs)
        .ok()
        .and_then(Timer::from_secs)
        .map(Some)
        .ok_or_else(|| {
            bad(&format!(
                "must be between {} and {} (or `off`)",
                format_secs(MIN_TIMER_SECS),
                format_secs(MAX_TIMER_SECS)
            ))
        })
}

/// A timer as people read it: its largest exact unit (`30 s`, `5 min`,
/// `1 h`, `7 d`).
pub fn format_timer(timer: Timer) -> String {
    format_secs(timer.secs())
}

fn format_secs(secs: u32) -> String {
    for (per, unit) in [(86_400, "d"), (3600, "h"), (60, "min")] {
        if secs >= per && secs / per * per == secs {
            return format!("{} {unit}", secs / per);
        }
    }
    format!("{secs} s")
}

impl Client {
    /// The timer in force in `conversation` (`None`: messages stay).
    pub fn timer(&self, conversation: &Conversation) -> Result<Option<Timer>> {
        self.store().timer(conversation)
    }

    /// Write the setting of the timer with contact `peer` into the outbox
    /// (it goes out as a message, like a text), without sending it: the
    /// process holding the connection sends it ([`Client::sent_by_holder`]
    /// reads the outcome).
    pub fn queue_contact_timer(&self, peer: &str, timer: Option<Timer>) -> Result<MessageId> {
        validate_handle(peer)
            .map_err(|e| ClientError::Invalid(format!("contact {peer:?}: {e}")))?;
        if peer == self.handle {
            return Err(ClientError::Invalid(
                "a conversation with yourself has no timer".into(),
            ));
        }
        self.check_not_changed(peer)?;
        self.store()
            .queue_timer_setting(&Conversation::contact(peer), timer)
    }

    /// Write the setting of `conversation`'s timer (`None`: off) into the
    /// outbox without sending it (a group's is encrypted for the group
    /// here): the process holding the connection sends it
    /// ([`Client::sent_by_holder`] reads the outcome).
    pub fn queue_timer(
        &self,
        conversation: &Conversation,
        timer: Option<Timer>,
    ) -> Result<MessageId> {
        match conversation {
            Conversation::Contact(peer) => self.queue_contact_timer(peer, timer),
            Conversation::Group(group) => self.queue_group_timer(group, timer),
        }
    }

    /// Set the timer of `conversation` (`None`: off) and tell the other
    /// side right away if the server can be reached; otherwise the setting
    /// waits in the outbox (not an error: the outcome's note says so). It
    /// applies here at once, to the messages sent from now on.
    pub async fn set_timer(
        &mut self,
        conversation: &Conversation,
        timer: Option<Timer>,
    ) -> Result<SendOutcome> {
        let peer = match conversation {
            Conversation::Contact(peer) => peer,
            Conversation::Group(group) => return self.set_group_timer(group, timer).await,
        };
        self.warned_full.clear();
        let id = self.queue_contact_timer(peer, timer)?;
        let mut warnings = Vec::new();
        let note = match self.login().await {
            Ok((mut conn, _)) => {
                let mut sink = |e: Event| {
                    if let Event::Warning(w) = e {
                        warnings.push(w);
                    }
                    Ok(())
                };
                match self.flush_outbox(&mut conn, &mut sink).await {
                    Ok(_) => None,
                    Err(e) if is_fatal(&e) => return Err(e),
                    Err(e) => Some(format!("kept in the outbox: {}", Report(&e))),
                }
            }
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => Some(format!(
                "not sent yet, it goes with the next connection ({})",
                Report(&e)
            )),
        };
        self.send_outcome(peer, &id, note, warnings)
    }

    /// Delete every message whose time is up, with its downloaded file,
    /// and empty the database's WAL (see [`crate::store::Swept`]).
    pub fn sweep_expired(&self) -> Result<Swept> {
        let swept = self
            .store()
            .sweep_expired(UnixMillis::now(), &self.files_dir())?;
        if swept.messages > 0 {
            tracing::debug!(
                messages = swept.messages,
                files = swept.files,
                "disappearing messages deleted"
            );
        }
        Ok(swept)
    }

    /// [`Client::sweep_expired`] when a message is due (`listen`'s loop).
    pub(super) fn sweep_if_due(&self) -> Result<()> {
        match self.store().next_expiry()? {
            Some(at) if at <= UnixMillis::now() => self.sweep_expired().map(drop),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timers_parse_within_the_bounds_and_read_back() {
        let secs = |s: &str| parse_timer(s).unwrap().map(Timer::secs);
        assert_eq!(secs("30s"), Some(30));
        assert_eq!(secs("5m"), Some(300));
        assert_eq!(secs("5min"), Some(300));
        assert_eq!(secs("1h"), Some(3600));
        assert_eq!(secs("7d"), Some(7 * 86_400));
        assert_eq!(secs("2w"), Some(14 * 86_400));
        assert_eq!(secs("90d"), Some(90 * 86_400));
        assert_eq!(secs(" 5s "), Some(5));
        assert_eq!(secs("off"), None);
        assert_eq!(secs("OFF"), None);
        for bad in [
            "4s",
            "91d",
            "13w",
            "1",
            "",
            "h",
            "-5s",
            "5 parsecs",
            "99999999999999999999999d",
        ] {
            let e = parse_timer(bad).unwrap_err();
            assert!(matches!(e, ClientError::Invalid(_)), "{bad}: {e:?}");
        }
        let t = |s: u32| format_timer(Timer::from_secs(s).unwrap());
        assert_eq!(t(30), "30 s");
        assert_eq!(t(300), "5 min");
        assert_eq!(t(3600), "1 h");
        assert_eq!(t(5400), "90 min");
        assert_eq!(t(7 * 86_400), "7 d");
        assert_eq!(t(86_401), "86401 s");
    }
}
