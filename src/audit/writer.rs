//! The writer: request handlers append their record, chained, straight into the
//! newest log file through a shared memory mapping, before they answer.
//!
//! A record copied into a `MAP_SHARED` mapping of the file is in the kernel's page
//! cache once the copy ends, so it survives the process being killed (kill -9) as a
//! `write` would, without the system call (about 1.2 µs, most of what a record cost
//! when each batch was written with `write`). The copy uses streaming stores where
//! the CPU has them ([`copy_around_the_cache`]): a line written once and read back
//! only by queries does not take cache lines from the decision path. Appending holds
//! one short lock while
//! the record is chained (its sequence number and hash) and copied: memory work;
//! the lock's rare I/O is a rotation, and reserving the next step of the file. The
//! file's space is reserved ahead with `posix_fallocate`, a step (1 MiB) at a time,
//! so on ext4 or XFS a full disk is an error when space is reserved (the handler
//! answers Deny), not a fault in the copy. On a copy-on-write file system (btrfs,
//! ZFS) a reservation does not guarantee the overwrite: a full disk there can fault
//! the process, which then stops answering (nothing is allowed).
//!
//! A live file is therefore longer than its records: its reserved end reads as NUL
//! bytes, which readers take for the end of the file
//! ([`super::record::whole_lines`]). The file is cut back to its records when it is
//! rotated or closed, and, after a crash, when the next start continues it (a file
//! left behind, torn or of an earlier day, keeps its NUL end).
//!
//! With `--audit-fsync`, a syncer thread `fdatasync`s the files once for everything
//! appended since its last sync (group fsync), and a handler's acknowledgement
//! completes when a sync that covers its record has. A failed sync fails the records
//! it covered and every later one, until a restart.
//!
//! When a record cannot be appended (no space, the file cannot be opened), it and the
//! rest of its batch are refused (the handler answers Deny; records of the batch
//! appended before stay in the log, and are acknowledged: their items are answered
//! as their records say), the chain stays at the last record appended,
//! and the log is marked unhealthy until an append succeeds. A file that could not be
//! opened is opened again for the next record.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use memmap2::{MmapMut, MmapOptions};
use tokio::sync::watch;

use super::record::{parse_line, Entry, GENESIS};
use super::rotate::{apply_retention, records_length, segments, Segment};
use super::{AuditConfig, AuditError};

/// The log says who consulted which claimant's file: its files are the owner's to
/// write and its group's to read (a log shipper's), and no one else's, the umask
/// only narrowing that; a directory the sidecar creates likewise (one that exists
/// keeps the mode it was given).
const LOG_FILE_MODE: u32 = 0o640;
const LOG_DIR_MODE: u32 = 0o750;

/// How often an append checks that the open file is still the one at its path.
const PLACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How much file space is reserved at a time.
const RESERVE_STEP: usize = 1 << 20;
/// The most of a file mapped at once (a larger size limit maps this much, and
/// more only for a line that needs it).
const MAX_MAPPING: usize = 1 << 40;

/// A poisoned lock only means a panic elsewhere; the data is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why the log cannot be written or synced, if it cannot.
#[derive(Debug, Default)]
pub struct Health {
    write: Mutex<Option<String>>,
    sync: Mutex<Option<String>>,
}

impl Health {
    /// The reason the log is unavailable, if it is.
    pub fn failure(&self) -> Option<String> {
        lock(&self.write)
            .clone()
            .or_else(|| lock(&self.sync).clone())
    }
}

/// The handle request handlers share.
pub struct AuditLog {
    /// A spinning lock: appends hold it about a microsecond, less than parking
    /// and waking a thread would cost.
    writer: parking_lot::Mutex<Writer>,
    health: Arc<Health>,
    syncer: Option<Syncer>,
    context_fields: Vec<String>,
    dir: PathBuf,
}

/// An acknowledgement to wait for before answering.
#[derive(Clone)]
pub struct Ack(AckState);

#[derive(Clone)]
enum AckState {
    /// Appended (or refused): the record is in the page cache.
    Done(Result<(), AuditError>),
    /// Appended; durable once a sync covers records before this sequence number.
    Syncing(u64, watch::Receiver<Synced>),
}

impl Ack {
    /// The acknowledgement of a record the log did not take: waiting for it gives
    /// `error`, so its decision is answered Deny.
    pub fn failed(error: AuditError) -> Self {
        Self(AckState::Done(Err(error)))
    }

    /// Completes once the record is in the file (with `--audit-fsync`, on disk), or
    /// could not be.
    pub async fn wait(self) -> Result<(), AuditError> {
        match self.0 {
            AckState::Done(result) => result,
            AckState::Syncing(end, mut synced) => {
                let synced = synced
                    .wait_for(|s| s.through >= end)
                    .await
                    .map_err(|_| AuditError::Closed)?;
                synced.outcome(end - 1)
            }
        }
    }
}

