//! `Download`: a chunk of a finished blob from any offset, so downloads
//! resume like uploads. Any logged-in account that knows the blob's id may
//! read it (the 128-bit random id is the capability); an account other
//! than the uploader that is sent the last byte counts as having fetched
//! it, and the sweep deletes a blob once as many accounts as it was
//! created for did. A finished blob's row is read from the store once and
//! kept in memory while it is downloaded (it does not change until the
//! blob is deleted, and then its file is gone), so the chunks of a large
//! download do not each wait for a store read.

use super::{arr, Context, Refusal, Reply, Request, Runs};
use crate::store::UnixMillis;
use ponte_wire::messages::{self, server_frame, ErrorCode};

impl Request for messages::Download {
    const RUNS: Runs = Runs::InPlace;

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let account = cx.account()?.id;
        let id = arr::<16>(&self.blob_id).ok_or(Refusal::new(
            ErrorCode::InvalidArgument,
            "blob id must be 16 bytes",
        ))?;
        let unknown = || Refusal::new(ErrorCode::UnknownBlob, "no such blob");
        let shared = &cx.shared;
        let info = match shared.blobs.finished_row(&id) {
            Some(i) => i,
            None => match shared.store.blob(id).await {
                Ok(Some(i)) if i.finished && i.expires_at > UnixMillis::now() => {
                    shared.blobs.keep_finished_row(&i);
                    i
                }
                Ok(_) => return Err(unknown()),
                Err(e) => return Err(Refusal::unavailable("blob lookup", &e)),
            },
        };
        if self.offset > info.size {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "offset past the end",
            ));
        }
        let asked = match self.max_len {
            0 => messages::BLOB_CHUNK_MAX,
            n => (n as usize).min(messages::BLOB_CHUNK_MAX),
        };
        let left = info.size - self.offset;
        let len = usize::try_from(left).map_or(asked, |l| l.min(asked));
        let chunk = match shared.blobs.read(id, self.offset, len).await {
            Ok(Some(c)) if c.len() == len => c,
            Ok(_) => return Err(unknown()),
            Err(e) => {
                tracing::warn!("blob read failed: {e}");
                return Err(Refusal::new(ErrorCode::Unavailable, "try again later"));
            }
        };
        shared.metrics.blob_bytes_out.inc_by(len as u64);
        if self.offset + len as u64 == info.size && account != info.owner && info.recipients > 0 {
            if let Err(e) = shared.store.blob_fetched(id, account).await {
                tracing::warn!("recording a blob fetch failed: {}", crate::Chain(&e));
            }
        }
        Ok(Reply::Answer(server_frame::Body::BlobChunk(
            messages::BlobChunk {
                blob_id: self.blob_id,
                offset: self.offset,
                size: info.size,
                chunk,
            },
        )))
    }
}
