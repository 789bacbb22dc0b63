//! Hot reload: watch the model's files, rebuild a complete snapshot off the request
//! path, and swap it in only when it is entirely valid (last-known-good).
//!
//! The watcher watches the policy directory (recursively) and *every directory
//! above* each source file and the policy directory (each alone), then filters
//! events by path. That sees editors' rename-into-place, deletes and re-creates,
//! Kubernetes ConfigMap `..data` symlink swaps, and a directory on a source's path
//! being replaced or a release symlink flipped (`mv model.new model`, `ln -sfn v2
//! current`): the event then names that directory, an ancestor of a source. Before
//! every reload the watches are added again, then the files are read: a swapped-in
//! directory is watched before it is read, so a change made to it during the load
//! is seen. Bursts are debounced.
//! A file being written in place is not read until its writer closes it (on Linux,
//! where inotify says so): an empty or cut policy file is valid Cedar, and loading
//! one mid-write would drop its forbids.
//! A refused reload keeps the current snapshot, logs the rendered error (file, line,
//! column), and shows it in `/v1/policy-set` and `/metrics`. SIGHUP forces a reload.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::http::AppState;
use crate::load::{self, is_policy_file, LoadError, Sources};
use crate::snapshot::Snapshot;
use crate::store::ReloadFailure;

/// Quiet time after the last file event before reloading.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// A burst never delays a reload by more than this.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// A writer still writing after this long, or files still changing while they are
/// read, are reported (and still waited for).
const REPORT_AFTER: Duration = Duration::from_secs(10);
/// A refused reload is retried this many times, after 250 ms, 500 ms and 1 s, even
/// with no new event: files caught mid-swap (a ConfigMap's old directory being
/// deleted while it is read) then load on a retry.
const RETRIES: u32 = 3;
const RETRY_DELAY: Duration = Duration::from_millis(250);
/// How long an old snapshot may stay in use by in-flight requests before the
/// reload thread stops waiting to drop it itself.
const DRAIN_OLD_SNAPSHOT: Duration = Duration::from_secs(5);

/// A wait that is reported once it has lasted [`REPORT_AFTER`].
struct Overdue {
    since: Instant,
    reported: bool,
}

impl Overdue {
    fn since(since: Instant) -> Self {
        Self {
            since,
            reported: false,
        }
    }

    /// Whether the wait has just passed [`REPORT_AFTER`]: true once.
    fn just_overdue(&mut self) -> bool {
        let now = !self.reported && self.since.elapsed() >= REPORT_AFTER;
        self.reported |= now;
        now
    }
}

/// Most policy ids a swap's log line lists as added, and as removed.
const LISTED_POLICIES: usize = 20;

/// The ids of the policies `new` has and `old` has not, and the reverse, at most
/// [`LISTED_POLICIES`] each: a file half-copied, or one renamed away, shows as
/// policies removed.
fn policies_added_and_removed(old: &Snapshot, new: &Snapshot) -> (Vec<String>, Vec<String>) {
    let ids = |snapshot: &Snapshot| -> HashSet<String> {
        snapshot.policy_info.iter().map(|p| p.id.clone()).collect()
    };
    let (old_ids, new_ids) = (ids(old), ids(new));
    let listed = |from: &HashSet<String>, without: &HashSet<String>| {
        let mut only: Vec<String> = from.difference(without).cloned().collect();
        only.sort();
        only.truncate(LISTED_POLICIES);
        only
    };
    (listed(&new_ids, &old_ids), listed(&old_ids, &new_ids))
}

/// What `stat` says, through symlinks, of each file a load reads (device, inode,
/// length and modification time; for what is not a regular file, a FIFO say, whose
/// times a read or write moves, device and inode), or that it is missing. Two
/// equal fingerprints taken around a load mean the load read one version of the
/// files; a change of mode or owner (`chmod`), which the content does not follow,
/// is left out.
#[derive(Debug, PartialEq)]
struct Fingerprint(Vec<(PathBuf, Option<[i64; 5]>)>);

