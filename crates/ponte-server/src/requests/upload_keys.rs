//! `UploadKeys`: adds signed one-time keys and replaces the fallback key,
//! each signature checked against the account's Ed25519 key, up to
//! `max_one_time_keys` stored.

use super::{arr, verify, Context, Refusal, Reply, Request, Runs};
use crate::store::{KeyRecord, UploadOutcome};
use ponte_wire::messages::{self, server_frame, ErrorCode, SignedKey};

impl Request for messages::UploadKeys {
    const RUNS: Runs = Runs::Alongside;

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let u = self;
        let info = cx.account()?;
        let total = u.one_time_keys.len() + usize::from(u.fallback_key.is_some());
        if total > cx.shared.cfg.max_keys_per_upload {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "too many keys in one upload",
            ));
        }
        let check = |k: &SignedKey, fallback: bool| -> Result<KeyRecord, Refusal> {
            if k.key_id.is_empty() || k.key_id.len() > messages::KEY_ID_MAX {
                return Err(Refusal::new(
                    ErrorCode::InvalidArgument,
                    "key id must be 1-64 bytes",
                ));
            }
            let pk = arr::<32>(&k.public_key).ok_or(Refusal::new(
                ErrorCode::InvalidArgument,
                "public key must be 32 bytes",
            ))?;
            let signed = messages::key_signing_string(&k.key_id, &pk, fallback);
            if !verify(&info.ed25519, &signed, &k.signature) {
                return Err(Refusal::new(ErrorCode::BadSignature, "key signature"));
            }
            Ok(KeyRecord {
                key_id: k.key_id.to_vec(),
                public_key: pk,
                signature: k.signature.to_vec(),
            })
        };
        let one_time = u
            .one_time_keys
            .iter()
            .map(|k| check(k, false))
            .collect::<Result<Vec<_>, _>>()?;
        let fallback = u
            .fallback_key
            .as_ref()
            .map(|k| check(k, true))
            .transpose()?;
        let account = info.id;
        drop(u);
        let max = cx.shared.cfg.max_one_time_keys;
        match cx
            .shared
            .store
            .upload_keys(account, one_time, fallback, max)
            .await
        {
            Ok(UploadOutcome::Stored(c)) => Ok(Reply::Answer(server_frame::Body::KeysUploaded(
                messages::KeysUploaded {
                    one_time_keys: c.one_time_keys,
                    has_fallback_key: c.has_fallback,
                },
            ))),
            Ok(UploadOutcome::LimitExceeded) => Err(Refusal::new(
                ErrorCode::LimitExceeded,
                "too many one-time keys stored",
            )),
            Err(e) => Err(Refusal::unavailable("key upload", &e)),
        }
    }
}
