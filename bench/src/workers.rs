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
                    let mut runtime = RuntimeBuilder::<FusionDriver>::new()
                        .enable_timer()
                        .with_entries(4096)
                        .build()?;
                    Ok(runtime.block_on(make(index)))
                })
        })
        .collect()
}
