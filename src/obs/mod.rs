//! Observability: the Prometheus metric families ([`metrics`]), the compact per-call latency
//! histograms folded into them in batches ([`latency`]), and the live/recent call figures
//! behind `GET /calls` ([`calls`]). No I/O besides rendering.

pub mod calls;
pub mod latency;
pub mod metrics;