impl AuditLog {
    /// Opens (or continues) the log in `config.dir` and deletes expired files.
    pub fn start(config: AuditConfig) -> Result<Self, AuditError> {
        let context_fields = config.context_fields.clone();
        let dir = config.dir.clone();
        let health = Arc::new(Health::default());
        let mut writer = Writer::open(config)?;
        // A file that cannot be opened yet (no space, no permission) leaves the
        // log unhealthy, not the sidecar down: every record is tried again.
        if let Err(error) = writer.reopen() {
            tracing::error!(%error, "audit log unavailable");
            *lock(&health.write) = Some(error.to_string());
            writer.unhealthy = true;
        }
        let syncer = writer
            .config
            .fsync
            .then(|| Syncer::start(writer.seq, health.clone()));
        Ok(Self {
            writer: parking_lot::Mutex::new(writer),
            health,
            syncer,
            context_fields,
            dir,
        })
    }

    /// Appends one entry; await the returned [`Ack`] before answering.
    pub fn submit(&self, entry: Entry) -> Ack {
        self.submit_all(vec![entry])
            .pop()
            .expect("one ack per entry")
    }

    /// Appends entries in order, under one lock; one [`Ack`] per entry. When an
    /// entry cannot be appended, it and the rest of the batch are refused, and those
    /// appended before it are acknowledged as appended: each answer is the one its
    /// record shows.
    pub fn submit_all(&self, entries: Vec<Entry>) -> Vec<Ack> {
        let mut writer = self.writer.lock();
        let (appended, refused) = writer.commit(&entries, &self.health);
        let done = match (&self.syncer, appended) {
            (_, 0) => None,
            (Some(syncer), _) => {
                syncer.request(writer.seq, writer.current_file(), writer.take_retired());
                Some(AckState::Syncing(writer.seq, syncer.subscribe()))
            }
            (None, _) => Some(AckState::Done(Ok(()))),
        };
        drop(writer);
        let mut acks: Vec<Ack> = done
            .map(|done| vec![Ack(done); appended])
            .unwrap_or_default();
        if let Err(error) = refused {
            acks.resize(entries.len(), Ack::failed(error));
        }
        acks
    }

    /// Checks the log now, as an append would, without appending (for `/readyz`,
    /// which traffic-less would otherwise report the state of the last append): a
    /// directory deleted since is found, and one back since is opened. The reason
    /// the log cannot be written, if it cannot.
    pub fn probe(&self) -> Option<String> {
        self.writer.lock().probe(&self.health);
        self.health.failure()
    }

