//! Log files: their names, their order, rotation by day and size, and retention.
//!
//! A file is `decisions-YYYY-MM-DD.NNN.jsonl`: the UTC day its records were
//! written on and a counter within the day. Sorting by (day, counter) gives the
//! order of the chain. Retention deletes whole files whose day is older than the
//! retention period, and never touches a file with any other name.

use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chrono::{Duration, NaiveDate};

use super::AuditError;

const PREFIX: &str = "decisions-";
const SUFFIX: &str = ".jsonl";
/// How much of a file [`Segment::lines_from_end`] reads at a time.
const BLOCK: usize = 256 << 10;

/// One log file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    pub day: NaiveDate,
    pub index: u32,
    pub path: PathBuf,
}

/// The end of a log file: see [`Segment::end`].
#[derive(Debug)]
pub struct End {
    pub last_line: Option<Vec<u8>>,
    pub torn: bool,
}

impl Segment {
    pub fn new(dir: &Path, day: NaiveDate, index: u32) -> Self {
        let name = format!("{PREFIX}{}.{index:03}{SUFFIX}", day.format("%Y-%m-%d"));
        Self {
            day,
            index,
            path: dir.join(name),
        }
    }

    /// The segment after this one written on `day`. A day before this one's (the
    /// clock set back past midnight) continues this day's numbering: the files'
    /// names must keep the chain's order, which `verify` and queries read them in,
    /// and that day's first file may already exist.
    pub fn next(&self, dir: &Path, day: NaiveDate) -> Self {
        if day > self.day {
            Self::new(dir, day, 0)
        } else {
            Self::new(dir, self.day, self.index + 1)
        }
    }

