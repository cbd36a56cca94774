//! Reports of a load run: the human summary table, the JSON document and the SVG plot.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::bench::harness::{LoadResult, Percentiles};

/// One `--find-capacity` step.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityStep {
    /// Concurrent calls.
    pub calls: usize,
    /// Worse of the two one-way relay-added p99s (µs), if measured.
    pub p99_us: Option<f64>,
    /// Frames lost (both directions).
    pub lost: u64,
    /// The step met the SLO (p99 ≤ the limit, no loss, clean checks).
    pub pass: bool,
    /// Relay CPU µs per relayed frame.
    pub cpu_us_per_frame: Option<f64>,
    /// Relay cores busy ÷ calls (fraction of one core per call).
    pub cores_per_call: Option<f64>,
}

/// Result of `--find-capacity`.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// p99 limit of the SLO, µs.
    pub slo_p99_us: f64,
    /// Every step run.
    pub steps: Vec<CapacityStep>,
    /// Highest passing call count.
    pub last_passing_calls: Option<usize>,
    /// Its CPU per call, fraction of one core.
    pub last_passing_cores_per_call: Option<f64>,
}

/// One relay run and the floor run right after it (`--repeat`).
#[derive(Debug, Clone, Serialize)]
pub struct CpuPair {
    /// Relay CPU µs per relayed frame.
    pub relay_cpu_us_per_frame: f64,
    /// Floor CPU µs per echoed frame.
    pub floor_cpu_us_per_frame: f64,
    /// relay ÷ floor.
    pub ratio: f64,
    /// Worse of the relay's two one-way p99s, µs.
    pub relay_p99_us: Option<f64>,
    /// Both runs of the pair passed every check (no loss, byte-exact, …); only the first
    /// pair is summarised in full, so later pairs' problems show here.
    pub clean: bool,
    /// Relay context switches (voluntary + involuntary) per frame.
    pub relay_switches_per_frame: f64,
    /// Floor context switches per frame.
    pub floor_switches_per_frame: f64,
}

/// The whole JSON document written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The relay run (or the last capacity step).
    pub relay: Option<LoadResult>,
    /// The floor run (same caller load against the fastwebsockets echo server).
    pub floor: Option<LoadResult>,
    /// Relay CPU per relayed frame ÷ floor CPU per echoed frame: the median over `pairs`
    /// when there are several, else the one pair's ratio.
    pub cpu_ratio_relay_over_floor: Option<f64>,
    /// Every relay/floor pair measured (`--repeat`), in order.
    pub pairs: Vec<CpuPair>,
    /// Capacity search, if run.
    pub capacity: Option<Capacity>,
    /// How the floor was scheduled against the relay: `side by side` (same window) or
    /// `after the relay`; `None` without a floor.
    pub floor_schedule: Option<String>,
    /// How the processes were placed on CPUs (`--pin`), if pinned.
    pub pinning: Option<String>,
    /// The load shape: pacing, where the agent ran and how it pinged, pinned or not.
    pub shape: Option<String>,
    /// How the numbers were measured.
    pub notes: Vec<String>,
}

impl Report {
    /// Records one relay run and its floor run. The first pair becomes `relay`/`floor` (its
    /// RSS is measured from an idle process; later runs start from a warmed-up one).
    pub fn add_pair(&mut self, relay: LoadResult, floor: Option<LoadResult>) {
        let r = relay.resources.as_ref().map(|x| x.cpu_us_per_frame);
        let f = floor
            .as_ref()
            .and_then(|x| x.resources.as_ref())
            .map(|x| x.cpu_us_per_frame);
        if let (Some(r), Some(f)) = (r, f) {
            if f > 0.0 {
                let p99 = [&relay.caller_to_agent, &relay.agent_to_caller]
                    .iter()
                    .filter_map(|p| p.as_ref().map(|p| p.p99_us))
                    .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
                self.pairs.push(CpuPair {
                    relay_cpu_us_per_frame: r,
                    floor_cpu_us_per_frame: f,
                    ratio: r / f,
                    relay_p99_us: p99,
                    clean: relay.clean() && floor.as_ref().is_none_or(LoadResult::clean),
                    relay_switches_per_frame: switches(&relay),
                    floor_switches_per_frame: floor.as_ref().map_or(0.0, switches),
                });
            }
        }
        if self.relay.is_none() {
            self.relay = Some(relay);
            self.floor = floor;
        }
    }