    /// The context fields recorded.
    pub fn context_fields(&self) -> &[String] {
        &self.context_fields
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Refuses new entries, cuts the file back to its records, syncs and closes it;
    /// with `--audit-fsync`, lets the syncer finish its last sync. Later entries
    /// get [`AuditError::Closed`].
    pub fn close(&self) {
        self.writer.lock().close();
        if let Some(syncer) = &self.syncer {
            syncer.stop();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The appending state: the open file and the end of the chain.
struct Writer {
    config: AuditConfig,
    closed: bool,
    segment: Segment,
    file: Option<Mapped>,
    seq: u64,
    last_hash: String,
    /// Whether the last batch failed (the health then says why).
    unhealthy: bool,
    /// Files rotated out and not yet synced (with `--audit-fsync`).
    retired: Vec<Arc<File>>,
    chores: Chores,
    /// The line being appended (kept for its capacity).
    line: String,
    /// The directory's lock ([`lock_dir`]), held until the writer is closed; taken
    /// again after the directory was replaced.
    dir_lock: Option<File>,
    /// When the next append checks that the file is still in place.
    next_place_check: Instant,
}

/// The end of the chain found in existing files.
struct Tail {
    seq: u64,
    last_hash: String,
    /// The newest file can be appended to (it ends with a whole line).
    clean: bool,
}

impl Writer {
    /// The writer for the log in `config.dir`, its file not opened yet.
    fn open(config: AuditConfig) -> Result<Self, AuditError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(LOG_DIR_MODE)
            .create(&config.dir)
            .map_err(|source| AuditError::io(config.dir.clone(), source))?;
        let dir_lock = lock_dir(&config.dir)?;
        let today = (config.clock)().date_naive();
        let expired = apply_retention(&config.dir, today, config.retention_days)?;
        if !expired.is_empty() {
            tracing::info!(count = expired.len(), files = ?expired, "expired audit files deleted");
        }
        let existing = segments(&config.dir)?;
        let tail = find_tail(&existing)?;
        // With `--audit-fsync`, the records the chain continues from must be on disk
        // before any record chained to them is acknowledged. A crash may have left
        // unsynced records in any file: in the newest, in one rotated out before
        // the syncer reached it, or in an older one than an empty newest file. So
        // every file is synced (a file with nothing to write back syncs at once).
        if config.fsync {
            for segment in &existing {
                sync_path(&segment.path)?;
            }
        }
        if let (Some(newest), false) = (existing.last(), tail.clean) {
            tracing::warn!(
                file = %newest.path.display(),
                "the decision log's newest file ends with an incomplete line (a torn \
                 write); the chain continues from its last whole record in a new file"
            );
            cut_back_to_its_records(&newest.path)?;
        }
        let segment = match existing.last() {
            // A clock behind the newest file's day continues it ([`Segment::next`]).
            Some(newest) if tail.clean && newest.day >= today => newest.clone(),
            Some(newest) => newest.next(&config.dir, today),
            None => Segment::new(&config.dir, today, 0),
        };
        Ok(Self {
            config,
            closed: false,
            segment,
            file: None,
            seq: tail.seq,
            last_hash: tail.last_hash,
            unhealthy: false,
            retired: Vec::new(),
            chores: Chores::start(),
            line: String::new(),
            dir_lock: Some(dir_lock),
            next_place_check: Instant::now() + PLACE_CHECK_INTERVAL,
        })
    }

    /// Appends one batch and records the log's health: how many entries were
    /// appended, and the error that refused the next one, if one was.
    fn commit(&mut self, entries: &[Entry], health: &Health) -> (usize, Result<(), AuditError>) {
        let (appended, result) = self.append_all(entries);
        self.note_health(&result, health);
        (appended, result)
    }

    /// [`Self::commit`]'s checks with nothing to append: the file still in place,
    /// else opened anew. A failure is noted; so is a file opened that could not be
    /// before. A file in place says nothing of a full disk, which only an append
    /// tells: the log's health is then left as the last append left it.
    fn probe(&mut self, health: &Health) {
        if self.closed {
            return;
        }
        let had_file = self.file.is_some();
        self.next_place_check = Instant::now();
        let result = self.check_still_in_place().and_then(|()| match self.file {
            None => self.reopen(),
            Some(_) => Ok(()),
        });
        if result.is_err() || !had_file {
            self.note_health(&result, health);
        }
    }

    /// Records whether the log could be written, logging a change.
    fn note_health(&mut self, result: &Result<(), AuditError>, health: &Health) {
        match result {
            Err(error) => {
                // Logged when the log fails, or fails otherwise, not for every record
                // while it stays down (a full disk would fill with the same line; the
                // failures are counted in the metrics).
                let message = error.to_string();
                let mut reported = lock(&health.write);
                if reported.as_deref() != Some(message.as_str()) {
                    tracing::error!(%error, "audit log unavailable");
                }
                *reported = Some(message);
            }
            Ok(()) if self.unhealthy => {
                tracing::info!("audit log available again");
                *lock(&health.write) = None;
            }
            Ok(()) => {}
        }
        self.unhealthy = result.is_err();
    }

    /// Appends entries in order until one cannot be: how many were, and why not.
    fn append_all(&mut self, entries: &[Entry]) -> (usize, Result<(), AuditError>) {
        if self.closed {
            return (0, Err(AuditError::Closed));
        }
        // Before the batch, not between its records: a batch found writing into a
        // file already gone is refused whole, none of it acknowledged.
        if let Err(error) = self.check_still_in_place() {
            return (0, Err(error));
        }
        for (appended, entry) in entries.iter().enumerate() {
            if let Err(error) = self.append(entry) {
                return (appended, Err(error));
            }
        }
        (entries.len(), Ok(()))
    }

    /// Chains one entry and copies its line into the file, rotating first when a
    /// new file is due. Nothing changes unless the line is in the file.
    fn append(&mut self, entry: &Entry) -> Result<(), AuditError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        let hash = entry.append_line(self.seq, &self.last_hash, &mut line);
        let appended = self.copy_line(line.as_bytes());
        self.line = line;
        appended?;
        self.seq += 1;
        self.last_hash = hash;
        Ok(())
    }

    fn copy_line(&mut self, line: &[u8]) -> Result<(), AuditError> {
        if self.file.is_none() {
            self.reopen()?;
        }
        if self.needs_rotation(line.len()) {
            self.rotate()?;
        }
        let file = self.file.as_mut().ok_or(AuditError::Closed)?;
        file.append(line)
            .map_err(|source| AuditError::io(self.segment.path.clone(), source))
    }

    /// A new file is due on a later day, or when the line would take the file over
    /// its size limit (a file always takes at least one line). A clock set back
    /// keeps writing the newest file ([`Segment::next`]).
    fn needs_rotation(&self, line: usize) -> bool {
        let today = (self.config.clock)().date_naive();
        let used = self.file.as_ref().map_or(0, |f| f.len) as u64;
        today > self.segment.day || (used > 0 && used + line as u64 > self.config.max_file_bytes)
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        self.log_chain_head("rotation");
        let finished = self.finish_file(false);
        let today = (self.config.clock)().date_naive();
        self.segment = self.segment.next(&self.config.dir, today);
        // The next file is mapped before the finished one is unmapped: mapping
        // waits for an unmapping to end, which takes milliseconds (see `Chores`).
        let reopened = self.reopen();
        if let Some(finished) = finished {
            self.chores.unmap(finished);
        }
        reopened?;
        self.chores
            .expire(&self.config.dir, today, self.config.retention_days);
        Ok(())
    }

    /// Every [`PLACE_CHECK_INTERVAL`], whether the open file is still the one at its
    /// path: a log directory deleted or replaced under the writer (or the file
    /// removed) would take records no one can read, and nothing would fail. When it
    /// is not, the file is let go (unmapped off the lock, as on rotation) and the
    /// batch refused (answered Deny); the next record takes the directory's lock
    /// again and opens the path anew, failing while the directory is gone. Records
    /// appended between the change and the check are lost with the old file: at
    /// most a second's.
    fn check_still_in_place(&mut self) -> Result<(), AuditError> {
        let now = Instant::now();
        if now < self.next_place_check {
            return Ok(());
        }
        self.next_place_check = now + PLACE_CHECK_INTERVAL;
        let Some(mapped) = &self.file else {
            return Ok(());
        };
        let open = mapped.file.metadata().ok();
        let at_path = std::fs::metadata(&self.segment.path).ok();
        let same_file = |open: &std::fs::Metadata, at_path: &std::fs::Metadata| {
            use std::os::unix::fs::MetadataExt;
            (open.dev(), open.ino()) == (at_path.dev(), at_path.ino())
        };
        if open.zip(at_path).is_some_and(|(o, p)| same_file(&o, &p)) {
            return Ok(());
        }
        if let Some(gone) = self.file.take() {
            self.chores.unmap(gone);
        }
        self.dir_lock = None;
        Err(AuditError::Moved(self.segment.path.clone()))
    }

    fn reopen(&mut self) -> Result<(), AuditError> {
        if self.dir_lock.is_none() {
            self.dir_lock = Some(lock_dir(&self.config.dir)?);
        }
        let path = &self.segment.path;
        let io = |source| AuditError::io(path.clone(), source);
        let created = !path.exists();
        let mapped =
            Mapped::open(path, self.config.max_file_bytes, self.chores.clone()).map_err(io)?;
        // With `--audit-fsync`, a new file's name must survive power loss too.
        if self.config.fsync && created {
            sync_path(&self.config.dir)?;
        }
        self.file = Some(mapped);
        Ok(())
    }

    /// Cuts the current file back to its records; with `sync`, syncs it (with
    /// `--audit-fsync`, the syncer syncs it next). Returns it, still mapped.
    fn finish_file(&mut self, sync: bool) -> Option<Mapped> {
        let mapped = self.file.take()?;
        if let Err(error) = mapped.finish(sync) {
            tracing::warn!(
                %error, file = %self.segment.path.display(),
                "cannot cut the decision log's file back to its records (its end reads \
                 as NULs) or sync it"
            );
        }
        if self.config.fsync {
            self.retired.push(mapped.file.clone());
        }
        Some(mapped)
    }

    fn current_file(&self) -> Option<Arc<File>> {
        self.file.as_ref().map(|f| f.file.clone())
    }

    fn take_retired(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.retired)
    }

    /// Logs the last record written, so that its hash is kept outside the log
    /// (`audit verify --expect-hash` then catches records cut off after it).
    fn log_chain_head(&self, at: &str) {
        if let Some(last_seq) = self.seq.checked_sub(1) {
            tracing::info!(at, last_seq, last_hash = %self.last_hash, "decision log chain head");
        }
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.log_chain_head("shutdown");
        self.closed = true;
        drop(self.finish_file(true));
        self.chores.drain();
        // The log is left to the next writer (the lock goes with the file).
        self.dir_lock = None;
    }
}

/// A log file open for appending, mapped whole (up to its size limit).
struct Mapped {
    file: Arc<File>,
    map: MmapMut,
    /// Bytes holding whole records.
    len: usize,
    /// Bytes reserved on disk (the file's length); past `len` they read as NULs.
    reserved: usize,
    chores: Chores,
}

impl Mapped {
    /// Opens `path`, cut back to its records (a crash leaves its reserved end), and
    /// reserves a step ahead.
    fn open(path: &Path, max_file_bytes: u64, chores: Chores) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(LOG_FILE_MODE)
            .truncate(false)
            .open(path)?;
        let len = cut_to_records(&file)?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let limit = usize::try_from(max_file_bytes).map_or(MAX_MAPPING, |l| l.min(MAX_MAPPING));
        let map = map(&file, limit.max(len).max(1).next_multiple_of(RESERVE_STEP))?;
        let mut mapped = Self {
            file: Arc::new(file),
            map,
            len,
            reserved: len,
            chores,
        };
        mapped.reserve_ahead();
        Ok(mapped)
    }

