//! Log files: their names, their order, rotation by day and size, and retention.
//!
//! A file is `decisions-YYYY-MM-DD.NNN.jsonl`: the UTC day its records were
//! written on and a counter within the day. Sorting by (day, counter) gives the
//! order of the chain. Retention deletes whole files whose day is older than the
//! retention period, and never touches a file with any other name.

use std::path::{Path, PathBuf};

use chrono::{Duration, NaiveDate};

use super::AuditError;

const PREFIX: &str = "decisions-";
const SUFFIX: &str = ".jsonl";

/// One log file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    pub day: NaiveDate,
    pub index: u32,
    pub path: PathBuf,
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

    /// The segment after this one written on `day`.
    pub fn next(&self, dir: &Path, day: NaiveDate) -> Self {
        if day == self.day {
            Self::new(dir, day, self.index + 1)
        } else {
            Self::new(dir, day, 0)
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

    fn parse(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        let stem = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        let (day, index) = stem.rsplit_once('.')?;
        Some(Self {
            day: NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?,
            index: index.parse().ok()?,
            path: path.to_owned(),
        })
    }
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
}
