//! Sending and receiving files.
//!
//! Sending ([`Client::send_file`]): the file is encrypted
//! ([`ponte_e2e::file`]) straight into `PROFILE/files/up-BLOBID.enc`
//! (fsynced) and queued in the store ([`Store::queue_file`]) before any
//! byte leaves, so a process that dies loses nothing; the blob is then
//! uploaded with `UploadCreate` / `UploadAppend`, up to [`UPLOAD_WINDOW`]
//! appends in flight (the server flushes the chunks that arrive meanwhile
//! together). After any lost connection the upload goes on from the
//! offset the server reports (`UploadCreate` is idempotent and answers
//! it), over whatever route connects; an `OFFSET_MISMATCH` carries the
//! server's offset, and the upload goes on from there once the appends in
//! flight are answered. Once the server has the whole blob, the message
//! carrying the descriptor goes into the outbox and out like a text.
//! `sync` and `listen` finish uploads a previous process left.
//!
//! Receiving: a file message is stored as [`FileState::Pending`]. `sync`
//! and `listen` fetch files up to the auto-download limit
//! ([`DEFAULT_AUTO_DOWNLOAD`], [`Client::set_auto_download`]); larger ones
//! wait for [`Client::fetch_file`] (`ponte file get`). The ciphertext is
//! downloaded ([`DOWNLOAD_WINDOW`] requests in flight) to
//! `PROFILE/files/MSGID.part` (a partial download resumes from its
//! length), its SHA-256 checked, then decrypted to
//! `PROFILE/files/NAME` (the sender's name sanitised, made unique) through
//! a temporary file renamed into place: a file under its final name is
//! always complete and verified.
//!
//! [`Store::queue_file`]: crate::store::Store::queue_file

use super::outbound::SendOutcome;
use super::{emit, is_fatal, unexpected, Client, Display, Event};
use crate::connection::{Connection, REQUEST_TIMEOUT};
use crate::store::{group_key, group_of_key, Conversation, FileRecord, FileState};
use crate::{ClientError, Report, Result, ServerCode};
use bytes::Bytes;
use ponte_e2e::file::{self as crypto, FileError, FileKey};
use ponte_e2e::group::GroupId;
use ponte_e2e::{FileDescriptor, MessageId};
use ponte_wire::messages::{
    client_frame, server_frame, BlobChunk, Download, ErrorFrame, UploadAppend, UploadCreate,
    UploadState, BLOB_CHUNK_MAX,
};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Files up to this size are fetched by `sync` and `listen` (16 MiB).
pub const DEFAULT_AUTO_DOWNLOAD: u64 = 16 * 1024 * 1024;
/// Connections tried for one upload or download before giving up for now
/// (it resumes at the next `sync`, `listen` or `file get`).
const MAX_ATTEMPTS: u32 = 8;
/// Appends of 96 KiB an upload keeps in flight (3 MiB): the server
/// flushes the chunks written meanwhile with one `fdatasync`, so the more
/// are in flight the fewer flushes per byte; it runs up to 32 of a
/// connection's writes at once (`max_requests_in_flight`).
pub const UPLOAD_WINDOW: usize = 32;
/// `Download` requests a download keeps in flight, so a long route's
/// round trip is paid once per window rather than once per chunk.
pub const DOWNLOAD_WINDOW: usize = 16;
/// Directory inside the profile for encrypted uploads, partial downloads
/// and received files.
pub const FILES_DIR: &str = "files";

/// Progress of one transfer: bytes done and total (ciphertext bytes).
pub type Progress<'a> = dyn FnMut(u64, u64) + 'a;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
    let context = context.into();
    move |error| ClientError::Io { context, error }
}

fn file_err(what: &str, e: FileError) -> ClientError {
    match e {
        FileError::Io(error) => ClientError::Io {
            context: what.to_owned(),
            error,
        },
        other => ClientError::Protocol(format!("{what}: {other}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A MIME type from the file name's extension (the common ones; else
/// `application/octet-stream`).
pub fn guess_mime(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Create `dir` owner-only if missing.
fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("restricting {}", dir.display())))?;
    }
    Ok(())
}

/// `dir/name`, or `dir/stem (n).ext` for the first n that does not exist.
fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    for n in 1..10_000 {
        let p = dir.join(format!("{stem} ({n}){ext}"));
        if !p.exists() {
            return p;
        }
    }
    dir.join(format!("{stem} ({}){ext}", hex(&rand::random::<[u8; 8]>())))
}

