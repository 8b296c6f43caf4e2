//! `UploadCreate`, `UploadOffset` and `UploadAppend`: resumable uploads of
//! blobs (the tus model: create, ask the offset, append at it).
//!
//! Create and offset run in place. Appends run alongside the session, so
//! a client may keep several in flight: they take their turns to queue
//! their chunks for the upload's writer in the order their frames came
//! (the turn is asked for before any other wait), and each is answered
//! only once a flush covers its chunk (on disk and its offset recorded;
//! see `crate::blobs`). The upload's row is read from the store by a
//! tail's first append, the last and empty ones; the appends in between
//! take it from the tail (one store read less per chunk, on the path every
//! chunk of the upload waits behind). An append at any offset but the one
//! the previous append ended at is refused with that offset, as tus
//! answers 409; the append that completes the upload checks the hash and
//! makes the blob downloadable, or discards it.

use super::{arr, Context, Refusal, Reply, Request, Runs};
use crate::blobs::{Finished, Flushed, Record};
use crate::store::{BlobCreateOutcome, BlobId, BlobInfo, NewBlob, UnixMillis};
use ponte_wire::messages::{self, server_frame, ErrorCode, ErrorFrame};
use std::sync::Arc;

fn blob_id(b: &[u8]) -> Result<BlobId, Refusal> {
    arr::<16>(b).ok_or(Refusal::new(
        ErrorCode::InvalidArgument,
        "upload id must be 16 bytes",
    ))
}

fn state(info: &BlobInfo) -> Reply {
    Reply::Answer(server_frame::Body::UploadState(messages::UploadState {
        upload_id: bytes::Bytes::copy_from_slice(&info.id),
        offset: info.offset,
        size: info.size,
        finished: info.finished,
        expires_at_ms: info.expires_at.to_wire(),
    }))
}

fn unknown() -> Refusal {
    Refusal::new(ErrorCode::UnknownBlob, "no such upload")
}

/// The upload `id` of the logged-in account, unless it expired.
async fn own_upload(cx: &Context, id: BlobId) -> Result<BlobInfo, Refusal> {
    let account = cx.account()?.id;
    match cx.shared.store.blob(id).await {
        Ok(Some(info)) if info.owner == account && info.expires_at > UnixMillis::now() => Ok(info),
        Ok(_) => Err(unknown()),
        Err(e) => Err(Refusal::unavailable("blob lookup", &e)),
    }
}

/// Finishes a complete upload: checks the hash, moves it into place and
/// records it; a mismatch deletes the upload.
async fn finish(cx: &Context, mut info: BlobInfo) -> Result<BlobInfo, Refusal> {
    let shared = &cx.shared;
    match shared.blobs.finish(info.id, info.size, info.sha256).await {
        Ok(Finished::Stored) => {}
        Ok(Finished::Mismatch) => {
            if let Err(e) = shared.blobs.delete(info.id).await {
                tracing::warn!("deleting a mismatched upload failed: {e}");
            }
            if let Err(e) = shared.store.blob_delete(vec![info.id]).await {
                tracing::warn!("deleting a mismatched upload failed: {}", crate::Chain(&e));
            }
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "the upload does not match its sha256; it was discarded",
            ));
        }
        Err(e) => {
            tracing::warn!("finishing an upload failed: {e}");
            return Err(Refusal::new(ErrorCode::Unavailable, "try again later"));
        }
    }
    match shared.store.blob_finish(info.id).await {
        Ok(_) => {
            shared.metrics.blobs_finished.inc();
            info.finished = true;
            Ok(info)
        }
        Err(e) => Err(Refusal::unavailable("finishing an upload", &e)),
    }
}

impl Request for messages::UploadCreate {
    const RUNS: Runs = Runs::InPlace;

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let account = cx.account()?.id;
        let id = blob_id(&self.upload_id)?;
        let sha256 = arr::<32>(&self.sha256).ok_or(Refusal::new(
            ErrorCode::InvalidArgument,
            "sha256 must be 32 bytes",
        ))?;
        let cfg = &cx.shared.cfg;
        if self.size > cfg.max_blob_size {
            return Err(Refusal::new(ErrorCode::TooLarge, "blob too large"));
        }
        let now = UnixMillis::now();
        let new = NewBlob {
            id,
            owner: account,
            size: self.size,
            sha256,
            recipients: self.recipients,
            now,
            expires_at: now.plus(cfg.blob_retention()),
            quota: cfg.blob_quota_per_account,
        };
        let info = match cx.shared.store.blob_create(new).await {
            Ok(BlobCreateOutcome::Created(info)) => info,
            Ok(BlobCreateOutcome::Existing(info)) if info.expires_at > now => info,
            Ok(BlobCreateOutcome::Existing(_)) => return Err(unknown()),
            Ok(BlobCreateOutcome::Conflict { other_owner: true }) => {
                return Err(Refusal::new(ErrorCode::UnknownBlob, "upload id in use"))
            }
            Ok(BlobCreateOutcome::Conflict { other_owner: false }) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidArgument,
                    "upload id in use with another size or sha256",
                ))
            }
            Ok(BlobCreateOutcome::OverQuota) => {
                return Err(Refusal::new(
                    ErrorCode::LimitExceeded,
                    "blob quota of this account exceeded",
                ))
            }
            Err(e) => return Err(Refusal::unavailable("upload create", &e)),
        };
        if !info.finished && info.offset == info.size {
            // An empty blob is whole at once; a complete one left
            // unfinished by a crash is finished now.
            let Some(_busy) = cx.shared.blobs.hold(id) else {
                return Err(Refusal::new(ErrorCode::Unavailable, "upload busy"));
            };
            return finish(&cx, info).await.map(|i| state(&i));
        }
        Ok(state(&info))
    }
}

