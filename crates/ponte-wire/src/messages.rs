//! Protobuf messages of the client ⇄ server protocol (generated from
//! `proto/ponte.proto` by prost) and the small pure helpers both sides need:
//! handle syntax, the exact strings that devices sign, decoding with limits.
//!
//! Bytes fields are [`bytes::Bytes`]; build them with `Bytes::from(vec)` or
//! `Bytes::copy_from_slice(slice)`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use thiserror::Error;

/// The generated protobuf types (package `ponte.v1`).
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/ponte.v1.rs"));
}

pub use pb::{
    client_frame, server_frame, Ack, ClaimKey, ClaimedKey, ClientFrame, Close, CloseReason,
    Deliver, DeliveryReceipt, DeviceKeys, Error as ErrorFrame, ErrorCode, ExpiredNotice,
    GroupSendAck, IdentityKeys, KeyCount, KeysUploaded, LoggedIn, Login, LookupIdentity, Ping,
    Pong, RecipientRefusal, RefusedRecipient, Register, Registered, SendAck, SendGroupMessage,
    SendMessage, ServerFrame, SignedKey, UploadKeys,
};
pub use pb::{BlobChunk, Download, UploadAppend, UploadCreate, UploadOffset, UploadState};

/// Length of a message id (client-generated random bytes).
pub const MESSAGE_ID_LEN: usize = 16;
/// Length of a group id (opaque to the server, chosen by the group's
/// creator).
pub const GROUP_ID_LEN: usize = 16;
/// Most recipients of one group message (WhatsApp's group size limit).
pub const MAX_GROUP_RECIPIENTS: usize = 1024;
/// Length of Curve25519 / Ed25519 public keys and Ed25519 signature halves.
pub const KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Shortest handle.
pub const HANDLE_MIN: usize = 3;
/// Longest handle.
pub const HANDLE_MAX: usize = 32;
/// Longest one-time key id accepted.
pub const KEY_ID_MAX: usize = 64;

/// Why a handle is not acceptable.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandleError {
    /// Fewer than [`HANDLE_MIN`] or more than [`HANDLE_MAX`] characters.
    #[error("a handle has 3 to 32 characters")]
    Length,
    /// A character outside `a-z`, `0-9`, `_`.
    #[error("a handle uses only a-z, 0-9 and _")]
    Character,
}

/// Checks handle syntax: 3 to 32 characters of `a-z`, `0-9`, `_`.
pub fn validate_handle(handle: &str) -> Result<(), HandleError> {
    if handle.len() < HANDLE_MIN || handle.len() > HANDLE_MAX {
        return Err(HandleError::Length);
    }
    if !handle
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(HandleError::Character);
    }
    Ok(())
}

/// The exact UTF-8 string a device signs (Ed25519, with its identity signing
/// key) to register `handle`:
///
/// ```text
/// ponte-register-v1\n<handle>\n<b64(curve25519)>\n<b64(ed25519)>\n<b64(noise_static)>
/// ```
///
/// `b64` is base64url without padding. Binding the Noise static key proves
/// the identity key holder chose this transport key for this handle.
pub fn registration_signing_string(
    handle: &str,
    curve25519: &[u8],
    ed25519: &[u8],
    noise_static: &[u8],
) -> String {
    format!(
        "ponte-register-v1\n{handle}\n{}\n{}\n{}",
        URL_SAFE_NO_PAD.encode(curve25519),
        URL_SAFE_NO_PAD.encode(ed25519),
        URL_SAFE_NO_PAD.encode(noise_static),
    )
}

/// The exact UTF-8 string a device signs for each uploaded key:
///
/// ```text
/// ponte-key-v1\n<"one-time" | "fallback">\n<b64(key_id)>\n<b64(public_key)>
/// ```
pub fn key_signing_string(key_id: &[u8], public_key: &[u8], fallback: bool) -> String {
    format!(
        "ponte-key-v1\n{}\n{}\n{}",
        if fallback { "fallback" } else { "one-time" },
        URL_SAFE_NO_PAD.encode(key_id),
        URL_SAFE_NO_PAD.encode(public_key),
    )
}

