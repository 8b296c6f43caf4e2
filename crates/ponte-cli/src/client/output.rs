//! What the client commands print: messages, events, contacts and the
//! route status, as text or `--json`; terminal escaping of text from
//! others; stdout that went away; the transfer progress bar.

use super::*;

pub(super) fn print_status(
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
pub(super) fn rfc3339(ms: u64) -> String {
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

pub(super) fn ticks(status: Status) -> &'static str {
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
pub(super) struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output is closed")
    }
}

impl std::error::Error for StdoutClosed {}

pub(super) fn is_stdout_closed(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<StdoutClosed>())
}

/// What to do about a server's refusal, for the errors whose next step is
/// not obvious from the message.
pub(super) fn hint(e: &anyhow::Error) -> Option<&'static str> {
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

pub(super) fn stdout_closed_in(e: &anyhow::Error) -> bool {
    // The library's display error keeps the io::Error as its source.
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(is_stdout_closed)
}

/// Write one line to stdout and flush it. Never panics (unlike
/// `println!`): a closed pipe returns an error marked [`StdoutClosed`], and
/// the caller knows the line was not shown.
pub(super) fn out(line: impl std::fmt::Display) -> std::io::Result<()> {
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
pub(super) fn notice(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "ponte: {}", clean(text));
}

/// A warning line on stderr as is (our own text, handles already checked).
pub(super) fn warn(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Whether `c` must not reach a terminal raw: C0 controls (newline, CR,
/// tab, ESC, BEL, backspace...), DEL, C1 controls (U+0080–U+009F), the
/// bidirectional embeddings, overrides and isolates (U+202A–U+202E,
/// U+2066–U+2069), which reorder what follows on the line, and the Unicode
/// line and paragraph separators (U+2028, U+2029).
pub(super) fn is_unsafe_for_terminal(c: char) -> bool {
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
pub(super) fn clean(text: &str) -> Cow<'_, str> {
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

pub(super) fn message_json(me: &str, m: &MessageView) -> serde_json::Value {
    let group = m.group.map(|g| g.to_hex());
    let (from, to) = match (&group, m.outgoing) {
        // An outgoing group message goes to the group.
        (Some(g), true) => (me, g.as_str()),
        (_, true) => (me, m.peer.as_str()),
        (_, false) => (m.peer.as_str(), me),
    };
    let mut v = serde_json::json!({
        "id": m.id.to_hex(),
        "from": from,
        "to": to,
        "text": m.text,
        "sent_at": rfc3339(m.sent_at.0),
        "status": m.status.as_str(),
    });
    if let Some(g) = group {
        v["group"] = serde_json::Value::String(g);
        if let Some(title) = &m.group_title {
            v["group_title"] = serde_json::Value::String(title.clone());
        }
    }
    if let Some(t) = &m.ticks {
        v["delivered_to"] = t.delivered_to.into();
        v["read_by"] = t.read_by.into();
        v["of"] = t.of.into();
        v["expired_for"] = t.expired.into();
    }
    if m.group_notice {
        // A change to the group (`from` made it), not a message.
        v["notice"] = "group".into();
        v.as_object_mut().map(|o| o.remove("status"));
    }
    if m.key_changed {
        v["key_changed"] = serde_json::Value::Bool(true);
    }
    if let Some(r) = &m.reply_to {
        v["reply_to"] = r.to_hex().into();
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
    super::timer::add_json(&mut v, m);
    v
}

/// What stands for the text of a message whose stored data did not open.
pub(super) const UNREADABLE: &str =
    "[UNREADABLE: its stored data is corrupt or was altered; the text is not shown]";

/// How a file message reads on a terminal: `[file NAME, SIZE]`, the name
/// escaped, then where it is once fetched.
pub(super) fn file_label(f: &ponte_client::FileSummary) -> String {
    let mut s = format!("[file {}, {}", clean(&f.name), human_bytes(f.size));
    if let Some(p) = &f.path {
        s.push_str(&format!(", at {}", clean(&p.display().to_string())));
    }
    s.push(']');
    s
}

/// `1.5 MiB`-style sizes.
pub(super) fn human_bytes(n: u64) -> String {
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
pub(super) struct ProgressBar(Option<indicatif::ProgressBar>);

impl ProgressBar {
    pub(super) fn new(wanted: bool) -> Self {
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

    pub(super) fn update(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.0 {
            if bar.length() != Some(total) {
                bar.set_length(total);
                // A resumed transfer counts its rate from where it starts.
                bar.reset_eta();
            }
            bar.set_position(done);
        }
    }

    pub(super) fn finish(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish();
        }
    }
}

pub(super) fn print_message(me: &str, m: &MessageView, json: bool) -> std::io::Result<()> {
    if json {
        // Raw text: JSON escapes control characters itself.
        return out(message_json(me, m));
    }
    if let Some(n) = &m.notice {
        return out(super::timer::notice_line(me, m, n));
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
    let text = match &m.reply_to {
        Some(r) => Cow::Owned(format!("[reply to {r}] {text}")),
        None => text,
    };
    let tail = super::timer::suffix(m);
    if let Some(g) = &m.group {
        let group = match &m.group_title {
            Some(t) => format!("g:{}", clean(t)),
            None => format!("g:{}", g.to_hex()),
        };
        if m.group_notice {
            return out(format_args!("{when} [{group}] {text}"));
        }
        if m.outgoing {
            let counts = match &m.ticks {
                Some(t) if m.status == Status::Sent || m.status == Status::Delivered => {
                    let expired = match t.expired {
                        0 => String::new(),
                        n => format!(", expired undelivered for {n}"),
                    };
                    format!(
                        " {}/{} delivered, {} read{expired}",
                        t.delivered_to, t.of, t.read_by
                    )
                }
                _ => String::new(),
            };
            return out(format_args!(
                "{when} {me} -> {group}: {text} [{} {}{counts}]",
                m.status.as_str(),
                ticks(m.status)
            ));
        }
        let warn = if m.key_changed {
            "[UNVERIFIED NEW KEY] "
        } else {
            ""
        };
        return out(format_args!("{when} {warn}{peer} -> {group}: {text}"));
    }
    if m.outgoing {
        out(format_args!(
            "{when} {me} -> {peer}: {text}{tail} [{} {}]",
            m.status.as_str(),
            ticks(m.status)
        ))
    } else {
        let warn = if m.key_changed {
            "[UNVERIFIED NEW KEY] "
        } else {
            ""
        };
        out(format_args!("{when} {warn}{peer} -> {me}: {text}{tail}"))
    }
}

/// Show one event: updates on stdout (an error when it is closed, so the
/// update is not marked as shown), notices on stderr.
pub(super) fn print_event(me: &str, event: Event, json: bool) -> std::io::Result<()> {
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
        // Each update was printed as it came.
        Event::UpdatesEnd => Ok(()),
        other => {
            notice(&format!("{other:?}"));
            Ok(())
        }
    }
}

pub(super) fn print_contact(c: &Contact, json: bool) -> std::io::Result<()> {
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
