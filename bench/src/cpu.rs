//! Process CPU time from /proc/PID/stat: user plus system time, summed over
//! all of the process's threads, in clock ticks.

use std::fs;

/// Ticks per second, from `sysconf(_SC_CLK_TCK)`; 100 if it cannot say.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// utime + stime of `pid` (`None` for this process), in seconds.
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64, String> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let ticks = parse_cpu_ticks(&stat).ok_or_else(|| format!("{path}: unexpected format"))?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

/// utime + stime summed over several processes, in seconds: a cluster's
/// nodes together, so that CPU per delivered message counts every hop.
/// `None` when `pids` is empty (no `--broker-pid`).
pub fn sum_cpu_seconds(pids: &[u32]) -> Result<Option<f64>, String> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter()
        .try_fold(0.0, |sum, &pid| Ok(sum + cpu_seconds(Some(pid))?))
        .map(Some)
}

/// Fields 14 (utime) and 15 (stime) of proc(5). The command name (field 2)
/// is in parentheses and may itself contain spaces or parentheses, so
/// counting starts after the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let stat = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 12345 1000000 200 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_own_cpu_time() {
        assert!(cpu_seconds(None).expect("own stat") >= 0.0);
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn sums_several_processes() {
        assert_eq!(sum_cpu_seconds(&[]), Ok(None));
        let own = std::process::id();
        let one = sum_cpu_seconds(&[own]).expect("own stat").expect("a pid");
        let two = sum_cpu_seconds(&[own, own])
            .expect("own stat")
            .expect("a pid");
        // The second read may see a tick more than the first.
        assert!(two >= 2.0 * one - 1e-9, "{one} {two}");
        assert!(sum_cpu_seconds(&[own, u32::MAX]).is_err());
    }
}
