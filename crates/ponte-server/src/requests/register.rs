//! `Register`: a new account for this device, if the handle is free, the
//! registration signature verifies, the address is within its registration
//! rate and (on an invite-only server) the invite is good. A created account
//! is logged in at once.
//!
//! On an invite-only server a request that carries an invite is not held
//! back by the rate limit: it goes to the store, then takes a token if one
//! is left, and only a failure needs one: a failure with no token left is
//! answered `RATE_LIMITED`, so a flood of guessed invites learns nothing,
//! not even whether a handle is taken. Other requests take a token before
//! they reach the store.

use super::{arr, verify, Context, Online, Refusal, Reply, Request, Runs};
use crate::store::{AccountInfo, NewAccount, RegisterOutcome, UnixMillis};
use ponte_wire::limit::SourceKey;
use ponte_wire::messages::{self, server_frame, ErrorCode};
use std::net::IpAddr;
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
        if r.signature.len() != messages::SIGNATURE_LEN {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "the registration signature must be 64 bytes",
            ));
        }
        if r.invite.len() > MAX_INVITE_LEN {
            // The invite is what a user pasted: say which field is wrong.
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "invite too long (at most 128 bytes): an invite is 32 hex digits",
            ));
        }
        let now = Instant::now();
        let signed =
            messages::registration_signing_string(&r.handle, &curve, &ed, &peer.device_key);
        // On an invite-only server a request with an invite is checked
        // against the invite, not the bucket: a newcomer who mistyped a few
        // times still gets in with the right one (which works once). Once
        // no token is left a failure is answered as rate-limited, whatever
        // it was.
        let with_invite = shared.cfg.invite_only && !r.invite.is_empty();
        if with_invite {
            if !verify(&ed, &signed, &r.signature) {
                return Err(Refusal::new(
                    ErrorCode::BadSignature,
                    "registration signature",
                ));
            }
        } else {
            // Rate limits first (checking takes no token): a flood of bad
            // signatures must not cost a signature verification each.
            let may = tokens(&cx, now, false).await?;
            if may && !verify(&ed, &signed, &r.signature) {
                return Err(Refusal::new(
                    ErrorCode::BadSignature,
                    "registration signature",
                ));
            }
            if !(may && tokens(&cx, now, true).await?) {
                return Err(rate_limited(shared.cfg.invite_only));
            }
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
        if with_invite {
            // Every attempt takes a token while there are any; only a
            // failure needs one.
            let took = tokens(&cx, now, true).await?;
            let failed = matches!(&outcome, Ok(o) if !matches!(o, RegisterOutcome::Created(_)));
            if failed && !took {
                return Err(rate_limited(true));
            }
        }
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

/// Takes (with `take` false: checks for) a registration token for the
/// source and for the peer address. With a store shared by several nodes
/// the buckets are the store's, counted across every node; else this
/// node's own.
async fn tokens(cx: &Context, now: Instant, take: bool) -> Result<bool, Refusal> {
    let (shared, peer) = (&cx.shared, &cx.peer);
    let limits = [
        (
            &shared.register_by_source,
            shared.cfg.register_limit,
            peer.source_ip,
            b"register-source" as &[u8],
        ),
        (
            &shared.register_by_peer,
            shared.cfg.register_limit_per_peer,
            peer.peer_ip,
            b"register-peer",
        ),
    ];
    for (local, limit, ip, name) in limits {
        let shared_bucket = shared
            .store
            .shared_token(bucket_key(name, ip), limit.rate(), take)
            .await
            .map_err(|e| Refusal::unavailable("register", &e))?;
        let ok = match shared_bucket {
            Some(ok) => ok,
            None if take => local.take(ip, now),
            None => local.check(ip, now),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The key of an address's bucket of limit `name`: the name, then the
/// address as the buckets count it (IPv4, or an IPv6 /64).
fn bucket_key(name: &[u8], ip: IpAddr) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b':');
    match SourceKey::of(ip) {
        SourceKey::V4(a) => key.extend_from_slice(&a.to_be_bytes()),
        SourceKey::V6(p) => key.extend_from_slice(&p.to_be_bytes()),
    }
    key
}

/// The refusal once an address has no registration tokens left.
fn rate_limited(invite_only: bool) -> Refusal {
    Refusal::new(
        ErrorCode::RateLimited,
        if invite_only {
            "too many failed registrations from this address: try again later; an unused \
             invite with a free handle is accepted now"
        } else {
            "too many registrations from this address; try again later"
        },
    )
}
