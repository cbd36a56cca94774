//! Observability: the Prometheus metric families ([`metrics`]) and the compact per-call
//! latency histograms folded into them in batches ([`latency`]). No I/O besides rendering.

pub mod latency;
pub mod metrics;