impl Request for messages::UploadOffset {
    const RUNS: Runs = Runs::InPlace;

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let id = blob_id(&self.upload_id)?;
        own_upload(&cx, id).await.map(|i| state(&i))
    }
}

impl Request for messages::UploadAppend {
    const RUNS: Runs = Runs::Alongside;

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let id = blob_id(&self.upload_id)?;
        if self.chunk.len() > messages::BLOB_CHUNK_MAX {
            return Err(Refusal::new(ErrorCode::TooLarge, "chunk too large"));
        }
        let tail = cx.shared.blobs.tail(id);
        // The first wait: the session polls this once as the frame comes,
        // so the turns follow the frames' order.
        let turn = tail.turn().await;
        let account = cx.account()?.id;
        let chunk_end = self.offset.saturating_add(self.chunk.len() as u64);
        let known = (!self.chunk.is_empty())
            .then(|| tail.row_for(account, chunk_end))
            .flatten();
        let mut info = match known {
            Some(info) => info,
            None => {
                let info = own_upload(&cx, id).await?;
                tail.remember_row(account, &info);
                info
            }
        };
        let Some(expected) = tail.next_offset(info.offset) else {
            return Err(Refusal::new(ErrorCode::Unavailable, "try again later"));
        };
        if self.offset != expected || (info.finished && !self.chunk.is_empty()) {
            return Ok(mismatch(&cx, expected));
        }
        let len = self.chunk.len() as u64;
        let Some(end) = expected.checked_add(len).filter(|&e| e <= info.size) else {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                "chunk past the declared size",
            ));
        };
        if len > 0 {
            let shared = Arc::clone(&cx.shared);
            let record: Record = Arc::new(move |from, to| {
                let shared = Arc::clone(&shared);
                Box::pin(async move {
                    shared.metrics.blob_flushes.inc();
                    shared
                        .store
                        .blob_advance(id, from, to)
                        .await
                        .map_err(|e| crate::Chain(&e).to_string())
                })
            });
            // Queued for the tail's writer, which holds the tail until the
            // chunk's record is committed, even if the connection drops
            // meanwhile (the session then drops this request): until then
            // the next append (on any connection) must go on from this
            // tail's offsets, not start a new tail at a stored offset that
            // is about to move.
            let flushed = tail.append(expected, self.chunk, record);
            drop(turn);
            // The tail stays while an append waits for its answer.
            let flushed = flushed.await;
            drop(tail);
            match flushed {
                Flushed::Durable => {}
                Flushed::Refused => return refused(&cx, id).await,
                Flushed::Behind(at) => return Ok(mismatch(&cx, at)),
                Flushed::NotWritten { error, short } => {
                    // A full disk (or a failing one): nothing of this chunk
                    // counts, and what was acknowledged stays.
                    tracing::warn!("blob append failed: {error}");
                    if let Some(held) = short {
                        // The file ends before the recorded offset: move the
                        // offset back to it; the client's next connection
                        // asks for the offset and goes on from there.
                        if let Err(e) = cx.shared.store.blob_advance(id, expected, held).await {
                            tracing::warn!(
                                "moving an upload's offset back failed: {}",
                                crate::Chain(&e)
                            );
                        }
                    }
                    return Err(Refusal::new(ErrorCode::Unavailable, "try again later"));
                }
                Flushed::Failed(e) => {
                    tracing::warn!("blob append failed: {e}");
                    return Err(Refusal::new(ErrorCode::Unavailable, "try again later"));
                }
            }
            cx.shared.metrics.blob_bytes_in.inc_by(len);
            info.offset = end;
        } else {
            drop(turn);
            drop(tail);
        }
        if !info.finished && info.offset == info.size {
            let Some(_busy) = cx.shared.blobs.hold(id) else {
                return Err(Refusal::new(ErrorCode::Unavailable, "upload busy"));
            };
            info = finish(&cx, info).await?;
        }
        Ok(state(&info))
    }
}

/// After the store refused an append's offset record: an upload that is
/// gone (deleted, or expired: the sweep deletes it) loses its files and is
/// answered `UNKNOWN_BLOB`; one whose offset moved meanwhile (an append
/// elsewhere recorded first) keeps its file, whose next tail cuts it back
/// to the recorded offset, and is answered `OFFSET_MISMATCH` with that
/// offset, from which the client goes on.
async fn refused(cx: &Context, id: BlobId) -> Result<Reply, Refusal> {
    match cx.shared.store.blob(id).await {
        Ok(Some(info)) if info.expires_at > UnixMillis::now() => Ok(mismatch(cx, info.offset)),
        Ok(_) => {
            if let Err(e) = cx.shared.blobs.delete(id).await {
                tracing::warn!("deleting an expired upload failed: {e}");
            }
            Err(unknown())
        }
        Err(e) => Err(Refusal::unavailable("blob lookup", &e)),
    }
}

/// tus's 409: the error, with the upload's current offset to go on from.
/// Built here (not as a [`Refusal`]) because it carries the offset.
fn mismatch(cx: &Context, offset: u64) -> Reply {
    let code = ErrorCode::OffsetMismatch;
    cx.shared.metrics.error(code);
    Reply::Answer(server_frame::Body::Error(ErrorFrame {
        code: code as i32,
        detail: "append at the upload's current offset".to_owned(),
        message_id: bytes::Bytes::new(),
        offset,
    }))
}
