//! The threads that serve connections: one single-threaded tokio runtime per
//! worker (by default, one per core), each running the connections handed to it
//! from start to end.
//!
//! A multi-threaded runtime lets any idle worker steal any task, and a worker that
//! finds work wakes another to share it. Here a connection lives on one thread: its
//! socket is registered with that thread's reactor, its requests are read, decided,
//! logged and answered there (an `--audit-fsync` sync runs on the log's syncer
//! thread; a trace query, and the decision of a request body over 64 KiB with its
//! record, on a blocking thread). The acceptor gives each new
//! connection to the worker serving the fewest, so that connections are spread
//! evenly over the workers. On the 2-core dev VM this served 5% more requests a
//! second or better, in every alternated round, than tokio's work-stealing pool
//! (BENCHMARKS.md). The price: a worker whose connections are busy gets no help
//! from an idle one (the p99 at full speed is higher).
//!
//! Pinned ([`Plan::pinned`], `serve --pin-workers`), each worker runs on one CPU of
//! those the process may use, so that two workers never wait for the same core
//! while another is free of them. Not the default: under a CPU quota without a
//! cpuset the CPUs the process may use are the whole host's, and a pinned worker
//! cannot move away from a core that other work keeps busy.

use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Threads each worker may start for work that would hold it up: a trace query
/// reading the log (`--max-trace-queries` at once), a large request body (two at
/// once, `http`). A ceiling, not a reservation (threads start on demand and end
/// when idle); work past it waits for one of them.
const BLOCKING_THREADS: usize = 16;

/// The number of workers when none is given: one per core available to the process.
pub fn default_count() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// How many workers to start, and where they run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub count: NonZeroUsize,
    /// Each worker on one CPU: the i-th worker on the i-th CPU the process may use,
    /// going round them again when there are more workers than CPUs.
    pub pinned: bool,
}

impl Default for Plan {
    /// One worker per core available, each free to run on any of them.
    fn default() -> Self {
        Self {
            count: default_count(),
            pinned: false,
        }
    }
}

/// The running workers; dropping this stops them (their remaining connections are
/// dropped) and waits for their threads to end.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Connections the worker serves now.
    connections: Arc<AtomicUsize>,
    /// Dropped to stop the worker's thread.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts the plan's worker threads, each with its own runtime (I/O and timers).
    pub fn start(plan: Plan) -> io::Result<Self> {
        let cpus = if plan.pinned {
            Some(cpus_allowed()?)
        } else {
            None
        };
        let workers = (0..plan.count.get())
            .map(|index| {
                let cpu = cpus.as_ref().map(|cpus| cpus[index % cpus.len()]);
                Worker::start(index, cpu)
            })
            .collect::<io::Result<_>>()?;
        Ok(Self { workers })
    }

    /// Runs `connection` to its end on the worker that serves the fewest
    /// connections. The future is first polled on that worker's thread: a socket it
    /// registers there (`TcpStream::from_std`) is served by that worker's reactor.
    pub fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.connections.load(Ordering::Relaxed))
            .expect("at least one worker");
        let served = Served::count(&worker.connections);
        worker.handle.spawn(async move {
            let _served = served;
            connection.await;
        });
    }
}

impl Worker {
    /// Starts the worker's thread, on `cpu` if given, which builds its runtime: a
    /// runtime is never dropped here, inside the caller's (which tokio refuses) if
    /// the thread cannot start.
    fn start(index: usize, cpu: Option<usize>) -> io::Result<Self> {
        let (started, handle) = mpsc::sync_channel::<io::Result<Handle>>(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("http-worker-{index}"))
            .spawn(move || {
                let built = cpu.map_or(Ok(()), pin_this_thread).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .max_blocking_threads(BLOCKING_THREADS)
                        .enable_all()
                        .build()
                });
                match built {
                    Ok(runtime) => {
                        let _ = started.send(Ok(runtime.handle().clone()));
                        // Runs the worker's tasks until the `Workers` are dropped.
                        let _ = runtime.block_on(stopped);
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                    }
                }
            })?;
        let handle = handle
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("a worker thread ended at its start")))?;
        Ok(Self {
            handle,
            connections: Arc::default(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            worker.stop.take();
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// The CPUs the calling thread may run on (at the start, the process's), in order.
fn cpus_allowed() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is an empty set; the kernel writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if read != 0 {
        return Err(io::Error::last_os_error());
    }
    let size = usize::try_from(libc::CPU_SETSIZE).expect("a positive set size");
    // SAFETY: every index is below the set's size.
    let cpus: Vec<usize> = (0..size)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(io::Error::other("the process may run on no CPU"));
    }
    Ok(cpus)
}

/// Keeps the calling thread on `cpu` from now on.
fn pin_this_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; `cpu` comes from a set read from
    // the kernel, so it is below the set's size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let pinned = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if pinned == 0 {
        Ok(())
    } else {
        let error = io::Error::last_os_error();
        Err(io::Error::new(
            error.kind(),
            format!("cannot pin a worker to CPU {cpu}: {error}"),
        ))
    }
}

