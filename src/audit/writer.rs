//! The group-commit writer: one thread owns the log file; request handlers hand it
//! entries and wait for its acknowledgement before they answer.
//!
//! The thread takes everything queued, chains the records in order, writes them
//! with one `write_all` (split only where a rotation falls), optionally
//! `fdatasync`s once, then acknowledges them all. No lock is held by handlers
//! during I/O: they only push to a channel and await a oneshot.
//!
//! On a write error every entry of the batch is acknowledged with the error (the
//! handler answers Deny; a part of the batch written before a failed rotation stays
//! in the log), the file is cut back to its last whole record, the chain resumes
//! from the last record written, and the log is marked unhealthy. The next batch reopens the file and tries again; the
//! log is healthy again after a successful write.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::record::{parse_line, Entry, GENESIS};
use super::rotate::{apply_retention, segments, Segment};
use super::{AuditConfig, AuditError};

/// Most entries written in one group commit.
const MAX_BATCH: usize = 4096;
/// How much of the newest file is read at startup to find the last record.
const TAIL_BYTES: u64 = 1 << 20;

type AckSender = oneshot::Sender<Result<(), AuditError>>;

enum Message {
    Append(Box<Entry>, AckSender),
    Close,
}

/// Whether the last write succeeded, and why not.
#[derive(Debug, Default)]
pub struct Health(Mutex<Option<String>>);

impl Health {
    /// The reason the log is unavailable, if it is.
    pub fn failure(&self) -> Option<String> {
        self.0.lock().expect("health lock").clone()
    }

    fn set(&self, failure: Option<String>) {
        *self.0.lock().expect("health lock") = failure;
    }
}

/// The handle request handlers share.
pub struct AuditLog {
    sender: mpsc::Sender<Message>,
    health: Arc<Health>,
    thread: Mutex<Option<JoinHandle<()>>>,
    context_fields: Vec<String>,
    dir: PathBuf,
}

/// An acknowledgement to wait for.
pub struct Ack(Result<oneshot::Receiver<Result<(), AuditError>>, AuditError>);

impl Ack {
    /// Completes once the record is in the file (or could not be written).
    pub async fn wait(self) -> Result<(), AuditError> {
        self.0?.await.map_err(|_| AuditError::Closed)?
    }
}

