//! Why a call ended: one classified reason per call, a normal ending is not an error.
//! [`EndReason::outcome`] is the `outcome` label of `relay_calls_total`; the close codes
//! follow RFC 6455 §7.4.1.

use crate::obs::labels::{ErrorKind, Outcome};

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The carrier sent `stop` with no relay action in progress: the caller hung up.
    CallerHangup,
    /// The carrier's socket closed (close frame or TCP end) without `stop`.
    CallerClosed,
    /// The caller leg broke the protocol in a way that ends the call; carries the kind and
    /// the close code owed (1002, 1007, 1009).
    CallerError {
        /// Error kind (metric label).
        kind: ErrorKind,
        /// Close code sent to the carrier.
        close_code: u16,
    },
    /// The carrier sent nothing for `--twilio-idle-timeout-secs` after `start`.
    CallerIdle,
    /// The carrier's socket accepted nothing for `--write-stall-timeout-ms`.
    CallerStalled,
    /// The stream's media format is not G.711 μ-law 8000 Hz mono (the relay never transcodes).
    MediaFormatUnsupported,
    /// The agent closed its socket; carries its close code.
    AgentClosed(Option<u16>),
    /// The agent ended the session cleanly (AssemblyAI `session.ended`).
    AgentEnded,
    /// The agent leg failed after connecting (read error, fatal error event); carries the kind.
    AgentError(ErrorKind),
    /// The agent could not be connected, or did not report ready in time.
    AgentConnectFailed(ErrorKind),
    /// The agent socket accepted nothing for `--write-stall-timeout-ms`.
    AgentStalled,
    /// The agent's audio formats are not μ-law 8 kHz both ways.
    AudioFormatMismatch,
    /// No `start` arrived in time after the upgrade.
    StartTimeout,
    /// The relay is shutting down: the drain deadline closed the call (close 1001).
    Shutdown,
    /// The call reached `--max-call-duration-secs`.
    MaxDuration,
    /// The stream's `relay_token` was missing or wrong (authenticated mode); carries the kind.
    TokenRejected(ErrorKind),
    /// A newer stream for the same call replaced this one.
    Replaced,
    /// The agent ended the call (`end_call`, its clean close after one) and the carrier
    /// confirmed the goodbye played (or the safety cap passed).
    AgentEndCall,
    /// The carrier redirected the call to a person after the relay's REST update.
    Transferred,
    /// A transfer could not be placed and there was no agent to go back to.
    TransferFailed,
    /// An outbound call reached voicemail and the message was heard to its end.
    VoicemailLeft,
}

impl EndReason {
    /// The `outcome` label of `relay_calls_total`.
    pub fn outcome(&self) -> Outcome {
        match self {
            EndReason::CallerHangup => Outcome::CallerHangup,
            EndReason::CallerClosed => Outcome::CallerClosed,
            EndReason::CallerError { .. } => Outcome::CallerError,
            EndReason::CallerIdle => Outcome::CallerIdle,
            EndReason::CallerStalled => Outcome::CallerStalled,
            EndReason::MediaFormatUnsupported => Outcome::MediaFormatUnsupported,
            EndReason::AgentClosed(_) => Outcome::AgentClosed,
            EndReason::AgentEnded => Outcome::AgentEnded,
            EndReason::AgentError(_) => Outcome::AgentError,
            EndReason::AgentConnectFailed(_) => Outcome::AgentConnectFailed,
            EndReason::AgentStalled => Outcome::AgentStalled,
            EndReason::AudioFormatMismatch => Outcome::AudioFormatMismatch,
            EndReason::StartTimeout => Outcome::StartTimeout,
            EndReason::Shutdown => Outcome::Shutdown,
            EndReason::MaxDuration => Outcome::MaxDuration,
            EndReason::TokenRejected(_) => Outcome::TokenRejected,
            EndReason::Replaced => Outcome::Replaced,
            EndReason::AgentEndCall => Outcome::AgentEndCall,
            EndReason::Transferred => Outcome::Transferred,
            EndReason::TransferFailed => Outcome::TransferFailed,
            EndReason::VoicemailLeft => Outcome::VoicemailLeft,
        }
    }

