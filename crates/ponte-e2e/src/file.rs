//! File encryption: a fresh key per file, chunked AEAD, size padding.
//!
//! A file travels as one encrypted blob on the server; its key, hash and
//! metadata travel inside the end-to-end envelope (kind 3, a
//! [`FileDescriptor`]). The construction:
//!
//! - **Key**: 32 random bytes per file ([`FileKey::random`]), never reused.
//! - **Padding**: the plaintext is the file followed by zero bytes up to
//!   [`padded_len`]: at least [`MIN_PADDED`] (1 KiB), then the Padmé
//!   bucket of the size (keep the top `floor(log2(e)) + 1` bits of the
//!   length, `e = floor(log2(len))`, round the rest up). Above 1 KiB the
//!   overhead is under 6.25 %, under 3.2 % from 64 KiB and under 1.6 % from
//!   4 GiB; a bucket reveals only O(log log size) bits of the size. The real size is in the descriptor; decryption
//!   checks that every padding byte is zero.
//! - **Chunks**: the padded plaintext is cut into [`CHUNK_PLAIN`] (64 KiB)
//!   pieces, each sealed with ChaCha20-Poly1305 (16-byte tag), so one
//!   ciphertext chunk ([`CHUNK_CIPHER`]) fits an upload chunk of the wire
//!   protocol. The nonce is the STREAM construction: 3 zero bytes, the
//!   chunk counter as u64 big-endian, then 1 for the last chunk and 0 for
//!   the others. Reordered, dropped, repeated or appended chunks fail to
//!   authenticate; an early end fails at [`Decryptor::finish`].
//! - **Hash**: SHA-256 over the whole ciphertext, checked before any
//!   plaintext is trusted.
//!
//! [`Encryptor`] reads from any [`Read`] and yields one ciphertext chunk at
//! a time; [`Decryptor`] takes ciphertext in pieces of any size and writes
//! plaintext to any [`Write`]: memory stays at one chunk whatever the file
//! size. Nothing here opens files or sockets.
//!
//! The AEAD is ring's ChaCha20-Poly1305 (RFC 8439, BoringSSL's assembly),
//! sealing and opening each chunk in place: it is the whole cost of
//! encrypting a file before its upload and of decrypting it after its
//! download, and ring's runs at about twice the speed of the portable
//! implementation on the x86-64 machines we measured (BENCHMARKS-server).

use std::io::{Read, Write};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use sha2::{Digest, Sha256};

/// Plaintext bytes per chunk.
pub const CHUNK_PLAIN: usize = 64 * 1024;
/// AEAD tag bytes per chunk.
pub const TAG_LEN: usize = 16;
/// Ciphertext bytes of every chunk (the last one included: the padded
/// plaintext is cut so that only the last chunk may be shorter).
pub const CHUNK_CIPHER: usize = CHUNK_PLAIN + TAG_LEN;
/// Smallest padded plaintext: every file, the empty one included, costs at
/// least this much.
pub const MIN_PADDED: u64 = 1024;
/// Largest file size accepted (1 TiB); keeps every length computation far
/// from overflow.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// Errors from file encryption and decryption.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Reading the plaintext or writing the output failed.
    #[error("file i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The input ended before the announced size.
    #[error("file shorter than announced ({got} of {expected} bytes)")]
    ShortInput {
        /// Bytes read.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The size is beyond [`MAX_FILE_SIZE`].
    #[error("file too large ({0} bytes)")]
    TooLarge(u64),
    /// A chunk did not authenticate: tampered, reordered or from another file.
    #[error("chunk {0} does not authenticate")]
    Chunk(u64),
    /// More ciphertext than the announced size allows.
    #[error("ciphertext longer than expected")]
    TooLong,
    /// The ciphertext ended early.
    #[error("ciphertext truncated ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// A padding byte was not zero.
    #[error("non-zero padding")]
    BadPadding,
    /// The ciphertext's SHA-256 is not the one in the descriptor.
    #[error("ciphertext hash mismatch")]
    HashMismatch,
}

