//! Worker threads: one per CPU in `--cpus`, pinned, each running its own
//! monoio runtime (io_uring where the kernel has it, epoll otherwise).
//! Like the broker, the load generator shares nothing between workers but
//! counters; each connection lives and dies on one thread.

use std::future::Future;
use std::io;
use std::thread::{self, JoinHandle};

use monoio::{FusionDriver, RuntimeBuilder};

use crate::cli::CpuList;

/// The I/O driver monoio will pick on this kernel.
pub fn driver_name() -> &'static str {
    if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    }
}

/// Checks every CPU in the list exists and may be used by this process.
pub fn check_cpus(cpus: &CpuList) -> Result<(), String> {
    let available: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect();
    match cpus.0.iter().find(|cpu| !available.contains(cpu)) {
        Some(cpu) => Err(format!(
            "CPU {cpu} is not available to this process (available: {available:?})"
        )),
        None => Ok(()),
    }
}

/// Raises this process's open-file limit to its hard limit: every
/// connection is a file descriptor, and the usual soft limit of 1024 would
/// cap a run at about a thousand connections. Returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Starts one pinned worker per CPU. `make(index)` builds the worker's
/// future on its own thread, so the future itself need not be `Send`.
pub fn spawn<F, Fut, T>(cpus: &CpuList, make: F) -> io::Result<Vec<JoinHandle<io::Result<T>>>>
where
    F: Fn(usize) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    cpus.0
        .iter()
        .enumerate()
        .map(|(index, &cpu)| {
            let make = make.clone();
            thread::Builder::new()
                .name(format!("bench-worker-{index}"))
                .spawn(move || {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                        eprintln!("warning: cannot pin worker {index} to CPU {cpu}");
                    }
                    let build = |urb| {
                        RuntimeBuilder::<FusionDriver>::new()
                            .enable_timer()
                            .with_entries(4096)
                            .uring_builder(urb)
                            .build()
                    };
                    // As the broker's: a readable socket under a poll must
                    // not interrupt a busy worker, or each send the broker
                    // makes pays for that interrupt. A kernel before 5.19
                    // refuses the flag, and gets the plain set-up, as the
                    // broker does.
                    let mut runtime = build(ringmq::shard::uring_builder())
                        .or_else(|_| build(io_uring::IoUring::builder()))?;
                    Ok(runtime.block_on(make(index)))
                })
        })
        .collect()
}
