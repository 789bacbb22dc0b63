//! Checks the hash chain of a log directory, file after file, and reports the
//! first record that was altered, removed or reordered.

use std::path::{Path, PathBuf};

use super::record::{parse_line, GENESIS};
use super::rotate::segments;
use super::AuditError;

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub files: usize,
    pub records: u64,
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
    /// The line does not follow the line before it.
    OutOfChain { expected_seq: u64, found_seq: u64 },
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
        }
    }
}

/// The first broken record, or what the log holds.
pub fn verify(dir: &Path) -> Result<Result<Verified, (PathBuf, usize, Break)>, AuditError> {
    let files = segments(dir)?;
    let mut state: Option<(u64, String)> = None;
    let mut anchor = GENESIS.to_owned();
    let mut records = 0;
    for segment in &files {
        let text = std::fs::read_to_string(&segment.path)
            .map_err(|source| AuditError::io(segment.path.clone(), source))?;
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let broken = |why| Ok(Err((segment.path.clone(), n + 1, why)));
            let Some(line) = line.strip_suffix('\n') else {
                return broken(Break::Malformed("incomplete last line".into()));
            };
            let parsed = match parse_line(line) {
                Ok(parsed) => parsed,
                Err(error) => return broken(Break::Malformed(error.to_string())),
            };
            if parsed.claimed_hash != parsed.actual_hash {
                return broken(Break::Altered);
            }
            let record = &parsed.record;
            match &state {
                Some((seq, hash)) if record.seq != *seq || record.prev != *hash => {
                    return broken(Break::OutOfChain {
                        expected_seq: *seq,
                        found_seq: record.seq,
                    });
                }
                Some(_) => {}
                None => anchor.clone_from(&record.prev),
            }
            state = Some((record.seq + 1, parsed.claimed_hash));
            records += 1;
        }
    }
    Ok(Ok(Verified {
        files: files.len(),
        records,
        anchor,
        last_hash: state.map_or_else(|| GENESIS.to_owned(), |(_, hash)| hash),
    }))
}