impl Fingerprint {
    fn of(sources: &Sources) -> Self {
        use std::os::unix::fs::MetadataExt;
        let mut paths = load::policy_files(&sources.policies).unwrap_or_default();
        paths.extend(sources.files().cloned());
        let stamp = |path: &Path| {
            let meta = std::fs::metadata(path).ok()?;
            // Device and inode numbers and lengths fit an i64 on Linux.
            let whole = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            let (dev, ino) = (whole(meta.dev()), whole(meta.ino()));
            Some(match meta.is_file() {
                true => [dev, ino, whole(meta.len()), meta.mtime(), meta.mtime_nsec()],
                false => [dev, ino, 0, 0, 0],
            })
        };
        Self(
            paths
                .into_iter()
                .map(|path| {
                    let stamped = stamp(&path);
                    (path, stamped)
                })
                .collect(),
        )
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum Reloaded {
    /// A new version is serving.
    Swapped { version: String, took: Duration },
    /// The files changed nothing: the same version keeps serving.
    Unchanged,
}

/// Loads snapshots from one set of sources into one [`AppState`].
pub struct Reloader {
    sources: Sources,
    time_attribute: String,
    state: Arc<AppState>,
    /// Where the sources lead through symlinks, as of the last [`rewatch`]: a
    /// symlinked file's target is edited there.
    targets: Mutex<Targets>,
}

/// Where sources lead through symlinks, for those that lead elsewhere.
#[derive(Default)]
struct Targets {
    policies: Option<PathBuf>,
    files: Vec<PathBuf>,
}

impl Targets {
    /// The policy directory's target, then the files'.
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.policies.iter().chain(&self.files)
    }
}

impl Reloader {
    pub fn new(sources: Sources, time_attribute: &str, state: Arc<AppState>) -> Self {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        let sources = Sources {
            policies: absolute(&sources.policies),
            schema: absolute(&sources.schema),
            entities: sources.entities.as_deref().map(absolute),
            derived: sources.derived.as_deref().map(absolute),
        };
        Self {
            sources,
            time_attribute: time_attribute.to_owned(),
            state,
            targets: Mutex::default(),
        }
    }

    /// Builds a complete snapshot and swaps it in; on any error the current one
    /// keeps serving and the error is recorded. Files that change while they are
    /// read are read again (a pod started during a ConfigMap update), every
    /// [`DEFAULT_DEBOUNCE`], until one load reads a single version of them.
    pub fn reload(&self) -> Result<Reloaded, LoadError> {
        let started = Instant::now();
        let mut changing = Overdue::since(started);
        loop {
            if let Some(loaded) = self.load_unless_changed() {
                return loaded
                    .inspect_err(|error| self.record_failure(error))
                    .map(|snapshot| self.install(snapshot, started));
            }
            if changing.just_overdue() {
                self.report_changing_files(started);
            }
            std::thread::sleep(DEFAULT_DEBOUNCE);
        }
    }

    /// [`Self::load`], or `None` when the files it read changed while it read them
    /// (by their [`Fingerprint`]s before and after): a ConfigMap's `..data` swapped,
    /// a release symlink flipped, a branch checked out mid-load. Such a snapshot may
    /// hold one version's policies with another's (a permit of the new set without
    /// the forbid beside it that the new set also has), allowing what neither
    /// version allows; it is not installed, and the files are read again. Nor is
    /// its error reported: a new policy read against the old schema is no refusal.
    fn load_unless_changed(&self) -> Option<Result<Snapshot, LoadError>> {
        let before = Fingerprint::of(&self.sources);
        let loaded = self.load();
        (Fingerprint::of(&self.sources) == before).then_some(loaded)
    }

    /// Builds a complete snapshot, with the serving snapshot's stored entities when
    /// their files are unchanged.
    fn load(&self) -> Result<Snapshot, LoadError> {
        let serving = self.state.store.current();
        Snapshot::reload(&self.sources, &self.time_attribute, serving.as_deref())
    }

