//! The client library's errors: [`ClientError`], the server's refusal codes
//! ([`ServerCode`]) and close reasons ([`CloseCode`]) as enums, and
//! [`Report`], which prints an error with its causes.
//!
//! Causes are kept as `source`s, not copied into the message: an edge (the
//! CLI) prints the chain once, as `anyhow`'s `{:#}` or [`Report`] does. The
//! library uses [`Report`] itself only where it turns an error into text
//! for the user (a warning event, a note, a route's status).

use ponte_wire::messages::{CloseReason, ErrorCode};

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The database failed.
    #[error("profile database")]
    Db(#[source] rusqlite::Error),
    /// A file operation on the profile, or showing output, failed.
    #[error("{context}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        error: std::io::Error,
    },
    /// Stored data did not decrypt or parse.
    #[error("profile data is corrupt or was tampered with ({0})")]
    Corrupt(&'static str),
    /// The passphrase does not unlock the profile.
    #[error("wrong passphrase for this profile")]
    WrongPassphrase,
    /// The profile is protected by a passphrase and none was given.
    #[error(
        "this profile is protected by a passphrase: set PONTE_PASSPHRASE or run in a terminal"
    )]
    PassphraseRequired,
    /// No profile (or no registered account) at this location.
    #[error("no registered profile in {0} (run `ponte register` first)")]
    NotRegistered(String),
    /// `register` on a profile that already has an account.
    #[error("the profile in {0} is already registered as {1}")]
    AlreadyRegistered(String, String),
    /// A contact handle is unknown locally.
    #[error("unknown contact {0}")]
    UnknownContact(String),
    /// A contact's identity key changed; sending is refused until re-verified.
    #[error(
        "SECURITY: {0}'s identity key has CHANGED. Messages to {0} are held until you compare \
         safety numbers (`ponte verify {0}`) and confirm (`ponte verify {0} --confirm`)"
    )]
    KeyChanged(String),
    /// End-to-end layer error.
    #[error("end-to-end encryption")]
    E2e(#[from] ponte_e2e::Error),
    /// The server address is malformed.
    #[error("server address: {0}")]
    Address(String),
    /// Could not reach the server over any route.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server did not prove the key in its address (wrong server, or a
    /// relay or network attacker in the middle).
    #[error("the server at this address does not hold the key in the address: refusing to talk to it ({0})")]
    ServerKeyMismatch(String),
    /// The server answered a request with an error.
    #[error("server refused: {code} ({detail})")]
    Server {
        /// The protocol's error code.
        code: ServerCode,
        /// Server's explanation (for humans).
        detail: String,
    },
    /// The server closed the connection with a `Close` frame.
    #[error("connection lost: server closed the connection ({})", closed_text(*.reason, .detail))]
    Closed {
        /// Why, as the protocol says it.
        reason: CloseCode,
        /// The server's words, if any.
        detail: String,
    },
    /// The connection broke or went silent.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The encrypted bytes did not authenticate: something on the route (a
    /// relay, or the network) altered, replayed or injected data. The
    /// connection is dropped; nothing it carried was trusted.
    #[error("TAMPERING: {0}")]
    Tampered(String),
    /// The server broke the protocol.
    #[error("protocol violation by server: {0}")]
    Protocol(String),
    /// A bad argument (handle syntax, empty text...).
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        ClientError::Db(e)
    }
}

impl ClientError {
    /// The server's refusal code, if this is a refusal.
    pub fn server_code(&self) -> Option<ServerCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A refusal that retrying later fixes: the server cannot store anything
    /// right now ([`ServerCode::Unavailable`]: its disk may be full) or asks
    /// us to slow down ([`ServerCode::RateLimited`]).
    pub fn is_temporary_refusal(&self) -> bool {
        self.server_code().is_some_and(ServerCode::is_temporary)
    }
}

/// The text in parentheses after "server closed the connection": the
/// reason, and the detail unless it only repeats the reason.
fn closed_text(reason: CloseCode, detail: &str) -> String {
    let label = reason.to_string();
    let detail = detail.trim();
    if detail.is_empty() || detail.eq_ignore_ascii_case(&label.replace('_', " ")) {
        label
    } else {
        format!("{label}: {detail}")
    }
}

/// Defines a `#[non_exhaustive]` enum mirroring a protocol enum, with an
/// `Unknown(i32)` variant for numbers this build does not know, a
/// conversion from the wire number, and a label (the protocol's name
/// without its prefix).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident from $wire:ident, unknown $unknown:literal {
            $($(#[$vmeta:meta])* $variant:ident = $label:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A number this build does not know (a newer server).
            Unknown(i32),
        }

        impl $name {
            /// From the number on the wire.
            pub fn from_wire(value: i32) -> Self {
                match $wire::try_from(value) {
                    $(Ok($wire::$variant) => Self::$variant,)*
                    #[allow(unreachable_patterns)]
                    _ => Self::Unknown(value),
                }
            }

            /// The protocol's name without its prefix (`UNAVAILABLE`), or
            #[doc = concat!("`", $unknown, " N` for an unknown number.")]
            pub fn label(self) -> std::borrow::Cow<'static, str> {
                match self {
                    $(Self::$variant => std::borrow::Cow::Borrowed($label),)*
                    Self::Unknown(n) => std::borrow::Cow::Owned(format!(concat!($unknown, " {}"), n)),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.label())
            }
        }
    };
}