    /// Fills `cpu_ratio_relay_over_floor`: the median pair ratio if several pairs were
    /// measured, else the ratio of `relay` to `floor`.
    pub fn compute_ratio(&mut self) {
        if self.pairs.len() > 1 {
            let mut v: Vec<f64> = self.pairs.iter().map(|p| p.ratio).collect();
            v.sort_by(f64::total_cmp);
            let n = v.len();
            self.cpu_ratio_relay_over_floor = Some(if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            });
            return;
        }
        let r = self.relay.as_ref().and_then(|r| r.resources.as_ref());
        let f = self.floor.as_ref().and_then(|r| r.resources.as_ref());
        self.cpu_ratio_relay_over_floor = match (r, f) {
            (Some(r), Some(f)) if f.cpu_us_per_frame > 0.0 => {
                Some(r.cpu_us_per_frame / f.cpu_us_per_frame)
            }
            _ => None,
        };
    }

    /// Writes the JSON document.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

fn switches(r: &LoadResult) -> f64 {
    r.resources.as_ref().map_or(0.0, |x| {
        x.voluntary_switches_per_frame + x.nonvoluntary_switches_per_frame
    })
}

fn pct_row(out: &mut String, name: &str, p: &Option<Percentiles>) {
    match p {
        Some(p) => {
            let _ = writeln!(
                out,
                "  {name:<30} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                p.count, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us
            );
        }
        None => {
            let _ = writeln!(out, "  {name:<30} {:>9}", "-");
        }
    }
}