/// A protobuf payload that is not a valid frame message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// Not valid protobuf for the expected message.
    #[error("malformed protobuf: {0}")]
    Malformed(String),
    /// Valid protobuf but the `body` oneof is missing (or an unknown case).
    #[error("frame has no known body")]
    MissingBody,
}

/// Decodes a client frame payload (the bytes after the length prefix).
pub fn decode_client_frame(payload: &[u8]) -> Result<ClientFrame, MessageError> {
    let frame = <ClientFrame as prost::Message>::decode(payload)
        .map_err(|e| MessageError::Malformed(e.to_string()))?;
    if frame.body.is_none() {
        return Err(MessageError::MissingBody);
    }
    Ok(frame)
}

/// The `ClientFrame.body` field number of `SendMessage` (proto/ponte.proto).
pub const SEND_FIELD: u32 = 15;

/// The `ClientFrame.body` field number of `SendGroupMessage`.
pub const SEND_GROUP_FIELD: u32 = 18;

/// Encoded size of a `SendGroupMessage` client frame with a body of
/// `body_len` bytes and [`MAX_GROUP_RECIPIENTS`] recipients of the longest
/// handle: the most an honest client sends (its body's cap, the recipients
/// and the few bytes of ids, tags and lengths around them).
pub fn max_group_frame_len(body_len: usize) -> usize {
    // Per recipient: a one-byte tag, a one-byte length, the handle.
    let recipients = MAX_GROUP_RECIPIENTS * (2 + HANDLE_MAX);
    // Request id (up to 11 bytes), the body's tag and length (up to 5),
    // the message's own tag and length, both ids with theirs.
    let envelope = 11 + 5 + 5 + 2 * (2 + MESSAGE_ID_LEN) + 5;
    body_len + recipients + envelope
}

/// The `ClientFrame.body` field number of `UploadAppend`.
pub const UPLOAD_APPEND_FIELD: u32 = 20;

/// Length of a blob (upload) id.
pub const BLOB_ID_LEN: usize = 16;

/// Most bytes in one `UploadAppend` chunk or `BlobChunk`: within the
/// 128 KiB frame cap ([`crate::frame::MAX_FRAME_LEN`]) with room for the
/// envelope.
pub const BLOB_CHUNK_MAX: usize = 96 * 1024;

/// Which request a client frame payload holds (its `body` field number),
/// found by walking the top-level fields without decoding them, so a
/// receiver can cap a frame's size by its type before decoding allocates
/// anything. `None` for a payload that is not well-formed at the top level
/// or has no body; the last body field wins, as in decoding.
pub fn client_body_field(payload: &[u8]) -> Option<u32> {
    use prost::encoding::{decode_key, skip_field, DecodeContext};
    let mut buf = payload;
    let mut body = None;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        if tag != 1 {
            body = Some(tag);
        }
        skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?;
    }
    body
}

/// The parts of a `SendGroupMessage` frame a receiver needs to refuse
/// one with too many recipients before decoding it: decoding allocates a
/// string per entry, and a frame within the group cap
/// ([`max_group_frame_len`]) holds ~50,000 empty ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFrameHead {
    /// The frame's request id.
    pub request_id: u64,
    /// The message id as sent (the last one); empty when it is longer than
    /// [`MESSAGE_ID_LEN`] (refused as malformed anyway).
    pub message_id: bytes::Bytes,
    /// Recipient entries in every `send_group` field of the frame.
    pub recipients: usize,
}

