//! Receiving files: fetching a file message's blob (resuming a partial
//! download), checking it and decrypting it into place (see the parent
//! module's docs).

use super::*;

impl Client {
    /// `sync`/`listen`: fetch the files another process asked for (`ponte
    /// file get` beside `ponte listen`, see [`Client::queue_fetch`]), then
    /// pending files up to the auto-download limit; a failure is a warning
    /// (the file waits for the next try) and, for a file asked for, the
    /// answer to the process that asked.
    pub(in crate::client) async fn auto_fetch(
        &mut self,
        conn: &mut Connection,
        events: &mut Display<'_>,
    ) -> Result<()> {
        for id in self.store().fetches_wanted()? {
            let rec = match self.store().file_by_id(&id)? {
                Some(rec) if !rec.outgoing && rec.state == FileState::Pending => rec,
                // Fetched meanwhile, or gone (its time was up): nothing to do.
                _ => {
                    self.store().fetch_want_done(&id, None)?;
                    continue;
                }
            };
            let failed = self.fetch_one(conn, &rec, events).await?;
            self.store().fetch_want_done(&id, failed.as_deref())?;
        }
        if self.auto_download == 0 {
            return Ok(());
        }
        for rec in self.store().files_in_state(FileState::Pending)? {
            if rec.descriptor.size > self.auto_download || self.fetch_failed.contains(&rec.id) {
                continue;
            }
            self.fetch_one(conn, &rec, events).await?;
        }
        Ok(())
    }

    /// Fetch `rec`'s file for [`Client::auto_fetch`]: why it failed, if it
    /// did (said as a warning too); an error for a lost connection.
    async fn fetch_one(
        &mut self,
        conn: &mut Connection,
        rec: &FileRecord,
        events: &mut Display<'_>,
    ) -> Result<Option<String>> {
        match self.download(conn, rec, None, &mut |_, _| {}).await {
            Ok(path) => {
                emit(
                    events,
                    Event::FileFetched {
                        peer: rec.peer.clone(),
                        id: rec.id,
                        path,
                    },
                )?;
                Ok(None)
            }
            Err(e @ (ClientError::Disconnected(_) | ClientError::Closed { .. })) => Err(e),
            Err(e) if is_fatal(&e) => Err(e),
            Err(e) => {
                // Tried once per process: `file get` tries again.
                self.fetch_failed.insert(rec.id);
                let why = Report(&e).to_string();
                emit(
                    events,
                    Event::Warning(format!(
                        "file {} from {} not fetched: {why}",
                        crypto::display_name(&rec.descriptor.name),
                        rec.peer,
                    )),
                )?;
                Ok(Some(why))
            }
        }
    }

    /// The file of received message `id`.
    pub(in crate::client) fn received_file(&self, id: &MessageId) -> Result<FileRecord> {
        self.store()
            .file_by_id(id)?
            .filter(|r| !r.outgoing)
            .ok_or_else(|| ClientError::Invalid(format!("no received file with message id {id}")))
    }

