//! The plaintext envelope inside every Olm ciphertext.
//!
//! ```text
//! +---------+------+------------+-------------+------------------+---------+
//! | version | kind | message id | sent_at ms  | body             | padding |
//! |  0x01   | u8   | 16 bytes   | u64 BE      | see below        | 0x00 .. |
//! +---------+------+------------+-------------+------------------+---------+
//!
//! version 2 (a message that disappears): the same, with the timer after
//! sent_at:
//! +---------+------+------------+-------------+-------------+------+-----+
//! | 0x02    | kind | message id | sent_at ms  | timer s     | body | pad |
//! |         | u8   | 16 bytes   | u64 BE      | u32 BE      |      |     |
//! +---------+------+------------+-------------+-------------+------+-----+
//! timer: MIN_TIMER_SECS..=MAX_TIMER_SECS (never 0: an envelope without a
//! timer is written as version 1, so every envelope has one encoding)
//!
//! kind 1 (text):         u32 BE length, then that many bytes of UTF-8
//! kind 2 (read receipt): u16 BE count (<= MAX_RECEIPT_IDS), then count ids
//! kind 3 (file):         blob id (16) | key (32) | ciphertext SHA-256 (32) |
//!                        size u64 BE | name: u16 BE length + UTF-8 |
//!                        mime: u8 length + ASCII | caption: u32 BE length + UTF-8
//! kind 4 (group text):   group id (16), u32 BE length, that many bytes of UTF-8
//! kind 5 (sender key):   group id (16), u16 BE length (<= MAX_SENDER_KEY_BYTES),
//!                        a vodozemac Megolm session key
//! kind 6 (group op):     u16 BE length (<= MAX_OP_BYTES), a group::SignedOp
//! kind 7 (timer set):    scope u8 (0: this pairwise conversation,
//!                        1: a group, then its group id (16)) |
//!                        timer u32 BE seconds (0: off, else
//!                        MIN_TIMER_SECS..=MAX_TIMER_SECS)
//! kind 8 (group file):   group id (16), then a file descriptor as in kind 3
//! kind 9 (group log):    u16 BE count (1..=MAX_LOG_OPS), then count times a
//!                        u16 BE length (<= MAX_OP_BYTES) and a group::SignedOp
//! ```
//!
//! Extensions (from client schema 5 on) follow the body, before the
//! padding: each is a tag (u8, never 0), a u16 BE length and that many
//! bytes. A reader skips a tag it does not know (the padding starts at
//! the first zero byte where a tag would be), so a later field needs no
//! new version or kind:
//!
//! ```text
//! | body | tag u8 | len u16 BE | value | tag | len | value | ... | 0x00 padding |
//! tag 1 (reply to): len 16, the id of the message this one quotes
//!                   (in the same conversation; text and file kinds,
//!                   pairwise 1 and 3, group 4 and 8)
//! ```
//!
//! A group message's envelope (kinds 4 and 8, the Megolm plaintext)
//! carries extensions exactly so: [`crate::group::GroupSender::encrypt_with`]
//! writes them and [`crate::group::GroupReceiver::decrypt`] reads them.
//!
//! A client from before extensions reads the first tag as non-zero
//! padding and refuses the envelope as malformed, as it refuses a
//! version 2 envelope. At most [`MAX_EXTENSIONS`] per envelope; a known
//! tag twice, or with the wrong length, is malformed.
//!
//! A client that predates disappearing messages refuses version 2 ("unknown
//! version") and kind 7 ("unknown kind") like any envelope it cannot read:
//! it never shows a timed message as if it were permanent.
//!
//! Kinds 1, 2, 3, 5, 6, 7 and 9 travel inside Olm (pairwise). Kinds 4 and 8 are
//! the Megolm plaintext of a group message (see [`crate::group::megolm`]): the group
//! message body is a group-specific envelope inside Megolm, not an Olm
//! envelope wrapping Megolm, so the server stores one body for every
//! recipient; the group id inside it is authenticated by Megolm, so a
//! message cannot be replayed into another group that (by a sender's
//! mistake or malice) shares the session.
//!
//! A file's name is kept as sent (within [`MAX_FILE_NAME_BYTES`]); it is
//! hostile input, made safe by [`crate::file::sanitize_name`] before it
//! names anything on disk and by [`crate::file::display_name`] before it
//! reaches a terminal.
//!
//! The whole envelope is zero-padded to a multiple of [`PADDING_BLOCK`] bytes
//! so the server learns message lengths only to that granularity. Decoding
//! rejects non-zero padding, unknown versions and kinds, and lengths beyond
//! the caps, before allocating.