    /// The file's text. Bytes that are not UTF-8 read as U+FFFD: in a whole line
    /// they fail its hash (an altered record), and at the end of the live file they
    /// are a record still being copied (a torn piece), not an error.
    pub fn read_text(&self) -> Result<String, AuditError> {
        let bytes = std::fs::read(&self.path)
            .map_err(|source| AuditError::io(self.path.clone(), source))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Calls `visit` on the file's complete lines, newest first: the lines
    /// [`whole_lines`](super::record::whole_lines) gives of [`Self::read_text`], but
    /// as bytes, read backwards a block at a time. A query for the newest records
    /// reads the end of a file only, and memory stays at a block and a line. Stops
    /// when `visit` breaks, and says so.
    pub fn lines_from_end(
        &self,
        visit: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, AuditError> {
        self.lines_from_end_by(BLOCK, visit)
    }

    fn lines_from_end_by(
        &self,
        block: usize,
        visit: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, AuditError> {
        let io = |source| AuditError::io(self.path.clone(), source);
        self.written(block)?.lines(visit).map_err(io)
    }

    /// What the writer continues from: the file's last complete line, and whether
    /// written bytes that are not a complete line follow it (a torn write). Reads
    /// the file's end once, as [`Self::lines_from_end`] does.
    pub fn end(&self) -> Result<End, AuditError> {
        let io = |source| AuditError::io(self.path.clone(), source);
        let written = self.written(BLOCK)?;
        let torn = written.pending.last().is_some_and(|&b| b != b'\n');
        let mut last_line = None;
        // Whether the reading stopped early does not matter: `last_line` tells.
        let _ = written
            .lines(|line| {
                last_line = Some(line.to_vec());
                ControlFlow::Break(())
            })
            .map_err(io)?;
        Ok(End { last_line, torn })
    }

    /// The file read from its end, past its NUL end: `pending` is empty only for a
    /// file with nothing written.
    fn written(&self, block: usize) -> Result<Backwards, AuditError> {
        let io = |source| AuditError::io(self.path.clone(), source);
        let file = File::open(&self.path).map_err(io)?;
        Backwards::past_nul_end(file, block).map_err(io)
    }

    /// The segment a path names, if it is a name the writer gives
    /// (`decisions-2026-01-01.000.jsonl`, not `decisions-2026-1-1.0.jsonl`): files
    /// named otherwise are not the log's, and retention never deletes them.
    fn parse(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        let stem = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        let (day, index) = stem.rsplit_once('.')?;
        let segment = Self::new(
            path.parent()?,
            NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?,
            index.parse().ok()?,
        );
        (segment.path == path).then_some(segment)
    }
}

/// A line without the carriage return of a CRLF ending, as `str::lines` gives it.
fn without_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A file read from its end: `pending` holds the bytes from `start` on that have
/// not been visited yet.
struct Backwards {
    file: File,
    start: u64,
    block: usize,
    pending: Vec<u8>,
}

impl Backwards {
    /// `file` read from its end, past its NUL end (a live file's space reserved,
    /// not yet written, or what a crash left of it): `pending` holds the last
    /// written block, and is empty only for a file with nothing written.
    fn past_nul_end(file: File, block: usize) -> io::Result<Self> {
        let start = file.metadata()?.len();
        let mut unread = Self {
            file,
            start,
            block,
            pending: Vec::new(),
        };
        while unread.pending.is_empty() && unread.read_more()? {
            let written = unread
                .pending
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i + 1);
            unread.pending.truncate(written);
        }
        Ok(unread)
    }

    /// Calls `visit` on the complete lines before `start` and in `pending`, newest
    /// first (a torn piece after the last newline is not one); stops when `visit`
    /// breaks, and says so.
    fn lines(
        mut self,
        mut visit: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> io::Result<ControlFlow<()>> {
        loop {
            if let Some(newline) = memchr::memrchr(b'\n', &self.pending) {
                self.pending.truncate(newline + 1);
                break;
            }
            if !self.read_more()? {
                return Ok(ControlFlow::Continue(()));
            }
        }
        // `pending` now ends with a newline: the last line not yet visited ends there.
        loop {
            let end = self.pending.len() - 1;
            let Some(newline) = memchr::memrchr(b'\n', &self.pending[..end]) else {
                if self.read_more()? {
                    continue;
                }
                return Ok(visit(without_cr(&self.pending[..end])));
            };
            if visit(without_cr(&self.pending[newline + 1..end])).is_break() {
                return Ok(ControlFlow::Break(()));
            }
            self.pending.truncate(newline + 1);
        }
    }

    /// Reads the block before `start` in front of `pending`; false at the file's
    /// start. A file cut back since it was opened (a live file is cut to its
    /// records when it is rotated) reads short: only its NUL end is gone.
    fn read_more(&mut self) -> io::Result<bool> {
        if self.start == 0 {
            return Ok(false);
        }
        let from = self.start.saturating_sub(self.block as u64);
        let mut bytes = vec![0; usize::try_from(self.start - from).expect("at most a block")];
        let mut filled = 0;
        while filled < bytes.len() {
            match self
                .file
                .read_at(&mut bytes[filled..], from + filled as u64)
            {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        bytes.truncate(filled);
        bytes.extend_from_slice(&self.pending);
        self.pending = bytes;
        self.start = from;
        Ok(true)
    }
}

/// The length of a file's records: the file without its NUL end (see
/// [`Backwards::past_nul_end`]).
pub fn records_length(file: &File) -> io::Result<u64> {
    let written = Backwards::past_nul_end(file.try_clone()?, BLOCK)?;
    Ok(written.start + written.pending.len() as u64)
}

/// The log files of `dir`, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<Segment>, AuditError> {
    let io = |source| AuditError::io(dir.to_owned(), source);
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io)? {
        if let Some(segment) = Segment::parse(&item.map_err(io)?.path()) {
            found.push(segment);
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes the files of days before `today - retention_days`; returns them.
pub fn apply_retention(
    dir: &Path,
    today: NaiveDate,
    retention_days: u32,
) -> Result<Vec<PathBuf>, AuditError> {
    let oldest_kept = today - Duration::days(i64::from(retention_days));
    let mut deleted = Vec::new();
    for segment in segments(dir)?.into_iter().filter(|s| s.day < oldest_kept) {
        std::fs::remove_file(&segment.path)
            .map_err(|source| AuditError::io(segment.path.clone(), source))?;
        deleted.push(segment.path);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::whole_lines;
    use proptest::prelude::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn names_round_trip_and_sort_by_day_then_index() {
        let dir = Path::new("/x");
        let a = Segment::new(dir, day("2026-11-23"), 2);
        assert_eq!(a.path, Path::new("/x/decisions-2026-11-23.002.jsonl"));
        assert_eq!(Segment::parse(&a.path), Some(a.clone()));
        let b = a.next(dir, day("2026-11-23"));
        let c = b.next(dir, day("2026-11-24"));
        assert!(a < b && b < c);
        assert_eq!(c.index, 0);
        assert_eq!(Segment::parse(Path::new("/x/notes.txt")), None);
    }

    fn file_of(content: &[u8]) -> (tempfile::TempDir, Segment) {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::new(dir.path(), day("2026-11-23"), 0);
        std::fs::write(&segment.path, content).unwrap();
        (dir, segment)
    }

    fn lines_read_backwards(segment: &Segment, block: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let flow = segment
            .lines_from_end_by(block, |line| {
                seen.push(String::from_utf8_lossy(line).into_owned());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(flow, ControlFlow::Continue(()));
        seen
    }

    proptest! {
        /// Whatever the bytes (torn pieces, NUL ends, CRLF, broken UTF-8) and the
        /// block size, reading backwards gives the lines reading the whole text gives.
        #[test]
        fn lines_from_end_are_the_whole_lines_newest_first(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'"', b'\n', b'\n', 0, b'\r', 0xff, 0xe2, 0x82]),
                0..600,
            ),
            nul_end in 0usize..300,
            block in 1usize..80,
        ) {
            let mut content = bytes;
            content.extend(std::iter::repeat_n(0, nul_end));
            let (_dir, segment) = file_of(&content);
            let text = segment.read_text().unwrap();
            let expected: Vec<String> = whole_lines(&text).rev().map(str::to_owned).collect();
            prop_assert_eq!(lines_read_backwards(&segment, block), expected);
        }
    }

    #[test]
    fn the_end_is_the_last_whole_line_and_whether_a_torn_piece_follows() {
        let end = |content: &[u8]| {
            let (_dir, segment) = file_of(content);
            let end = segment.end().unwrap();
            (
                end.last_line.map(|l| String::from_utf8(l).unwrap()),
                end.torn,
            )
        };
        assert_eq!(end(b""), (None, false));
        assert_eq!(end(&[0; 10]), (None, false));
        assert_eq!(end(b"torn"), (None, true));
        assert_eq!(end(b"one\ntwo\n\0\0"), (Some("two".into()), false));
        assert_eq!(end(b"one\ntwo\r\ntor\0\0"), (Some("two".into()), true));
    }

    #[test]
    fn the_records_length_leaves_out_the_nul_end_only() {
        let length = |content: &[u8]| {
            let (_dir, segment) = file_of(content);
            records_length(&File::open(&segment.path).unwrap()).unwrap()
        };
        assert_eq!(length(b""), 0);
        assert_eq!(length(&[0; 10]), 0);
        assert_eq!(length(b"one\ntor\0\0"), 7);
        assert_eq!(length(b"a\0b\n"), 4);
    }

    #[test]
    fn reading_backwards_stops_when_told() {
        let (_dir, segment) = file_of(b"one\ntwo\nthree\nfour\ntorn");
        let mut seen = Vec::new();
        let flow = segment
            .lines_from_end(|line| {
                seen.push(line.to_vec());
                if seen.len() == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(flow, ControlFlow::Break(()));
        assert_eq!(seen, [b"four".to_vec(), b"three".to_vec()]);
    }
}