    /// Records a refused load: logged, counted, and shown as `last_reload_error`
    /// (the current snapshot keeps serving).
    fn record_failure(&self, error: &LoadError) {
        if self.state.store.current().is_some() {
            tracing::error!(error = %error, "reload refused: the last good snapshot keeps serving");
        } else {
            // Only the first load has no snapshot to keep, and `serve` prints its
            // problems as it exits 3: not twice.
            tracing::error!("load refused: no snapshot to serve");
        }
        self.state.metrics.record_reload("failure");
        self.set_last_error(error.to_string());
    }

    /// What `/v1/policy-set` shows as `last_reload_error` until a load succeeds.
    fn set_last_error(&self, message: String) {
        self.state.store.set_last_error(Some(ReloadFailure {
            at: Utc::now(),
            message,
        }));
    }

    /// Swaps `snapshot` in, unless it is the version serving.
    fn install(&self, snapshot: Snapshot, started: Instant) -> Reloaded {
        self.state.store.set_last_error(None);
        let unchanged = self
            .state
            .store
            .current()
            .is_some_and(|current| current.version == snapshot.version);
        if unchanged {
            self.state.metrics.record_reload("unchanged");
            tracing::info!(policy_version = %snapshot.version, "reloaded: nothing changed");
            return Reloaded::Unchanged;
        }
        let version = snapshot.version.clone();
        let snapshot = Arc::new(snapshot);
        let old = self.state.install(Arc::clone(&snapshot));
        let took = started.elapsed();
        self.state.metrics.record_reload("success");
        let (added, removed) = old
            .as_deref()
            .map(|old| policies_added_and_removed(old, &snapshot))
            .unwrap_or_default();
        tracing::info!(policy_version = %version, took_ms = took.as_secs_f64() * 1e3, ?added, ?removed, "snapshot swapped in");
        if let Some(old) = old {
            drop_when_unused(old);
        }
        Reloaded::Swapped { version, took }
    }

    /// Reports loads given up since `since` because the files kept changing while
    /// they were read: the current snapshot keeps serving until they stop.
    fn report_changing_files(&self, since: Instant) {
        let message = format!(
            "the model's files kept changing while they were read, for {} s: the last good \
             snapshot serves on until they stop",
            since.elapsed().as_secs()
        );
        tracing::warn!("{message}");
        self.set_last_error(message);
    }

    /// Reports files whose writer has not closed them for a while: the current
    /// snapshot keeps serving until it does (or SIGHUP).
    fn report_writers(&self, writing: &HashSet<PathBuf>) {
        let files: Vec<String> = writing.iter().map(|f| f.display().to_string()).collect();
        let message = format!(
            "waiting for the writer of {} to close it (kill -HUP reads it as it is)",
            files.join(", ")
        );
        tracing::warn!("{message}");
        self.set_last_error(message);
    }

    /// The sources: the policy directory, then the files.
    fn sources(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.sources.policies).chain(self.sources.files())
    }

    /// Directories to watch, and how: the policy directory and its tree, and each
    /// directory above a source, up to the root (a few watches, seldom an event);
    /// the same where a source leads through symlinks, read anew here.
    fn watch_targets(&self) -> BTreeMap<PathBuf, RecursiveMode> {
        let resolved = self.resolve();
        let mut targets = BTreeMap::new();
        for policies in std::iter::once(&self.sources.policies).chain(&resolved.policies) {
            targets.insert(policies.clone(), RecursiveMode::Recursive);
        }
        for source in self.sources().chain(resolved.paths()) {
            for ancestor in source.ancestors().skip(1) {
                targets
                    .entry(ancestor.to_owned())
                    .or_insert(RecursiveMode::NonRecursive);
            }
        }
        *self.targets.lock().unwrap_or_else(PoisonError::into_inner) = resolved;
        targets
    }

