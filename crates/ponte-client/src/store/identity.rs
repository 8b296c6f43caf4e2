//! The device identity (the Olm account) and how many times it was saved.

use super::{meta_get, meta_set, Store};
use crate::atrest::ProfileKey;
use crate::{ClientError, Result};
use ponte_e2e::Identity;
use rusqlite::{Connection, OptionalExtension};

impl Store {
    /// The device identity, if the profile has one.
    pub fn identity(&self) -> Result<Option<Identity>> {
        let pickle: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM secrets WHERE name = 'account'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        pickle
            .map(|p| {
                Identity::from_pickle(&p, self.key.pickle_key())
                    .map_err(|_| ClientError::Corrupt("account"))
            })
            .transpose()
    }

    /// Save the device identity.
    pub fn save_identity(&self, identity: &Identity) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        save_identity(&tx, &self.key, identity)?;
        tx.commit()?;
        Ok(())
    }

    /// How many times the device identity was saved: another process of
    /// the profile that saved it (one-time keys made or used) moves this
    /// on, and a client that holds the identity in memory reloads it (see
    /// `crate::lock::Keys`).
    pub fn identity_version(&self) -> Result<u64> {
        identity_version(&self.conn)
    }
}

/// Profile meta key: [`Store::identity_version`].
const META_IDENTITY_VERSION: &str = "identity_version";

fn identity_version(conn: &Connection) -> Result<u64> {
    Ok(meta_get(conn, META_IDENTITY_VERSION)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Saves the identity and moves its version on (call it inside a
/// transaction, so the two go together).
pub(super) fn save_identity(
    conn: &Connection,
    key: &ProfileKey,
    identity: &Identity,
) -> Result<()> {
    conn.execute(
        "INSERT INTO secrets(name, value) VALUES ('account', ?1)
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        [identity.pickle(key.pickle_key())],
    )?;
    let next = identity_version(conn)?.wrapping_add(1);
    meta_set(conn, META_IDENTITY_VERSION, &next.to_string())
}