use crate::group::megolm::{SenderKey, MAX_SENDER_KEY_BYTES};
use crate::group::ops::{SignedOp, MAX_OP_BYTES};
use crate::group::GroupId;
use crate::{Error, Result};

/// Longest text accepted, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Most message ids in one read receipt.
pub const MAX_RECEIPT_IDS: usize = 256;
/// Longest file name in a file descriptor, in bytes of UTF-8.
pub const MAX_FILE_NAME_BYTES: usize = 255;
/// Longest MIME type in a file descriptor (printable ASCII).
pub const MAX_MIME_BYTES: usize = 127;
/// Envelopes are padded to a multiple of this many bytes.
pub const PADDING_BLOCK: usize = 64;

/// Shortest disappearing-message timer, in seconds.
pub const MIN_TIMER_SECS: u32 = 5;
/// Longest disappearing-message timer, in seconds (90 days).
pub const MAX_TIMER_SECS: u32 = 90 * 86_400;

const VERSION: u8 = 1;
const VERSION_TIMED: u8 = 2;
const KIND_TIMER: u8 = 7;
const KIND_TEXT: u8 = 1;
const KIND_READ: u8 = 2;
const KIND_GROUP_TEXT: u8 = 4;
const KIND_SENDER_KEY: u8 = 5;
const KIND_GROUP_OP: u8 = 6;
const KIND_FILE: u8 = 3;
const KIND_GROUP_FILE: u8 = 8;
const KIND_GROUP_LOG: u8 = 9;
/// Most ops in one group log envelope (kind 9): at most about 32 KiB.
pub const MAX_LOG_OPS: usize = 64;
const HEADER: usize = 2 + 16 + 8;
/// Most extensions one envelope may carry (known or not).
pub const MAX_EXTENSIONS: usize = 16;
const EXT_REPLY_TO: u8 = 1;

/// The optional fields that follow an envelope's body (see the module
/// documentation). Every field is optional; a reader ignores tags it
/// does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extensions {
    /// The message this one replies to (quotes), by its id.
    pub reply_to: Option<MessageId>,
}

impl Extensions {
    /// Only a reply.
    pub fn reply(to: MessageId) -> Self {
        Self { reply_to: Some(to) }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        if let Some(id) = &self.reply_to {
            out.push(EXT_REPLY_TO);
            out.extend_from_slice(&16u16.to_be_bytes());
            out.extend_from_slice(&id.0);
        }
    }

    /// Read extensions from `rest` up to the padding (hostile input); the
    /// bytes used.
    fn decode(rest: &[u8]) -> Result<(Self, usize)> {
        let mut ext = Self::default();
        let mut used = 0;
        let mut count = 0;
        while let Some(&tag) = rest.get(used) {
            if tag == 0 {
                break;
            }
            count += 1;
            if count > MAX_EXTENSIONS {
                return Err(Error::MalformedEnvelope("too many extensions"));
            }
            let (value, n) = decode_u16_bytes(&rest[used + 1..], u16::MAX as usize)
                .map_err(|_| Error::MalformedEnvelope("truncated extension"))?;
            // Any other tag is a later field: skipped.
            if tag == EXT_REPLY_TO {
                if ext.reply_to.is_some() {
                    return Err(Error::MalformedEnvelope("reply-to twice"));
                }
                ext.reply_to = Some(
                    MessageId::from_slice(value)
                        .ok_or(Error::MalformedEnvelope("bad reply-to id"))?,
                );
            }
            used += 1 + n;
        }
        Ok((ext, used))
    }
}