    /// Copies a whole line (ending with its newline) after the records.
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let end = self.len + line.len();
        if end > self.reserved {
            self.reserve(end)?;
        }
        let (text, newline) = line.split_at(line.len() - 1);
        copy_around_the_cache(&mut self.map[self.len..end - 1], text);
        // The newline last: a reader that sees it sees the whole line.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.map[end - 1] = newline[0];
        self.len = end;
        if self.reserved - end < RESERVE_STEP / 2 {
            self.reserve_ahead();
        }
        Ok(())
    }

    /// Reserves the next step before a record needs it, and has its pages faulted
    /// in by the background thread, so that copies rarely fault. A failure here is met
    /// again, and reported, by the record that needs the space.
    fn reserve_ahead(&mut self) {
        let reserved = self.reserved + RESERVE_STEP;
        if reserved <= self.map.len() && allocate(&self.file, self.reserved, RESERVE_STEP).is_ok() {
            self.chores.prefault(&self.map, self.reserved..reserved);
            self.reserved = reserved;
        }
    }

    /// Reserves space on disk up to `end` (rounded up a step), mapping more when a
    /// line is longer than a file.
    fn reserve(&mut self, end: usize) -> io::Result<()> {
        let reserved = end.next_multiple_of(RESERVE_STEP);
        if reserved > self.map.len() {
            self.map = map(&self.file, reserved)?;
        }
        allocate(&self.file, self.reserved, reserved - self.reserved)?;
        self.reserved = reserved;
        Ok(())
    }

    /// Cuts the file back to its records (the pages past them are dropped from the
    /// mapping); with `sync`, syncs it.
    fn finish(&self, sync: bool) -> io::Result<()> {
        self.file.set_len(self.len as u64)?;
        if sync {
            self.file.sync_all()?;
        }
        Ok(())
    }
}

