//! Checks the hash chain of a log directory, file after file, and reports the
//! first record that was altered, removed or reordered.
//!
//! A file ending in an incomplete line (a write torn by a crash or a full disk) is
//! noted, not a break: the next record must still chain to the last whole one, so
//! nothing can be hidden there (a whole record there whose hash does not match is
//! reported altered). What a chain alone cannot show is records cut off
//! at either end; the first kept `seq` is reported (records before it were deleted
//! by retention, or removed), and `expect_hash` checks the log still holds a record
//! whose hash was noted elsewhere earlier (`serve` logs the chain head it leaves
//! behind at every rotation and on shutdown). Retention deletes whole days, so when
//! the oldest file kept is not its day's first, the records before it were removed:
//! that is a break. A directory with no log file is an error, not an empty chain.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::record::{ends_torn, parse_line, whole_lines, GENESIS};
use super::rotate::segments;
use super::AuditError;

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub files: usize,
    pub records: u64,
    /// `seq` of the first record kept (0 unless records before it are gone).
    pub first_seq: u64,
    /// The day of the oldest file kept.
    pub first_day: NaiveDate,
    /// Files ending in an incomplete line, with its line number.
    pub torn: Vec<(PathBuf, usize)>,
    /// `prev` of the first record kept: [`GENESIS`] unless retention deleted
    /// older files.
    pub anchor: String,
    pub last_hash: String,
}

/// How the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The line is not a record with a trailing hash.
    Malformed(String),
    /// The line's content no longer matches its hash.
    Altered,
    /// The line's sequence number does not follow the line before it.
    OutOfChain { expected_seq: u64, found_seq: u64 },
    /// The line follows the line before it in sequence, but not in hash: one of the
    /// two was rewritten, its hash recomputed.
    NotChained { seq: u64 },
    /// No record has the hash expected to be in the log.
    HashNotFound(String),
    /// The oldest file kept starts past seq 0 and is not its day's first: the
    /// records before it were removed (retention deletes whole days).
    HeadRemoved { found_seq: u64 },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Malformed(why) => write!(f, "malformed record ({why})"),
            Break::Altered => write!(f, "record altered (its hash does not match its content)"),
            Break::OutOfChain {
                expected_seq,
                found_seq,
            } => write!(
                f,
                "record removed or reordered (expected seq {expected_seq} chained to the previous record, found seq {found_seq})"
            ),
            Break::NotChained { seq } => write!(
                f,
                "record seq {seq} does not chain to the record before it: one of the two \
                 was rewritten with its hash recomputed, or records between them removed \
                 and this one renumbered"
            ),
            Break::HashNotFound(hash) => write!(
                f,
                "no record has hash {hash}: the log was cut back before it, or rewritten"
            ),
            Break::HeadRemoved { found_seq } => write!(
                f,
                "records removed before this one (seq {found_seq}): this file is not its \
                 day's first, and retention deletes whole days"
            ),
        }
    }
}

/// The first broken record, or what the log holds. With `expect_hash`, a log in
/// which no record has that hash is broken (at the end of its newest file).
pub fn verify(
    dir: &Path,
    expect_hash: Option<&str>,
) -> Result<Result<Verified, (PathBuf, usize, Break)>, AuditError> {
    let files = segments(dir)?;
    let Some(oldest) = files.first() else {
        return Err(AuditError::NoLog(dir.to_owned()));
    };
    let mut state: Option<(u64, String)> = None;
    let mut anchor = GENESIS.to_owned();
    let mut first_seq = 0;
    let mut records = 0;
    let mut torn = Vec::new();
    let mut expected_found = expect_hash.is_none();
    let mut end = (dir.to_owned(), 0);
    for segment in &files {
        let text = segment.read_text()?;
        let mut lines = 0;
        for (n, line) in whole_lines(&text).enumerate() {
            lines = n + 1;
            let broken = |why| Ok(Err((segment.path.clone(), n + 1, why)));
            let parsed = match parse_line(line) {
                Ok(parsed) => parsed,
                Err(error) => return broken(Break::Malformed(error.to_string())),
            };
            if parsed.claimed_hash != parsed.actual_hash {
                return broken(Break::Altered);
            }
            let record = &parsed.record;
            match &state {
                Some((seq, _)) if record.seq != *seq => {
                    return broken(Break::OutOfChain {
                        expected_seq: *seq,
                        found_seq: record.seq,
                    });
                }
                Some((_, hash)) if record.prev != *hash => {
                    return broken(Break::NotChained { seq: record.seq });
                }
                Some(_) => {}
                None if record.seq > 0 && segment.index > 0 => {
                    return broken(Break::HeadRemoved {
                        found_seq: record.seq,
                    });
                }
                None => {
                    anchor.clone_from(&record.prev);
                    first_seq = record.seq;
                }
            }
            expected_found |=
                expect_hash.is_some_and(|hash| hash.eq_ignore_ascii_case(&parsed.claimed_hash));
            state = Some((record.seq + 1, parsed.claimed_hash));
            records += 1;
        }
        if ends_torn(&text) {
            lines += 1;
            // A crash leaves part of a line, or a whole record without its newline;
            // a whole record that does not match its hash was altered, and its
            // newline removed so that it would pass for torn.
            let last = text.rsplit('\n').next().unwrap_or_default();
            if parse_line(last).is_ok_and(|parsed| parsed.claimed_hash != parsed.actual_hash) {
                return Ok(Err((segment.path.clone(), lines, Break::Altered)));
            }
            torn.push((segment.path.clone(), lines));
        }
        if lines > 0 {
            end = (segment.path.clone(), lines);
        }
    }
    if !expected_found {
        let (path, line) = end;
        let hash = expect_hash.unwrap_or_default().to_owned();
        return Ok(Err((path, line, Break::HashNotFound(hash))));
    }
    Ok(Ok(Verified {
        files: files.len(),
        records,
        first_seq,
        first_day: oldest.day,
        torn,
        anchor,
        last_hash: state.map_or_else(|| GENESIS.to_owned(), |(_, hash)| hash),
    }))
}
