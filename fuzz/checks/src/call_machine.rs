use crate::{must_be_json, records};
use media_relay::agent::assemblyai::BargeInTrigger;
use media_relay::agent::{assemblyai, echo, elevenlabs, openai, AgentKind, AgentSettings};
use media_relay::auth::Secret;
use media_relay::call::machine::CallEvent;
use media_relay::call::tool_webhook::ToolSettings;
use media_relay::call::{CallMachine, CallSettings};
use media_relay::carrier::twilio::codec::decode as twilio_decode;
use media_relay::carrier::{CallerEvent, CarrierKind, Decoded};
use media_relay::config::ServeArgs;
use media_relay::obs::labels::{Leg, ToolResult};
use media_relay::wire::b64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const KINDS: [AgentKind; 4] = [
    AgentKind::Elevenlabs,
    AgentKind::Assemblyai,
    AgentKind::Openai,
    AgentKind::Echo,
];

/// The relay's defaults (as `media-relay serve` with no flags), so fields added to
/// `CallSettings` later keep their defaults here.
fn base() -> &'static CallSettings {
    static BASE: OnceLock<CallSettings> = OnceLock::new();
    BASE.get_or_init(|| {
        ServeArgs::defaults()
            .settings()
            .expect("default settings are valid")
            .call
    })
}

/// A drain notice of 200 ms (what `--drain-notice-file` loads).
const NOTICE_BYTES: usize = 1600;

fn settings(cfg: &[u8]) -> CallSettings {
    let b = |i: usize| cfg.get(i).copied().unwrap_or(0);
    let sizes = b(1);
    let flags = b(2);
    let ms = Duration::from_millis;
    let mut s = base().clone();
    s.default_agent = KINDS[usize::from(b(0) % 4)];
    // Assigned field by field, so settings added later keep their defaults.
    let mut a = AgentSettings::default();
    a.shared.tools = serde_json::json!([{"name":"lookup_order","description":"d","parameters":{}}]);
    a.elevenlabs = Some(elevenlabs::Settings {
        api_key: None,
        agent_id: "agent".into(),
        api_base: "http://127.0.0.1:9".into(),
    });
    a.assemblyai = Some(assemblyai::Settings {
        api_key: Secret::new("k"),
        url: "ws://127.0.0.1:9/v1/ws".into(),
        voice: None,
        barge_in: if flags & 1 == 0 {
            BargeInTrigger::ReplyInterrupted
        } else {
            BargeInTrigger::SpeechStarted
        },
        rollover: None,
    });
    a.openai = Some(openai::Settings {
        api_key: Secret::new("k"),
        url: "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime".into(),
        voice: "alloy".into(),
        transcription_model: None,
        rollover: None,
    });
    a.echo = Some(echo::Settings { delay: ms(500) });
    s.agents = a;
    // Production-like sizes, or tiny ones that make every cap bite.
    s.early_audio_bytes = [800, 16000, 1, 160][usize::from(sizes & 3)];
    s.agent_connect_timeout = ms(10_000);
    s.start_timeout = ms(10_000);
    s.caller_idle_timeout = ms(10_000);
    s.max_call_duration = ms([3_600_000, 60_000][usize::from((sizes >> 2) & 1)]);
    s.caller_chunk_bytes = [800, 160, 1, 4000][usize::from((sizes >> 3) & 3)];
    s.agent_outbox_bytes = [480, 16000, 1, 160][usize::from((sizes >> 5) & 3)];
    s.caller_outbox_bytes =
        [4000, 64000, 1, 800][usize::from((sizes >> 6) & 1) * 2 + usize::from((flags >> 3) & 1)];
    s.write_stall_timeout = ms(5_000);
    s.dtmf_interdigit = ms(1_500);
    s.tools = ToolSettings {
        webhook_url: if flags & 2 == 0 {
            "http://127.0.0.1:9/tools".parse().ok()
        } else {
            None
        },
        timeout: ms(if flags & 4 == 0 { 8_000 } else { 100 }),
        max_per_call: 3,
        ..ToolSettings::default()
    };
    s.drain_notice = match (flags >> 4) & 3 {
        1 => Some(Arc::from(vec![0x11u8; NOTICE_BYTES])),
        2 => Some(Arc::from(Vec::new())),
        _ => None,
    };
    s
}

