//! Server frames built from the store's types: answers, errors and pushes.
//! Pure functions; the session queues what they build.

use crate::metrics::Metrics;
use crate::store::{AccountInfo, ItemKind, KeyCounts, KeyRecord, MailItem};
use bytes::Bytes;
use ponte_wire::messages::{
    server_frame, Close, CloseReason, Deliver, DeliveryReceipt, DeviceKeys, ErrorCode, ErrorFrame,
    ExpiredNotice, KeyCount, ServerFrame, SignedKey,
};

/// A frame the client did not ask for (request id 0).
pub(crate) fn push(body: server_frame::Body) -> ServerFrame {
    reply(0, body)
}

/// The answer to request `request_id`.
pub(crate) fn reply(request_id: u64, body: server_frame::Body) -> ServerFrame {
    ServerFrame {
        request_id,
        body: Some(body),
    }
}

/// An error answer, counted in the metrics by its code.
pub(crate) fn error(
    metrics: &Metrics,
    request_id: u64,
    code: ErrorCode,
    detail: &str,
    message_id: Option<Bytes>,
) -> ServerFrame {
    metrics.error(code);
    reply(
        request_id,
        server_frame::Body::Error(ErrorFrame {
            code: code as i32,
            detail: detail.to_owned(),
            message_id: message_id.unwrap_or_default(),
            offset: 0,
        }),
    )
}

/// The last frame of a session.
pub(crate) fn close(reason: CloseReason, detail: &str) -> ServerFrame {
    push(server_frame::Body::Close(Close {
        reason: reason as i32,
        detail: detail.to_owned(),
    }))
}

/// The device's one-time key count, pushed at login and when it runs low.
pub(crate) fn key_count(counts: KeyCounts, low_water_mark: u32) -> ServerFrame {
    push(server_frame::Body::KeyCount(KeyCount {
        one_time_keys: counts.one_time_keys,
        has_fallback_key: counts.has_fallback,
        low_water_mark,
    }))
}

pub(crate) fn signed_key(k: &KeyRecord) -> SignedKey {
    SignedKey {
        key_id: Bytes::copy_from_slice(&k.key_id),
        public_key: Bytes::copy_from_slice(&k.public_key),
        signature: Bytes::copy_from_slice(&k.signature),
    }
}

pub(crate) fn device_keys(a: &AccountInfo) -> DeviceKeys {
    DeviceKeys {
        curve25519: Bytes::copy_from_slice(&a.curve25519),
        ed25519: Bytes::copy_from_slice(&a.ed25519),
    }
}

/// A mailbox item pushed to its owner.
pub(crate) fn item(item: MailItem) -> ServerFrame {
    let at = item.at.to_wire();
    push(match item.kind {
        ItemKind::Message => server_frame::Body::Deliver(Deliver {
            seq: item.seq.0,
            message_id: item.message_id,
            sender: item.peer_handle,
            body: item.body,
            accepted_at_ms: at,
            group_id: item.group_id,
        }),
        ItemKind::Receipt => server_frame::Body::DeliveryReceipt(DeliveryReceipt {
            seq: item.seq.0,
            message_id: item.message_id,
            recipient: item.peer_handle,
            delivered_at_ms: at,
        }),
        ItemKind::Expired => server_frame::Body::ExpiredNotice(ExpiredNotice {
            seq: item.seq.0,
            message_id: item.message_id,
            recipient: item.peer_handle,
            expired_at_ms: at,
        }),
    })
}
