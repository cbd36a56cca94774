//! Observability: the fixed label vocabulary ([`labels`]), the metric family table
//! ([`families`]), the registry and its typed handles ([`metrics`]), the per-call accumulators
//! folded into it in batches ([`call_metrics`]), the compact per-call latency histograms
//! ([`latency`]), and the live/recent call figures behind `GET /calls` ([`calls`]). No I/O
//! besides rendering. The bottom layer: imports nothing else from the crate.

pub mod call_metrics;
pub mod calls;
pub mod families;
pub mod labels;
pub mod latency;
pub mod metrics;