/// Human summary of one run.
pub fn summarize(r: &LoadResult) -> String {
    let mut o = String::new();
    let what = if r.floor {
        "FLOOR (fastwebsockets echo)"
    } else {
        "RELAY"
    };
    let _ = writeln!(
        o,
        "== {what}: {} calls, {} mode, {} pacing, ramp {}/s, steady window {:.0} s, {}",
        r.calls,
        r.mode,
        r.pacing.as_str(),
        r.ramp_per_sec,
        r.window_s,
        r.url
    );
    if !r.floor {
        let _ = writeln!(
            o,
            "  mock agent: {}{}",
            r.agent_placement,
            r.agent_process_cores
                .map_or(String::new(), |c| format!(", {c:.3} cores in the window"))
        );
    }
    let c = &r.caller;
    let _ = writeln!(
        o,
        "  calls connected {} (failed {}, closed early {})",
        c.connected, c.connect_failures, c.closed_early
    );
    let _ = writeln!(
        o,
        "  frames sent {}   media received {}   marks recv/echoed {}/{}   clears {}",
        c.frames_sent, c.media_received, c.marks_received, c.marks_echoed, c.clears
    );
    if let Some(a) = &r.agent {
        let _ = writeln!(
            o,
            "  agent side:  frames {} unique {} dup {} reorder {} cross-talk {} corrupt {} errors {}   pings/pongs {}/{}",
            a.frames, a.unique, a.duplicates, a.reordered, a.cross_talk, a.corrupt, a.protocol_errors,
            a.pings, a.pongs
        );
    }
    let _ = writeln!(
        o,
        "  caller side: frames {} unique {} dup {} reorder {} cross-talk {} corrupt {} errors {}",
        c.frames_received,
        c.unique,
        c.duplicates,
        c.reordered,
        c.cross_talk,
        c.corrupt,
        c.protocol_errors
    );
    for e in &c.protocol_error_samples {
        let _ = writeln!(o, "    e.g. {e}");
    }
    let _ = writeln!(
        o,
        "  lost caller→agent {}   lost →caller {}",
        r.lost_caller_to_agent
            .map_or("-".to_string(), |v| v.to_string()),
        r.lost_to_caller
    );
    if c.turns_expected > 0 {
        let _ = writeln!(
            o,
            "  turns answered {}/{}   turn audio mismatches {}",
            c.turns_answered, c.turns_expected, c.turn_audio_mismatch
        );
    }
    let _ = writeln!(
        o,
        "  {:<30} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (µs)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    pct_row(&mut o, "caller→agent (one way)", &r.caller_to_agent);
    pct_row(&mut o, "agent→caller (one way)", &r.agent_to_caller);
    pct_row(&mut o, "round trip", &r.round_trip);
    if r.turn.is_some() {
        pct_row(&mut o, "turn (incl. think time)", &r.turn);
    }
    if r.barge_in.is_some() {
        pct_row(&mut o, "barge-in (interrupt→clear)", &r.barge_in);
    }
    pct_row(&mut o, "call setup (open→agent init)", &r.call_setup);
    if let Some(res) = &r.resources {
        let _ = writeln!(
            o,
            "  process {}: CPU {:.2} s in {:.0} s window = {:.3} cores ({:.0}% kernel); {} frames",
            res.pid,
            res.cpu_s,
            res.window_s,
            res.cores,
            res.kernel_share * 100.0,
            res.frames
        );
        let _ = writeln!(
            o,
            "  CPU per relayed frame {:.2} µs   RSS idle {} KiB → {} KiB = {:.1} KiB per call   ≈{:.0} calls per core",
            res.cpu_us_per_frame,
            res.idle.rss_kib,
            res.window_end.rss_kib,
            res.rss_kib_per_call,
            res.calls_per_core
        );
        let _ = writeln!(
            o,
            "  context switches per frame: {:.3} voluntary, {:.3} involuntary",
            res.voluntary_switches_per_frame, res.nonvoluntary_switches_per_frame
        );
    }
    if let Some(p) = &r.perf {
        let per: Vec<String> = p
            .per_frame
            .iter()
            .map(|(k, v)| format!("{} {v:.3}", k.trim_start_matches("syscalls:sys_enter_")))
            .collect();
        let _ = writeln!(o, "  perf stat per frame: {}", per.join(", "));
    }
    let conc = r.send_phase_concentration(2);
    let _ = writeln!(
        o,
        "  sends: {:.0}% of the window's frames within one 2 ms phase of the 20 ms period",
        conc * 100.0
    );
    if let Some(b) = &r.bursts {
        let _ = writeln!(
            o,
            "  lockstep: {} ticks, {}–{} frames per tick, burst length p50 {} / max {} µs, first send p50 {} / p99 {} µs after the tick",
            b.ticks,
            b.frames_per_tick_min,
            b.frames_per_tick_max,
            b.span.as_ref().map_or("-".into(), |p| format!("{:.0}", p.p50_us)),
            b.span.as_ref().map_or("-".into(), |p| format!("{:.0}", p.max_us)),
            b.late.as_ref().map_or("-".into(), |p| format!("{:.0}", p.p50_us)),
            b.late.as_ref().map_or("-".into(), |p| format!("{:.0}", p.p99_us)),
        );
    }
    let _ = writeln!(
        o,
        "  checks: {}",
        if r.clean() {
            "CLEAN"
        } else if r.faults.is_some() {
            "not clean (agent sockets were killed: see the recovery checks below)"
        } else {
            "PROBLEMS (see above)"
        }
    );
    if let Some(f) = &r.faults {
        o.push_str(&crate::bench::faults::summarize(f));
    }
    o
}

/// Human summary of the whole report.
pub fn summarize_report(rep: &Report) -> String {
    let mut o = String::new();
    if let Some(sh) = &rep.shape {
        let _ = writeln!(o, "== shape: {sh}");
    }
    match &rep.pinning {
        Some(p) => {
            let _ = writeln!(o, "== pinned: {p}");
        }
        None => {
            let _ = writeln!(
                o,
                "== not pinned: the harness shares every CPU with the relay"
            );
        }
    }
    if let Some(r) = &rep.relay {
        o.push_str(&summarize(r));
    }
    if let Some(f) = &rep.floor {
        o.push_str(&summarize(f));
    }
    if rep.pairs.len() > 1 {
        let _ = writeln!(
            o,
            "== {} relay/floor pairs, floor {} (CPU µs per frame):",
            rep.pairs.len(),
            rep.floor_schedule.as_deref().unwrap_or("-")
        );
        for (k, p) in rep.pairs.iter().enumerate() {
            let _ = writeln!(
                o,
                "  pair {:>2}: relay {:>6.2}  floor {:>6.2}  ratio {:.2}×  relay one-way p99 {}  switches/frame {:.3} / {:.3}{}",
                k + 1,
                p.relay_cpu_us_per_frame,
                p.floor_cpu_us_per_frame,
                p.ratio,
                p.relay_p99_us.map_or("-".into(), |v| format!("{v:.0} µs")),
                p.relay_switches_per_frame,
                p.floor_switches_per_frame,
                if p.clean { "" } else { "  PROBLEMS" }
            );
        }
    }
    if let Some(ratio) = rep.cpu_ratio_relay_over_floor {
        let what = if rep.pairs.len() > 1 {
            "median relay ÷ floor CPU per frame"
        } else {
            "relay ÷ floor CPU per frame"
        };
        let when = rep.floor_schedule.as_deref().unwrap_or("-");
        let _ = writeln!(o, "== {what} (floor {when}): {ratio:.2}× (target ≤ 1.25×)");
    } else if rep.floor.is_some() && rep.relay.is_some() {
        // /proc counts CPU in 10 ms ticks: a short, light window can show the floor none.
        let _ = writeln!(
            o,
            "== relay ÷ floor CPU per frame: not measurable (a side used no CPU /proc could count in the window; use more calls or a longer window)"
        );
    }
    if let Some(cap) = &rep.capacity {
        let _ = writeln!(
            o,
            "== capacity search (SLO: one-way p99 ≤ {:.0} µs, no loss)",
            cap.slo_p99_us
        );
        for s in &cap.steps {
            let _ = writeln!(
                o,
                "  {:>6} calls  p99 {:>9}  lost {:>5}  cpu/frame {:>7}  {}",
                s.calls,
                s.p99_us.map_or("-".into(), |v| format!("{v:.0} µs")),
                s.lost,
                s.cpu_us_per_frame
                    .map_or("-".into(), |v| format!("{v:.2} µs")),
                if s.pass { "pass" } else { "FAIL" }
            );
        }
        match (cap.last_passing_calls, cap.last_passing_cores_per_call) {
            (Some(n), Some(c)) => {
                let _ = writeln!(
                    o,
                    "  last passing: {n} calls, {:.3}% of a core per call (≈{:.0} calls per core)",
                    c * 100.0,
                    1.0 / c
                );
            }
            (Some(n), None) => {
                let _ = writeln!(o, "  last passing: {n} calls");
            }
            _ => {
                let _ = writeln!(o, "  no step passed");
            }
        }
    }
    o
}

/// Writes an SVG of latency percentile curves (x: percentile on a log "nines" axis, y: µs,
/// log scale), one line per direction of the relay run plus the floor's round trip.
pub fn write_svg(rep: &Report, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let nines = |p: f64| -(1.0 - p / 100.0).max(1e-6).log10();
    let mut push = |name: &str, p: &Option<Percentiles>| {
        if let Some(p) = p {
            series.push((
                name.to_owned(),
                p.curve
                    .iter()
                    .map(|&(pc, us)| (nines(pc), us.max(1.0)))
                    .collect(),
            ));
        }
    };
    if let Some(r) = &rep.relay {
        push("relay: caller→agent", &r.caller_to_agent);
        push("relay: agent→caller", &r.agent_to_caller);
        push("relay: round trip", &r.round_trip);
    }
    if let Some(f) = &rep.floor {
        push("floor: round trip", &f.round_trip);
    }
    if series.is_empty() {
        anyhow::bail!("no latency data to plot");
    }
    let max_y = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(10.0f64, f64::max)
        * 1.5;
    let title = match &rep.relay {
        Some(r) => format!("media-relay latency, {} calls ({} mode)", r.calls, r.mode),
        None => "latency".to_owned(),
    };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4f64, (1f64..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(5)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            format!("p{}", (p * 100.0).round() / 100.0)
        })
        .draw()?;
    let colors = [RED, BLUE, GREEN, BLACK, MAGENTA];
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
