//! CPU time and RSS of a process from `/proc/<pid>/stat` and `/proc/<pid>/status` (Linux).

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
    Ok(ProcSample {
        user_s: utime / ticks,
        system_s: stime / ticks,
        rss_kib,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_self() {
        let s = super::sample(std::process::id(), super::clock_ticks()).unwrap();
        assert!(s.rss_kib > 0);
    }
}
