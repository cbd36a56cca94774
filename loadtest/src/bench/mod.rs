//! The load harness behind the `loadtest` binary: callers and run orchestration, the lean
//! tag-aware bench agent, per-frame tags, the echo cost floor, process spawning and sampling,
//! CPU pinning, reports and soak runs, the bench agent as a process of its own
//! ([`agent_process`], `loadtest agent-server`), and agent-socket faults for the recovery
//! benchmark ([`faults`]). See the [crate docs](crate) for what each module is.
//!
//! Built on [`crate::peers`] (the Twilio caller and the mock agents' server skeleton).

pub mod agent_process;
pub mod bench_agent;
pub mod faults;
pub mod floor;
pub mod harness;
pub mod pin;
pub mod procs;
pub mod procstat;
pub mod report;
pub mod soak;
pub mod tag;