/// A 16-byte message id chosen by the sender; the key for deduplication
/// (exactly once on screen) and for receipts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh id, time-ordered like a UUIDv7: the creation time in
    /// milliseconds since the Unix epoch (48 bits, big-endian), then 80
    /// random bits. One sender's ids sort by creation time, so the server's
    /// dedup index of (sender, id) grows at its end instead of being written
    /// at random places; it reveals nothing the server does not see anyway
    /// (it stamps the time it accepts each message).
    pub fn random() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut id: [u8; 16] = rand::random();
        id[..6].copy_from_slice(&ms.to_be_bytes()[10..]);
        Self(id)
    }

    /// Lower-case hex (32 characters).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parse 32 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// From raw bytes (hostile input: exactly 16 bytes).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// How long a message lives once displayed (disappearing messages):
/// between [`MIN_TIMER_SECS`] and [`MAX_TIMER_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer(u32);

impl Timer {
    /// A timer of `secs` seconds, if within the bounds.
    pub fn from_secs(secs: u32) -> Option<Self> {
        (MIN_TIMER_SECS..=MAX_TIMER_SECS)
            .contains(&secs)
            .then_some(Self(secs))
    }

    /// Its length in seconds.
    pub fn secs(self) -> u32 {
        self.0
    }

    /// Its length in milliseconds.
    pub fn millis(self) -> u64 {
        u64::from(self.0) * 1000
    }

    /// Its length.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.0))
    }
}

/// A disappearing-messages setting for a conversation (kind 7): the
/// timer that applies from now on to messages either side sends there
/// (`None`: off). The last setting by sent time wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerSetting {
    /// The group it is for, or `None` for the pairwise conversation the
    /// envelope travels in.
    pub group: Option<GroupId>,
    /// The new timer (`None`: messages no longer disappear).
    pub timer: Option<Timer>,
}

impl TimerSetting {
    /// The kind 7 body (also how a client stores a setting it queues).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 16 + 4);
        match &self.group {
            None => out.push(0),
            Some(g) => {
                out.push(1);
                out.extend_from_slice(&g.0);
            }
        }
        out.extend_from_slice(&self.timer.map_or(0, Timer::secs).to_be_bytes());
        out
    }

    /// Parse [`TimerSetting::to_bytes`] output (nothing may follow).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (setting, used) = Self::decode(bytes)?;
        if used != bytes.len() {
            return Err(Error::MalformedEnvelope("bytes after timer setting"));
        }
        Ok(setting)
    }

    /// Decode from the start of `bytes` (hostile input); the bytes used.
    fn decode(bytes: &[u8]) -> Result<(Self, usize)> {
        let mut rest = bytes;
        let scope = take_array::<1>(&mut rest, "truncated timer setting")?[0];
        let group = match scope {
            0 => None,
            1 => Some(GroupId(take_array::<16>(
                &mut rest,
                "truncated timer setting",
            )?)),
            _ => return Err(Error::MalformedEnvelope("unknown timer scope")),
        };
        let secs = u32::from_be_bytes(take_array::<4>(&mut rest, "truncated timer setting")?);
        let timer = match secs {
            0 => None,
            s => Some(Timer::from_secs(s).ok_or(Error::MalformedEnvelope("timer out of range"))?),
        };
        Ok((Self { group, timer }, bytes.len() - rest.len()))
    }
}

/// What an envelope carries.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// A text message.
    Text(String),
    /// The recipient displayed these messages (end-to-end read receipt).
    ReadReceipt(Vec<MessageId>),
    /// A text message to a group (the Megolm plaintext of a group message).
    GroupText {
        /// The group it was sent to.
        group: GroupId,
        /// The text.
        text: String,
    },
    /// The sender's Megolm session key for a group (sent pairwise).
    SenderKey(SenderKey),
    /// A signed change to a group (sent pairwise to every member).
    GroupOp(Box<SignedOp>),
    /// A file: where its encrypted blob is and how to open it.
    File(FileDescriptor),
    /// A disappearing-messages setting for the conversation (kind 7).
    TimerSetting(TimerSetting),
    /// Several signed changes to one group, in chain order (sent pairwise:
    /// a group's log for a member who joins, one envelope per
    /// [`MAX_LOG_OPS`] ops).
    GroupLog(Vec<SignedOp>),
    /// A file sent to a group (the Megolm plaintext of a group message):
    /// the descriptor, key included, travels only under Megolm.
    GroupFile {
        /// The group it was sent to.
        group: GroupId,
        /// Where its blob is and how to open it.
        file: FileDescriptor,
    },
}