    /// Where the sources lead through symlinks, for those that lead elsewhere (a
    /// source that does not exist leads nowhere); and the policy files that are
    /// symlinks to files outside the policy directory, which its watch does not see.
    /// A file's targets are where it finally leads and each link on the way: a link
    /// in the middle of a chain retargeted is a change too.
    fn resolve(&self) -> Targets {
        let elsewhere = |source: &Path| {
            std::fs::canonicalize(source)
                .ok()
                .filter(|target| target != source)
        };
        let targets = |file: &Path| {
            let mut targets = symlink_hops(file);
            targets.extend(elsewhere(file));
            targets
        };
        let policies = elsewhere(&self.sources.policies);
        let inside = policies.as_ref().unwrap_or(&self.sources.policies);
        let linked_policy_files = load::policy_files(&self.sources.policies)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|file| targets(&file))
            .filter(|target| !target.starts_with(inside));
        Targets {
            files: self
                .sources()
                .skip(1)
                .flat_map(|source| targets(source))
                .chain(linked_policy_files)
                .collect(),
            policies,
        }
    }

    /// Whether a changed path can affect the model: a source file, anything in
    /// the policy directory, a directory on a source's path (replaced, renamed or a
    /// symlink flipped), or a ConfigMap's `..` entry; or the same where a source
    /// leads through symlinks.
    fn is_relevant(&self, path: &Path) -> bool {
        let config_map_swap = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(".."));
        let targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        config_map_swap
            || path.starts_with(&self.sources.policies)
            || targets
                .policies
                .as_ref()
                .is_some_and(|p| path.starts_with(p))
            || self
                .sources()
                .chain(targets.files.iter())
                .any(|source| source.starts_with(path))
    }

    /// Whether a load reads the file at `path`: a source file, or a `.cedar` file
    /// in the policy directory outside hidden entries ([`crate::load::policy_files`]).
    fn is_read(&self, path: &Path) -> bool {
        let targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        std::iter::once(&self.sources.policies)
            .chain(&targets.policies)
            .any(|dir| path.strip_prefix(dir).is_ok_and(is_policy_file))
            || self
                .sources()
                .skip(1)
                .chain(targets.files.iter())
                .any(|source| source == path)
    }
}

/// Waits (on the reload thread) until in-flight requests release the old snapshot,
/// so its memory is freed here and not on a request thread.
fn drop_when_unused(old: Arc<Snapshot>) {
    let deadline = Instant::now() + DRAIN_OLD_SNAPSHOT;
    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(old);
}

enum Trigger {
    Changed(Change),
    Force,
    Stop,
}

impl Trigger {
    /// What a watcher event calls for. Events lost (inotify's queue overflowed)
    /// call for a reload, and nothing known of writers still holds.
    fn of(event: notify::Event) -> Option<Self> {
        if event.need_rescan() {
            return Some(Trigger::Force);
        }
        Change::of(event).map(Trigger::Changed)
    }

    /// Applies the trigger to the files open for writing; whether it calls for a
    /// reload, or `None` to stop. A forced reload waits for no writer.
    fn take(self, reloader: &Reloader, writing: &mut HashSet<PathBuf>) -> Option<bool> {
        match self {
            Trigger::Stop => None,
            Trigger::Force => {
                writing.clear();
                Some(true)
            }
            Trigger::Changed(change) => Some(change.apply(reloader, writing)),
        }
    }
}

/// A file event, by what it says of a writer.
struct Change {
    paths: Vec<PathBuf>,
    writes: Writes,
}

#[derive(Clone, Copy, PartialEq)]
enum Writes {
    /// Data was written to the files (or they were truncated): their writer may
    /// still be writing.
    Started,
    /// Their writer closed them.
    Finished,
    /// They were renamed, replaced by a rename or deleted (a file or a
    /// directory): a writer there, if any, is writing elsewhere now, and its close
    /// would not be reported here.
    Gone,
    /// Anything else (a create, a change of mode): says nothing of a writer.
    Neither,
}

