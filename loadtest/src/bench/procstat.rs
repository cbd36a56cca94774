//! CPU time, RSS and context switches of a process from `/proc/<pid>/stat`,
//! `/proc/<pid>/status` and `/proc/<pid>/task/*/status` (Linux).

use anyhow::{anyhow, Context};

/// One sample of a process's resource use.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcSample {
    /// User CPU time, seconds (utime ÷ clock ticks per second).
    pub user_s: f64,
    /// Kernel CPU time, seconds (stime ÷ clock ticks per second).
    pub system_s: f64,
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Voluntary context switches (the thread blocked: waited for I/O, a lock, a timer),
    /// summed over the process's live threads (`/proc/<pid>/status` counts the main thread
    /// only, so every `/proc/<pid>/task/<tid>/status` is read; threads that have exited are
    /// not counted).
    pub voluntary_switches: u64,
    /// Involuntary context switches (the thread was preempted), summed the same way.
    pub nonvoluntary_switches: u64,
}

impl ProcSample {
    /// User + kernel CPU seconds.
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.system_s
    }
}

/// Clock ticks per second (`getconf CLK_TCK`); 100 if it cannot be determined.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// [`clock_ticks`], asked once per process.
pub fn clock_ticks_cached() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(clock_ticks)
}

/// Samples `pid`'s CPU times and RSS. `ticks` is [`clock_ticks`].
pub fn sample(pid: u32, ticks: f64) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ... utime is field 14, stime 15 → indexes 11 and 12 here.
    let utime: f64 = f.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: f64 = f.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (voluntary_switches, nonvoluntary_switches) = context_switches(pid);
    Ok(ProcSample {
        user_s: utime / ticks,
        system_s: stime / ticks,
        rss_kib,
        voluntary_switches,
        nonvoluntary_switches,
    })
}

/// Voluntary and involuntary context switches summed over `pid`'s live threads ((0, 0) if
/// `/proc/<pid>/task` cannot be read).
pub fn context_switches(pid: u32) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let (mut vol, mut nonvol) = (0, 0);
    for task in dir.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            let n = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                vol += n(v);
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                nonvol += n(v);
            }
        }
    }
    (vol, nonvol)
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_self() {
        let s = super::sample(std::process::id(), super::clock_ticks()).unwrap();
        assert!(s.rss_kib > 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (vol, _) = super::context_switches(std::process::id());
        assert!(vol > 0);
    }
}