fn upload_state(body: server_frame::Body, what: &str) -> Result<UploadState> {
    match body {
        server_frame::Body::UploadState(s) => Ok(s),
        _ => Err(unexpected(what)),
    }
}

fn retryable(e: &ClientError) -> bool {
    !is_fatal(e)
        && matches!(
            e,
            ClientError::Unreachable(_)
                | ClientError::Disconnected(_)
                | ClientError::Closed { .. }
                | ClientError::Server {
                    code: ServerCode::Unavailable | ServerCode::RateLimited,
                    ..
                }
        )
}

/// A refusal as the error it is.
fn refusal(e: ErrorFrame) -> ClientError {
    ClientError::Server {
        code: ServerCode::from_wire(e.code),
        detail: e.detail,
    }
}

/// What an upload does next ([`UploadWindow::step`]).
#[derive(Debug)]
enum Step {
    /// Send an append of `len` bytes from `offset`.
    Send { offset: u64, len: usize },
    /// Wait for an answer.
    Wait,
    /// The server has the whole blob, checked.
    Done,
    /// Refused (returned once every append in flight was answered).
    Fail(ClientError),
}

/// One upload's appends in flight and what their answers said: the
/// decisions without the I/O. Appends go out up to [`UPLOAD_WINDOW`] at a
/// time. An `OFFSET_MISMATCH` carries the offset the server expects: no
/// more appends go out until those in flight are answered (they were sent
/// before the server's offset was known), then the upload goes on from
/// that offset (or from what the server acknowledged since, if more). Any
/// other refusal is returned the same way, once the appends in flight are
/// answered.
#[derive(Debug)]
struct UploadWindow {
    size: u64,
    /// The next offset to send from.
    next: u64,
    /// The server holds everything up to here, on disk.
    acked: u64,
    /// Appends in flight: request id → (offset, length).
    inflight: HashMap<u64, (u64, u64)>,
    /// Where an `OFFSET_MISMATCH` said the server's upload is.
    rewind: Option<u64>,
    /// The first refusal other than a mismatch.
    failure: Option<ClientError>,
    finished: bool,
    /// Appends that may still go out: every chunk twice, and room for a
    /// few rewinds of a whole window.
    budget: u64,
}

impl UploadWindow {
    fn new(size: u64, state: &UploadState) -> Result<Self> {
        if state.offset > size || state.size != size {
            return Err(ClientError::Protocol(
                "the server's upload does not match the file".into(),
            ));
        }
        Ok(Self {
            size,
            next: state.offset,
            acked: state.offset,
            inflight: HashMap::new(),
            rewind: None,
            failure: None,
            finished: state.finished,
            budget: 2 * (size / BLOB_CHUNK_MAX as u64 + 1) + 4 * UPLOAD_WINDOW as u64,
        })
    }

    fn step(&mut self) -> Step {
        if self.finished {
            return Step::Done;
        }
        if self.inflight.is_empty() {
            if let Some(e) = self.failure.take() {
                return Step::Fail(e);
            }
            if let Some(at) = self.rewind.take() {
                self.next = at.max(self.acked);
            }
        }
        if self.failure.is_none() && self.rewind.is_none() {
            if self.inflight.len() < UPLOAD_WINDOW && self.next < self.size {
                let len = (self.size - self.next).min(BLOB_CHUNK_MAX as u64) as usize;
                return Step::Send {
                    offset: self.next,
                    len,
                };
            }
            if self.inflight.is_empty() {
                // Everything sent and answered, and not finished (the
                // server stopped while checking it): an empty append at
                // the end finishes it.
                return Step::Send {
                    offset: self.size,
                    len: 0,
                };
            }
        }
        Step::Wait
    }

    /// How long to wait for the next answer: the request timeout, and
    /// while the append that completes the upload is in flight, a second
    /// more per 4 MiB of the blob (the server reads it all back through
    /// SHA-256 before it answers, from a disk that may be slow).
    fn answer_within(&self) -> Duration {
        let finishing = self.inflight.values().any(|(o, l)| o + l == self.size);
        if finishing {
            REQUEST_TIMEOUT + Duration::from_secs(self.size / (4 * 1024 * 1024))
        } else {
            REQUEST_TIMEOUT
        }
    }

    fn sent(&mut self, request_id: u64, offset: u64, len: usize) -> Result<()> {
        if self.budget == 0 {
            return Err(ClientError::Protocol(
                "the server's upload offsets do not advance".into(),
            ));
        }
        self.budget -= 1;
        self.inflight.insert(request_id, (offset, len as u64));
        self.next = offset + len as u64;
        Ok(())
    }