/// Index of a socket leg in the harness's per-leg arrays.
fn at(leg: Leg) -> usize {
    match leg {
        Leg::Caller => 0,
        _ => 1,
    }
}

/// Rounds of timers one tick may take before a deadline that stays due is a bug.
const TICK_ROUNDS: usize = 4;

struct Harness {
    m: CallMachine,
    cfg: Arc<CallSettings>,
    now: Instant,
    /// Kind asked for by `ConnectAgent`, and whether the socket is open.
    connect_asked: Option<AgentKind>,
    connected: bool,
    /// The machine's agent generation at the last `ConnectAgent` (a recovery or rollover
    /// bumps it and asks for a new connection; the driver retires the old one).
    connect_gen: u64,
    blocked: [bool; 2],
    tools: Vec<String>,
    steps: usize,
    buf: Vec<u8>,
    /// Frames the carrier codec released from its reordering window.
    released: Vec<u8>,
    admitted: bool,
    started: bool,
    /// The drain notice was queued (it replaces the agent's audio, whatever the cap).
    notice: bool,
    /// Messages transmitted per leg (caller, agent), for `FUZZ_DEBUG=1` runs on single inputs.
    sent: [usize; 2],
}

impl Harness {
    /// Acts on the machine's events as `driver::on_event` does: admission is answered at
    /// once (no token check configured, no older stream replaced).
    fn events(&mut self) {
        while let Some(ev) = self.m.poll_event() {
            match ev {
                CallEvent::Admit { call_sid, token } => {
                    assert!(!self.admitted, "admitted twice");
                    self.admitted = true;
                    assert_eq!(call_sid, self.m.call_sid(), "Admit names another call");
                    assert_eq!(
                        token.as_deref(),
                        self.m.param("relay_token"),
                        "Admit carries another token"
                    );
                    self.m.handle_admission(None, false, self.now);
                }
                CallEvent::Started(k) => {
                    assert!(self.admitted, "started before admission");
                    assert!(!self.started, "started twice");
                    self.started = true;
                    assert_eq!(k, self.m.agent_kind());
                }
                CallEvent::ConnectAgent(k) => {
                    assert!(self.started, "asked to connect before the start");
                    let gen = self.m.agent_generation();
                    assert!(
                        self.connect_asked.is_none() || gen != self.connect_gen,
                        "asked to connect twice for one agent generation"
                    );
                    self.connect_gen = gen;
                    self.connected = false;
                    assert!(!k.is_local(), "asked to connect local agent {k:?}");
                    assert_eq!(k, self.m.agent_kind());
                    self.connect_asked = Some(k);
                }
                CallEvent::CallTool {
                    id,
                    name: _,
                    arguments,
                } => {
                    assert!(arguments.is_object(), "tool arguments {arguments}");
                    self.tools.push(id);
                }
                CallEvent::CancelTool(id) => {
                    let i = self.tools.iter().position(|t| *t == id);
                    assert!(i.is_some(), "cancelled unknown tool call {id:?}");
                    self.tools.remove(i.unwrap_or(0));
                }
                // Events added to the machine later are not driven here.
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
    }

    /// One caller text frame, as `driver::on_caller` hands it in: decoded by the call's
    /// carrier codec, then whatever its reordering window releases.
    fn caller_frame(&mut self, frame: &[u8], scratch: &mut simd_json::Buffers) {
        let mut frame = frame.to_vec();
        match self.m.carrier_mut().decode(&mut frame, scratch) {
            Ok(Decoded::Event(ev)) => self.m.handle_caller(ev, self.now),
            Ok(Decoded::Held | Decoded::Late) => self.m.note_reordering(),
            Err(e) => self.m.handle_bad_input(Leg::Caller, e.kind(), &e),
        }
        while self.m.end_reason().is_none()
            && self.m.carrier_mut().take_released(&mut self.released)
        {
            let mut frame = std::mem::take(&mut self.released);
            match self.m.carrier_mut().decode_released(&mut frame, scratch) {
                Ok(ev) => self.m.handle_caller(ev, self.now),
                Err(e) => self.m.handle_bad_input(Leg::Caller, e.kind(), &e),
            }
            self.events();
        }
    }

    /// Drains `leg` as `driver::fill` + a completed write do, checking what comes out.
    fn drain(&mut self, leg: Leg) {
        if leg == Leg::Agent && !self.connected {
            return;
        }
        if !self.m.wants_transmit(leg) {
            assert!(
                !self.m.poll_transmit(leg, &mut self.buf, self.now),
                "{leg:?} had a message although wants_transmit was false: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            return;
        }
        let cap = match leg {
            Leg::Caller if self.notice => self.cfg.caller_outbox_bytes.max(NOTICE_BYTES),
            Leg::Caller => self.cfg.caller_outbox_bytes.max(1),
            _ => self
                .cfg
                .agent_outbox_bytes
                .max(self.cfg.early_audio_bytes)
                .max(1),
        };
        // Control messages: a few per step of the script; audio messages: at most one per
        // queued byte (the smallest chunk size is one byte) plus one per queued item.
        let max_msgs = 4 * self.steps + 2 * cap + 64;
        let mut msgs = 0;
        let mut audio = 0usize;
        while self.m.poll_transmit(leg, &mut self.buf, self.now) {
            msgs += 1;
            self.sent[at(leg)] += 1;
            assert!(
                msgs <= max_msgs,
                "{leg:?}: more than {max_msgs} messages in one drain"
            );
            let v = must_be_json("poll_transmit", &self.buf);
            match leg {
                Leg::Caller => audio += self.twilio_message(&v),
                _ => audio += self.agent_audio(&v),
            }
            assert!(
                audio <= cap,
                "{leg:?} outbox over its cap: one drain carried {audio} audio bytes, cap {cap} ({:?} agent)",
                self.m.agent_kind()
            );
        }
        self.m.handle_write_done(leg, self.now);
    }

    /// Checks a Twilio-bound message; returns its audio bytes.
    fn twilio_message(&mut self, v: &serde_json::Value) -> usize {
        let sid = self.m.stream_sid().to_owned();
        assert_eq!(v["streamSid"].as_str(), Some(sid.as_str()), "message {v}");
        let mut copy = self.buf.clone();
        let mut scratch = simd_json::Buffers::default();
        match twilio_decode(&mut copy, &mut scratch) {
            Ok(CallerEvent::Media(m)) => {
                let mut a = Vec::new();
                b64::decode(m.payload, &mut a).expect("own media payload");
                assert!(!a.is_empty(), "empty media message");
                let chunk = self.cfg.caller_chunk_bytes.max(1);
                assert!(
                    a.len() <= chunk,
                    "media of {} bytes, chunk {chunk}",
                    a.len()
                );
                a.len()
            }
            Ok(CallerEvent::Mark { name }) => {
                assert!(!name.is_empty());
                0
            }
            Ok(CallerEvent::Other { event: "clear" }) => 0,
            other => panic!("unexpected Twilio-bound message {other:?}"),
        }
    }

    /// Caller audio bytes in an agent-bound message (0 for other messages).
    fn agent_audio(&self, v: &serde_json::Value) -> usize {
        let payload = v["user_audio_chunk"].as_str().or(match v["type"].as_str() {
            Some("input.audio" | "input_audio_buffer.append") => v["audio"].as_str(),
            _ => None,
        });
        let Some(payload) = payload else { return 0 };
        let mut a = Vec::new();
        b64::decode(payload, &mut a).expect("own audio payload");
        a.len()
    }

    fn tick(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        // As the driver: the timers that are due fire, the driver acts on the events they
        // queued and writes what the legs owe, and goes round again at once while a deadline
        // is still due (a handler may arm one at `now`, as an agent failure schedules its
        // first reconnect). That must settle within a few rounds: a deadline that stays due
        // would make the driver's timer fire at once, again and again.
        for round in 0..=TICK_ROUNDS {
            if self.m.poll_timeout().is_some_and(|t| t <= self.now) {
                assert!(
                    round < TICK_ROUNDS,
                    "poll_timeout is {:?} in the past after {TICK_ROUNDS} rounds of timers (legs blocked: {:?})",
                    self.now - self.m.poll_timeout().unwrap_or(self.now),
                    self.blocked
                );
                self.m.handle_timeout(self.now);
            } else if round > 0 {
                break;
            }
            self.events();
            if self.m.end_reason().is_some() {
                return;
            }
            // Whether or not a leg is blocked (the driver then asks it for nothing).
            if !self.blocked[0] {
                self.drain(Leg::Caller);
            }
            if !self.blocked[1] {
                self.drain(Leg::Agent);
            }
            if self.m.end_reason().is_some() {
                return;
            }
        }
    }
}

fn digits(b: &[u8]) -> u64 {
    b.iter()
        .take_while(|c| c.is_ascii_digit())
        .fold(0u64, |n, &c| {
            n.saturating_mul(10).saturating_add(u64::from(c - b'0'))
        })
        .min(10_000_000)
}

/// `call::CallMachine` (a Twilio call) driven the way `call::driver` drives it, by a
/// fuzz-chosen script of Twilio frames, agent frames, clock steps, socket progress and
/// tool-webhook answers.
///
/// Input: records separated by NUL bytes. The first record is the configuration:
/// `[default agent % 4][sizes][flags]` (missing bytes are 0; other settings are the
/// relay's defaults; seeds keep NUL out of it with agent + 4 and bit 7, which is unused).
/// Every other record is one step, its first byte the operation:
/// - `T<json>`: a Twilio text frame, decoded by the call's carrier codec
///   (`CallMachine::carrier_mut`) and handed in with `handle_caller` (decode errors as
///   `handle_bad_input`, then whatever the codec's reordering window releases), as
///   `driver::on_caller` does; the `Admit` event after a `start` is answered at once with
///   `handle_admission(None, false, now)` (no token check, no older stream);
/// - `A<json>`: an agent text frame, decoded with the call's dialect, as `driver::on_agent`;
/// - `C`: the agent socket opened (only after the machine asked to connect);
/// - `t<digits>`: the clock moves on that many ms; due timers fire (`handle_timeout`), then
///   the legs that are not blocked are drained like the driver does;
/// - `x` / `y`: drain what the caller / agent leg owes (`poll_transmit` until `false`);
/// - `b<0|1>` / `p<0|1>` / `d<0|1>`: the caller (0) or agent (1) socket blocks / takes some
///   bytes / drains (`handle_write_blocked` / `handle_write_progress` / `handle_write_done`);
/// - `r<n><ok><text>`: the webhook answers pending tool call `n` (`ok` odd: `Ok(json or
///   string)`, else `Err(text)`);
/// - `D`: the relay's drain deadline (`handle_drain_deadline`; flags bits 4-5 configure a
///   200 ms notice, an empty one, or none).
///
/// Checks, besides "never panics / never loops":
/// - one `Admit` per call naming the start's call SID and `relay_token`, then one `Started`
///   for the call's agent, then (socket dialects only) one `ConnectAgent`;
/// - `wants_transmit(leg) == false` means `poll_transmit(leg)` has nothing (the driver
///   skips the leg on `false`);
/// - everything transmitted is valid JSON; Twilio messages decode with the relay's own codec,
///   carry the stream's SID, and media chunks are at most `caller_chunk_bytes`;
/// - outboxes stay bounded: one drain never yields more agent audio than
///   `caller_outbox_bytes` or more caller audio than the early/agent outbox caps, nor more
///   messages than the script could have caused;
/// - after the timers fired, `poll_timeout()` is in the future, whether or not a leg is
///   blocked (the driver would otherwise spin on a timer that is always due).
pub fn call_machine(data: &[u8]) {
    let mut recs = records(data);
    let cfg = Arc::new(settings(recs.next().unwrap_or_default()));
    let t0 = Instant::now();
    let mut h = Harness {
        m: CallMachine::new(cfg.clone(), CarrierKind::Twilio, t0),
        cfg,
        now: t0,
        connect_asked: None,
        connected: false,
        connect_gen: 0,
        blocked: [false, false],
        tools: Vec::new(),
        steps: 0,
        buf: Vec::new(),
        released: Vec::new(),
        admitted: false,
        started: false,
        notice: false,
        sent: [0, 0],
    };
    assert_eq!(h.m.carrier_kind(), CarrierKind::Twilio);
    let mut scratch = simd_json::Buffers::default();
    for rec in recs {
        if h.m.end_reason().is_some() {
            break;
        }
        h.steps += 1;
        let Some((&op, arg)) = rec.split_first() else {
            continue;
        };
        let leg = if arg.first() == Some(&b'1') {
            Leg::Agent
        } else {
            Leg::Caller
        };
        match op {
            b'T' => h.caller_frame(arg, &mut scratch),
            b'A' => {
                let mut frame = arg.to_vec();
                if let Some(d) = h.m.dialect_mut() {
                    match d.decode(&mut frame, &mut scratch) {
                        Ok(ev) => h.m.handle_agent(ev, h.now),
                        Err(e) => h.m.handle_bad_input(Leg::Agent, e.kind(), &e),
                    }
                }
            }
            b'C' if h.connect_asked.is_some() && !h.connected => {
                h.connected = true;
                h.m.handle_agent_connected();
            }
            b't' => h.tick(digits(arg)),
            b'D' => {
                let was_playing = h.notice;
                let playing = h.m.handle_drain_deadline(h.now);
                h.notice |= playing;
                // The notice starts (once), or the call ends at once.
                assert!(
                    playing || was_playing || h.m.end_reason().is_some(),
                    "drain deadline ignored"
                );
            }
            b'x' => h.drain(Leg::Caller),
            b'y' => h.drain(Leg::Agent),
            // The driver reports write progress only for a leg it holds a socket for.
            b'b' if leg == Leg::Caller || h.connected => {
                h.blocked[at(leg)] = true;
                h.m.handle_write_blocked(leg, h.now);
            }
            b'p' if h.blocked[at(leg)] => h.m.handle_write_progress(leg, h.now),
            b'd' => {
                h.blocked[at(leg)] = false;
                h.m.handle_write_done(leg, h.now);
            }
            b'r' => {
                if h.tools.is_empty() || arg.len() < 2 {
                    continue;
                }
                let id = h.tools.remove(usize::from(arg[0]) % h.tools.len());
                let text = String::from_utf8_lossy(&arg[2..]).into_owned();
                let (result, output) = if arg[1] & 1 == 1 {
                    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                    (ToolResult::Ok, Ok(v))
                } else {
                    (ToolResult::ErrorStatus, Err(text))
                };
                h.m.handle_tool_result(&id, (result, output).into(), h.now);
            }
            _ => {}
        }
        h.events();
    }
    // The end of the script: what is queued still encodes cleanly.
    h.blocked = [false, false];
    h.drain(Leg::Caller);
    h.drain(Leg::Agent);
    let summary = h.m.summary(h.now, 0);
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!(
            "steps {} sent caller {} agent {} pending tools {} end {:?} summary {:?}",
            h.steps,
            h.sent[0],
            h.sent[1],
            h.tools.len(),
            h.m.end_reason(),
            summary
        );
    }
}
