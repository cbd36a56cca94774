//! The relay's own call tools (`end_call`, `transfer_call`): their definitions as declared to
//! dialects with declared tools (AssemblyAI, OpenAI), and the tool list a session offers.

use super::{function_tools, CallParams, SharedSettings};

/// The names of the relay's built-in call tools.
pub const END_CALL_TOOL: &str = "end_call";
/// See [`END_CALL_TOOL`].
pub const TRANSFER_CALL_TOOL: &str = "transfer_call";

/// The relay's built-in call tools as function definitions: `end_call {reason?}` always,
/// `transfer_call {target, reason?, summary?}` when there are targets to name (listed in its
/// description and as an enum).
pub fn call_tool_definitions(targets: &[String], any_number: bool) -> Vec<serde_json::Value> {
    use serde_json::json;
    let mut v = vec![json!({
        "type": "function",
        "name": END_CALL_TOOL,
        "description": "End the phone call. Say your goodbye first: the call ends once the caller has heard it.",
        "parameters": {
            "type": "object",
            "properties": { "reason": { "type": "string", "description": "Why the call ends." } },
        },
    })];
    if !targets.is_empty() || any_number {
        let mut target = json!({
            "type": "string",
            "description": if any_number {
                format!("One of: {}, or a phone number in E.164 form (+15551230001).", targets.join(", "))
            } else {
                format!("One of: {}.", targets.join(", "))
            },
        });
        if !any_number {
            target["enum"] = json!(targets);
        }
        v.push(json!({
            "type": "function",
            "name": TRANSFER_CALL_TOOL,
            "description": format!(
                "Transfer the caller to a person ({}). Tell the caller first that you are transferring them: the transfer starts once they have heard you.",
                targets.join(", ")
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "target": target,
                    "reason": { "type": "string", "description": "Why the caller is transferred." },
                    "summary": { "type": "string", "description": "A short summary of the call for the person who answers (under 500 characters)." },
                },
                "required": ["target"],
            },
        }));
    }
    v
}

/// The names of the relay's recording tools (declared when calls are recorded).
pub const PAUSE_RECORDING_TOOL: &str = "pause_recording";
/// See [`PAUSE_RECORDING_TOOL`].
pub const RESUME_RECORDING_TOOL: &str = "resume_recording";

/// The relay's recording tools as function definitions: `pause_recording` and
/// `resume_recording`, no parameters (PCI: pause before the caller reads out card details).
pub fn recording_tool_definitions() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!({
            "type": "function",
            "name": PAUSE_RECORDING_TOOL,
            "description": "Pause the call recording before the caller gives payment card or other sensitive details. Both sides are silent in the recording until it is resumed.",
            "parameters": { "type": "object", "properties": {} },
        }),
        json!({
            "type": "function",
            "name": RESUME_RECORDING_TOOL,
            "description": "Resume the call recording once the sensitive details were given.",
            "parameters": { "type": "object", "properties": {} },
        }),
    ]
}

/// The tools a dialect with declared tools offers: the call's `tools` parameter or the
/// configured ones, then the relay's call tools (a configured tool of the same name wins).
pub(crate) fn offered_tools(p: &CallParams, shared: &SharedSettings) -> Vec<serde_json::Value> {
    let mut tools = function_tools(p.tools.as_ref().unwrap_or(&shared.tools));
    for t in &shared.call_tools {
        if !tools.iter().any(|o| o.get("name") == t.get("name")) {
            tools.push(t.clone());
        }
    }
    tools
}
