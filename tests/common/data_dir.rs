//! A data dir of its own for each test (removed at the end), brokers
//! started on it, stopped and killed; partition files found and damaged;
//! a small tmpfs to fill (mounted for one test, unmounted at the end).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Broker, Exited, run_to_exit};

/// A data dir of its own under the temp dir, removed at the end.
pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    pub fn new(test: &str) -> DataDir {
        DataDir::under(&std::env::temp_dir(), test)
    }

    pub fn under(parent: &Path, test: &str) -> DataDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("ringmq-store-{test}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        DataDir { path }
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temp dir")
    }

    /// Starts a broker on this dir with `args` besides `--data-dir`.
    pub fn start(&self, args: &[&str]) -> Broker {
        let mut all = vec!["--data-dir", self.arg()];
        all.extend_from_slice(args);
        Broker::start(&all)
    }

    /// Runs a broker on this dir that must refuse to start.
    pub fn refused(&self, args: &[&str]) -> Exited {
        let mut all = vec!["--data-dir", self.arg()];
        all.extend_from_slice(args);
        let out = run_to_exit(&all, None);
        assert!(
            !out.status.success(),
            "{all:?} exited with {}, expected a refusal; stderr:\n{}",
            out.status,
            out.stderr
        );
        assert!(
            !out.stderr.contains("listening"),
            "{all:?} refused only after listening:\n{}",
            out.stderr
        );
        out
    }

    /// A copy of `other`'s `FORMAT`, `CURRENT` and partition set in use,
    /// in this dir.
    pub fn copy_of(other: &DataDir, test: &str) -> DataDir {
        let copy = DataDir::new(test);
        let set = other.current();
        std::fs::create_dir_all(copy.path.join(&set)).expect("the copy's partition set");
        for name in ["FORMAT", "CURRENT"] {
            std::fs::copy(other.path.join(name), copy.path.join(name)).expect(name);
        }
        for file in other.partitions() {
            let name = file.file_name().expect("a partition file name");
            std::fs::copy(&file, copy.path.join(&set).join(name)).expect("a partition");
        }
        copy
    }

    /// Starts a broker on this dir, or returns what it said when it
    /// refused to start.
    pub fn try_start(&self, args: &[&str]) -> Result<Broker, String> {
        std::panic::catch_unwind(|| self.start(args)).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "a panic without a message".into())
        })
    }

    /// What `CURRENT` names: the partition set in use.
    pub fn current(&self) -> String {
        std::fs::read_to_string(self.path.join("CURRENT"))
            .expect("a CURRENT file")
            .trim()
            .to_owned()
    }

    /// Every `set-*` directory, sorted.
    pub fn sets(&self) -> Vec<String> {
        let mut sets: Vec<String> = std::fs::read_dir(&self.path)
            .expect("the data dir")
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("set-"))
            .collect();
        sets.sort();
        sets
    }

    /// The files of the set in use: each partition's redb file and the
    /// log segments not yet applied to it.
    pub fn partitions(&self) -> Vec<PathBuf> {
        let set = self.path.join(self.current());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&set)
            .expect("the partition set")
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                name.is_some_and(|name| name.ends_with(".redb") || name.contains(".log."))
            })
            .collect();
        files.sort();
        files
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `kill -9`, and waits for the process to be gone: a process killed
/// during a sync is gone only once the disk has answered, which took more
/// than 5 s here with two disk-heavy benchmarks on the machine.
pub fn kill(mut broker: Broker) {
    broker.signal(libc::SIGKILL);
    broker.wait_exit(Duration::from_secs(30));
}

/// SIGTERM, and waits for a clean exit.
pub fn stop(mut broker: Broker) {
    broker.signal(libc::SIGTERM);
    let status = broker.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        broker.logs()
    );
}

/// `xor`s a byte in the middle of every occurrence of `needle` in `file`;
/// returns how many there were. (A record's page may be there twice: the
/// engine copies a page it changes and keeps the old one a while.)
pub fn damage(file: &Path, needle: &[u8]) -> usize {
    let found = occurrences(file, needle);
    damage_at(file, &found, needle.len());
    found.len()
}

/// Where `needle` starts in `file`, each time.
pub fn occurrences(file: &Path, needle: &[u8]) -> Vec<usize> {
    let bytes = std::fs::read(file).expect("the partition file");
    bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(at, _)| at)
        .collect()
}

/// `xor`s a byte in the middle of the `len` bytes at each of `offsets`.
pub fn damage_at(file: &Path, offsets: &[usize], len: usize) {
    let mut bytes = std::fs::read(file).expect("the partition file");
    for &at in offsets {
        bytes[at + len / 2] ^= 0x5a;
    }
    std::fs::write(file, bytes).expect("writing the partition file");
}

/// The one partition whose file contains `needle`.
pub fn partition_holding(dir: &DataDir, needle: &[u8]) -> PathBuf {
    let holding: Vec<PathBuf> = dir
        .partitions()
        .into_iter()
        .filter(|file| {
            let bytes = std::fs::read(file).expect("the partition file");
            bytes.windows(needle.len()).any(|window| window == needle)
        })
        .collect();
    assert_eq!(
        holding.len(),
        1,
        "partitions holding the payload: {holding:?}"
    );
    holding.into_iter().next().unwrap()
}

/// A tmpfs mounted for one test, unmounted (and its mount point removed)
/// when dropped, also when the test fails. Drop it after the broker using
/// it, which holds files on it open.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// `None`, with the reason printed, if it cannot be mounted (not root,
    /// or no mount permission in this container).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let path = std::env::temp_dir().join(format!("ringmq-store-tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("a mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs { path }),
            Ok(out) => {
                println!(
                    "skipped: cannot mount a tmpfs ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                let _ = std::fs::remove_dir(&path);
                None
            }
            Err(error) => {
                println!("skipped: cannot run mount: {error}");
                let _ = std::fs::remove_dir(&path);
                None
            }
        }
    }

    pub fn free_bytes(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.path.as_os_str().as_bytes()).unwrap();
        // SAFETY: zeroed is a valid statvfs, which the call fills in.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a statvfs to fill in.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        assert_eq!(rc, 0, "statvfs {}", self.path.display());
        stat.f_bavail as u64 * stat.f_frsize as u64
    }

    /// Writes a file leaving `keep` bytes free (tmpfs allocates only
    /// written pages, so it is written, not just sized).
    pub fn fill(&self, keep: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        let mut left = self.free_bytes().saturating_sub(keep);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n]).expect("writing the filler");
            left -= n as u64;
        }
        file.sync_all().unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a broker not yet reaped): detach it now.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