/// Walks a client frame payload whose body is a `SendGroupMessage` (see
/// [`client_body_field`]) without decoding it: its request id, message id
/// and how many recipient entries it holds. Allocates nothing but the
/// message id; `None` when the payload is not well-formed protobuf down to
/// the group message's fields.
pub fn group_frame_head(payload: &[u8]) -> Option<GroupFrameHead> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let mut buf = payload;
    let mut head = GroupFrameHead {
        request_id: 0,
        message_id: bytes::Bytes::new(),
        recipients: 0,
    };
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        match (tag, wire_type) {
            (1, WireType::Varint) => head.request_id = decode_varint(&mut buf).ok()?,
            (SEND_GROUP_FIELD, WireType::LengthDelimited) => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let mut inner = buf.get(..len)?;
                buf = &buf[len..];
                while !inner.is_empty() {
                    let (tag, wire_type) = decode_key(&mut inner).ok()?;
                    match (tag, wire_type) {
                        (1, WireType::LengthDelimited) => {
                            let len = usize::try_from(decode_varint(&mut inner).ok()?).ok()?;
                            let id = inner.get(..len)?;
                            head.message_id = if len <= MESSAGE_ID_LEN {
                                bytes::Bytes::copy_from_slice(id)
                            } else {
                                bytes::Bytes::new()
                            };
                            inner = &inner[len..];
                        }
                        (3, WireType::LengthDelimited) => {
                            head.recipients += 1;
                            skip_field(wire_type, tag, &mut inner, DecodeContext::default())
                                .ok()?;
                        }
                        _ => {
                            skip_field(wire_type, tag, &mut inner, DecodeContext::default()).ok()?
                        }
                    }
                }
            }
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?,
        }
    }
    Some(head)
}

