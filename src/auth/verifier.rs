//! A few threads that run password hashes for the shards, behind a
//! bounded queue.
//!
//! An argon2id verification takes milliseconds of CPU and 19 MiB of
//! memory; on a shard it would stall every connection the shard serves,
//! and a flood of CONNECTs with bad passwords would stall them all. So
//! the shard hands the work to this pool and its connection task awaits
//! the answer, while the shard serves everyone else.
//!
//! Bounded twice, so that a flood costs a fixed amount:
//! - the threads, so at most that many hashes run at once (and as much
//!   memory is in use), and
//! - the queue: work that finds it full is refused at once
//!   ([`Full`]), and the CONNECT answered Server busy, rather than
//!   waiting behind the flood for ever.
//!
//! The threads run at the lowest priority (nice 19): when the shards have
//! work, the kernel's scheduler gives them the CPU first, and hashing only
//! takes what is left, so a brute-force attack slows the attacker's own
//! answers, not the other clients' traffic.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tracing::{debug, error};

/// The lowest scheduling priority a thread can take.
const NICE: libc::c_int = 19;

type Work = Box<dyn FnOnce() + Send>;

/// The queue into the pool; the threads end once it is dropped.
#[derive(Debug, Clone)]
pub struct Pool {
    jobs: Sender<Work>,
}

/// The pool's queue was full: the work was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Pool {
    /// Starts `threads` threads named `{name}-{i}`, sharing a queue of
    /// `queue` waiting jobs.
    pub fn start(name: &str, threads: usize, queue: usize) -> io::Result<Pool> {
        let (jobs, waiting) = crossbeam_channel::bounded::<Work>(queue);
        for i in 0..threads {
            let waiting = waiting.clone();
            thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || work(waiting))?;
        }
        Ok(Pool { jobs })
    }

    /// Queues `job` for the next free thread, or refuses it at once when
    /// the queue is full. A job that panics is dropped (and whatever it
    /// was to answer with it, so its waiter sees its channel closed); the
    /// thread goes on.
    pub fn try_run(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Full> {
        match self.jobs.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            // Disconnected means every thread died, which `work` prevents;
            // refusing is still the right answer then.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Full),
        }
    }
}

fn work(waiting: Receiver<Work>) {
    lower_priority();
    while let Ok(job) = waiting.recv() {
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            error!("a verifier job panicked; its client is refused");
        }
    }
}

/// On Linux the nice value belongs to the thread, so this lowers only the
/// calling one.
fn lower_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no
    // memory of ours.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
    };
    if rc != 0 {
        debug!(error = %io::Error::last_os_error(), "cannot lower the verifier thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier, mpsc};
    use std::time::Duration;

    use super::*;

    #[test]
    fn work_past_the_threads_and_queue_is_refused_at_once() {
        let pool = Pool::start("test-pool", 1, 2).expect("threads start");
        let (started, started_rx) = mpsc::channel();
        let release = Arc::new(Barrier::new(2));
        let (done, done_rx) = mpsc::channel();
        // The thread takes the first job and blocks in it...
        let blocker = {
            let release = release.clone();
            let done = done.clone();
            move || {
                let _ = started.send(());
                release.wait();
                let _ = done.send(0);
            }
        };
        assert_eq!(pool.try_run(blocker), Ok(()));
        started_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the thread took the first job");
        // ...two more wait in the queue, and the next is refused.
        for n in 1..=2 {
            let done = done.clone();
            assert_eq!(
                pool.try_run(move || {
                    let _ = done.send(n);
                }),
                Ok(())
            );
        }
        assert_eq!(pool.try_run(|| {}), Err(Full));
        release.wait();
        let finished: Vec<i32> = (0..3)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(5)).expect("ran"))
            .collect();
        assert_eq!(finished, [0, 1, 2], "in order, on one thread");
        // Room again.
        assert_eq!(pool.try_run(|| {}), Ok(()));
    }

    #[test]
    fn a_panicking_job_leaves_the_thread_serving() {
        let pool = Pool::start("test-panic", 1, 4).expect("threads start");
        let (tx, rx) = mpsc::channel::<u8>();
        let dropped = tx.clone();
        assert_eq!(
            pool.try_run(move || {
                let _keep = dropped;
                panic!("test panic");
            }),
            Ok(())
        );
        assert_eq!(
            pool.try_run(move || {
                let _ = tx.send(7);
            }),
            Ok(())
        );
        // Generous: the panic's backtrace is symbolised first, which in a
        // debug build beside the rest of the suite on two loaded cores
        // took over 5 s.
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)), Ok(7));
    }
}