impl Payload {
    /// The group a Megolm payload (group text, group file, or a group's
    /// timer setting) names; `None` for the pairwise kinds. A timer
    /// setting with a group travels both ways: in the group's Megolm
    /// channel when a member sets it, pairwise when handed to a member
    /// who joins.
    pub fn group_message(&self) -> Option<GroupId> {
        match self {
            Payload::GroupText { group, .. } | Payload::GroupFile { group, .. } => Some(*group),
            Payload::TimerSetting(TimerSetting {
                group: Some(group), ..
            }) => Some(*group),
            _ => None,
        }
    }
}

/// Everything a recipient needs to fetch, check and decrypt a file, and to
/// show it (see [`crate::file`]).
#[derive(Clone, PartialEq, Eq)]
pub struct FileDescriptor {
    /// The blob id on the server (the sender's upload id).
    pub blob_id: [u8; 16],
    /// The file's key.
    pub key: crate::file::FileKey,
    /// SHA-256 of the whole ciphertext blob.
    pub sha256: [u8; 32],
    /// Plaintext size in bytes.
    pub size: u64,
    /// The name the sender gave (at most [`MAX_FILE_NAME_BYTES`]).
    pub name: String,
    /// MIME type, printable ASCII (at most [`MAX_MIME_BYTES`]); may be empty.
    pub mime: String,
    /// Text sent with the file (at most [`MAX_TEXT_BYTES`]); may be empty.
    pub caption: String,
}

impl std::fmt::Debug for FileDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the key nor the name or caption go to logs.
        f.debug_struct("FileDescriptor")
            .field("size", &self.size)
            .field("mime", &self.mime)
            .finish_non_exhaustive()
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8]> {
    if rest.len() < n {
        return Err(Error::MalformedEnvelope(what));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_array<const N: usize>(rest: &mut &[u8], what: &'static str) -> Result<[u8; N]> {
    take(rest, N, what)?
        .try_into()
        .map_err(|_| Error::MalformedEnvelope(what))
}

impl FileDescriptor {
    /// The descriptor alone, in the kind 3 body encoding (for storing it
    /// locally); caps checked.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Parse [`FileDescriptor::to_bytes`] output (nothing may follow).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (fd, used) = Self::decode(bytes)?;
        if used != bytes.len() {
            return Err(Error::MalformedEnvelope("bytes after file descriptor"));
        }
        Ok(fd)
    }

    fn check(&self) -> Result<()> {
        if self.name.len() > MAX_FILE_NAME_BYTES {
            return Err(Error::MalformedEnvelope("file name too long"));
        }
        if self.mime.len() > MAX_MIME_BYTES || !self.mime.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::MalformedEnvelope("bad mime type"));
        }
        if self.caption.len() > MAX_TEXT_BYTES {
            return Err(Error::TextTooLong(self.caption.len()));
        }
        if self.size > crate::file::MAX_FILE_SIZE {
            return Err(Error::MalformedEnvelope("file too large"));
        }
        Ok(())
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        self.check()?;
        out.extend_from_slice(&self.blob_id);
        out.extend_from_slice(&self.key.0);
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&self.size.to_be_bytes());
        // Lengths bounded by check() above.
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.push(self.mime.len() as u8);
        out.extend_from_slice(self.mime.as_bytes());
        out.extend_from_slice(&(self.caption.len() as u32).to_be_bytes());
        out.extend_from_slice(self.caption.as_bytes());
        Ok(())
    }

    /// Decode from `rest`, returning the bytes used (hostile input).
    fn decode(bytes: &[u8]) -> Result<(Self, usize)> {
        let mut rest = bytes;
        let blob_id = take_array::<16>(&mut rest, "truncated file descriptor")?;
        let key = take_array::<32>(&mut rest, "truncated file descriptor")?;
        let sha256 = take_array::<32>(&mut rest, "truncated file descriptor")?;
        let size = u64::from_be_bytes(take_array::<8>(&mut rest, "truncated file size")?);
        let name_len =
            u16::from_be_bytes(take_array::<2>(&mut rest, "truncated file name")?) as usize;
        if name_len > MAX_FILE_NAME_BYTES {
            return Err(Error::MalformedEnvelope("file name too long"));
        }
        let name = std::str::from_utf8(take(&mut rest, name_len, "truncated file name")?)
            .map_err(|_| Error::MalformedEnvelope("file name is not UTF-8"))?
            .to_owned();
        let mime_len = take_array::<1>(&mut rest, "truncated mime type")?[0] as usize;
        let mime = std::str::from_utf8(take(&mut rest, mime_len, "truncated mime type")?)
            .map_err(|_| Error::MalformedEnvelope("bad mime type"))?
            .to_owned();
        let caption_len =
            u32::from_be_bytes(take_array::<4>(&mut rest, "truncated caption")?) as usize;
        if caption_len > MAX_TEXT_BYTES {
            return Err(Error::MalformedEnvelope("caption too long"));
        }
        let caption = std::str::from_utf8(take(&mut rest, caption_len, "truncated caption")?)
            .map_err(|_| Error::MalformedEnvelope("caption is not UTF-8"))?
            .to_owned();
        let fd = Self {
            blob_id,
            key: crate::file::FileKey(key),
            sha256,
            size,
            name,
            mime,
            caption,
        };
        fd.check()
            .map_err(|_| Error::MalformedEnvelope("bad file descriptor"))?;
        Ok((fd, bytes.len() - rest.len()))
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Message text stays out of logs and debug output.
        match self {
            Payload::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Payload::ReadReceipt(ids) => f.debug_tuple("ReadReceipt").field(ids).finish(),
            Payload::GroupText { group, text } => {
                write!(f, "GroupText({group:?}, {} bytes)", text.len())
            }
            Payload::SenderKey(key) => f.debug_tuple("SenderKey").field(key).finish(),
            Payload::GroupOp(op) => f.debug_tuple("GroupOp").field(op).finish(),
            Payload::File(fd) => f.debug_tuple("File").field(fd).finish(),
            Payload::TimerSetting(t) => f.debug_tuple("TimerSetting").field(t).finish(),
            Payload::GroupFile { group, file } => {
                f.debug_tuple("GroupFile").field(group).field(file).finish()
            }
            Payload::GroupLog(ops) => write!(f, "GroupLog({} ops)", ops.len()),
        }
    }
}

