//! Token buckets shared by every node of a service, one row each in
//! `rate_limits` (for the registration limits per client address: counted
//! on one node only, a client would get the burst once per node).
//!
//! Each take is one statement in autocommit: the upsert locks the row, so
//! two nodes taking from one bucket at once are serialized by PostgreSQL
//! and never both take its last token. Time is the database's clock
//! (`clock_timestamp()`), not the nodes': nodes whose clocks disagree still
//! count alike. A bucket without a row is full; rows of full buckets are
//! deleted by the expiry job ([`DELETE_FULL`]).

use super::PgError;
use deadpool_postgres::ClientWrapper as Client;
use ponte_wire::limit::Rate;

/// The database's time in Unix milliseconds.
const NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint";

/// Deletes up to `$1` rows of buckets that are full again (run by the
/// expiry job).
pub(super) const DELETE_FULL: &str = "DELETE FROM rate_limits WHERE key IN (
    SELECT key FROM rate_limits
    WHERE full_at <= (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint LIMIT $1)";

/// The refill per millisecond and the capacity, bounded so that the SQL's
/// divisions stay finite.
fn bounds(rate: Rate) -> (f64, f64) {
    let per_ms = if rate.per_second.is_finite() {
        rate.per_second.max(1e-6) / 1000.0
    } else {
        1e-9
    };
    let capacity = if rate.capacity.is_finite() {
        rate.capacity.max(0.0)
    } else {
        0.0
    };
    (per_ms, capacity)
}

/// Takes a token from bucket `key` (or, with `take` false, says whether
/// one is there).
pub(super) async fn token(c: &Client, key: &[u8], rate: Rate, take: bool) -> Result<bool, PgError> {
    let (per_ms, capacity) = bounds(rate);
    if capacity < 1.0 {
        return Ok(false);
    }
    if !take {
        let st = c
            .prepare_cached(&format!(
                "SELECT LEAST($2::float8, tokens + GREATEST({NOW} - at, 0) * $3::float8) >= 1
                 FROM rate_limits WHERE key = $1"
            ))
            .await?;
        let row = c.query_opt(&st, &[&key, &capacity, &per_ms]).await?;
        return Ok(match row {
            Some(r) => r.try_get(0)?,
            None => true,
        });
    }
    // The tokens the bucket holds now, from its row (`r`) and the time of
    // this statement (`EXCLUDED.at`).
    let now_tokens = "LEAST($2::float8, r.tokens + GREATEST(EXCLUDED.at - r.at, 0) * $3::float8)";
    let st = c
        .prepare_cached(&format!(
            "INSERT INTO rate_limits AS r (key, tokens, at, full_at)
             SELECT $1, $2::float8 - 1, t.n, t.n + CEIL(1 / $3::float8)::bigint
             FROM (SELECT {NOW} AS n) AS t
             ON CONFLICT (key) DO UPDATE SET
                 tokens = {now_tokens} - 1,
                 at = GREATEST(EXCLUDED.at, r.at),
                 full_at = GREATEST(EXCLUDED.at, r.at)
                     + CEIL(($2::float8 - {now_tokens} + 1) / $3::float8)::bigint
             WHERE {now_tokens} >= 1
             RETURNING tokens"
        ))
        .await?;
    Ok(c.query_opt(&st, &[&key, &capacity, &per_ms])
        .await?
        .is_some())
}