    fn answer(&mut self, request_id: u64, body: server_frame::Body) -> Result<()> {
        let Some((offset, len)) = self.inflight.remove(&request_id) else {
            return Ok(()); // an abandoned request's answer
        };
        let beyond = || ClientError::Protocol("the server's upload offset is past its size".into());
        match body {
            server_frame::Body::UploadState(s) => {
                if s.offset > self.size {
                    return Err(beyond());
                }
                self.acked = self.acked.max(s.offset);
                self.finished |= s.finished;
                if len == 0 && !s.finished {
                    // The empty append's answer: the server is at s.offset.
                    self.next = s.offset.max(self.acked);
                }
            }
            server_frame::Body::Error(e)
                if ServerCode::from_wire(e.code) == ServerCode::OffsetMismatch =>
            {
                if e.offset > self.size {
                    return Err(beyond());
                }
                tracing::debug!("append at {offset} refused: the server is at {}", e.offset);
                self.rewind = Some(e.offset);
            }
            server_frame::Body::Error(e) => {
                self.failure.get_or_insert(refusal(e));
            }
            _ => return Err(unexpected("UploadAppend")),
        }
        Ok(())
    }
}

impl Client {
    /// The directory for this profile's files.
    pub fn files_dir(&self) -> PathBuf {
        self.profile.dir().join(FILES_DIR)
    }

    /// Files up to `bytes` are fetched by `sync` and `listen` (0: none).
    pub fn set_auto_download(&mut self, bytes: u64) {
        self.auto_download = bytes;
    }

    /// Encrypt the file at `path` into the profile's files directory and
    /// queue it for `peer` (works offline; [`Client::send_file`] also
    /// uploads and sends).
    pub fn queue_file(&self, peer: &str, path: &Path, caption: &str) -> Result<MessageId> {
        self.queue_file_reply(peer, path, caption, None)
    }

