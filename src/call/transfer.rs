//! A transfer's update of the live call, and the relay-signed URLs it carries: the
//! dial-result URL (the carrier posts `DialCallStatus` there when the dial ends) and the
//! whisper URL (run on the answering party's leg). Everything the answers need travels in
//! the URLs' signed queries, so any relay instance answers them with no shared state.
//!
//! Dial-result query: `call=<call SID>&agent=<dialect>` then the call's own stream
//! parameters as `p.<name>=<value>` (for the agent a failed transfer returns to), then
//! `exp` and `sig` ([`UrlPurpose::DialResult`]). Whisper query: `summary=<text>`, `exp`,
//! `sig` ([`UrlPurpose::Whisper`]). The update markup stays within
//! [`MAX_UPDATE_MARKUP_CHARS`]: parameters that do not fit are left out (newest first), then
//! the summary is shortened.

use crate::agent::AgentKind;
use crate::auth::tokens::{StreamTokens, UrlPurpose};
use crate::carrier::dial::{DialMarkup, MAX_UPDATE_MARKUP_CHARS};
use crate::carrier::{CarrierKind, TransferDest};

/// Stream parameters a dial result never carries back: the carrier posts `From`, `To` and
/// `CallSid` again, a new `relay_token` is minted, and `transfer_failed` is set anew.
const NOT_CARRIED: [&str; 5] = ["relay_token", "transfer_failed", "From", "To", "CallSid"];

/// Prefix of a carried stream parameter in the dial-result query.
const PARAM_PREFIX: &str = "p.";

/// What a transfer's update needs to know about the call.
#[derive(Debug, Clone, Copy)]
pub struct TransferCall<'a> {
    /// The carrier.
    pub carrier: CarrierKind,
    /// The relay's public host (`relay.example.com[:port]`).
    pub host: &'a str,
    /// The relay's URL signing key.
    pub tokens: &'a StreamTokens,
    /// The call's id at the carrier.
    pub call_sid: &'a str,
    /// The call's agent.
    pub agent: AgentKind,
    /// The call's stream parameters (name, value).
    pub params: &'a [(String, String)],
    /// Ring time, seconds (clamped to the carrier's maximum).
    pub timeout_secs: u32,
}

/// The markup was too long even with no parameters and no summary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the transfer markup exceeds {MAX_UPDATE_MARKUP_CHARS} characters")]
pub struct MarkupTooLong;

/// The markup a live call is updated with to transfer it to `dest`, with a whisper of
/// `summary` when there is one, signed at `now_unix`.
///
/// # Errors
/// [`MarkupTooLong`] when not even the bare `<Dial>` fits.
pub fn update_markup(
    c: TransferCall<'_>,
    dest: &TransferDest,
    summary: Option<&str>,
    now_unix: u64,
) -> Result<String, MarkupTooLong> {
    let carried: Vec<&(String, String)> = c
        .params
        .iter()
        .filter(|(k, _)| !NOT_CARRIED.contains(&k.as_str()))
        .collect();
    let mut keep = carried.len();
    let mut summary: Option<String> = summary.map(str::to_owned).filter(|s| !s.trim().is_empty());
    loop {
        let markup = build(c, dest, &carried[..keep], summary.as_deref(), now_unix);
        if markup.chars().count() <= MAX_UPDATE_MARKUP_CHARS {
            if keep < carried.len() {
                tracing::warn!(
                    left_out = carried.len() - keep,
                    "transfer: stream parameters left out of the dial-result URL (markup size limit)"
                );
            }
            return Ok(markup);
        }
        if keep > 0 {
            keep -= 1;
        } else if let Some(s) = summary.as_mut().filter(|s| s.chars().count() > 16) {
            let half = s.chars().count() / 2;
            *s = s.chars().take(half).collect();
        } else if summary.is_some() {
            summary = None;
        } else {
            return Err(MarkupTooLong);
        }
    }
}

fn build(
    c: TransferCall<'_>,
    dest: &TransferDest,
    params: &[&(String, String)],
    summary: Option<&str>,
    now_unix: u64,
) -> String {
    let routes = c.carrier.routes();
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("call", c.call_sid)
        .append_pair("agent", c.agent.as_str());
    for (k, v) in params {
        q.append_pair(&format!("{PARAM_PREFIX}{k}"), v);
    }
    let action_url = format!(
        "https://{}{}?{}",
        c.host,
        routes.dial_result,
        c.tokens
            .sign_query_for(UrlPurpose::DialResult, &q.finish(), now_unix)
    );
    let whisper_url = summary.map(|s| {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("summary", s)
            .finish();
        format!(
            "https://{}{}?{}",
            c.host,
            routes.whisper,
            c.tokens.sign_query_for(UrlPurpose::Whisper, &q, now_unix)
        )
    });
    let control = c.carrier.control();
    control.transfer_markup(DialMarkup {
        dest,
        action_url: &action_url,
        whisper_url: whisper_url.as_deref(),
        timeout_secs: c.timeout_secs.min(control.max_dial_timeout_secs()),
        answer_on_bridge: true,
    })
}

