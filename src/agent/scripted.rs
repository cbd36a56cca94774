//! The scripted agent: a local dialect (no socket, no account) that plays committed μ-law
//! clips and makes tool calls and call actions from a JSON script, as a smoke-test agent for
//! a relay deployment (the whole call path — markup, stream, marks, barge-in-free playout,
//! tools, `end_call` — without a vendor account).
//!
//! Script (`--scripted-agent-script FILE`, JSON; without one the built-in script greets and
//! then answers every caller turn with the same clip):
//! ```json
//! {"steps": [
//!   {"on": "start", "say": "builtin"},
//!   {"on": "caller_turn", "tool": {"name": "lookup_order", "arguments": {"order": "42"}}},
//!   {"on": "tool_result", "say": "/etc/relay/clips/shipped.wav"},
//!   {"on": "caller_turn", "say": "builtin", "end_call": true}
//! ]}
//! ```
//! Steps run in order, each when its `on` comes: `start` (at once), `caller_turn` (the
//! caller spoke and stopped, by the relay's speech detector), `tool_result` (the previous
//! step's tool call was answered), `dtmf` (keypad digits). `say` is a μ-law 8 kHz WAV path or
//! `builtin` (a committed clip, `assets/scripted_hello.wav`, made with
//! `espeak-ng -v en-us -s 150 -w f.wav "Hello. This is the media relay test agent."` and
//! `sox f.wav -r 8000 -c 1 -e u-law -b 8 scripted_hello.wav`), played in real time (20 ms
//! frames); `tool` calls a tool; `end_call` asks the relay to end the call once the clip was
//! heard. After the last step, the last `caller_turn` step repeats.

use super::{
    CallParams, ConnectError, ConnectSpec, Dialect, DialectInfo, LocalEvent, ReplyKey,
    SettingsError, SharedSettings, ToolOutput, END_CALL_TOOL,
};
use crate::audio::vad::{SpeechDetector, SpeechEvent};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The built-in clip.
const BUILTIN_CLIP: &[u8] = include_bytes!("assets/scripted_hello.wav");

/// Most steps in a script.
pub const MAX_STEPS: usize = 64;

/// Scripted agent flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "scripted_flags")]
pub struct Args {
    /// JSON script of the scripted agent (see the module docs); the built-in script greets
    /// and answers every caller turn.
    #[arg(long, env = "RELAY_SCRIPTED_AGENT_SCRIPT")]
    pub scripted_agent_script: Option<std::path::PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// When a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// At once.
    Start,
    /// The caller spoke and stopped.
    CallerTurn,
    /// The previous tool call was answered.
    ToolResult,
    /// Keypad digits arrived.
    Dtmf,
}

/// One step of the script.
#[derive(Debug, Clone)]
pub struct Step {
    /// When.
    pub on: Trigger,
    /// The clip to play (raw μ-law).
    pub say: Option<Arc<[u8]>>,
    /// A tool to call: name and arguments.
    pub tool: Option<(String, serde_json::Value)>,
    /// End the call after the clip.
    pub end_call: bool,
}

/// The scripted agent's settings: the parsed script.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The steps.
    pub steps: Arc<[Step]>,
}

fn clip(say: &str) -> Result<Arc<[u8]>, SettingsError> {
    let bytes = if say == "builtin" {
        BUILTIN_CLIP.to_vec()
    } else {
        std::fs::read(say)
            .map_err(|e| SettingsError(format!("scripted agent: cannot read {say}: {e}")))?
    };
    let audio = crate::audio::mulaw_from_file_bytes(&bytes)
        .map_err(|e| SettingsError(format!("scripted agent: {say}: {e}")))?;
    Ok(Arc::from(audio))
}

/// Parses a script (see the module docs).
///
/// # Errors
/// [`SettingsError`] naming what is wrong.
pub fn parse_script(json: &str) -> Result<Vec<Step>, SettingsError> {
    let bad = |m: &str| SettingsError(format!("scripted agent script: {m}"));
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let steps = v
        .get("steps")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("needs a \"steps\" array"))?;
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return Err(bad(&format!("1 to {MAX_STEPS} steps")));
    }
    steps
        .iter()
        .map(|s| {
            let on = match s.get("on").and_then(|o| o.as_str()).unwrap_or("caller_turn") {
                "start" => Trigger::Start,
                "caller_turn" => Trigger::CallerTurn,
                "tool_result" => Trigger::ToolResult,
                "dtmf" => Trigger::Dtmf,
                other => return Err(bad(&format!("unknown \"on\": {other:?}"))),
            };
            let say = s.get("say").and_then(|x| x.as_str()).map(clip).transpose()?;
            let tool = match s.get("tool") {
                None => None,
                Some(t) => Some((
                    t.get("name")
                        .and_then(|n| n.as_str())
                        .ok_or_else(|| bad("a tool needs a \"name\""))?
                        .to_owned(),
                    t.get("arguments").cloned().unwrap_or(serde_json::json!({})),
                )),
            };
            let end_call = s.get("end_call").and_then(|e| e.as_bool()).unwrap_or(false);
            Ok(Step {
                on,
                say,
                tool,
                end_call,
            })
        })
        .collect()
}