/// Decodes a server frame payload (the bytes after the length prefix).
pub fn decode_server_frame(payload: &[u8]) -> Result<ServerFrame, MessageError> {
    let frame = <ServerFrame as prost::Message>::decode(payload)
        .map_err(|e| MessageError::Malformed(e.to_string()))?;
    if frame.body.is_none() {
        return Err(MessageError::MissingBody);
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message as _;

    #[test]
    fn handles() {
        assert!(validate_handle("bob").is_ok());
        assert!(validate_handle("alice_2026").is_ok());
        assert_eq!(validate_handle("ab"), Err(HandleError::Length));
        assert_eq!(validate_handle(&"a".repeat(33)), Err(HandleError::Length));
        assert!(validate_handle(&"a".repeat(32)).is_ok());
        assert_eq!(validate_handle("Bob"), Err(HandleError::Character));
        assert_eq!(validate_handle("bo b"), Err(HandleError::Character));
        assert_eq!(validate_handle("böb"), Err(HandleError::Character));
    }

    #[test]
    fn signing_strings_are_stable() {
        let s = registration_signing_string("bob", &[1; 32], &[2; 32], &[3; 32]);
        assert!(s.starts_with("ponte-register-v1\nbob\nAQEB"));
        assert_eq!(s.lines().count(), 5);
        let k = key_signing_string(b"AAAAAQ", &[4; 32], true);
        assert!(k.starts_with("ponte-key-v1\nfallback\n"));
    }

    #[test]
    fn documented_example_bytes() {
        // docs/PROTOCOL.md, "Framing".
        let f = ClientFrame {
            request_id: 1,
            body: Some(client_frame::Body::Ping(Ping { nonce: 7 })),
        };
        assert_eq!(
            f.encode_to_vec(),
            [0x08, 0x01, 0x8a, 0x01, 0x02, 0x08, 0x07]
        );
        let mut framed = Vec::new();
        crate::frame::encode_message(&f, crate::frame::MAX_FRAME_LEN, &mut framed).unwrap();
        assert_eq!(framed[..4], [0, 0, 0, 7]);
    }

    #[test]
    fn frame_round_trip_and_garbage() {
        let f = ClientFrame {
            request_id: 7,
            body: Some(client_frame::Body::Ping(Ping { nonce: 9 })),
        };
        let bytes = f.encode_to_vec();
        assert_eq!(decode_client_frame(&bytes).unwrap(), f);
        assert_eq!(decode_client_frame(&[]), Err(MessageError::MissingBody));
        assert!(matches!(
            decode_client_frame(&[0xff, 0xff, 0xff]),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn body_field_is_found_without_decoding() {
        let send = ClientFrame {
            request_id: 7,
            body: Some(client_frame::Body::Send(SendMessage {
                message_id: vec![1; 16].into(),
                recipient: "bob".into(),
                body: vec![9; 1000].into(),
            })),
        };
        assert_eq!(client_body_field(&send.encode_to_vec()), Some(SEND_FIELD));
        let append = ClientFrame {
            request_id: 9,
            body: Some(client_frame::Body::UploadAppend(UploadAppend {
                upload_id: vec![2; BLOB_ID_LEN].into(),
                offset: 5,
                chunk: vec![3; BLOB_CHUNK_MAX].into(),
            })),
        };
        let encoded = append.encode_to_vec();
        assert_eq!(client_body_field(&encoded), Some(UPLOAD_APPEND_FIELD));
        assert!(encoded.len() + crate::frame::LEN_PREFIX <= crate::frame::MAX_FRAME_LEN);
        let ack = ClientFrame {
            request_id: 8,
            body: Some(client_frame::Body::Ack(Ack {
                seqs: vec![1, 2, 3],
            })),
        };
        assert_eq!(client_body_field(&ack.encode_to_vec()), Some(16));
        let ping = ClientFrame {
            request_id: 0,
            body: Some(client_frame::Body::Ping(Ping { nonce: 1 })),
        };
        assert_eq!(client_body_field(&ping.encode_to_vec()), Some(17));
        let group = ClientFrame {
            request_id: u64::MAX,
            body: Some(client_frame::Body::SendGroup(SendGroupMessage {
                message_id: vec![1; MESSAGE_ID_LEN].into(),
                group_id: vec![2; GROUP_ID_LEN].into(),
                recipients: (0..MAX_GROUP_RECIPIENTS)
                    .map(|i| format!("{i:0>32}"))
                    .collect(),
                body: vec![9; 65_536].into(),
            })),
        };
        let encoded = group.encode_to_vec();
        assert_eq!(client_body_field(&encoded), Some(SEND_GROUP_FIELD));
        // The cap covers the largest honest frame, and not much more.
        assert!(encoded.len() <= max_group_frame_len(65_536));
        assert!(max_group_frame_len(65_536) - encoded.len() < 64);
        let head = group_frame_head(&encoded).unwrap();
        assert_eq!(head.request_id, u64::MAX);
        assert_eq!(head.message_id.as_ref(), [1; MESSAGE_ID_LEN]);
        assert_eq!(head.recipients, MAX_GROUP_RECIPIENTS);
        // No body, or broken at the top level.
        let none = ClientFrame {
            request_id: 3,
            body: None,
        };
        assert_eq!(client_body_field(&none.encode_to_vec()), None);
        assert_eq!(client_body_field(&[0xff, 0xff, 0xff]), None);
        // A length that runs past the end.
        assert_eq!(client_body_field(&[0x7a, 0x05, 0x00]), None);
    }

    #[test]
    fn a_group_frame_is_counted_without_decoding() {
        // The hostile frame: ~50,000 empty recipients under the group cap.
        let hostile = ClientFrame {
            request_id: 7,
            body: Some(client_frame::Body::SendGroup(SendGroupMessage {
                message_id: vec![3; MESSAGE_ID_LEN].into(),
                group_id: vec![4; GROUP_ID_LEN].into(),
                recipients: vec![String::new(); 49_000],
                body: vec![1; 1000].into(),
            })),
        };
        let encoded = hostile.encode_to_vec();
        assert!(encoded.len() <= max_group_frame_len(65_536));
        let head = group_frame_head(&encoded).unwrap();
        assert_eq!(head.recipients, 49_000);
        assert_eq!(head.request_id, 7);
        assert_eq!(head.message_id.as_ref(), [3; MESSAGE_ID_LEN]);
        // Two group fields merge when decoded: both are counted.
        let mut twice = encoded.clone();
        twice.extend_from_slice(&encoded);
        assert_eq!(group_frame_head(&twice).unwrap().recipients, 98_000);
        // An overlong message id is not kept.
        let long = ClientFrame {
            request_id: 1,
            body: Some(client_frame::Body::SendGroup(SendGroupMessage {
                message_id: vec![3; 4096].into(),
                ..SendGroupMessage::default()
            })),
        };
        assert!(group_frame_head(&long.encode_to_vec())
            .unwrap()
            .message_id
            .is_empty());
        // Cut short inside the group message.
        assert_eq!(group_frame_head(&encoded[..encoded.len() - 10]), None);
        assert_eq!(group_frame_head(&[0x92, 0x01, 0x05, 0x1a]), None);
    }
}