    /// [`Client::queue_file`] for a reply to (a quote of) `reply_to`, a
    /// message of the conversation with `peer`.
    pub fn queue_file_reply(
        &self,
        peer: &str,
        path: &Path,
        caption: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<MessageId> {
        ponte_wire::messages::validate_handle(peer)
            .map_err(|e| ClientError::Invalid(format!("recipient {peer:?}: {e}")))?;
        if peer == self.handle {
            return Err(ClientError::Invalid(
                "you cannot send a file to yourself".into(),
            ));
        }
        self.check_not_changed(peer)?;
        self.check_reply(&Conversation::contact(peer), reply_to)?;
        let (fd, enc_path) = self.encrypt_file(path, caption)?;
        self.store().queue_file(peer, &fd, &enc_path, reply_to)
    }

    /// [`Client::queue_file`] for a group: the descriptor is encrypted for
    /// the group (Megolm) once the blob is uploaded.
    pub fn queue_group_file(
        &self,
        group: &GroupId,
        path: &Path,
        caption: &str,
    ) -> Result<MessageId> {
        self.queue_group_file_reply(group, path, caption, None)
    }

    /// [`Client::queue_group_file`] for a reply to (a quote of) `reply_to`,
    /// a message of the group.
    pub fn queue_group_file_reply(
        &self,
        group: &GroupId,
        path: &Path,
        caption: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<MessageId> {
        self.group_file_recipients(group)?;
        self.check_reply(&Conversation::Group(*group), reply_to)?;
        let (fd, enc_path) = self.encrypt_file(path, caption)?;
        self.store()
            .queue_group_file(group, &fd, &enc_path, reply_to)
    }

    /// Encrypt the file at `path` into the profile's files directory
    /// (fsynced): its descriptor and the encrypted copy.
    fn encrypt_file(&self, path: &Path, caption: &str) -> Result<(FileDescriptor, PathBuf)> {
        if caption.len() > ponte_e2e::MAX_TEXT_BYTES {
            return Err(ClientError::Invalid(format!(
                "caption too long ({} bytes, at most {})",
                caption.len(),
                ponte_e2e::MAX_TEXT_BYTES
            )));
        }
        let file =
            std::fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
        let meta = file
            .metadata()
            .map_err(io_err(format!("reading {}", path.display())))?;
        if !meta.is_file() {
            return Err(ClientError::Invalid(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let size = meta.len();
        if size > crypto::MAX_FILE_SIZE {
            return Err(ClientError::Invalid(format!(
                "{} is too large",
                path.display()
            )));
        }
        let raw_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let mut name = crypto::sanitize_name(&raw_name);
        while name.len() > ponte_e2e::envelope::MAX_FILE_NAME_BYTES {
            name.pop();
        }
        let dir = self.files_dir();
        ensure_dir(&dir)?;
        let key = FileKey::random();
        let blob_id: [u8; 16] = rand::random();
        let enc_path = dir.join(format!("up-{}.enc", hex(&blob_id)));
        let out = std::fs::File::create(&enc_path)
            .map_err(io_err(format!("creating {}", enc_path.display())))?;
        let mut writer = std::io::BufWriter::with_capacity(crypto::CHUNK_CIPHER, out);
        let reader = std::io::BufReader::with_capacity(crypto::CHUNK_PLAIN, file);
        let encrypted = crypto::encrypt_to(&key, reader, size, &mut writer)
            .map_err(|e| file_err(&format!("encrypting {}", path.display()), e))
            .and_then(|sha| {
                let out = writer
                    .into_inner()
                    .map_err(|e| io_err("writing the encrypted file")(e.into_error()))?;
                out.sync_all()
                    .map_err(io_err("writing the encrypted file"))?;
                Ok(sha)
            });
        let sha256 = match encrypted {
            Ok(sha) => sha,
            Err(e) => {
                let _ = std::fs::remove_file(&enc_path);
                return Err(e);
            }
        };
        let fd = FileDescriptor {
            blob_id,
            key,
            sha256,
            size,
            mime: guess_mime(&name).to_owned(),
            name,
            caption: caption.to_owned(),
        };
        Ok((fd, enc_path))
    }

    /// Queue a file (see [`Client::queue_file`]), upload it (resuming
    /// across reconnects) and send the message that carries its key. If
    /// the server cannot be reached the file stays queued (not an error):
    /// the outcome says so. `progress` sees the ciphertext bytes the
    /// server holds.
    pub async fn send_file(
        &mut self,
        peer: &str,
        path: &Path,
        caption: &str,
        progress: &mut Progress<'_>,
    ) -> Result<SendOutcome> {
        self.send_file_to(
            &Conversation::Contact(peer.to_owned()),
            path,
            caption,
            progress,
        )
        .await
    }

    /// [`Client::send_file`] to a contact or a group.
    pub async fn send_file_to(
        &mut self,
        to: &Conversation,
        path: &Path,
        caption: &str,
        progress: &mut Progress<'_>,
    ) -> Result<SendOutcome> {
        self.send_file_reply_to(to, path, caption, None, progress)
            .await
    }

    /// [`Client::send_file_to`] for a reply to (a quote of) `reply_to`, a
    /// message of that conversation.
    pub async fn send_file_reply_to(
        &mut self,
        to: &Conversation,
        path: &Path,
        caption: &str,
        reply_to: Option<&MessageId>,
        progress: &mut Progress<'_>,
    ) -> Result<SendOutcome> {
        self.warned_full.clear();
        let (id, peer) = match to {
            Conversation::Contact(peer) => (
                self.queue_file_reply(peer, path, caption, reply_to)?,
                peer.clone(),
            ),
            Conversation::Group(group) => (
                self.queue_group_file_reply(group, path, caption, reply_to)?,
                group_key(group),
            ),
        };
        let peer = peer.as_str();
        let mut warnings = Vec::new();
        let mut sink = |e: Event| {
            if let Event::Warning(w) = e {
                warnings.push(w);
            }
            Ok(())
        };
        let note = match self.upload_with_retries(progress).await {
            Ok(mut conn) => match self.flush_outbox(&mut conn, &mut sink).await {
                Ok(_) => None,
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => Some(format!("kept in the outbox: {}", Report(&e))),
            },
            Err(e) if retryable(&e) => Some(format!(
                "upload interrupted, it resumes at the next sync or send ({})",
                Report(&e)
            )),
            Err(e @ ClientError::Server { .. }) => {
                // A refusal of this file (too large, over quota): nothing
                // of it stays queued.
                self.store().mark_failed(peer, &id)?;
                self.discard_upload(peer, &id)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.send_outcome(peer, &id, note, warnings)
    }

    /// Remove the encrypted copy of a refused upload and mark it uploaded
    /// no more.
    fn discard_upload(&self, peer: &str, id: &MessageId) -> Result<()> {
        if let Some(rec) = self.store().file_by_id(id)? {
            if let Some(p) = &rec.path {
                let _ = std::fs::remove_file(p);
            }
        }
        self.store().file_abandoned(peer, id)
    }

    /// Upload every queued file, reconnecting (up to [`MAX_ATTEMPTS`]
    /// connections) when a connection is lost; returns the last
    /// connection, logged in, for the flush that follows.
    async fn upload_with_retries(&mut self, progress: &mut Progress<'_>) -> Result<Connection> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let (mut conn, _) = self.login().await?;
                self.upload_pending(&mut conn, progress).await?;
                Ok::<_, ClientError>(conn)
            }
            .await;
            match result {
                Ok(conn) => return Ok(conn),
                Err(e) if retryable(&e) && attempt < MAX_ATTEMPTS => {
                    tracing::debug!("upload interrupted ({}); reconnecting", Report(&e));
                    let wait = Duration::from_millis(100 * u64::from(attempt));
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Upload the files queued in this profile on `conn`.
    pub(super) async fn upload_pending(
        &mut self,
        conn: &mut Connection,
        progress: &mut Progress<'_>,
    ) -> Result<()> {
        for rec in self.store().files_in_state(FileState::Upload)? {
            self.upload_one(conn, &rec, progress).await?;
            if let Some(p) = &rec.path {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(())
    }

    /// `sync`/`listen`: finish uploads a previous process left; a failure
    /// that a later connection may fix is a warning, not an error.
    pub(super) async fn resume_uploads(
        &mut self,
        conn: &mut Connection,
        events: &mut Display<'_>,
    ) -> Result<()> {
        if self.store().files_in_state(FileState::Upload)?.is_empty() {
            return Ok(());
        }
        match self.upload_pending(conn, &mut |_, _| {}).await {
            Ok(()) => Ok(()),
            Err(e) if is_fatal(&e) => Err(e),
            Err(e @ (ClientError::Disconnected(_) | ClientError::Closed { .. })) => Err(e),
            Err(e) => emit(
                events,
                Event::Warning(format!("a file upload did not finish: {}", Report(&e))),
            ),
        }
    }

    async fn upload_one(
        &mut self,
        conn: &mut Connection,
        rec: &FileRecord,
        progress: &mut Progress<'_>,
    ) -> Result<()> {
        let fd = &rec.descriptor;
        let path = rec.path.as_deref().ok_or(ClientError::Corrupt(
            "queued file without its encrypted copy",
        ))?;
        let mut file =
            std::fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
        let size = crypto::ciphertext_len(fd.size);
        let upload_id = Bytes::copy_from_slice(&fd.blob_id);
        let create = client_frame::Body::UploadCreate(UploadCreate {
            upload_id: upload_id.clone(),
            size,
            sha256: Bytes::copy_from_slice(&fd.sha256),
            recipients: match group_of_key(&rec.peer) {
                Some(group) => self.group_file_recipients(&group)?,
                None => 1,
            },
        });
        let state = upload_state(conn.request(create, REQUEST_TIMEOUT).await?, "UploadCreate")?;
        let mut window = UploadWindow::new(size, &state)?;
        progress(window.acked, size);
        loop {
            match window.step() {
                Step::Done => {
                    match group_of_key(&rec.peer) {
                        Some(group) => self.group_file_uploaded(&group, &rec.id, fd)?,
                        None => self.store().file_uploaded(&rec.peer, &rec.id)?,
                    }
                    return Ok(());
                }
                Step::Fail(e) => return Err(e),
                Step::Send { offset, len } => {
                    file.seek(SeekFrom::Start(offset))
                        .map_err(io_err("reading the encrypted file"))?;
                    // Into spare capacity: nothing is zeroed first.
                    let mut chunk = Vec::with_capacity(len);
                    (&mut file)
                        .take(len as u64)
                        .read_to_end(&mut chunk)
                        .map_err(io_err("reading the encrypted file"))?;
                    if chunk.len() != len {
                        return Err(ClientError::Corrupt(
                            "the encrypted copy of a queued file is shorter than its size",
                        ));
                    }
                    let append = client_frame::Body::UploadAppend(UploadAppend {
                        upload_id: upload_id.clone(),
                        offset,
                        chunk: Bytes::from(chunk),
                    });
                    let rid = conn.start(append).await?;
                    window.sent(rid, offset, len)?;
                }
                Step::Wait => {
                    let wait = window.answer_within();
                    let Some((rid, body)) = conn.next_answer(wait).await? else {
                        return Err(ClientError::Disconnected(format!(
                            "no response within {wait:?}"
                        )));
                    };
                    let before = window.acked;
                    window.answer(rid, body)?;
                    if window.acked != before {
                        progress(window.acked, size);
                    }
                }
            }
        }
    }
}

mod download;
#[cfg(test)]
mod tests;