impl AuditLog {
    /// Opens (or continues) the log in `config.dir`, deletes expired files and
    /// starts the writer thread.
    pub fn start(config: AuditConfig) -> Result<Self, AuditError> {
        let health = Arc::new(Health::default());
        let context_fields = config.context_fields.clone();
        let dir = config.dir.clone();
        let writer = Writer::open(config, health.clone())?;
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|source| AuditError::io("audit-writer thread", source))?;
        Ok(Self {
            sender,
            health,
            thread: Mutex::new(Some(thread)),
            context_fields,
            dir,
        })
    }

    /// Queues one entry; await the returned [`Ack`] before answering.
    pub fn submit(&self, entry: Entry) -> Ack {
        let (ack, done) = oneshot::channel();
        let sent = self.sender.send(Message::Append(Box::new(entry), ack));
        Ack(sent.map(|()| done).map_err(|_| AuditError::Closed))
    }

    /// The reason the log cannot be written, if the last write failed.
    pub fn failure(&self) -> Option<String> {
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

    /// Writes what is queued, syncs the file and stops the writer. Later entries
    /// are refused with [`AuditError::Closed`].
    pub fn close(&self) {
        let thread = self.thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            let _ = self.sender.send(Message::Close);
            let _ = thread.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's state: the open file and the end of the chain.
struct Writer {
    config: AuditConfig,
    health: Arc<Health>,
    segment: Segment,
    file: Option<File>,
    /// Bytes of `segment` known to hold whole records.
    size: u64,
    seq: u64,
    last_hash: String,
    /// `seq` and `last_hash` as of the last record written to a file.
    written: (u64, String),
}

/// The end of the chain found in existing files.
struct Tail {
    seq: u64,
    last_hash: String,
    /// The newest file can be appended to (it ends with a whole line).
    clean: bool,
}

impl Writer {
    fn open(config: AuditConfig, health: Arc<Health>) -> Result<Self, AuditError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|source| AuditError::io(config.dir.clone(), source))?;
        let today = (config.clock)().date_naive();
        apply_retention(&config.dir, today, config.retention_days)?;
        let existing = segments(&config.dir)?;
        let tail = find_tail(&existing)?;
        let segment = match existing.last() {
            Some(newest) if tail.clean && newest.day == today => newest.clone(),
            Some(newest) => newest.next(&config.dir, today),
            None => Segment::new(&config.dir, today, 0),
        };
        let mut writer = Self {
            config,
            health,
            segment,
            file: None,
            size: 0,
            seq: tail.seq,
            last_hash: tail.last_hash.clone(),
            written: (tail.seq, tail.last_hash),
        };
        writer.reopen()?;
        Ok(writer)
    }

    fn run(mut self, receiver: mpsc::Receiver<Message>) {
        while let Ok(first) = receiver.recv() {
            let mut batch = Vec::new();
            let mut closing = false;
            let mut next = Some(first);
            while let Some(message) = next {
                match message {
                    Message::Append(entry, ack) => batch.push((*entry, ack)),
                    Message::Close => closing = true,
                }
                next = if batch.len() < MAX_BATCH {
                    receiver.try_recv().ok()
                } else {
                    None
                };
            }
            self.commit(batch);
            if closing {
                self.sync_on_close();
                return;
            }
        }
        self.sync_on_close();
    }

    /// Writes one batch and acknowledges every entry of it.
    fn commit(&mut self, batch: Vec<(Entry, AckSender)>) {
        if batch.is_empty() {
            return;
        }
        let (entries, acks): (Vec<Entry>, Vec<AckSender>) = batch.into_iter().unzip();
        let result = self.write(entries);
        if let Err(error) = &result {
            tracing::error!(%error, "audit log unavailable");
            self.health.set(Some(error.to_string()));
        } else {
            self.health.set(None);
        }
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }

    fn write(&mut self, entries: Vec<Entry>) -> Result<(), AuditError> {
        let result = self.write_chained(entries);
        if result.is_err() {
            (self.seq, self.last_hash) = self.written.clone();
            if let Some(file) = self.file.take() {
                let _ = file.set_len(self.size);
            }
        }
        result
    }

    fn write_chained(&mut self, entries: Vec<Entry>) -> Result<(), AuditError> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let mut buffer = String::new();
        for entry in entries {
            let record = entry.into_record(self.seq, self.last_hash.clone());
            let (line, hash) = record.to_line();
            if self.needs_rotation(buffer.len() as u64, line.len() as u64 + 1) {
                self.flush(&buffer)?;
                buffer.clear();
                self.rotate()?;
            }
            buffer.push_str(&line);
            buffer.push('\n');
            self.seq += 1;
            self.last_hash = hash;
        }
        self.flush(&buffer)
    }

    /// A new file is due on a new day, or when the line would take the file over
    /// its size limit (a file always takes at least one line).
    fn needs_rotation(&self, buffered: u64, line: u64) -> bool {
        let today = (self.config.clock)().date_naive();
        let used = self.size + buffered;
        today != self.segment.day || (used > 0 && used + line > self.config.max_file_bytes)
    }

    /// Writes whole lines and, with `--audit-fsync`, syncs them.
    fn flush(&mut self, buffer: &str) -> Result<(), AuditError> {
        if buffer.is_empty() {
            return Ok(());
        }
        let path = self.segment.path.clone();
        let io = |source| AuditError::io(path.clone(), source);
        let file = self.file.as_mut().ok_or(AuditError::Closed)?;
        file.write_all(buffer.as_bytes()).map_err(io)?;
        if self.config.fsync {
            file.sync_data().map_err(io)?;
        }
        self.size += buffer.len() as u64;
        self.written = (self.seq, self.last_hash.clone());
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let today = (self.config.clock)().date_naive();
        self.segment = self.segment.next(&self.config.dir, today);
        self.reopen()?;
        match apply_retention(&self.config.dir, today, self.config.retention_days) {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::info!(count = deleted.len(), "expired audit files deleted");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "audit retention failed"),
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<(), AuditError> {
        let path = &self.segment.path;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AuditError::io(path.clone(), source))?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = Some(file);
        Ok(())
    }

    fn sync_on_close(&mut self) {
        if let Some(file) = self.file.take() {
            if let Err(error) = file.sync_all() {
                tracing::warn!(%error, "cannot sync the audit log on close");
            }
        }
    }
}

/// The end of the chain: the last whole record of the newest non-empty file.
fn find_tail(existing: &[Segment]) -> Result<Tail, AuditError> {
    let mut clean = true;
    for (n, segment) in existing.iter().enumerate().rev() {
        let (text, length) = read_end(&segment.path)?;
        if n + 1 == existing.len() {
            clean = text.is_empty() || text.ends_with('\n');
        }
        if length == 0 {
            continue;
        }
        let parsed = text
            .lines()
            .rev()
            .find_map(|line| parse_line(line).ok())
            .ok_or_else(|| AuditError::NoTail(segment.path.clone()))?;
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

/// The last [`TAIL_BYTES`] of a file, and its length.
fn read_end(path: &Path) -> Result<(String, u64), AuditError> {
    let io = |source| AuditError::io(path.to_owned(), source);
    let mut file = File::open(path).map_err(io)?;
    let length = file.metadata().map_err(io)?.len();
    let start = length.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(length - start)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), length))
}