/// A transfer's REST update of the live call, in flight.
pub type UpdateFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Longest a transfer's REST update may take (the machine gives up a little later).
pub const UPDATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The REST update that redirects `m`'s call to `dest` (the driver polls it and hands the
/// result to [`crate::call::CallMachine::handle_call_update`]).
///
/// # Errors
/// Why no update can be sent (no public host or signing key, markup too long).
pub fn redirect(
    ctx: &std::sync::Arc<crate::call::CallContext>,
    m: &crate::call::CallMachine,
    dest: &TransferDest,
    summary: Option<&str>,
) -> Result<UpdateFuture, String> {
    let (Some(host), Some(tokens)) = (&ctx.public_host, &ctx.tokens) else {
        return Err("transfers need --public-host and stream tokens".to_owned());
    };
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let markup = update_markup(
        TransferCall {
            carrier: m.carrier_kind(),
            host,
            tokens,
            call_sid: m.call_sid(),
            agent: m.agent_kind(),
            params: m.stream_parameters(),
            timeout_secs: ctx.settings.control.dial_timeout_secs,
        },
        dest,
        summary,
        now_unix,
    )
    .map_err(|e| e.to_string())?;
    let (c, carrier, call_sid) = (ctx.clone(), m.carrier_kind(), m.call_sid().to_owned());
    Ok(Box::pin(async move {
        let update = carrier.control().update_call(
            &c.http,
            &c.carriers,
            &call_sid,
            crate::carrier::CallUpdate::Markup(markup),
        );
        match tokio::time::timeout(UPDATE_TIMEOUT, update).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the carrier's REST API did not answer in time".to_owned()),
        }
    }))
}

/// A dial-result query, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialResultQuery {
    /// The call the transfer was for.
    pub call_sid: String,
    /// Its agent, to return to.
    pub agent: Option<AgentKind>,
    /// Its stream parameters (name, value), in order.
    pub params: Vec<(String, String)>,
}

/// Reads the part before `sig` of a verified dial-result query.
pub fn parse_dial_result(signed: &str) -> DialResultQuery {
    let mut q = DialResultQuery {
        call_sid: String::new(),
        agent: None,
        params: Vec::new(),
    };
    for (k, v) in form_urlencoded::parse(signed.as_bytes()) {
        match k.as_ref() {
            "call" => q.call_sid = v.into_owned(),
            "agent" => q.agent = AgentKind::from_name(&v),
            k => {
                if let Some(name) = k.strip_prefix(PARAM_PREFIX) {
                    q.params.push((name.to_owned(), v.into_owned()));
                }
            }
        }
    }
    q
}

/// Reads the summary of a verified whisper query.
pub fn parse_whisper(signed: &str) -> Option<String> {
    form_urlencoded::parse(signed.as_bytes())
        .find(|(k, _)| k == "summary")
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(tokens: &'a StreamTokens, params: &'a [(String, String)]) -> TransferCall<'a> {
        TransferCall {
            carrier: CarrierKind::Twilio,
            host: "relay.example.com",
            tokens,
            call_sid: "CA0123456789abcdef0123456789abcdef",
            agent: AgentKind::Openai,
            params,
            timeout_secs: 30,
        }
    }

    fn attr<'a>(xml: &'a str, name: &str) -> &'a str {
        let start = xml.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        &xml[start..start + xml[start..].find('"').unwrap()]
    }

    #[test]
    fn the_dial_result_url_carries_the_call_back_to_its_agent() {
        let t = StreamTokens::new(b"k");
        let params = vec![
            ("From".to_owned(), "+15550001111".to_owned()),
            ("relay_token".to_owned(), "tok".to_owned()),
            ("prompt".to_owned(), "Be brief & kind".to_owned()),
        ];
        let dest = TransferDest::Number("+15551230001".into());
        let x = update_markup(call(&t, &params), &dest, Some("VIP <caller>"), 1000).unwrap();
        let action = attr(&x, "action").replace("&amp;", "&");
        let (path, query) = action.split_once('?').unwrap();
        assert_eq!(path, "https://relay.example.com/twiml/dial-result");
        let signed = t
            .verify_query_for(UrlPurpose::DialResult, query, 2000)
            .unwrap();
        let q = parse_dial_result(signed);
        assert_eq!(q.call_sid, "CA0123456789abcdef0123456789abcdef");
        assert_eq!(q.agent, Some(AgentKind::Openai));
        assert_eq!(
            q.params,
            vec![("prompt".to_owned(), "Be brief & kind".to_owned())]
        );
        let whisper = x.split("<Number url=\"").nth(1).unwrap();
        let whisper = whisper[..whisper.find('"').unwrap()].replace("&amp;", "&");
        let (_, wq) = whisper.split_once('?').unwrap();
        let signed = t.verify_query_for(UrlPurpose::Whisper, wq, 2000).unwrap();
        assert_eq!(parse_whisper(signed).as_deref(), Some("VIP <caller>"));
        assert!(
            x.contains(">+15551230001</Number></Dial></Response>"),
            "{x}"
        );
    }

    #[test]
    fn long_parameters_are_left_out_to_fit_the_update_limit() {
        let t = StreamTokens::new(b"k");
        let params: Vec<(String, String)> = (0..12)
            .map(|i| (format!("v{i}"), "é".repeat(400)))
            .collect();
        let dest = TransferDest::Sip("sip:desk@pbx.example.com".into());
        let long_summary = "ü".repeat(500);
        let x = update_markup(call(&t, &params), &dest, Some(&long_summary), 1000).unwrap();
        assert!(x.chars().count() <= MAX_UPDATE_MARKUP_CHARS, "{}", x.len());
        let action = attr(&x, "action").replace("&amp;", "&");
        let signed = t
            .verify_query_for(
                UrlPurpose::DialResult,
                action.split_once('?').unwrap().1,
                1000,
            )
            .unwrap();
        let q = parse_dial_result(signed);
        assert!(q.params.len() < 12);
        assert_eq!(
            q.params[..],
            params[..q.params.len()],
            "the oldest parameters are kept"
        );
    }
}