    /// Fetch the file of message `id` (any size), to `out` or into the
    /// files directory; returns where it is. A file fetched already is
    /// copied to `out` if given. Reconnects (up to [`MAX_ATTEMPTS`]
    /// connections) and resumes when a connection is lost.
    pub async fn fetch_file(
        &mut self,
        id: &MessageId,
        out: Option<&Path>,
        progress: &mut Progress<'_>,
    ) -> Result<PathBuf> {
        let rec = self.received_file(id)?;
        if rec.state == FileState::Fetched {
            if let (Some(have), Some(out)) = (&rec.path, out) {
                std::fs::copy(have, out)
                    .map_err(io_err(format!("copying to {}", out.display())))?;
                return Ok(out.to_owned());
            }
            if let Some(have) = &rec.path {
                if have.exists() {
                    return Ok(have.clone());
                }
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let (mut conn, _) = self.login().await?;
                self.download(&mut conn, &rec, out, progress).await
            }
            .await;
            match result {
                Ok(p) => return Ok(p),
                Err(e) if retryable(&e) && attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one `Download` request (counted against `left`).
    async fn ask_download(
        &self,
        conn: &mut Connection,
        blob_id: &Bytes,
        offset: u64,
        len: u64,
        left: &mut u64,
    ) -> Result<u64> {
        if *left == 0 {
            return Err(ClientError::Protocol(
                "the server sent the blob in too many pieces".into(),
            ));
        }
        *left -= 1;
        let ask = client_frame::Body::Download(Download {
            blob_id: blob_id.clone(),
            offset,
            max_len: u32::try_from(len).unwrap_or(u32::MAX),
        });
        conn.start(ask).await
    }

    /// Download (resuming a partial download), check and decrypt one file.
    async fn download(
        &mut self,
        conn: &mut Connection,
        rec: &FileRecord,
        out: Option<&Path>,
        progress: &mut Progress<'_>,
    ) -> Result<PathBuf> {
        let fd = &rec.descriptor;
        let dir = self.files_dir();
        ensure_dir(&dir)?;
        let part = dir.join(format!("{}.part", rec.id.to_hex()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&part)
            .map_err(io_err(format!("opening {}", part.display())))?;
        let size = crypto::ciphertext_len(fd.size);
        let mut offset = file
            .metadata()
            .map_err(io_err(format!("reading {}", part.display())))?
            .len();
        if offset > size {
            file.set_len(0)
                .map_err(io_err(format!("truncating {}", part.display())))?;
            offset = 0;
        }
        let blob_id = Bytes::copy_from_slice(&fd.blob_id);
        let mismatch = || {
            ClientError::Protocol("the server's blob does not match the file's description".into())
        };
        // Requests in flight (request id → offset and length asked), and
        // answers that came before an earlier one (at most a window).
        let mut inflight: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut early: BTreeMap<u64, Bytes> = BTreeMap::new();
        let mut next = offset;
        // The server sends up to 96 KiB per request; a bound that still
        // lets it send less (4 KiB pieces) before giving up.
        let mut requests_left = size / 4096 + 16 + DOWNLOAD_WINDOW as u64;
        progress(offset, size);
        while offset < size {
            while inflight.len() < DOWNLOAD_WINDOW && next < size {
                let len = (size - next).min(BLOB_CHUNK_MAX as u64);
                let rid = self
                    .ask_download(conn, &blob_id, next, len, &mut requests_left)
                    .await?;
                inflight.insert(rid, (next, len));
                next += len;
            }
            let Some((rid, body)) = conn.next_answer(REQUEST_TIMEOUT).await? else {
                return Err(ClientError::Disconnected(format!(
                    "no response within {REQUEST_TIMEOUT:?}"
                )));
            };
            let Some((at, asked)) = inflight.remove(&rid) else {
                continue; // an abandoned request's answer
            };
            let chunk: BlobChunk = match body {
                server_frame::Body::BlobChunk(c) => c,
                server_frame::Body::Error(e) => return Err(refusal(e)),
                _ => return Err(unexpected("Download")),
            };
            let got = chunk.chunk.len() as u64;
            if chunk.offset != at || chunk.size != size || got == 0 || got > asked {
                return Err(mismatch());
            }
            if got < asked {
                // Less than asked: ask for the rest of that piece.
                let rid = self
                    .ask_download(conn, &blob_id, at + got, asked - got, &mut requests_left)
                    .await?;
                inflight.insert(rid, (at + got, asked - got));
            }
            early.insert(at, chunk.chunk);
            while let Some(piece) = early.remove(&offset) {
                file.write_all(&piece)
                    .map_err(io_err(format!("writing {}", part.display())))?;
                offset += piece.len() as u64;
            }
            progress(offset, size);
        }
        file.sync_all()
            .map_err(io_err(format!("writing {}", part.display())))?;
        drop(file);
        let target = match out {
            Some(p) => p.to_owned(),
            None => unique_path(&dir, &crypto::sanitize_name(&fd.name)),
        };
        let tmp_dir = target.parent().unwrap_or(Path::new("."));
        let tmp = tmp_dir.join(format!(".{}.tmp", rec.id.to_hex()));
        let decrypted = (|| {
            let input = std::fs::File::open(&part)
                .map_err(io_err(format!("opening {}", part.display())))?;
            let output = std::fs::File::create(&tmp)
                .map_err(io_err(format!("creating {}", tmp.display())))?;
            let writer = crypto::decrypt_from(
                &fd.key,
                std::io::BufReader::with_capacity(crypto::CHUNK_CIPHER, input),
                fd.size,
                &fd.sha256,
                std::io::BufWriter::new(output),
            )
            .map_err(|e| file_err("checking the downloaded file", e))?;
            let output = writer
                .into_inner()
                .map_err(|e| io_err("writing the file")(e.into_error()))?;
            output.sync_all().map_err(io_err("writing the file"))?;
            std::fs::rename(&tmp, &target)
                .map_err(io_err(format!("moving the file to {}", target.display())))
        })();
        if let Err(e) = decrypted {
            let _ = std::fs::remove_file(&tmp);
            if matches!(e, ClientError::Protocol(_)) {
                // Bad bytes: start over next time rather than resume them.
                let _ = std::fs::remove_file(&part);
            }
            return Err(e);
        }
        let _ = std::fs::remove_file(&part);
        self.store().file_fetched(&rec.peer, &rec.id, &target)?;
        Ok(target)
    }
}
