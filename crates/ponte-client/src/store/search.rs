//! Full-text search over the whole local history (schema version 5),
//! without putting words in the profile in clear.
//!
//! The profile is SQLite with each secret field sealed on its own (see
//! [`crate::atrest`]), not an encrypted database file: an FTS5 table
//! would store every word, and its position, readable. So the index is a
//! *blind* one. Each word of a message (lower-cased, split at anything
//! not a letter or digit, at most [`MAX_WORD_CHARS`] characters) is stored
//! as a keyed hash of itself and of its first 3, 5 and 8 characters
//! ([`crate::atrest::ProfileKey::search_term`], HMAC-SHA256 under a key
//! derived from the profile key), next to the message's `seq`:
//!
//! | table | holds |
//! |---|---|
//! | `search_terms` | `(term, seq)`: 16-byte keyed hashes of words and word prefixes (no text) |
//! | `search_pending` | `seq` of messages not indexed yet (a new row, a changed body) |
//!
//! Kept in step by triggers on `messages`, whichever code writes it: an
//! insert or a changed body queues the row in `search_pending`; a delete
//! (the disappearing-messages sweep, anything else) deletes its terms in
//! the same transaction. The pending rows are indexed (decrypted with the
//! field key, hashed with the search key) before every search, and in
//! the background by a chat window, so a search always sees everything.
//! The migration to version 5 queues every existing message (backfill).
//!
//! A query's words are hashed the same way (a word of 3 or more
//! characters matches words starting with it; a shorter one, whole
//! words); the rows holding every word are then decrypted and checked
//! against the query, newest first, so a hash collision never shows a
//! wrong hit. What the index gives away to someone holding the file but
//! not the key: how many words and prefixes each message has, and which
//! messages share a word (equal hashes), never the words; `secure_delete`
//! zeroes a deleted message's terms in the file, as it does its text.

use super::groups::FLAG_GROUP_NOTICE;
use super::messages::select_views;
use super::{group_key, MessageView, Store, FLAG_TIMER_NOTICE};
use crate::atrest::ProfileKey;
use crate::{ClientError, Result};
use rusqlite::{params, Connection};

/// Added in schema version 5: search, and the reply column.
pub(super) const SCHEMA_SEARCH: &str = "
ALTER TABLE messages ADD COLUMN reply_to BLOB;
CREATE TABLE IF NOT EXISTS search_terms (
    term BLOB NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (term, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS search_terms_by_seq ON search_terms(seq);
CREATE TABLE IF NOT EXISTS search_pending (seq INTEGER PRIMARY KEY);
CREATE TRIGGER IF NOT EXISTS search_new AFTER INSERT ON messages BEGIN
    INSERT OR IGNORE INTO search_pending(seq) VALUES (new.seq);
END;
CREATE TRIGGER IF NOT EXISTS search_changed AFTER UPDATE OF body ON messages BEGIN
    DELETE FROM search_terms WHERE seq = old.seq;
    INSERT OR IGNORE INTO search_pending(seq) VALUES (new.seq);
END;
CREATE TRIGGER IF NOT EXISTS search_gone AFTER DELETE ON messages BEGIN
    DELETE FROM search_terms WHERE seq = old.seq;
    DELETE FROM search_pending WHERE seq = old.seq;
END;
INSERT OR IGNORE INTO search_pending(seq) SELECT seq FROM messages;
";

/// Longest word indexed, in characters (longer words are indexed by
/// their first [`MAX_WORD_CHARS`]; the check on the text is exact).
pub const MAX_WORD_CHARS: usize = 24;
/// Prefix lengths indexed besides the whole word.
const PREFIXES: [usize; 3] = [3, 5, 8];
/// Shortest query word matched as a prefix (shorter: whole words only).
const MIN_PREFIX: usize = PREFIXES[0];
/// Most words in one query.
pub const MAX_QUERY_WORDS: usize = 8;
/// Most hits one search returns.
pub const MAX_HITS: usize = 200;
/// Messages indexed per transaction.
const INDEX_BATCH: i64 = 512;
/// Candidates decrypted and checked per search at most (a bound on the
/// time of a query whose words are everywhere).
const MAX_CANDIDATES: usize = 20_000;

/// One search result.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SearchHit {
    /// The message.
    pub message: MessageView,
    /// Its chat: a contact's handle, or `g:HEX` for a group.
    pub chat: String,
    /// Its place in the history (a page cursor: the chat's page with
    /// `before = seq + 1` ends with it).
    pub seq: i64,
}

/// The words of `text` as indexed: lower case, split at anything not
/// alphanumeric, each cut to [`MAX_WORD_CHARS`] characters.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().chars().take(MAX_WORD_CHARS).collect())
        .collect()
}