impl Change {
    /// What a watcher event says; `None` for one that changes nothing (a read).
    fn of(event: notify::Event) -> Option<Self> {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        let writes = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Writes::Finished,
            // Reading a file (as every reload does) is not a change: without this,
            // each reload's own reads would schedule the next one.
            EventKind::Access(_) => return None,
            // A create alone is no write: `ln`, `ln -s` (a ConfigMap's per-key
            // links) create without opening.
            EventKind::Modify(ModifyKind::Data(_)) if TRACKS_WRITERS => Writes::Started,
            EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => Writes::Gone,
            _ => Writes::Neither,
        };
        Some(Self {
            paths: event.paths,
            writes,
        })
    }

    /// Records which relevant files are open for writing; whether the change is
    /// relevant at all.
    fn apply(self, reloader: &Reloader, writing: &mut HashSet<PathBuf>) -> bool {
        let relevant: Vec<PathBuf> = self
            .paths
            .into_iter()
            .filter(|p| reloader.is_relevant(p))
            .collect();
        for path in &relevant {
            match self.writes {
                // Only files a load reads: an editor keeps its swap file open.
                Writes::Started if reloader.is_read(path) => {
                    writing.insert(path.clone());
                }
                Writes::Started => {}
                Writes::Finished => {
                    writing.remove(path);
                }
                Writes::Gone => writing.retain(|file| !file.starts_with(path)),
                Writes::Neither => {}
            }
        }
        !relevant.is_empty()
    }
}

/// Whether the platform's watcher reports a writer closing a file (inotify's
/// `IN_CLOSE_WRITE`); elsewhere a write is taken as complete, as before.
const TRACKS_WRITERS: bool = cfg!(target_os = "linux");

/// A running watcher; dropping it stops the watch thread.
pub struct WatchHandle {
    triggers: Sender<Trigger>,
    thread: Option<JoinHandle<()>>,
}

impl WatchHandle {
    /// Forces a reload (what SIGHUP does).
    pub fn force_reload(&self) {
        let _ = self.triggers.send(Trigger::Force);
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let _ = self.triggers.send(Trigger::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts watching the reloader's sources on a thread of its own.
pub fn watch(reloader: Arc<Reloader>, debounce: Duration) -> notify::Result<WatchHandle> {
    let (triggers, received) = mpsc::channel();
    let events = triggers.clone();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                if let Some(trigger) = Trigger::of(event) {
                    let _ = events.send(trigger);
                }
            }
            Err(error) => tracing::warn!(%error, "file watch error"),
        })?;
    // Watches are in place before this returns: an edit made right after start is seen.
    rewatch(&reloader, &mut watcher);
    let thread = std::thread::Builder::new()
        .name("cdap-authz-reload".into())
        .spawn(move || run_watch_loop(reloader, watcher, received, debounce))
        .map_err(notify::Error::io)?;
    Ok(WatchHandle {
        triggers,
        thread: Some(thread),
    })
}

