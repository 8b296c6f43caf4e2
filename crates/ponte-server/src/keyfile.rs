//! The server's Noise static key, kept in `DIR/server.key` (32 raw secret
//! bytes, file mode 0600, created on first start).

use ponte_transport::Keypair;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Key file name inside the data directory.
pub const KEY_FILE: &str = "server.key";

/// Errors loading or creating the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading, creating or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not 32 bytes.
    #[error("{0}: not a server key (expected 32 bytes)")]
    Corrupt(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads the key from `dir`, or fails if there is none.
pub fn load(dir: &Path) -> Result<Keypair, KeyFileError> {
    let path = dir.join(KEY_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let secret: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyFileError::Corrupt(path.clone()))?;
    Ok(Keypair::from_secret(secret))
}

/// Loads the key from `dir`, creating the directory (0700) and a new key
/// (0600) on first start. Returns the key and whether it was just created.
pub fn load_or_create(dir: &Path) -> Result<(Keypair, bool), KeyFileError> {
    let path = dir.join(KEY_FILE);
    if path.exists() {
        return Ok((load(dir)?, false));
    }
    create_dir(dir)?;
    let kp = Keypair::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(io_err(&path))?;
    f.write_all(kp.secret()).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    Ok((kp, true))
}

fn create_dir(dir: &Path) -> Result<(), KeyFileError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}