impl Dialect for Session {
    type Args = Args;
    type Settings = Settings;
    const LOCAL: bool = true;
    const INFO: DialectInfo = DialectInfo {
        title: "Scripted (built in)",
        connects_to: "nothing: runs inside the relay, plays clips from a JSON script",
        barge_in: "none",
        tools: "the script's `tool` steps (to the webhook); `end_call` steps end the call after the clip",
        dtmf: "a `dtmf` step runs",
        setup: "nothing (`--scripted-agent-script` for your own script)",
    };

    fn settings(a: &Args) -> Result<Option<Settings>, SettingsError> {
        let steps = match &a.scripted_agent_script {
            Some(p) if !p.as_os_str().is_empty() => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    SettingsError(format!("--scripted-agent-script {}: {e}", p.display()))
                })?;
                parse_script(&text)?
            }
            _ => parse_script(
                r#"{"steps":[{"on":"start","say":"builtin"},{"on":"caller_turn","say":"builtin"}]}"#,
            )?,
        };
        Ok(Some(Settings {
            steps: Arc::from(steps),
        }))
    }

    fn connect(_: &Settings, _: &CallParams) -> Result<Option<ConnectSpec>, ConnectError> {
        Ok(None)
    }

    fn new(s: &Settings, _: &SharedSettings, _: CallParams) -> Session {
        Session {
            steps: s.steps.clone(),
            next: 0,
            playing: None,
            pending: Vec::new(),
            reply: 0,
            speech: SpeechDetector::default(),
            tool_waiting: None,
            started: false,
            calls: 0,
        }
    }

    fn current_reply(&self) -> ReplyKey {
        ReplyKey(self.reply)
    }

    fn coalesces_small_deltas(&self) -> bool {
        false
    }

    fn offers_relay_tools(&self) -> bool {
        true
    }

    fn on_caller_audio(&mut self, now: Instant, audio: &[u8]) -> u64 {
        if let Some(SpeechEvent::Ended(_)) = self.speech.push(audio, now) {
            self.trigger(Trigger::CallerTurn, now);
        }
        0
    }

    fn next_due(&self) -> Option<Instant> {
        if !self.started || !self.pending.is_empty() {
            return Some(Instant::now());
        }
        self.playing.as_ref().map(|p| p.due)
    }

    fn poll_local(&mut self, now: Instant, audio: &mut Vec<u8>) -> Option<LocalEvent> {
        if !self.started {
            self.started = true;
            self.trigger(Trigger::Start, now);
        }
        if !self.pending.is_empty() {
            return Some(self.pending.remove(0));
        }
        let p = self.playing.as_mut()?;
        if now < p.due {
            return None;
        }
        let n = (p.clip.len() - p.pos).min(160);
        audio.clear();
        audio.extend_from_slice(&p.clip[p.pos..p.pos + n]);
        p.pos += n;
        p.due += Duration::from_millis(20);
        if p.pos >= p.clip.len() {
            let end_call = p.end_call;
            self.playing = None;
            self.pending.push(LocalEvent::ReplyDone);
            if end_call {
                self.calls += 1;
                self.pending.push(LocalEvent::ToolCall {
                    id: format!("scripted_end_{}", self.calls),
                    name: END_CALL_TOOL.to_owned(),
                    arguments: serde_json::json!({ "reason": "the script ended the call" }),
                });
            }
        }
        Some(LocalEvent::Audio(ReplyKey(self.reply)))
    }

    fn on_tool_result(&mut self, id: &str, _output: &ToolOutput, now: Instant) {
        if self.tool_waiting.as_deref() == Some(id) {
            self.tool_waiting = None;
            self.trigger(Trigger::ToolResult, now);
        }
    }

    fn on_dtmf(&mut self, _digits: &str, now: Instant) {
        self.trigger(Trigger::Dtmf, now);
    }
}

#[derive(Debug)]
struct Playing {
    clip: Arc<[u8]>,
    pos: usize,
    due: Instant,
    end_call: bool,
}