/// A per-file 32-byte key.
#[derive(Clone, PartialEq, Eq)]
pub struct FileKey(pub [u8; 32]);

impl FileKey {
    /// A fresh random key.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(..)")
    }
}

/// The padded plaintext length for a file of `size` bytes (see the module
/// docs): at least [`MIN_PADDED`], then the Padmé bucket.
pub fn padded_len(size: u64) -> u64 {
    if size <= MIN_PADDED {
        return MIN_PADDED;
    }
    let e = 63 - u64::from(size.leading_zeros()); // floor(log2(size)), >= 10
    let s = 64 - u64::from(e.leading_zeros()); // floor(log2(e)) + 1
    let low_bits = e - s;
    let mask = (1u64 << low_bits) - 1;
    (size + mask) & !mask
}

/// Number of chunks for a file of `size` bytes.
pub fn chunk_count(size: u64) -> u64 {
    padded_len(size).div_ceil(CHUNK_PLAIN as u64)
}

/// The ciphertext (blob) length for a file of `size` bytes.
pub fn ciphertext_len(size: u64) -> u64 {
    padded_len(size) + chunk_count(size) * TAG_LEN as u64
}

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    // Unique per chunk of a file, and every file has a key of its own.
    Nonce::assume_unique_for_key(n)
}

/// The chunk cipher for `key`.
fn cipher(key: &FileKey) -> LessSafeKey {
    // ring refuses only a key of the wrong length, and a FileKey is
    // 32 bytes by its type: an `Err` here cannot happen.
    match UnboundKey::new(&CHACHA20_POLY1305, &key.0) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("a 32-byte ChaCha20-Poly1305 key"),
    }
}

/// Encrypts a file read from `R`, one chunk per [`Encryptor::next_chunk`].
pub struct Encryptor<R> {
    cipher: LessSafeKey,
    reader: R,
    size: u64,
    read: u64,
    padded: u64,
    produced: u64,
    counter: u64,
    hasher: Sha256,
}