/// Copies `src` into `dst` (of the same length) with stores that bypass the CPU's
/// caches where it has them (x86-64's `movntdq`, 16 bytes at a time), and orders
/// them before any store that follows. A record's line is written once and read
/// back only by queries: cached, its lines would evict the decision path's own
/// code and data, which the next request then fetches again (BENCHMARKS.md,
/// session 40).
#[cfg(target_arch = "x86_64")]
fn copy_around_the_cache(dst: &mut [u8], src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    assert_eq!(dst.len(), src.len(), "a copy between slices of one length");
    let head = dst.as_ptr().align_offset(16).min(dst.len());
    let body_end = head + (dst.len() - head) / 16 * 16;
    dst[..head].copy_from_slice(&src[..head]);
    for at in (head..body_end).step_by(16) {
        // SAFETY: `at..at + 16` lies in both slices (`body_end` is within them),
        // and `dst`'s `at` is 16-byte aligned (`head` aligns it), as the streaming
        // store requires; SSE2 is part of x86-64.
        unsafe {
            let chunk = _mm_loadu_si128(src.as_ptr().add(at).cast::<__m128i>());
            _mm_stream_si128(dst.as_mut_ptr().add(at).cast::<__m128i>(), chunk);
        }
    }
    dst[body_end..].copy_from_slice(&src[body_end..]);
    // SAFETY: SSE is part of x86-64. Streaming stores are ordered by a store
    // fence only.
    unsafe { _mm_sfence() };
}

#[cfg(not(target_arch = "x86_64"))]
fn copy_around_the_cache(dst: &mut [u8], src: &[u8]) {
    dst.copy_from_slice(src);
}

/// The log's background thread, for slow parts of appending that no record waits
/// for, done one after the other in the order asked:
///
/// - faulting reserved pages in (`MADV_POPULATE_WRITE`, Linux 5.14 and later): a
///   record's copy then rarely meets a page fault (a page every six or seven
///   records). Faulting a page in changes no byte of it, so the thread never races
///   with the copies. A range unmapped or cut off the file meanwhile (a rotation)
///   makes the call fail, or, if the address was mapped again since, faults in
///   pages of that mapping, still changing no byte; failures are ignored, as on
///   kernels before 5.14 (the copies then fault the pages in);
/// - unmapping a finished file: undoing a full file's mapping took 13.5 ms on the
///   dev VM (64 MiB), which a rotation, under the writer's lock, held every
///   decision for (BENCHMARKS.md, session 24). A rotation maps the next file
///   before it asks: a mapping waits for an unmapping to end;
/// - deleting the files retention expires, at a rotation: deleting a 64 MiB file
///   took 46-49 ms on the dev VM's ext4, and a busy day leaves hundreds.
#[derive(Clone)]
struct Chores(mpsc::Sender<Chore>);

enum Chore {
    Prefault {
        address: usize,
        len: usize,
    },
    Unmap(Mapped),
    Expire {
        dir: PathBuf,
        today: NaiveDate,
        retention_days: u32,
    },
    /// Answers once every chore asked before is done.
    Drain(mpsc::Sender<()>),
}