fn run_watch_loop(
    reloader: Arc<Reloader>,
    mut watcher: RecommendedWatcher,
    triggers: Receiver<Trigger>,
    debounce: Duration,
) {
    let mut writing = HashSet::new();
    let mut retries_left = 0;
    // When a refused reload is tried again; events in between do not postpone it.
    let mut retry_at: Option<Instant> = None;
    // A change arrived during the last load: read the files again, without
    // waiting for another event.
    let mut changed_during_load = false;
    // Since when loads have been given up because the files changed while read.
    let mut changing: Option<Overdue> = None;
    loop {
        if !changed_during_load {
            let trigger = match retry_at {
                Some(at) => {
                    match triggers.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Err(RecvTimeoutError::Timeout) => Trigger::Force,
                        Err(RecvTimeoutError::Disconnected) => return,
                        Ok(trigger) => trigger,
                    }
                }
                None => match triggers.recv() {
                    Ok(trigger) => trigger,
                    Err(_) => return,
                },
            };
            match trigger.take(&reloader, &mut writing) {
                None => return,
                Some(false) => continue,
                Some(true) => {}
            }
        }
        if !settle(&reloader, &triggers, debounce, &mut writing) {
            return;
        }
        // Watch first, then read: a directory swapped in since is watched before
        // its files are read, so a write into it during the load is an event (and
        // notify itself drops the watches of a directory moved or deleted).
        rewatch(&reloader, &mut watcher);
        let started = Instant::now();
        let loaded = reloader.load_unless_changed();
        // Events that came during the load: any relevant one calls for another
        // reload after this one; a writer that started on a file the load reads
        // means what was read may be cut, so the snapshot is dropped.
        changed_during_load = match changes_since(&reloader, &triggers, &mut writing) {
            None => return,
            Some(changed) => changed,
        };
        if !writing.is_empty() {
            tracing::info!(files = ?writing, "a file was being written while it was read: reading it again once closed");
            changed_during_load = true;
            continue;
        }
        let Some(loaded) = loaded else {
            tracing::info!("the model's files changed while they were read: reading them again");
            let wait = changing.get_or_insert_with(|| Overdue::since(started));
            if wait.just_overdue() {
                reloader.report_changing_files(wait.since);
            }
            changed_during_load = true;
            continue;
        };
        changing = None;
        if let Err(error) = &loaded {
            reloader.record_failure(error);
        }
        retries_left = match loaded {
            Ok(snapshot) => {
                reloader.install(snapshot, started);
                0
            }
            Err(_) if retries_left == 0 => RETRIES,
            Err(_) => retries_left - 1,
        };
        retry_at = (retries_left > 0)
            .then(|| Instant::now() + RETRY_DELAY * 2u32.pow(RETRIES - retries_left));
    }
}

/// Takes the events queued since the last look; whether any is a relevant change
/// (`None` when asked to stop).
fn changes_since(
    reloader: &Reloader,
    triggers: &Receiver<Trigger>,
    writing: &mut HashSet<PathBuf>,
) -> Option<bool> {
    let mut changed = false;
    loop {
        match triggers.try_recv() {
            Ok(trigger) => changed |= trigger.take(reloader, writing)?,
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => return Some(changed),
        }
    }
}

/// Waits for a quiet period with no relevant file open for writing; false when
/// asked to stop. A forced reload (SIGHUP, lost events) waits for no writer. A
/// writer still writing after [`REPORT_AFTER`] is reported (`last_reload_error`,
/// a warning) and still waited for: the current snapshot keeps serving, and SIGHUP
/// reads the files as they are (a file truncated by path, `truncate(2)`, has no
/// close to wait for).
fn settle(
    reloader: &Reloader,
    triggers: &Receiver<Trigger>,
    debounce: Duration,
    writing: &mut HashSet<PathBuf>,
) -> bool {
    let deadline = Instant::now() + MAX_DEBOUNCE.max(debounce);
    let mut writer_wait: Option<Instant> = None;
    let mut reported = false;
    loop {
        if writing.is_empty() {
            writer_wait = None;
        } else {
            let since = *writer_wait.get_or_insert_with(|| {
                tracing::info!(files = ?writing, "reload waits for the files' writer to close them");
                Instant::now()
            });
            if since.elapsed() >= REPORT_AFTER && !reported {
                reported = true;
                reloader.report_writers(writing);
            }
        }
        let wait = if writing.is_empty() {
            debounce.min(deadline.saturating_duration_since(Instant::now()))
        } else {
            debounce
        };
        match triggers.recv_timeout(wait) {
            Ok(trigger) => match trigger.take(reloader, writing) {
                None => return false,
                Some(false) => continue,
                Some(true) => {}
            },
            Err(RecvTimeoutError::Disconnected) => return false,
            Err(RecvTimeoutError::Timeout) if writing.is_empty() => return true,
            Err(RecvTimeoutError::Timeout) => continue,
        }
        if writing.is_empty() && Instant::now() >= deadline {
            return true;
        }
    }
}