/// One connection counted on its worker while it lives.
struct Served(Arc<AtomicUsize>);

impl Served {
    fn count(connections: &Arc<AtomicUsize>) -> Self {
        connections.fetch_add(1, Ordering::Relaxed);
        Self(connections.clone())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    /// Spawns a connection that reports the thread it runs on, then lives until
    /// its `end` is sent or dropped; reports again when it is dropped.
    fn spawn_reporting(
        workers: &Workers,
        ran_on: &mpsc::Sender<String>,
        dropped: &mpsc::Sender<()>,
    ) -> oneshot::Sender<()> {
        struct OnDrop(mpsc::Sender<()>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (end, ended) = oneshot::channel::<()>();
        let ran_on = ran_on.clone();
        let on_drop = OnDrop(dropped.clone());
        workers.spawn(async move {
            let _on_drop = on_drop;
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            ran_on.send(name).unwrap();
            let _ = ended.await;
        });
        end
    }

    fn two_workers(pinned: bool) -> Plan {
        Plan {
            count: NonZeroUsize::new(2).unwrap(),
            pinned,
        }
    }

    #[test]
    fn pinned_workers_each_run_on_their_own_cpu_of_the_process() {
        let allowed = cpus_allowed().unwrap();
        let workers = Workers::start(two_workers(true)).unwrap();
        let (ran_on, reports) = mpsc::channel();
        let (end, ended) = tokio::sync::watch::channel(());
        for _ in 0..2 {
            let ran_on = ran_on.clone();
            let mut ended = ended.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().unwrap_or_default().to_owned();
                ran_on.send((name, cpus_allowed().unwrap())).unwrap();
                let _ = ended.changed().await;
            });
        }
        let mut seen: Vec<_> = (0..2)
            .map(|_| reports.recv_timeout(WAIT).unwrap())
            .collect();
        seen.sort();
        let expected: Vec<_> = (0..2)
            .map(|i| (format!("http-worker-{i}"), vec![allowed[i % allowed.len()]]))
            .collect();
        assert_eq!(seen, expected);
        drop(end);
    }

    #[test]
    fn unpinned_workers_may_run_on_any_cpu_of_the_process() {
        let allowed = cpus_allowed().unwrap();
        let workers = Workers::start(two_workers(false)).unwrap();
        let (ran_on, reports) = mpsc::channel();
        workers.spawn(async move {
            ran_on.send(cpus_allowed().unwrap()).unwrap();
        });
        assert_eq!(reports.recv_timeout(WAIT).unwrap(), allowed);
    }

    fn serving(workers: &Workers) -> Vec<usize> {
        let count = |w: &Worker| w.connections.load(Ordering::Relaxed);
        workers.workers.iter().map(count).collect()
    }

    #[test]
    fn connections_go_to_the_worker_serving_the_fewest() {
        let workers = Workers::start(two_workers(false)).unwrap();
        let (ran_on, threads) = mpsc::channel();
        let (dropped, drops) = mpsc::channel();
        let mut ends: Vec<_> = (0..4)
            .map(|_| spawn_reporting(&workers, &ran_on, &dropped))
            .collect();
        let mut per_thread = HashMap::<String, usize>::new();
        for _ in 0..4 {
            *per_thread
                .entry(threads.recv_timeout(WAIT).unwrap())
                .or_default() += 1;
        }
        let expected = HashMap::from([("http-worker-0".into(), 2), ("http-worker-1".into(), 2)]);
        assert_eq!(per_thread, expected);

        // Two connections of worker 0 end (the first and third spawned): the next
        // two go to worker 0, which now serves none.
        drop(ends.remove(2));
        drop(ends.remove(0));
        for _ in 0..2 {
            drops.recv_timeout(WAIT).unwrap();
        }
        // A connection is counted off just after its future is dropped.
        let deadline = std::time::Instant::now() + WAIT;
        while serving(&workers) != [0, 2] {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                serving(&workers)
            );
            std::thread::yield_now();
        }
        let first = threads.recv_timeout(Duration::ZERO);
        assert!(first.is_err(), "nothing ran meanwhile: {first:?}");
        ends.push(spawn_reporting(&workers, &ran_on, &dropped));
        ends.push(spawn_reporting(&workers, &ran_on, &dropped));
        for _ in 0..2 {
            assert_eq!(threads.recv_timeout(WAIT).unwrap(), "http-worker-0");
        }
    }

    #[test]
    fn stopping_the_workers_drops_their_connections() {
        let workers = Workers::start(two_workers(false)).unwrap();
        let (ran_on, threads) = mpsc::channel();
        let (dropped, drops) = mpsc::channel();
        let _ends: Vec<_> = (0..3)
            .map(|_| spawn_reporting(&workers, &ran_on, &dropped))
            .collect();
        for _ in 0..3 {
            threads.recv_timeout(WAIT).unwrap();
        }
        drop(workers);
        for _ in 0..3 {
            drops.recv_timeout(WAIT).expect("every connection dropped");
        }
    }
}