fn whole(key: &ProfileKey, word: &str) -> [u8; 16] {
    key.search_term(&[b"w\0", word.as_bytes()].concat())
}

fn prefix(key: &ProfileKey, prefix: &str) -> [u8; 16] {
    key.search_term(&[b"p\0", prefix.as_bytes()].concat())
}

/// Every term of `text`, deduplicated.
fn terms(key: &ProfileKey, text: &str) -> Vec<[u8; 16]> {
    let mut out = Vec::new();
    for w in words(text) {
        out.push(whole(key, &w));
        let chars: Vec<char> = w.chars().collect();
        for k in PREFIXES {
            if k < chars.len() {
                out.push(prefix(key, &chars[..k].iter().collect::<String>()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The terms any of which a message must have to match query word `q`.
fn query_terms(key: &ProfileKey, q: &str) -> Vec<[u8; 16]> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = vec![whole(key, q)];
    if chars.len() >= MIN_PREFIX {
        let k = PREFIXES
            .iter()
            .copied()
            .filter(|k| *k <= chars.len())
            .max()
            .unwrap_or(MIN_PREFIX);
        out.push(prefix(key, &chars[..k].iter().collect::<String>()));
    }
    out
}

/// The text of a message as searched: its text (a file's caption) and its
/// file's name.
fn searchable(v: &MessageView) -> String {
    match &v.file {
        Some(f) => format!("{} {}", v.text, f.name),
        None => v.text.clone(),
    }
}

/// Whether `text` really holds every query word (prefix for 3+ chars).
fn matches(text: &str, query: &[String]) -> bool {
    let have: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    query.iter().all(|q| {
        have.iter().any(|w| {
            if q.chars().count() >= MIN_PREFIX {
                w.starts_with(q.as_str())
            } else {
                w == q
            }
        })
    })
}

fn index_batch(conn: &Connection, key: &ProfileKey) -> Result<usize> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let seqs: Vec<i64> = {
        let mut stmt = tx.prepare("SELECT seq FROM search_pending ORDER BY seq LIMIT ?1")?;
        let rows = stmt
            .query_map([INDEX_BATCH], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows
    };
    let (Some(first), Some(last)) = (seqs.first(), seqs.last()) else {
        return Ok(0);
    };
    let views = select_views(
        &tx,
        key,
        "seq >= ?1 AND seq <= ?2 AND seq IN (SELECT seq FROM search_pending)",
        &[first, last],
    )?;
    let flags: std::collections::HashMap<i64, i64> = {
        let mut stmt =
            tx.prepare("SELECT seq, flags FROM messages WHERE seq >= ?1 AND seq <= ?2")?;
        let rows = stmt
            .query_map(params![first, last], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<(i64, i64)>>>()?;
        rows.into_iter().collect()
    };
    let seq_of: Vec<i64> = {
        let mut stmt = tx.prepare(
            "SELECT seq FROM messages WHERE seq >= ?1 AND seq <= ?2
             AND seq IN (SELECT seq FROM search_pending) ORDER BY seq",
        )?;
        let rows = stmt
            .query_map(params![first, last], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows
    };
    {
        let mut insert =
            tx.prepare("INSERT OR IGNORE INTO search_terms(term, seq) VALUES (?1, ?2)")?;
        for (seq, v) in seq_of.iter().zip(&views) {
            let f = flags.get(seq).copied().unwrap_or(0);
            // Notices are not messages; an unreadable row has no text.
            if f & (FLAG_GROUP_NOTICE | FLAG_TIMER_NOTICE) != 0 || v.unreadable {
                continue;
            }
            for t in terms(key, &searchable(v)) {
                insert.execute(params![t.to_vec(), seq])?;
            }
        }
    }
    tx.execute(
        "DELETE FROM search_pending WHERE seq >= ?1 AND seq <= ?2",
        params![first, last],
    )?;
    tx.commit()?;
    Ok(seqs.len())
}

/// Rows read from the index per query of one term.
const STREAM_CHUNK: i64 = 256;

/// The `seq`s holding one term, newest first, read from the index in
/// chunks (its primary key is `(term, seq)`: each chunk is a range scan,
/// so a search reads only as far back as its hits need).
struct TermStream {
    term: [u8; 16],
    /// Only rows below this are read next.
    below: i64,
    buf: std::collections::VecDeque<i64>,
    done: bool,
}

impl TermStream {
    fn new(term: [u8; 16]) -> Self {
        Self {
            term,
            below: i64::MAX,
            buf: Default::default(),
            done: false,
        }
    }

    /// The newest `seq` not taken yet, if any.
    fn head(&mut self, conn: &Connection) -> Result<Option<i64>> {
        if self.buf.is_empty() && !self.done {
            let mut stmt = conn.prepare_cached(
                "SELECT seq FROM search_terms WHERE term = ?1 AND seq < ?2
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![self.term.to_vec(), self.below, STREAM_CHUNK], |r| {
                    r.get::<_, i64>(0)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            self.done = rows.len() < STREAM_CHUNK as usize;
            if let Some(last) = rows.last() {
                self.below = *last;
            }
            self.buf.extend(rows);
        }
        Ok(self.buf.front().copied())
    }

    /// Drop every `seq` at or above `at`.
    fn skip_to_below(&mut self, conn: &Connection, at: i64) -> Result<()> {
        while let Some(h) = self.head(conn)? {
            if h < at {
                break;
            }
            self.buf.pop_front();
        }
        Ok(())
    }
}

/// The `seq`s holding any of a query word's terms, newest first.
struct WordStream {
    terms: Vec<TermStream>,
}

impl WordStream {
    fn head(&mut self, conn: &Connection) -> Result<Option<i64>> {
        let mut best = None;
        for t in &mut self.terms {
            if let Some(h) = t.head(conn)? {
                best = Some(best.map_or(h, |b: i64| b.max(h)));
            }
        }
        Ok(best)
    }

    fn skip_to_below(&mut self, conn: &Connection, at: i64) -> Result<()> {
        for t in &mut self.terms {
            t.skip_to_below(conn, at)?;
        }
        Ok(())
    }
}

/// The next (newest) `seq` every word's stream holds, taken from all.
fn next_in_all(conn: &Connection, words: &mut [WordStream]) -> Result<Option<i64>> {
    loop {
        let mut heads = Vec::with_capacity(words.len());
        for w in words.iter_mut() {
            match w.head(conn)? {
                Some(h) => heads.push(h),
                None => return Ok(None),
            }
        }
        let low = heads.iter().copied().min().unwrap_or(i64::MIN);
        if heads.iter().all(|h| *h == low) {
            for w in words.iter_mut() {
                w.skip_to_below(conn, low)?;
            }
            return Ok(Some(low));
        }
        // Whatever is newer than the oldest head cannot be in every stream.
        for w in words.iter_mut() {
            w.skip_to_below(conn, low + 1)?;
        }
    }
}

impl Store {
    /// Index the messages written or changed since the last call (all of
    /// them after the migration to version 5). Returns how many.
    pub fn index_pending(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = index_batch(&self.conn, &self.key)?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Index at most one batch (512) of the messages waiting; returns how
    /// many. A chat window calls it in the background, one short
    /// transaction at a time, so the first search after the upgrade to
    /// schema 5 finds the backfill done.
    pub fn index_some(&self) -> Result<usize> {
        index_batch(&self.conn, &self.key)
    }

    /// Messages whose words are not indexed yet.
    pub fn search_backlog(&self) -> Result<usize> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM search_pending", [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Messages holding every word of `query` (see the module
    /// documentation), newest first, at most `limit` (≤ [`MAX_HITS`]).
    /// Indexes what is pending first.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>> {
        if limit == 0 || limit > MAX_HITS {
            return Err(ClientError::Invalid(format!(
                "a search returns 1 to {MAX_HITS} messages"
            )));
        }
        let mut q = words(query);
        q.sort();
        q.dedup();
        if q.is_empty() {
            return Err(ClientError::Invalid(
                "search for at least one word (letters or digits)".into(),
            ));
        }
        if q.len() > MAX_QUERY_WORDS {
            return Err(ClientError::Invalid(format!(
                "a search takes at most {MAX_QUERY_WORDS} words"
            )));
        }
        self.index_pending()?;
        let mut words: Vec<WordStream> = q
            .iter()
            .map(|w| WordStream {
                terms: query_terms(&self.key, w)
                    .into_iter()
                    .map(TermStream::new)
                    .collect(),
            })
            .collect();
        let mut hits = Vec::new();
        let mut checked = 0;
        while let Some(seq) = next_in_all(&self.conn, &mut words)? {
            checked += 1;
            if checked > MAX_CANDIDATES {
                break;
            }
            let Some(v) = select_views(&self.conn, &self.key, "seq = ?1", &[&seq])?.pop() else {
                continue;
            };
            if v.unreadable || v.notice.is_some() || v.group_notice || !matches(&searchable(&v), &q)
            {
                continue;
            }
            let chat = match &v.group {
                Some(g) => group_key(g),
                None => v.peer.clone(),
            };
            hits.push(SearchHit {
                message: v,
                chat,
                seq,
            });
            if hits.len() >= limit {
                break;
            }
        }
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn words_and_matching() {
        assert_eq!(words("Olá, MUNDO! x2-y"), ["olá", "mundo", "x2", "y"]);
        assert_eq!(words(&"a".repeat(40))[0].chars().count(), MAX_WORD_CHARS);
        let q = |s: &str| words(s);
        assert!(matches("The shipping label", &q("ship lab")));
        assert!(!matches("The shipping label", &q("hip")));
        assert!(matches("go to it", &q("go")));
        assert!(!matches("good", &q("go")));
        assert!(!matches("shipping", &q("ship label")));
    }

    /// The migration to version 5 queues every message already there
    /// (the backfill), and the triggers keep the queue and the terms.
    #[test]
    fn the_migration_queues_the_history_and_triggers_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ponte.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(super::super::SCHEMA).unwrap();
            for (v, sql) in super::super::MIGRATIONS.iter().take(3) {
                conn.execute_batch(sql).unwrap();
                super::super::meta_set(&conn, "schema", &v.to_string()).unwrap();
            }
            conn.execute(
                "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status)
                 VALUES ('bob', 1, x'00', x'01', 5, 1)",
                [],
            )
            .unwrap();
        }
        let conn = super::super::open_connection(&path).unwrap();
        let pending = |c: &Connection| -> i64 {
            c.query_row("SELECT COUNT(*) FROM search_pending", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(pending(&conn), 1);
        conn.execute(
            "INSERT INTO search_terms(term, seq) SELECT x'01', seq FROM messages",
            [],
        )
        .unwrap();
        conn.execute("UPDATE messages SET body = x'02'", [])
            .unwrap();
        let terms = |c: &Connection| -> i64 {
            c.query_row("SELECT COUNT(*) FROM search_terms", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!((pending(&conn), terms(&conn)), (1, 0));
        conn.execute(
            "INSERT INTO search_terms(term, seq) SELECT x'01', seq FROM messages",
            [],
        )
        .unwrap();
        conn.execute("DELETE FROM messages", []).unwrap();
        assert_eq!((pending(&conn), terms(&conn)), (0, 0));
    }

    #[test]
    fn a_prefix_query_hits_an_indexed_term() {
        let key = ProfileKey::from_master(&[7; 32]);
        let indexed = terms(&key, "Extraordinary circumstances");
        for q in ["ext", "extr", "extra", "extraord", "extraordinary", "circ"] {
            let want = query_terms(&key, q);
            assert!(want.iter().any(|t| indexed.contains(t)), "{q}");
        }
        // Another key, other terms: the hashes depend on the profile.
        let other = ProfileKey::from_master(&[8; 32]);
        assert!(query_terms(&other, "ext")
            .iter()
            .all(|t| !indexed.contains(t)));
    }
}