/// The most links followed in a chain (Linux's own limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// The paths a chain of symlinks from `path` passes through, after `path` itself,
/// each in its directory's canonical form, up to the file it ends at: empty when
/// `path` is not a symlink.
fn symlink_hops(path: &Path) -> Vec<PathBuf> {
    let mut hops = Vec::new();
    let mut current = path.to_owned();
    while hops.len() < MAX_SYMLINK_HOPS {
        let Ok(target) = std::fs::read_link(&current) else {
            break;
        };
        let joined = match current.parent() {
            Some(dir) => dir.join(target),
            None => target,
        };
        let (Some(dir), Some(name)) = (joined.parent(), joined.file_name()) else {
            break;
        };
        let Ok(dir) = std::fs::canonicalize(dir) else {
            break;
        };
        current = dir.join(name);
        hops.push(current.clone());
    }
    hops
}

/// Watches the targets again, each where its path now leads (following a directory
/// swapped in since, or a policy symlink retargeted). No watch is dropped here: a
/// directory a symlink no longer leads to stays watched (a few watches, whose
/// events then concern nothing); notify drops those of a directory moved or
/// deleted, and this adds them back.
fn rewatch(reloader: &Reloader, watcher: &mut RecommendedWatcher) {
    for (path, mode) in reloader.watch_targets() {
        if let Err(error) = watcher.watch(&path, mode) {
            tracing::warn!(path = %path.display(), %error, "cannot watch");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, DataChange, EventKind, Flag, ModifyKind};

    fn event(kind: EventKind) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from("/model/policies/a.cedar"))
    }

    /// A copy of the bundled model in a temp dir.
    fn model_copy(dir: &Path) -> Sources {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let bundled = Sources::bundled(root);
        let policies = dir.join("policies");
        std::fs::create_dir(&policies).unwrap();
        for file in load::policy_files(&bundled.policies).unwrap() {
            std::fs::copy(&file, policies.join(file.file_name().unwrap())).unwrap();
        }
        let copy = |from: &Path, name: &str| {
            std::fs::copy(from, dir.join(name)).unwrap();
            dir.join(name)
        };
        Sources {
            policies,
            schema: copy(&bundled.schema, "cdap.cedarschema"),
            entities: bundled
                .entities
                .as_deref()
                .map(|e| copy(e, "entities.json")),
            derived: bundled.derived.as_deref().map(|d| copy(d, "derived.json")),
        }
    }

    fn reloader(sources: Sources) -> Reloader {
        let state = Arc::new(AppState::new(crate::http::Limits::default()));
        Reloader::new(sources, "now", state)
    }

    /// Replaces `path` by a new file of the same bytes, as an editor's rename or a
    /// ConfigMap's swap does.
    fn replace_by_rename(path: &Path) {
        let fresh = path.with_extension("new");
        std::fs::copy(path, &fresh).unwrap();
        std::fs::rename(&fresh, path).unwrap();
    }

    #[test]
    fn a_fingerprint_changes_when_a_file_is_replaced_not_when_it_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let sources = model_copy(dir.path());
        let first = Fingerprint::of(&sources);
        assert_eq!(Fingerprint::of(&sources), first);
        let profiles = sources.policies.join("profiles.cedar");
        let readable = std::os::unix::fs::PermissionsExt::from_mode(0o444);
        std::fs::set_permissions(&profiles, readable).unwrap();
        assert_eq!(Fingerprint::of(&sources), first, "a change of mode");
        replace_by_rename(&profiles);
        assert_ne!(Fingerprint::of(&sources), first);
    }

    /// The entities file is a FIFO: the load waits on it, and its writer replaces a
    /// policy file meanwhile, then lets the load read on. The load read the model
    /// while it changed, so its snapshot is not given, nor its error reported (the
    /// entities written are cut: a load mid-swap often fails).
    #[test]
    fn a_load_during_which_a_file_changed_gives_no_snapshot_and_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let sources = model_copy(dir.path());
        let fifo = sources.entities.clone().unwrap();
        let whole = std::fs::read(&fifo).unwrap();
        let entities = whole[..whole.len() / 2].to_vec();
        std::fs::remove_file(&fifo).unwrap();
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let profiles = sources.policies.join("profiles.cedar");
        let writer = std::thread::spawn(move || {
            // Opening a FIFO for writing waits for its reader: the load.
            let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            replace_by_rename(&profiles);
            std::io::Write::write_all(&mut pipe, &entities).unwrap();
        });
        let reloader = reloader(sources);
        let loaded = reloader.load_unless_changed();
        writer.join().unwrap();
        assert!(loaded.is_none(), "a load was given");
        assert!(reloader.state.store.last_error().is_none());
    }

    #[test]
    fn a_load_of_files_left_alone_gives_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let sources = model_copy(dir.path());
        assert!(matches!(
            reloader(sources).load_unless_changed(),
            Some(Ok(_))
        ));
    }

    /// A reload shares the serving snapshot's stored entities (the same
    /// allocations) while the schema, the derivation rules and the entities file
    /// are unchanged, and reads them again once any of the three changes.
    #[test]
    fn a_reload_takes_the_serving_entities_while_their_files_are_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let sources = model_copy(dir.path());
        let reloader = reloader(sources.clone());
        let user: cedar_policy::EntityUid = r#"User::"mau-admin""#.parse().unwrap();
        let shared = |a: &Snapshot, b: &Snapshot| {
            std::ptr::eq(
                a.entities.get(&user).unwrap(),
                b.entities.get(&user).unwrap(),
            )
        };
        let serving = || reloader.state.store.current().unwrap();
        reloader.reload().unwrap();
        let first = serving();
        std::fs::remove_file(sources.policies.join("suspension.cedar")).unwrap();
        reloader.reload().unwrap();
        let edited = serving();
        assert!(shared(&first, &edited), "a policy file removed");
        assert_ne!(edited.version, first.version);
        assert!(edited
            .policy_info
            .iter()
            .all(|policy| policy.id != "S6-convention-terminated"));
        assert!(edited.stored.get(user.as_ref()).is_some());
        let mut before = edited;
        let texts = [
            sources.entities.clone().unwrap(),
            sources.derived.clone().unwrap(),
            sources.schema.clone(),
        ];
        for path in texts {
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push('\n');
            std::fs::write(&path, text).unwrap();
            reloader.reload().unwrap();
            let after = serving();
            assert!(!shared(&before, &after), "{} changed", path.display());
            before = after;
        }
        let loaded = || Snapshot::load(&sources, "now").unwrap();
        let (a, b) = (loaded(), loaded());
        assert!(!shared(&a, &b), "loads without a snapshot serving");
        assert!(!shared(
            &Snapshot::reload(&sources, "now", Some(&a)).unwrap(),
            &a
        ));
    }

    #[test]
    fn a_swap_names_the_policies_it_adds_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let sources = model_copy(dir.path());
        let whole = Snapshot::load(&sources, "now").unwrap();
        std::fs::remove_file(sources.policies.join("suspension.cedar")).unwrap();
        let cut = Snapshot::load(&sources, "now").unwrap();
        let (added, removed) = policies_added_and_removed(&whole, &cut);
        assert!(added.is_empty(), "{added:?}");
        assert!(
            removed.contains(&"S6-convention-terminated".to_owned()),
            "{removed:?}"
        );
        assert!(removed.iter().all(|id| id.starts_with('S')), "{removed:?}");
        assert_eq!(policies_added_and_removed(&cut, &whole), (removed, added));
    }

    #[test]
    fn events_are_read_as_writes_started_finished_reads_or_lost_events() {
        let writes = |kind| match Trigger::of(event(kind)) {
            Some(Trigger::Changed(change)) => Some(change.writes),
            _ => None,
        };
        let started = if TRACKS_WRITERS {
            Writes::Started
        } else {
            Writes::Neither
        };
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(writes(data) == Some(started));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(writes(closed) == Some(Writes::Finished));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(Trigger::of(event(read)).is_none());
        let lost = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(matches!(Trigger::of(lost), Some(Trigger::Force)));
    }
}
