//! CPU pinning for `loadtest --pin`: the process under test (relay or floor) gets one CPU of
//! its own and the harness (simulated callers and mock agent) the others, so on a small
//! machine the two never queue behind each other for a core. Without it the harness's bursts
//! land on the relay's core and its latency percentiles measure CPU contention.
//!
//! Linux only (`sched_setaffinity(2)`). Owns nothing else: which process is measured is the
//! caller's business.

use std::process::Command;

use anyhow::{bail, Context};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// How the CPUs this process may use are split.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// The CPU the process under test runs on (the highest allowed one).
    pub target_cpu: usize,
    /// The CPUs the harness runs on (all the others).
    pub harness_cpus: Vec<usize>,
}

impl Pinning {
    /// Splits the CPUs this process is allowed to run on: the highest for the process under
    /// test, the rest for the harness.
    ///
    /// Errors: fewer than two allowed CPUs, or the affinity mask cannot be read.
    pub fn plan() -> anyhow::Result<Self> {
        let set = sched_getaffinity(Pid::from_raw(0)).context("reading the CPU affinity")?;
        let cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect();
        let Some((&target_cpu, rest)) = cpus.split_last() else {
            bail!("no CPU in this process's affinity mask");
        };
        if rest.is_empty() {
            bail!("--pin needs at least two CPUs (this process may use only CPU {target_cpu})");
        }
        Ok(Self {
            target_cpu,
            harness_cpus: rest.to_vec(),
        })
    }

    /// Restricts the calling thread, and so every thread it starts afterwards (call it before
    /// building the runtime), to the harness CPUs.
    pub fn apply_to_harness(&self) -> anyhow::Result<()> {
        let mut set = CpuSet::new();
        for &c in &self.harness_cpus {
            set.set(c).context("CPU number out of range")?;
        }
        sched_setaffinity(Pid::from_raw(0), &set).context("pinning the harness")
    }

    /// Makes the child that `cmd` starts run on the target CPU only, from its first
    /// instruction (so its runtime sizes its thread pool for one CPU).
    pub fn apply_to_child(&self, cmd: &mut Command) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let mut set = CpuSet::new();
        set.set(self.target_cpu)
            .context("CPU number out of range")?;
        // SAFETY: the closure runs in the forked child before exec; it only makes one
        // async-signal-safe system call on a set built beforehand (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || {
                sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)
            });
        }
        Ok(())
    }

    /// One line for reports: `relay/floor on CPU 1, harness on CPU 0`.
    pub fn describe(&self) -> String {
        let h: Vec<String> = self.harness_cpus.iter().map(|c| c.to_string()).collect();
        format!(
            "process under test on CPU {}, harness on CPU {}",
            self.target_cpu,
            h.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_splits_the_allowed_cpus() {
        match Pinning::plan() {
            Ok(p) => {
                assert!(!p.harness_cpus.is_empty());
                assert!(!p.harness_cpus.contains(&p.target_cpu));
                assert!(p.harness_cpus.iter().all(|&c| c < p.target_cpu));
            }
            // A one-CPU machine: the error says why.
            Err(e) => assert!(e.to_string().contains("at least two CPUs"), "{e}"),
        }
    }

    #[test]
    fn a_pinned_child_sees_one_cpu() {
        let Ok(p) = Pinning::plan() else { return };
        let mut cmd = Command::new("grep");
        cmd.args(["Cpus_allowed_list", "/proc/self/status"]);
        p.apply_to_child(&mut cmd).expect("pin");
        let out = cmd.output().expect("run grep");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.split_whitespace().nth(1),
            Some(p.target_cpu.to_string().as_str()),
            "{text}"
        );
    }
}