/// The decrypted content of one end-to-end message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Sender-chosen id.
    pub id: MessageId,
    /// Sender's clock when written, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The content.
    pub payload: Payload,
    /// How long the message lives once displayed (`None`: it stays).
    /// Carried in a version 2 envelope.
    pub timer: Option<Timer>,
}

impl Envelope {
    /// Encode, checking caps, and pad.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.encode_with(&Extensions::default())
    }

    /// Encode with extensions after the body, checking caps, and pad.
    pub fn encode_with(&self, extensions: &Extensions) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(HEADER + 64);
        out.push(if self.timer.is_some() {
            VERSION_TIMED
        } else {
            VERSION
        });
        match &self.payload {
            Payload::Text(_) => out.push(KIND_TEXT),
            Payload::ReadReceipt(_) => out.push(KIND_READ),
            Payload::GroupText { .. } => out.push(KIND_GROUP_TEXT),
            Payload::SenderKey(_) => out.push(KIND_SENDER_KEY),
            Payload::GroupOp(_) => out.push(KIND_GROUP_OP),
            Payload::File(_) => out.push(KIND_FILE),
            Payload::TimerSetting(_) => out.push(KIND_TIMER),
            Payload::GroupFile { .. } => out.push(KIND_GROUP_FILE),
            Payload::GroupLog(_) => out.push(KIND_GROUP_LOG),
        }
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.sent_at_ms.to_be_bytes());
        if let Some(timer) = self.timer {
            // A Timer is within its bounds by construction.
            out.extend_from_slice(&timer.secs().to_be_bytes());
        }
        match &self.payload {
            Payload::Text(text) => {
                if text.len() > MAX_TEXT_BYTES {
                    return Err(Error::TextTooLong(text.len()));
                }
                // Cannot truncate: bounded by MAX_TEXT_BYTES above.
                out.extend_from_slice(&(text.len() as u32).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            Payload::ReadReceipt(ids) => {
                if ids.len() > MAX_RECEIPT_IDS {
                    return Err(Error::MalformedEnvelope("too many ids in receipt"));
                }
                out.extend_from_slice(&(ids.len() as u16).to_be_bytes());
                for id in ids {
                    out.extend_from_slice(&id.0);
                }
            }
            Payload::GroupText { group, text } => {
                if text.len() > MAX_TEXT_BYTES {
                    return Err(Error::TextTooLong(text.len()));
                }
                out.extend_from_slice(&group.0);
                out.extend_from_slice(&(text.len() as u32).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            Payload::SenderKey(key) => {
                // Bounded by MAX_SENDER_KEY_BYTES when built.
                out.extend_from_slice(&key.group.0);
                out.extend_from_slice(&(key.key_bytes().len() as u16).to_be_bytes());
                out.extend_from_slice(key.key_bytes());
            }
            Payload::GroupOp(op) => {
                let bytes = op.encode().map_err(Error::GroupOp)?;
                // Bounded by MAX_OP_BYTES (every field of an encodable op is capped).
                out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                out.extend_from_slice(&bytes);
            }
            Payload::File(fd) => fd.encode_into(&mut out)?,
            Payload::TimerSetting(t) => out.extend_from_slice(&t.to_bytes()),
            Payload::GroupFile { group, file } => {
                out.extend_from_slice(&group.0);
                file.encode_into(&mut out)?;
            }
            Payload::GroupLog(ops) => {
                if ops.is_empty() || ops.len() > MAX_LOG_OPS {
                    return Err(Error::MalformedEnvelope("group log of 0 or too many ops"));
                }
                // Bounded by MAX_LOG_OPS above.
                out.extend_from_slice(&(ops.len() as u16).to_be_bytes());
                for op in ops {
                    let bytes = op.encode().map_err(Error::GroupOp)?;
                    // Bounded by MAX_OP_BYTES (every field of an encodable op is capped).
                    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                    out.extend_from_slice(&bytes);
                }
            }
        }
        extensions.encode_into(&mut out);
        let padded = out.len().div_ceil(PADDING_BLOCK) * PADDING_BLOCK;
        out.resize(padded, 0);
        Ok(out)
    }

    /// Decode (hostile input), skipping any extensions.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Self::decode_with(bytes).map(|(e, _)| e)
    }

    /// Decode (hostile input) with the extensions that follow the body.
    pub fn decode_with(bytes: &[u8]) -> Result<(Self, Extensions)> {
        if bytes.len() < HEADER {
            return Err(Error::MalformedEnvelope("truncated header"));
        }
        let timed = match bytes[0] {
            VERSION => false,
            VERSION_TIMED => true,
            _ => return Err(Error::MalformedEnvelope("unknown version")),
        };
        let kind = bytes[1];
        let id = MessageId::from_slice(&bytes[2..18])
            .ok_or(Error::MalformedEnvelope("bad message id"))?;
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&bytes[18..26]);
        let sent_at_ms = u64::from_be_bytes(sent);
        let mut rest = &bytes[HEADER..];
        let timer = if timed {
            let secs = u32::from_be_bytes(take_array::<4>(&mut rest, "truncated timer")?);
            Some(Timer::from_secs(secs).ok_or(Error::MalformedEnvelope("timer out of range"))?)
        } else {
            None
        };
        let (payload, used) = match kind {
            KIND_TEXT => {
                let (text, used) = decode_text(rest)?;
                (Payload::Text(text), used)
            }
            KIND_GROUP_TEXT => {
                let group = rest
                    .get(..16)
                    .and_then(|s| s.try_into().ok())
                    .map(GroupId)
                    .ok_or(Error::MalformedEnvelope("truncated group id"))?;
                let (text, used) = decode_text(&rest[16..])?;
                (Payload::GroupText { group, text }, 16 + used)
            }
            KIND_SENDER_KEY => {
                let group = rest
                    .get(..16)
                    .and_then(|s| s.try_into().ok())
                    .map(GroupId)
                    .ok_or(Error::MalformedEnvelope("truncated group id"))?;
                let (key, used) = decode_u16_bytes(&rest[16..], MAX_SENDER_KEY_BYTES)?;
                let key = SenderKey::from_parts(group, key)
                    .map_err(|_| Error::MalformedEnvelope("bad sender key"))?;
                (Payload::SenderKey(key), 16 + used)
            }
            KIND_GROUP_OP => {
                let (op, used) = decode_u16_bytes(rest, MAX_OP_BYTES)?;
                let op =
                    SignedOp::decode(op).map_err(|_| Error::MalformedEnvelope("bad group op"))?;
                (Payload::GroupOp(Box::new(op)), used)
            }
            KIND_READ => {
                let count_bytes: [u8; 2] = rest
                    .get(..2)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(Error::MalformedEnvelope("truncated receipt count"))?;
                let count = u16::from_be_bytes(count_bytes) as usize;
                if count > MAX_RECEIPT_IDS {
                    return Err(Error::MalformedEnvelope("too many ids in receipt"));
                }
                let raw = rest
                    .get(2..2 + 16 * count)
                    .ok_or(Error::MalformedEnvelope("truncated receipt"))?;
                let ids = raw
                    .chunks_exact(16)
                    .filter_map(MessageId::from_slice)
                    .collect();
                (Payload::ReadReceipt(ids), 2 + 16 * count)
            }
            KIND_FILE => {
                let (fd, used) = FileDescriptor::decode(rest)?;
                (Payload::File(fd), used)
            }
            KIND_TIMER => {
                let (setting, used) = TimerSetting::decode(rest)?;
                (Payload::TimerSetting(setting), used)
            }
            KIND_GROUP_LOG => {
                let count_bytes: [u8; 2] = rest
                    .get(..2)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(Error::MalformedEnvelope("truncated group log"))?;
                let count = u16::from_be_bytes(count_bytes) as usize;
                if count == 0 || count > MAX_LOG_OPS {
                    return Err(Error::MalformedEnvelope("group log of 0 or too many ops"));
                }
                let mut used = 2;
                let mut ops = Vec::with_capacity(count);
                for _ in 0..count {
                    let (op, n) = decode_u16_bytes(&rest[used..], MAX_OP_BYTES)?;
                    ops.push(
                        SignedOp::decode(op)
                            .map_err(|_| Error::MalformedEnvelope("bad group op"))?,
                    );
                    used += n;
                }
                (Payload::GroupLog(ops), used)
            }
            KIND_GROUP_FILE => {
                let group = rest
                    .get(..16)
                    .and_then(|s| s.try_into().ok())
                    .map(GroupId)
                    .ok_or(Error::MalformedEnvelope("truncated group id"))?;
                let (file, used) = FileDescriptor::decode(&rest[16..])?;
                (Payload::GroupFile { group, file }, 16 + used)
            }
            _ => return Err(Error::MalformedEnvelope("unknown kind")),
        };
        let (extensions, ext_used) = Extensions::decode(&rest[used..])?;
        if rest[used + ext_used..].iter().any(|&b| b != 0) {
            return Err(Error::MalformedEnvelope("non-zero padding"));
        }
        Ok((
            Self {
                id,
                sent_at_ms,
                payload,
                timer,
            },
            extensions,
        ))
    }
}