/// One call's scripted agent.
#[derive(Debug)]
pub struct Session {
    steps: Arc<[Step]>,
    next: usize,
    playing: Option<Playing>,
    pending: Vec<LocalEvent>,
    reply: u64,
    speech: SpeechDetector,
    tool_waiting: Option<String>,
    started: bool,
    calls: u32,
}

impl Session {
    /// `on` happened at `now`: runs the next step if it waits for it (while a clip plays,
    /// caller turns are ignored).
    fn trigger(&mut self, on: Trigger, now: Instant) {
        if self.playing.is_some() && on == Trigger::CallerTurn {
            return;
        }
        let step = match self.steps.get(self.next) {
            Some(s) if s.on == on => {
                self.next += 1;
                s.clone()
            }
            // After the last step, the last caller-turn step repeats.
            None if on == Trigger::CallerTurn => {
                match self.steps.iter().rev().find(|s| s.on == Trigger::CallerTurn) {
                    Some(s) => s.clone(),
                    None => return,
                }
            }
            _ => return,
        };
        if let Some((name, arguments)) = step.tool {
            self.calls += 1;
            let id = format!("scripted_{}", self.calls);
            self.tool_waiting = Some(id.clone());
            self.pending.push(LocalEvent::ToolCall {
                id,
                name,
                arguments,
            });
        }
        if let Some(clip) = step.say.filter(|c| !c.is_empty()) {
            self.reply += 1;
            self.pending.push(LocalEvent::ReplyStarted);
            self.playing = Some(Playing {
                clip,
                pos: 0,
                due: now,
                end_call: step.end_call,
            });
        } else if step.end_call {
            self.calls += 1;
            self.pending.push(LocalEvent::ToolCall {
                id: format!("scripted_end_{}", self.calls),
                name: END_CALL_TOOL.to_owned(),
                arguments: serde_json::json!({}),
            });
        }
        // A step that waits for nothing more runs at once.
        if self.steps.get(self.next).is_some_and(|s| s.on == Trigger::Start) {
            self.trigger(Trigger::Start, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Settings {
        Settings {
            steps: Arc::from(parse_script(json).unwrap()),
        }
    }

    fn run(s: &mut Session, from: Instant, to_ms: u64) -> Vec<String> {
        let mut out = Vec::new();
        let mut audio = Vec::new();
        let mut t = from;
        while t <= from + Duration::from_millis(to_ms) {
            while let Some(ev) = s.poll_local(t, &mut audio) {
                out.push(match ev {
                    LocalEvent::Audio(_) => format!("audio{}", audio.len()),
                    other => format!("{other:?}").chars().take(30).collect(),
                });
            }
            t += Duration::from_millis(20);
        }
        out
    }

    #[test]
    fn the_builtin_script_greets_at_once_in_real_time_frames() {
        let st = Session::settings(&Args::default()).unwrap().unwrap();
        let mut s = Session::new(&st, &SharedSettings::default(), CallParams::default());
        let t0 = Instant::now();
        let ev = run(&mut s, t0, 200);
        assert_eq!(ev[0], "ReplyStarted");
        assert_eq!(ev[1..].iter().filter(|e| *e == "audio160").count(), 11, "{ev:?}");
    }

    #[test]
    fn tool_steps_wait_for_their_result_and_end_call_follows_the_clip() {
        let st = settings(
            r#"{"steps":[{"on":"start","tool":{"name":"lookup","arguments":{"n":1}}},
               {"on":"tool_result","say":"builtin","end_call":true}]}"#,
        );
        let mut s = Session::new(&st, &SharedSettings::default(), CallParams::default());
        let t0 = Instant::now();
        let ev = run(&mut s, t0, 100);
        assert!(ev[0].starts_with("ToolCall"), "{ev:?}");
        assert_eq!(ev.len(), 1, "nothing plays before the result");
        s.on_tool_result("scripted_1", &Ok(serde_json::json!({})), t0);
        let ev = run(&mut s, t0, 10_000);
        assert_eq!(ev[0], "ReplyStarted");
        assert!(ev.iter().rev().nth(1).unwrap() == "ReplyDone");
        assert!(ev.last().unwrap().contains("scripted_end"), "the end_call tool call: {ev:?}");
    }

    #[test]
    fn bad_scripts_are_refused_with_a_reason() {
        assert!(parse_script("{}").unwrap_err().0.contains("steps"));
        assert!(parse_script(r#"{"steps":[{"on":"later"}]}"#)
            .unwrap_err()
            .0
            .contains("unknown"));
        assert!(parse_script(r#"{"steps":[{"say":"/no/such.wav"}]}"#).is_err());
    }
}