    /// Close code and reason sent to the carrier (RFC 6455 §7.4.1).
    pub fn caller_close(&self) -> (u16, &'static str) {
        match self {
            EndReason::Shutdown => (1001, "relay shutting down"),
            EndReason::CallerError { close_code, .. } => (*close_code, "protocol error"),
            EndReason::MediaFormatUnsupported => {
                (1003, "media format must be audio/x-mulaw 8000 Hz mono")
            }
            EndReason::CallerIdle => (1000, "no media"),
            EndReason::CallerStalled => (1011, "not reading"),
            EndReason::AgentConnectFailed(_) | EndReason::AudioFormatMismatch => {
                (1011, "agent unavailable")
            }
            EndReason::AgentError(_) | EndReason::AgentStalled => (1011, "agent error"),
            EndReason::TokenRejected(_) => (1008, "invalid stream token"),
            EndReason::Replaced => (1000, "replaced by a newer stream"),
            _ => (1000, "call ended"),
        }
    }

    /// Close code and reason sent to the agent.
    pub fn agent_close(&self) -> (u16, &'static str) {
        match self {
            EndReason::Shutdown => (1001, "relay shutting down"),
            EndReason::AgentError(ErrorKind::WebsocketProtocol) => (1002, "protocol error"),
            EndReason::AgentError(ErrorKind::InvalidUtf8) => (1007, "invalid UTF-8"),
            EndReason::AgentStalled => (1011, "not reading"),
            _ => (1000, "call ended"),
        }
    }

    /// Whether the end is a failure worth a `warn` summary line.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            EndReason::CallerError { .. }
                | EndReason::CallerIdle
                | EndReason::CallerStalled
                | EndReason::MediaFormatUnsupported
                | EndReason::AgentError(_)
                | EndReason::AgentConnectFailed(_)
                | EndReason::AgentStalled
                | EndReason::AudioFormatMismatch
                | EndReason::StartTimeout
                | EndReason::TokenRejected(_)
                | EndReason::TransferFailed
        )
    }

    /// Whether the caller's socket is already gone (nothing can be written to it).
    pub fn caller_gone(&self) -> bool {
        matches!(self, EndReason::CallerClosed)
    }

    /// Whether the agent's socket is already gone.
    pub fn agent_gone(&self) -> bool {
        matches!(self, EndReason::AgentClosed(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_a_reason_and_valid_close_codes() {
        let all = [
            EndReason::CallerHangup,
            EndReason::CallerClosed,
            EndReason::CallerError {
                kind: ErrorKind::WebsocketProtocol,
                close_code: 1002,
            },
            EndReason::CallerIdle,
            EndReason::CallerStalled,
            EndReason::MediaFormatUnsupported,
            EndReason::AgentClosed(None),
            EndReason::AgentEnded,
            EndReason::AgentError(ErrorKind::Io),
            EndReason::AgentConnectFailed(ErrorKind::Connect),
            EndReason::AgentStalled,
            EndReason::AudioFormatMismatch,
            EndReason::StartTimeout,
            EndReason::Shutdown,
            EndReason::MaxDuration,
            EndReason::TokenRejected(ErrorKind::TokenInvalid),
            EndReason::Replaced,
            EndReason::AgentEndCall,
            EndReason::Transferred,
            EndReason::TransferFailed,
            EndReason::VoicemailLeft,
        ];
        let outcomes: std::collections::HashSet<Outcome> =
            all.iter().map(EndReason::outcome).collect();
        assert_eq!(outcomes.len(), Outcome::COUNT, "one reason per outcome");
        for r in &all {
            assert!(crate::wire::ws::is_valid_close_code(r.caller_close().0));
            assert!(crate::wire::ws::is_valid_close_code(r.agent_close().0));
        }
        assert_eq!(
            EndReason::AgentError(ErrorKind::WebsocketProtocol)
                .agent_close()
                .0,
            1002
        );
        assert_eq!(
            EndReason::AgentError(ErrorKind::InvalidUtf8)
                .agent_close()
                .0,
            1007
        );
    }
}