impl Chores {
    fn start() -> Self {
        let (chores, received) = mpsc::channel::<Chore>();
        std::thread::Builder::new()
            .name("audit-chores".into())
            .spawn(move || received.into_iter().for_each(Chore::run))
            .expect("cannot start the decision log's background thread");
        Self(chores)
    }

    fn prefault(&self, map: &MmapMut, range: Range<usize>) {
        let address = map.as_ptr() as usize + range.start;
        let len = range.len();
        self.ask(Chore::Prefault { address, len });
    }

    fn unmap(&self, finished: Mapped) {
        self.ask(Chore::Unmap(finished));
    }

    fn expire(&self, dir: &Path, today: NaiveDate, retention_days: u32) {
        self.ask(Chore::Expire {
            dir: dir.to_owned(),
            today,
            retention_days,
        });
    }

    /// Waits until the chores asked so far are done.
    fn drain(&self) {
        let (done, finished) = mpsc::channel();
        self.ask(Chore::Drain(done));
        let _ = finished.recv();
    }

    /// Has the thread do `chore`, or does it here if the thread is gone.
    fn ask(&self, chore: Chore) {
        if let Err(mpsc::SendError(chore)) = self.0.send(chore) {
            chore.run();
        }
    }
}

impl Chore {
    fn run(self) {
        match self {
            Chore::Prefault { address, len } => {
                // SAFETY: the advice reads and writes no byte of the range, and
                // fails without effect on a range no longer mapped.
                unsafe {
                    libc::madvise(address as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE)
                };
            }
            Chore::Unmap(finished) => drop(finished),
            Chore::Expire {
                dir,
                today,
                retention_days,
            } => match apply_retention(&dir, today, retention_days) {
                Ok(deleted) if !deleted.is_empty() => {
                    tracing::info!(count = deleted.len(), files = ?deleted, "expired audit files deleted");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "audit retention failed"),
            },
            Chore::Drain(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Locks the log directory for this writer (`flock` on the directory itself, which
/// no one can delete from under the lock as they could a lock file): a second
/// writer on the same directory (a sidecar started before the last one stopped)
/// would append at the same places, overwriting records and breaking the chain,
/// and cut the file under the other's mapping when it closed. The lock goes with
/// the process.
fn lock_dir(dir: &Path) -> Result<File, AuditError> {
    let directory = File::open(dir).map_err(|source| AuditError::io(dir.to_owned(), source))?;
    match directory.try_lock() {
        Ok(()) => Ok(directory),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Locked(dir.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(AuditError::io(dir.to_owned(), source)),
    }
}

/// Syncs the file or directory at `path` to disk.
fn sync_path(path: &Path) -> Result<(), AuditError> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|source| AuditError::io(path.to_owned(), source))
}

/// Maps `len` bytes of `file` (past its end too: only reserved bytes are touched).
fn map(file: &File, len: usize) -> io::Result<MmapMut> {
    // SAFETY: the log's files belong to the sidecar. Nothing else is meant to write
    // or truncate them while it runs (an external truncation would fault the
    // process rather than let it answer), and the writer only writes the mapping's
    // bytes within the file's reserved length, under the writer's lock.
    unsafe { MmapOptions::new().len(len).map_mut(file) }
}

/// Extends `file` by `len` bytes of allocated space from `offset`.
fn allocate(file: &File, offset: usize, len: usize) -> io::Result<()> {
    let to_off = |n: usize| libc::off_t::try_from(n).map_err(io::Error::other);
    // SAFETY: a plain system call on an open descriptor, with no pointer argument.
    let status = unsafe { libc::posix_fallocate(file.as_raw_fd(), to_off(offset)?, to_off(len)?) };
    match status {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// How far the syncs have gone, and which records they failed.
#[derive(Debug, Clone, Default)]
struct Synced {
    /// Every record before this sequence number has been through a sync.
    through: u64,
    /// Records whose sync failed, and why.
    failed: Vec<(Range<u64>, AuditError)>,
}

impl Synced {
    fn outcome(&self, seq: u64) -> Result<(), AuditError> {
        match self
            .failed
            .iter()
            .find(|(records, _)| records.contains(&seq))
        {
            Some((_, error)) => Err(error.clone()),
            None => Ok(()),
        }
    }
}

/// The `--audit-fsync` thread, and what it is asked to sync.
struct Syncer {
    shared: Arc<SyncShared>,
    synced: watch::Receiver<Synced>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct SyncShared {
    work: Mutex<SyncWork>,
    wake: Condvar,
}

#[derive(Default)]
struct SyncWork {
    /// Records before this sequence number have been appended.
    appended: u64,
    file: Option<Arc<File>>,
    retired: Vec<Arc<File>>,
    stopping: bool,
}

impl Syncer {
    fn start(appended: u64, health: Arc<Health>) -> Self {
        let shared = Arc::new(SyncShared {
            work: Mutex::new(SyncWork {
                appended,
                ..SyncWork::default()
            }),
            wake: Condvar::new(),
        });
        let (report, synced) = watch::channel(Synced {
            through: appended,
            failed: Vec::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-fsync".into())
            .spawn(move || worker.run(appended, &report, &health))
            .expect("cannot start the decision log's sync thread");
        Self {
            shared,
            synced,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Asks for a sync of the records before `appended`, in `file` and `retired`.
    fn request(&self, appended: u64, file: Option<Arc<File>>, retired: Vec<Arc<File>>) {
        let mut work = lock(&self.shared.work);
        work.appended = appended;
        work.file = file;
        work.retired.extend(retired);
        drop(work);
        self.shared.wake.notify_one();
    }

    fn subscribe(&self) -> watch::Receiver<Synced> {
        self.synced.clone()
    }

    /// Lets the thread finish the sync asked for, and waits for it.
    fn stop(&self) {
        lock(&self.shared.work).stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl SyncShared {
    /// Syncs until stopped. After a failed sync every later record fails too, until
    /// a restart: the kernel may have dropped the pages that failed to write, so a
    /// later sync that succeeds proves nothing about them.
    fn run(&self, mut through: u64, report: &watch::Sender<Synced>, health: &Health) {
        let mut broken: Option<AuditError> = None;
        loop {
            let (appended, files) = {
                let mut work = lock(&self.work);
                while work.appended == through && work.retired.is_empty() && !work.stopping {
                    work = self.wake.wait(work).unwrap_or_else(|e| e.into_inner());
                }
                if work.appended == through && work.retired.is_empty() {
                    return;
                }
                let mut files = std::mem::take(&mut work.retired);
                files.extend(work.file.clone());
                (work.appended, files)
            };
            if broken.is_none() {
                if let Err(error) = files.iter().try_for_each(|file| file.sync_data()) {
                    *lock(&health.sync) = Some(format!("fdatasync: {error}"));
                    broken = Some(AuditError::io("fdatasync", error));
                }
            }
            report.send_modify(|synced| {
                if let Some(error) = &broken {
                    synced.failed.push((through..appended, error.clone()));
                }
                synced.through = appended;
            });
            through = appended;
        }
    }
}

/// Cuts `file` back to its records ([`records_length`]): the space reserved past
/// them, or what a crash left of it, is no record. Their length.
fn cut_to_records(file: &File) -> io::Result<u64> {
    let len = records_length(file)?;
    file.set_len(len)?;
    Ok(len)
}

/// [`cut_to_records`] for a file the log will not continue (a torn piece after
/// its last record is kept): a closed file is shipped as it is.
fn cut_back_to_its_records(path: &Path) -> Result<(), AuditError> {
    let io = |source| AuditError::io(path.to_owned(), source);
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .map_err(io)?;
    cut_to_records(&file).map(drop).map_err(io)
}

/// The end of the chain: the last whole record of the newest non-empty file, read
/// from the file's end a block at a time ([`Segment::end`]), however long the
/// record.
fn find_tail(existing: &[Segment]) -> Result<Tail, AuditError> {
    let mut clean = true;
    for (n, segment) in existing.iter().enumerate().rev() {
        let end = segment.end()?;
        if n + 1 == existing.len() {
            clean = !end.torn;
        }
        // The chain continues from the last whole line, which must be a record:
        // continuing past a line that is not would break the chain there for good.
        let parsed = match end.last_line {
            Some(line) => parse_line(&String::from_utf8_lossy(&line))
                .map_err(|_| AuditError::NotARecord(segment.path.clone()))?,
            None if end.torn => return Err(AuditError::NoTail(segment.path.clone())),
            None => continue, // nothing written
        };
        return Ok(Tail {
            seq: parsed.record.seq + 1,
            last_hash: parsed.claimed_hash,
            clean,
        });
    }
    Ok(Tail {
        seq: 0,
        last_hash: GENESIS.to_owned(),
        clean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn text(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    /// The copy around the cache copies every byte, whatever the alignment of its
    /// destination and its length, and touches nothing around it.
    #[test]
    fn the_copy_around_the_cache_copies_exactly_its_bytes() {
        let src: Vec<u8> = (0..200u8).collect();
        for start in 0..20 {
            for len in [0, 1, 15, 16, 17, 31, 32, 33, 100, 180] {
                let mut dst = vec![0xAAu8; 220];
                copy_around_the_cache(&mut dst[start..start + len], &src[..len]);
                assert_eq!(
                    &dst[start..start + len],
                    &src[..len],
                    "at {start}, {len} bytes"
                );
                assert!(dst[..start]
                    .iter()
                    .chain(&dst[start + len..])
                    .all(|&b| b == 0xAA));
            }
        }
    }

    #[test]
    fn a_live_file_reserves_ahead_and_is_cut_back_to_its_records_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut mapped = Mapped::open(&path, 64 << 20, Chores::start()).unwrap();
        mapped.append(b"{\"a\":1}\n").unwrap();
        mapped.append(b"{\"b\":2}\n").unwrap();
        let live = text(&path);
        assert_eq!(live.len(), RESERVE_STEP);
        assert_eq!(&live[..16], b"{\"a\":1}\n{\"b\":2}\n");
        assert!(live[16..].iter().all(|&b| b == 0));
        mapped.finish(false).unwrap();
        assert_eq!(text(&path), b"{\"a\":1}\n{\"b\":2}\n");
    }

    /// One writer per log directory: a second one (another sidecar on the same
    /// `--audit-dir`) is refused while the first is open, and starts once it is
    /// closed.
    #[test]
    fn a_second_writer_on_the_same_directory_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().unwrap();
        let first = AuditLog::start(AuditConfig::new(dir.path())).unwrap();
        let second = AuditLog::start(AuditConfig::new(dir.path()));
        assert!(
            matches!(&second, Err(AuditError::Locked(d)) if d == dir.path()),
            "{:?}",
            second.err()
        );
        first.close();
        AuditLog::start(AuditConfig::new(dir.path())).unwrap();
    }

    /// Whether the process maps `path` (a line of `/proc/self/maps` names it).
    fn mapped_here(path: &Path) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .any(|line| line.ends_with(path.to_str().unwrap()))
    }

    #[test]
    fn a_finished_file_is_unmapped_by_the_background_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let chores = Chores::start();
        let mut mapped = Mapped::open(&path, 64 << 20, chores.clone()).unwrap();
        mapped.append(b"{\"a\":1}\n").unwrap();
        assert!(mapped_here(&path));
        mapped.finish(false).unwrap();
        assert_eq!(text(&path), b"{\"a\":1}\n");
        chores.unmap(mapped);
        chores.drain();
        assert!(!mapped_here(&path), "unmapped once the chores are done");
    }

    #[test]
    fn reopening_after_a_crash_continues_after_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut crashed = std::fs::File::create(&path).unwrap();
        crashed.write_all(b"{\"a\":1}\n").unwrap();
        crashed.write_all(&vec![0; 3 * (64 << 10) + 5]).unwrap();
        let mut mapped = Mapped::open(&path, 64 << 20, Chores::start()).unwrap();
        let reopened = text(&path);
        assert_eq!(
            reopened.len(),
            8 + RESERVE_STEP,
            "cut back, then a step reserved"
        );
        assert!(reopened.starts_with(b"{\"a\":1}\n\0"));
        mapped.append(b"{\"b\":2}\n").unwrap();
        mapped.finish(false).unwrap();
        assert_eq!(text(&path), b"{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn a_line_longer_than_a_file_still_fits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut mapped = Mapped::open(&path, 100, Chores::start()).unwrap();
        let mut long = vec![b'x'; 3 * RESERVE_STEP];
        long.push(b'\n');
        mapped.append(&long).unwrap();
        mapped.append(b"y\n").unwrap();
        mapped.finish(false).unwrap();
        let written = text(&path);
        assert_eq!(written.len(), long.len() + 2);
        assert!(written.ends_with(b"x\ny\n"));
    }

    /// After a failed sync (`/dev/full` refuses `fdatasync`), records synced later,
    /// in a file that syncs, fail too, and the log stays unhealthy.
    #[test]
    fn a_failed_sync_fails_every_later_record() {
        let dir = tempfile::tempdir().unwrap();
        let health = Arc::new(Health::default());
        let syncer = Syncer::start(0, health.clone());
        let mut synced = syncer.subscribe();
        let mut sync_through = |end: u64, file: File| {
            syncer.request(end, Some(Arc::new(file)), Vec::new());
            let synced = block_on(synced.wait_for(|s| s.through >= end));
            synced.unwrap().outcome(end - 1).is_ok()
        };
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        assert!(!sync_through(2, full));
        let regular = File::create(dir.path().join("log")).unwrap();
        assert!(!sync_through(3, regular));
        assert!(health.failure().unwrap().starts_with("fdatasync: "));
        syncer.stop();
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// With `--audit-fsync`, an acknowledgement is not ready until a sync covers
    /// its record (records before `end`).
    #[test]
    fn an_fsync_ack_completes_only_once_a_sync_covers_its_record() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let (report, synced) = watch::channel(Synced {
            through: 3,
            failed: Vec::new(),
        });
        let mut wait = std::pin::pin!(Ack(AckState::Syncing(5, synced)).wait());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        report.send_modify(|s| s.through = 4);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        report.send_modify(|s| s.through = 5);
        assert!(matches!(wait.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    }

    #[test]
    fn a_failed_sync_fails_exactly_the_records_it_covered() {
        let error = AuditError::io("fdatasync", io::Error::other("EIO"));
        let synced = Synced {
            through: 9,
            failed: vec![(3..6, error)],
        };
        let outcomes: Vec<bool> = (0..9).map(|seq| synced.outcome(seq).is_ok()).collect();
        assert_eq!(
            outcomes,
            [true, true, true, false, false, false, true, true, true]
        );
    }
}