/// A u32 length then that much UTF-8 (at most [`MAX_TEXT_BYTES`]); the
/// text and the bytes used.
fn decode_text(rest: &[u8]) -> Result<(String, usize)> {
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::MalformedEnvelope("truncated text length"))?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > MAX_TEXT_BYTES {
        return Err(Error::MalformedEnvelope("text too long"));
    }
    let text = rest
        .get(4..4 + len)
        .ok_or(Error::MalformedEnvelope("truncated text"))?;
    let text =
        std::str::from_utf8(text).map_err(|_| Error::MalformedEnvelope("text is not UTF-8"))?;
    Ok((text.to_owned(), 4 + len))
}

/// A u16 length (at most `cap`) then that many bytes; the bytes and the
/// bytes used.
fn decode_u16_bytes(rest: &[u8], cap: usize) -> Result<(&[u8], usize)> {
    let len_bytes: [u8; 2] = rest
        .get(..2)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::MalformedEnvelope("truncated length"))?;
    let len = u16::from_be_bytes(len_bytes) as usize;
    if len > cap {
        return Err(Error::MalformedEnvelope("too long"));
    }
    let bytes = rest
        .get(2..2 + len)
        .ok_or(Error::MalformedEnvelope("truncated body"))?;
    Ok((bytes, 2 + len))
}

#[cfg(test)]
mod tests;
