//! `Register`: a new account for this device, if the handle is free, the
//! registration signature verifies, the address is within its registration
//! rate and (on an invite-only server) the invite is good. A created account
//! is logged in at once.

use super::{arr, verify, Context, Online, Refusal, Reply, Request, Runs};
use crate::store::{AccountInfo, NewAccount, RegisterOutcome, UnixMillis};
use ponte_wire::messages::{self, server_frame, ErrorCode};
use std::time::Instant;

/// Longest invite token accepted.
const MAX_INVITE_LEN: usize = 128;

impl Request for messages::Register {
    const NEEDS_LOGIN: bool = false;
    const RUNS: Runs = Runs::InPlace;

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let r = self;
        let shared = &cx.shared;
        let peer = cx.peer;
        if cx.account.is_some() {
            return Err(Refusal::new(
                ErrorCode::AlreadyRegistered,
                "already logged in",
            ));
        }
        if messages::validate_handle(&r.handle).is_err() {
            return Err(Refusal::new(
                ErrorCode::InvalidHandle,
                "3-32 of a-z, 0-9, _",
            ));
        }
        let keys = r.keys.unwrap_or_default();
        let (Some(curve), Some(ed)) = (arr::<32>(&keys.curve25519), arr::<32>(&keys.ed25519))
        else {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "keys must be 32 bytes",
            ));
        };
        if r.signature.len() != messages::SIGNATURE_LEN || r.invite.len() > MAX_INVITE_LEN {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "bad signature or invite length",
            ));
        }
        // Rate limits first (checking takes no token): a flood of bad
        // signatures must not cost a signature verification each.
        let now = Instant::now();
        let may = shared.register_by_source.check(peer.source_ip, now)
            && shared.register_by_peer.check(peer.peer_ip, now);
        let signed =
            messages::registration_signing_string(&r.handle, &curve, &ed, &peer.device_key);
        if may && !verify(&ed, &signed, &r.signature) {
            return Err(Refusal::new(
                ErrorCode::BadSignature,
                "registration signature",
            ));
        }
        let allowed = may
            && shared.register_by_source.take(peer.source_ip, now)
            && shared.register_by_peer.take(peer.peer_ip, now);
        if !allowed {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                "too many registrations from this address; try again later",
            ));
        }
        let outcome = shared
            .store
            .register(NewAccount {
                handle: r.handle.clone(),
                noise_key: peer.device_key,
                curve25519: curve,
                ed25519: ed,
                signature: r.signature.to_vec(),
                invite: (!r.invite.is_empty()).then(|| r.invite.clone()),
                invite_required: shared.cfg.invite_only,
                now: UnixMillis::now(),
            })
            .await;
        let (code, detail) = match outcome {
            Ok(RegisterOutcome::Created(id)) => {
                shared.metrics.registrations.inc();
                let account = AccountInfo {
                    id,
                    handle: r.handle.clone(),
                    noise_key: peer.device_key,
                    curve25519: curve,
                    ed25519: ed,
                    signature: r.signature.to_vec(),
                };
                return Ok(Reply::Online(Box::new(Online {
                    account,
                    answer: server_frame::Body::Registered(messages::Registered {
                        handle: r.handle,
                    }),
                    keys: None,
                })));
            }
            Ok(RegisterOutcome::HandleTaken) => (ErrorCode::HandleTaken, "handle taken"),
            Ok(RegisterOutcome::DeviceTaken) => {
                (ErrorCode::AlreadyRegistered, "device already registered")
            }
            Ok(RegisterOutcome::InviteRequired) => (
                ErrorCode::InviteRequired,
                "this server is invite-only: an invite is required",
            ),
            Ok(RegisterOutcome::InviteInvalid) => {
                (ErrorCode::InviteInvalid, "invite unknown or already used")
            }
            Err(e) => return Err(Refusal::unavailable("register", &e)),
        };
        Err(Refusal::new(code, detail))
    }
}