wire_enum! {
    /// Why the server refused a request (the protocol's `ErrorCode`).
    ServerCode from ErrorCode, unknown "code" {
        /// No code given.
        Unspecified = "UNSPECIFIED",
        /// The request did not parse.
        Malformed = "MALFORMED",
        /// The request needs a login first.
        NotAuthenticated = "NOT_AUTHENTICATED",
        /// The server has no account for this device.
        NotRegistered = "NOT_REGISTERED",
        /// Someone has that handle.
        HandleTaken = "HANDLE_TAKEN",
        /// The handle's syntax is wrong.
        InvalidHandle = "INVALID_HANDLE",
        /// The server registers only with an invite.
        InviteRequired = "INVITE_REQUIRED",
        /// The invite is unknown or used.
        InviteInvalid = "INVITE_INVALID",
        /// Too many requests: slow down.
        RateLimited = "RATE_LIMITED",
        /// A signature did not verify.
        BadSignature = "BAD_SIGNATURE",
        /// No account with the recipient's handle.
        UnknownRecipient = "UNKNOWN_RECIPIENT",
        /// No account with that handle (directory look-ups).
        UnknownHandle = "UNKNOWN_HANDLE",
        /// The contact has no one-time or fallback key on the server.
        NoKeys = "NO_KEYS",
        /// The recipient's mailbox is full.
        MailboxFull = "MAILBOX_FULL",
        /// The message body is too large.
        TooLarge = "TOO_LARGE",
        /// A field is invalid.
        InvalidArgument = "INVALID_ARGUMENT",
        /// This device is registered already.
        AlreadyRegistered = "ALREADY_REGISTERED",
        /// A per-account limit is reached.
        LimitExceeded = "LIMIT_EXCEEDED",
        /// The server does not support the request.
        Unsupported = "UNSUPPORTED",
        /// The server cannot store anything right now (its disk may be full).
        Unavailable = "UNAVAILABLE",
        /// The server failed.
        Internal = "INTERNAL",
        /// No upload or blob with that id (or it is not finished, or gone).
        UnknownBlob = "UNKNOWN_BLOB",
        /// An upload chunk's offset is not the upload's current offset
        /// (the error carries the current one).
        OffsetMismatch = "OFFSET_MISMATCH",
    }
}

impl ServerCode {
    /// Whether retrying later fixes it ([`ServerCode::Unavailable`],
    /// [`ServerCode::RateLimited`]).
    pub fn is_temporary(self) -> bool {
        matches!(self, ServerCode::Unavailable | ServerCode::RateLimited)
    }
}

wire_enum! {
    /// Why the server closed the connection (the protocol's `CloseReason`).
    CloseCode from CloseReason, unknown "reason" {
        /// No reason given.
        Unspecified = "UNSPECIFIED",
        /// A frame did not parse.
        MalformedFrame = "MALFORMED_FRAME",
        /// A frame was over the size limit.
        FrameTooLarge = "FRAME_TOO_LARGE",
        /// Nothing happened for too long.
        Idle = "IDLE",
        /// No login in time.
        UnauthenticatedTimeout = "UNAUTHENTICATED_TIMEOUT",
        /// The server is shutting down.
        Shutdown = "SHUTDOWN",
        /// Another connection of the same device took over.
        Replaced = "REPLACED",
        /// The client did not read fast enough.
        SlowConsumer = "SLOW_CONSUMER",
        /// The client broke the protocol.
        ProtocolViolation = "PROTOCOL_VIOLATION",
        /// The server has too many connections.
        Overloaded = "OVERLOADED",
    }
}

pub use ponte_wire::diag::Report;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_come_from_the_wire_with_the_protocols_labels() {
        let code = ServerCode::from_wire(ErrorCode::Unavailable as i32);
        assert_eq!(code, ServerCode::Unavailable);
        assert!(code.is_temporary());
        assert_eq!(code.to_string(), "UNAVAILABLE");
        assert_eq!(
            ServerCode::from_wire(ErrorCode::MailboxFull as i32).label(),
            "MAILBOX_FULL"
        );
        assert_eq!(ServerCode::from_wire(9999), ServerCode::Unknown(9999));
        assert_eq!(ServerCode::from_wire(9999).to_string(), "code 9999");
        // Every protocol code maps to a known variant with its own name.
        for n in 0..=20 {
            let wire = ErrorCode::try_from(n).map(|c| c.as_str_name());
            if let Ok(name) = wire {
                let ours = ServerCode::from_wire(n);
                assert!(!matches!(ours, ServerCode::Unknown(_)), "{name}");
                assert_eq!(format!("ERROR_CODE_{ours}"), name);
            }
        }
        for n in 0..=9 {
            if let Ok(r) = CloseReason::try_from(n) {
                let ours = CloseCode::from_wire(n);
                assert_eq!(format!("CLOSE_REASON_{ours}"), r.as_str_name());
            }
        }
        assert_eq!(CloseCode::from_wire(77).to_string(), "reason 77");
    }

    #[test]
    fn a_close_says_its_detail_unless_it_repeats_the_reason() {
        let closed = |reason, detail: &str| ClientError::Closed {
            reason,
            detail: detail.into(),
        };
        assert_eq!(
            closed(CloseCode::Shutdown, "shutdown").to_string(),
            "connection lost: server closed the connection (SHUTDOWN)"
        );
        assert_eq!(
            closed(CloseCode::SlowConsumer, "slow consumer").to_string(),
            "connection lost: server closed the connection (SLOW_CONSUMER)"
        );
        assert_eq!(
            closed(CloseCode::Idle, "idle for 300 s").to_string(),
            "connection lost: server closed the connection (IDLE: idle for 300 s)"
        );
    }

    #[test]
    fn a_report_prints_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = ClientError::Io {
            context: "creating the profile".into(),
            error: io,
        };
        assert_eq!(e.to_string(), "creating the profile");
        assert_eq!(Report(&e).to_string(), "creating the profile: denied");
    }
}