impl<R> std::fmt::Debug for Encryptor<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("size", &self.size)
            .field("chunk", &self.counter)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Encryptor<R> {
    /// Encrypt `size` bytes from `reader` under `key`.
    pub fn new(key: &FileKey, reader: R, size: u64) -> Result<Self, FileError> {
        if size > MAX_FILE_SIZE {
            return Err(FileError::TooLarge(size));
        }
        Ok(Self {
            cipher: cipher(key),
            reader,
            size,
            read: 0,
            padded: padded_len(size),
            produced: 0,
            counter: 0,
            hasher: Sha256::new(),
        })
    }

    /// The next ciphertext chunk, or `None` after the last one.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, FileError> {
        if self.produced >= self.padded {
            return Ok(None);
        }
        // Bounded by CHUNK_PLAIN.
        let len = (self.padded - self.produced).min(CHUNK_PLAIN as u64) as usize;
        // The chunk is sealed where it is read, its tag appended.
        let mut plain = Vec::with_capacity(len + TAG_LEN);
        plain.resize(len, 0);
        let want = (self.size - self.read).min(len as u64) as usize;
        let mut filled = 0;
        while filled < want {
            match self.reader.read(&mut plain[filled..want]) {
                Ok(0) => {
                    return Err(FileError::ShortInput {
                        got: self.read + filled as u64,
                        expected: self.size,
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.read += want as u64;
        self.produced += len as u64;
        let last = self.produced == self.padded;
        let tag = self
            .cipher
            .seal_in_place_separate_tag(nonce(self.counter, last), Aad::empty(), &mut plain)
            .map_err(|_| FileError::Chunk(self.counter))?;
        plain.extend_from_slice(tag.as_ref());
        self.counter += 1;
        self.hasher.update(&plain);
        Ok(Some(plain))
    }

    /// The SHA-256 of all ciphertext produced (call after the last chunk).
    pub fn sha256(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}

/// Decrypts a file's ciphertext, fed in pieces of any size, into `W`.
pub struct Decryptor<W> {
    cipher: LessSafeKey,
    writer: W,
    size: u64,
    total: u64,
    received: u64,
    written: u64,
    chunks: u64,
    counter: u64,
    buf: Vec<u8>,
    hasher: Sha256,
}

impl<W> std::fmt::Debug for Decryptor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("size", &self.size)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Decryptor<W> {
    /// Decrypt a file of `size` bytes (from its descriptor) under `key`.
    pub fn new(key: &FileKey, writer: W, size: u64) -> Result<Self, FileError> {
        if size > MAX_FILE_SIZE {
            return Err(FileError::TooLarge(size));
        }
        Ok(Self {
            cipher: cipher(key),
            writer,
            size,
            total: ciphertext_len(size),
            received: 0,
            written: 0,
            chunks: chunk_count(size),
            counter: 0,
            buf: Vec::with_capacity(CHUNK_CIPHER),
            hasher: Sha256::new(),
        })
    }

    /// Feed the next ciphertext bytes.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), FileError> {
        if (data.len() as u64) > self.total - self.received {
            return Err(FileError::TooLong);
        }
        self.received += data.len() as u64;
        self.hasher.update(data);
        while !data.is_empty() {
            let take = (CHUNK_CIPHER - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK_CIPHER {
                self.open_chunk()?;
            }
        }
        Ok(())
    }

    fn open_chunk(&mut self) -> Result<(), FileError> {
        let last = self.counter + 1 == self.chunks;
        let counter = self.counter;
        let plain = self
            .cipher
            .open_in_place(nonce(counter, last), Aad::empty(), &mut self.buf)
            .map_err(|_| FileError::Chunk(counter))?;
        let keep = (self.size - self.written).min(plain.len() as u64) as usize;
        if plain[keep..].iter().any(|&b| b != 0) {
            return Err(FileError::BadPadding);
        }
        self.writer.write_all(&plain[..keep])?;
        self.buf.clear();
        self.counter += 1;
        self.written += keep as u64;
        Ok(())
    }

    /// Check that the whole ciphertext arrived and hashes to `sha256`, and
    /// return the writer. Without this call nothing written is trustworthy:
    /// a truncated stream leaves a prefix of the file in the writer.
    pub fn finish(mut self, sha256: &[u8; 32]) -> Result<W, FileError> {
        if self.received != self.total {
            return Err(FileError::Truncated {
                got: self.received,
                expected: self.total,
            });
        }
        if !self.buf.is_empty() {
            self.open_chunk()?;
        }
        if self.counter != self.chunks {
            return Err(FileError::Truncated {
                got: self.received,
                expected: self.total,
            });
        }
        let got: [u8; 32] = self.hasher.finalize().into();
        if &got != sha256 {
            return Err(FileError::HashMismatch);
        }
        self.writer.flush()?;
        Ok(self.writer)
    }
}

/// Encrypt `size` bytes from `reader` into `out`, returning the ciphertext
/// SHA-256; memory stays at one chunk.
pub fn encrypt_to<R: Read, W: Write>(
    key: &FileKey,
    reader: R,
    size: u64,
    mut out: W,
) -> Result<[u8; 32], FileError> {
    let mut enc = Encryptor::new(key, reader, size)?;
    while let Some(chunk) = enc.next_chunk()? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(enc.sha256())
}

/// Decrypt ciphertext read from `reader` into `out`, checking the hash.
pub fn decrypt_from<R: Read, W: Write>(
    key: &FileKey,
    mut reader: R,
    size: u64,
    sha256: &[u8; 32],
    out: W,
) -> Result<W, FileError> {
    let mut dec = Decryptor::new(key, out, size)?;
    let mut buf = vec![0u8; CHUNK_CIPHER];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        dec.update(&buf[..n])?;
    }
    dec.finish(sha256)
}

/// A file name made safe to use as one path component: path separators,
/// control characters and characters that mean something to common file
/// systems become `_`; a name of only dots, or an empty one, becomes
/// `file`; the result is at most 200 bytes.
pub fn sanitize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(200));
    for c in name.chars() {
        let c = if c.is_control()
            || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
        {
            '_'
        } else {
            c
        };
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    let trimmed = out.trim();
    if trimmed.chars().all(|c| c == '.') {
        return "file".into();
    }
    trimmed.to_owned()
}

/// A name for showing on a terminal: control characters (escape sequences
/// included) are written as Rust escapes, the rest is kept.
pub fn display_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    fn encrypt(key: &FileKey, plain: &[u8]) -> (Vec<u8>, [u8; 32]) {
        let mut out = Vec::new();
        let sha = encrypt_to(key, plain, plain.len() as u64, &mut out).unwrap();
        (out, sha)
    }

    fn roundtrip(n: usize) {
        let key = FileKey::random();
        let plain = data(n);
        let (ct, sha) = encrypt(&key, &plain);
        assert_eq!(ct.len() as u64, ciphertext_len(n as u64), "size {n}");
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&ct)), sha);
        // Fed in odd-sized pieces.
        let mut dec = Decryptor::new(&key, Vec::new(), n as u64).unwrap();
        for piece in ct.chunks(7919) {
            dec.update(piece).unwrap();
        }
        assert_eq!(dec.finish(&sha).unwrap(), plain, "size {n}");
        let again = decrypt_from(&key, ct.as_slice(), n as u64, &sha, Vec::new()).unwrap();
        assert_eq!(again, plain);
    }

    /// The ciphertext is the construction's, byte for byte: these hashes
    /// were made by the first implementation (RustCrypto's
    /// `chacha20poly1305`), before the AEAD moved to ring.
    #[test]
    fn ciphertext_matches_the_recorded_known_answers() {
        let key = FileKey([7; 32]);
        for (n, want) in [
            (
                0,
                "038e1d063bb7d99f643bc3268eb7408fb7f1e9884cf10e5f36dd8fadd785cb71",
            ),
            (
                65_536,
                "a94e306859c41301c3624b4b92714f883ab7be0f8164f652e5507f0777ee72c3",
            ),
            (
                200_000,
                "221dec8a36bdcd1119c538bba963e3de2e154276231a4a0e5cb5664efdf3033d",
            ),
        ] {
            let (ct, sha) = encrypt(&key, &data(n));
            let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, want, "size {n}");
            let back = decrypt_from(&key, ct.as_slice(), n as u64, &sha, Vec::new()).unwrap();
            assert_eq!(back, data(n));
        }
    }

    #[test]
    fn roundtrips_at_edges() {
        for n in [
            0,
            1,
            1023,
            1024,
            1025,
            CHUNK_PLAIN - 1,
            CHUNK_PLAIN,
            CHUNK_PLAIN + 1,
            3 * CHUNK_PLAIN,
            1_000_003,
        ] {
            roundtrip(n);
        }
    }

    #[test]
    fn padding_buckets_and_overhead() {
        assert_eq!(padded_len(0), 1024);
        assert_eq!(padded_len(1), 1024);
        assert_eq!(padded_len(1024), 1024);
        assert_eq!(padded_len(CHUNK_PLAIN as u64), CHUNK_PLAIN as u64);
        let mut prev = 0;
        for size in (1025u64..50_000_000).step_by(9973) {
            let p = padded_len(size);
            assert!(p >= size && p >= prev);
            assert!((p - size) as f64 / (size as f64) < 0.0625, "{size} -> {p}");
            prev = p;
        }
        // Distinct sizes in one bucket look the same.
        assert_eq!(padded_len(1_000_001), padded_len(1_010_000));
        assert!(chunk_count(0) == 1 && ciphertext_len(0) == 1024 + 16);
    }

    #[test]
    fn tampered_chunk_fails() {
        let key = FileKey::random();
        let plain = data(3 * CHUNK_PLAIN);
        let (mut ct, _) = encrypt(&key, &plain);
        ct[CHUNK_CIPHER + 5] ^= 1;
        let sha: [u8; 32] = Sha256::digest(&ct).into();
        let err = decrypt_from(&key, ct.as_slice(), plain.len() as u64, &sha, Vec::new());
        assert!(matches!(err, Err(FileError::Chunk(1))), "{err:?}");
        // Wrong key.
        let (ct, sha) = encrypt(&key, &plain);
        let err = decrypt_from(&FileKey::random(), ct.as_slice(), 3, &sha, Vec::new());
        assert!(err.is_err());
    }

    #[test]
    fn truncated_fails() {
        let key = FileKey::random();
        let n = 2 * CHUNK_PLAIN + 100;
        let plain = data(n);
        let (ct, sha) = encrypt(&key, &plain);
        // Cut at a chunk boundary: every remaining chunk authenticates, the
        // end is missing.
        for cut in [CHUNK_CIPHER, 2 * CHUNK_CIPHER, ct.len() - 1, 0] {
            let err = decrypt_from(&key, &ct[..cut], n as u64, &sha, Vec::new());
            assert!(matches!(err, Err(FileError::Truncated { .. })), "{cut}");
        }
        // Claiming a smaller size makes the stream too long, or an early
        // chunk marked non-last.
        let err = decrypt_from(&key, ct.as_slice(), CHUNK_PLAIN as u64, &sha, Vec::new());
        assert!(err.is_err());
        // Extra bytes appended.
        let mut longer = ct.clone();
        longer.push(0);
        let err = decrypt_from(&key, longer.as_slice(), n as u64, &sha, Vec::new());
        assert!(matches!(err, Err(FileError::TooLong)));
        // Dropping the last chunk and claiming the shorter size: the new
        // last chunk was sealed as non-last.
        let short = &ct[..2 * CHUNK_CIPHER];
        let sha_short: [u8; 32] = Sha256::digest(short).into();
        let err = decrypt_from(&key, short, 2 * CHUNK_PLAIN as u64, &sha_short, Vec::new());
        assert!(matches!(err, Err(FileError::Chunk(1))), "{err:?}");
    }

    #[test]
    fn reordered_fails() {
        let key = FileKey::random();
        let n = 3 * CHUNK_PLAIN;
        let (ct, _) = encrypt(&key, &data(n));
        let mut swapped = Vec::new();
        swapped.extend_from_slice(&ct[CHUNK_CIPHER..2 * CHUNK_CIPHER]);
        swapped.extend_from_slice(&ct[..CHUNK_CIPHER]);
        swapped.extend_from_slice(&ct[2 * CHUNK_CIPHER..]);
        let sha: [u8; 32] = Sha256::digest(&swapped).into();
        let err = decrypt_from(&key, swapped.as_slice(), n as u64, &sha, Vec::new());
        assert!(matches!(err, Err(FileError::Chunk(0))), "{err:?}");
    }

    #[test]
    fn hash_and_padding_checked() {
        let key = FileKey::random();
        let (ct, mut sha) = encrypt(&key, b"hello");
        sha[0] ^= 1;
        let err = decrypt_from(&key, ct.as_slice(), 5, &sha, Vec::new());
        assert!(matches!(err, Err(FileError::HashMismatch)));
        // A size smaller than the real content exposes non-zero bytes
        // where padding should be.
        sha[0] ^= 1;
        let err = decrypt_from(&key, ct.as_slice(), 4, &sha, Vec::new());
        assert!(matches!(err, Err(FileError::BadPadding)), "{err:?}");
        // Input shorter than announced.
        let err = encrypt_to(&key, &b"abc"[..], 4, Vec::new());
        assert!(matches!(err, Err(FileError::ShortInput { got: 3, .. })));
        assert!(matches!(
            Encryptor::new(&key, &b""[..], MAX_FILE_SIZE + 1),
            Err(FileError::TooLarge(_))
        ));
    }

    #[test]
    fn names_sanitised_and_escaped() {
        assert_eq!(sanitize_name("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(sanitize_name("a\\b\nc\u{1b}[31m"), "a_b_c_[31m");
        assert_eq!(sanitize_name(".."), "file");
        assert_eq!(sanitize_name(""), "file");
        assert_eq!(sanitize_name("photo.jpg"), "photo.jpg");
        assert!(sanitize_name(&"é".repeat(300)).len() <= 200);
        assert_eq!(display_name("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
    }
}
