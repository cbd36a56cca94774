//! Binding media streams to calls, with no per-instance state.
//!
//! The `X-Twilio-Signature` on a stream upgrade is the same for every call to the same URL
//! (the stream URL has no query and no body), so it proves the request came from Twilio but
//! not which call it belongs to. The relay therefore puts a `relay_token` `<Parameter>` in
//! every TwiML it returns, `relay_token = HMAC-SHA256(token secret, CallSid)`, and checks it
//! against `start.callSid` before any audio reaches an agent. Any instance that shares the
//! token secret can check any call's token.
//!
//! Outbound calls get the same binding: `/outbound-call` creates the call with a `Url` on the
//! relay (`/twiml/outbound?…&exp=…&sig=…`) instead of inline TwiML. The call's parameters
//! travel in that URL's query, signed by the relay ([`StreamTokens::sign_query`]) and, when
//! Twilio fetches it, by Twilio (`X-Twilio-Signature` covers the URL and the `CallSid`). The
//! TwiML answered then carries the token for that `CallSid`: whichever instance Twilio's
//! fetch and stream reach, no nonce has to be remembered.
//!
//! Also owns the live-stream registry that implements the duplicate policy: a second stream
//! for a call SID that already has a live one *on this instance* replaces it (the newest is
//! kept, the older is closed). No I/O here.

use crate::obs::labels::{ErrorKind, TokenResult};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// How long an outbound call's signed TwiML URL stays valid (ringing and answer time).
pub const OUTBOUND_URL_TTL: Duration = Duration::from_secs(15 * 60);

/// How long a transfer's dial-result and whisper URLs stay valid: the carrier posts the dial
/// result when the transferred call ends, up to `<Dial timeLimit>` (default 4 h,
/// <https://www.twilio.com/docs/voice/twiml/dial#timelimit>) after the transfer, plus the ring
/// time and a margin.
pub const TRANSFER_URL_TTL: Duration = Duration::from_secs(6 * 3600);

/// How long an outbound call's status-callback query stays valid: a call that fails to
/// start does so within its ring time; later callbacks are still taken, only without the
/// failure record.
pub const STATUS_URL_TTL: Duration = Duration::from_secs(3600);

/// What a relay-signed URL is for: each signs under its own domain and TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlPurpose {
    /// An outbound call's markup fetch ([`OUTBOUND_URL_TTL`]).
    OutboundMarkup,
    /// A transfer's `<Dial action>` ([`TRANSFER_URL_TTL`]).
    DialResult,
    /// A transfer's whisper ([`TRANSFER_URL_TTL`]).
    Whisper,
    /// An outbound call's status callback, carrying what its `call_initiation_failure`
    /// record needs ([`STATUS_URL_TTL`]).
    CallStatus,
}

impl UrlPurpose {
    fn domain(self) -> &'static str {
        match self {
            UrlPurpose::OutboundMarkup => "outbound-url",
            UrlPurpose::DialResult => "dial-result-url",
            UrlPurpose::Whisper => "whisper-url",
            UrlPurpose::CallStatus => "call-status-url",
        }
    }

    fn ttl(self) -> Duration {
        match self {
            UrlPurpose::OutboundMarkup => OUTBOUND_URL_TTL,
            UrlPurpose::DialResult | UrlPurpose::Whisper => TRANSFER_URL_TTL,
            UrlPurpose::CallStatus => STATUS_URL_TTL,
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Length of a base64url (no padding) HMAC-SHA256: 32 bytes → 43 characters.
const CALL_TOKEN_LEN: usize = 43;
/// Domain-separation prefix of [`CallTokenKey`] tokens.
const CALL_TOKEN_PREFIX: &[u8] = b"relay-token:v1:";

/// A per-call token binding a media stream to its call: put [`token`](Self::token) in a
/// `<Parameter>` (or the stream URL) of the markup for a call and check it with
/// [`verify`](Self::verify) against the start message's call id when it arrives.
///
/// Token = base64url-no-pad(HMAC-SHA256(secret, `"relay-token:v1:" + call_sid`)), 43 chars.
/// The secret should be at least 32 random bytes and never leave the relay.
#[derive(Clone)]
pub struct CallTokenKey {
    /// HMAC-SHA256 keyed with the secret; cloned per token.
    mac: HmacSha256,
}

impl fmt::Debug for CallTokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallTokenKey")
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl CallTokenKey {
    /// Creates a key from the relay's token secret. Any length is accepted.
    #[must_use]
    pub fn new(secret: &[u8]) -> Self {
        let mac =
            HmacSha256::new_from_slice(secret).expect("HMAC-SHA256 accepts keys of any length");
        Self { mac }
    }

    /// The token for `call_sid`: deterministic, URL- and TwiML-safe (`A-Z a-z 0-9 - _`).
    #[must_use]
    pub fn token(&self, call_sid: &str) -> String {
        base64_simd::URL_SAFE_NO_PAD.encode_to_string(self.raw(call_sid))
    }

    /// True iff `token` is exactly [`token`](Self::token)`(call_sid)`; compared in constant
    /// time.
    #[must_use]
    pub fn verify(&self, call_sid: &str, token: &str) -> bool {
        let mut buf = [0u8; CALL_TOKEN_LEN];
        let expected = base64_simd::URL_SAFE_NO_PAD
            .encode(&self.raw(call_sid), base64_simd::Out::from_slice(&mut buf));
        expected.ct_eq(token.as_bytes()).into()
    }

    fn raw(&self, call_sid: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(CALL_TOKEN_PREFIX);
        mac.update(call_sid.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Why a stream's token was refused; [`TokenError::kind`] is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `start.customParameters` has no `relay_token`.
    #[error("stream has no relay_token parameter")]
    Missing,
    /// The token does not match the call SID.
    #[error("relay_token does not match this call")]
    Invalid,
}

impl TokenError {
    /// The `kind` label of `relay_errors_total`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TokenError::Missing => ErrorKind::TokenMissing,
            TokenError::Invalid => ErrorKind::TokenInvalid,
        }
    }

    /// The `result` label of `relay_stream_tokens_total`.
    pub fn result(&self) -> TokenResult {
        match self {
            TokenError::Missing => TokenResult::TokenMissing,
            TokenError::Invalid => TokenResult::TokenInvalid,
        }
    }
}

/// Why a signed outbound URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No `sig`, or it does not match the query.
    #[error("the URL's signature is missing or wrong")]
    BadSignature,
    /// `exp` is missing, malformed or in the past.
    #[error("the URL has expired")]
    Expired,
}

impl UrlError {
    /// The `kind` label of `relay_errors_total{leg=<carrier>}`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            UrlError::BadSignature => ErrorKind::OutboundUrlSignature,
            UrlError::Expired => ErrorKind::OutboundUrlExpired,
        }
    }
}

/// Issues and checks stream tokens and signed outbound URLs. Holds no per-call state.
#[derive(Debug)]
pub struct StreamTokens {
    key: CallTokenKey,
}

impl StreamTokens {
    /// Uses `secret` as the HMAC key.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: CallTokenKey::new(secret),
        }
    }

    /// Derives the token secret from the Twilio auth token (when no `RELAY_TOKEN_SECRET` is
    /// configured), domain-separated so the token never reveals the auth token's HMACs.
    pub fn from_auth_token(auth_token: &str) -> Self {
        Self::new(&Self::derive_secret(auth_token))
    }

    /// A token secret derived from a carrier credential (the Twilio auth token, the Telnyx
    /// API key), domain-separated so tokens never reveal the credential's HMACs.
    pub fn derive_secret(credential: &str) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(credential.as_bytes())
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(b"media-relay stream token secret v1");
        mac.finalize().into_bytes().to_vec()
    }

    /// The `relay_token` for a call.
    pub fn token_for_call(&self, call_sid: &str) -> String {
        self.key.token(call_sid)
    }

    /// Checks a stream's `relay_token` against its call SID.
    ///
    /// # Errors
    /// [`TokenError`].
    pub fn check(&self, call_sid: &str, token: Option<&str>) -> Result<(), TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        if self.key.verify(call_sid, token) {
            Ok(())
        } else {
            Err(TokenError::Invalid)
        }
    }

    /// Appends `exp` (Unix seconds, `now_unix` + [`OUTBOUND_URL_TTL`]) and then `sig` (the
    /// HMAC of everything before it) to a URL query (`a=1&b=2`, already encoded): an
    /// outbound call's markup URL.
    pub fn sign_query(&self, query: &str, now_unix: u64) -> String {
        self.sign_query_for(UrlPurpose::OutboundMarkup, query, now_unix)
    }

    /// As [`StreamTokens::sign_query`], for `purpose` (its own TTL; a URL signed for one
    /// purpose does not verify for another).
    pub fn sign_query_for(&self, purpose: UrlPurpose, query: &str, now_unix: u64) -> String {
        let exp = now_unix + purpose.ttl().as_secs();
        let signed = if query.is_empty() {
            format!("exp={exp}")
        } else {
            format!("{query}&exp={exp}")
        };
        let sig = self.key.token(&format!("{}:{signed}", purpose.domain()));
        format!("{signed}&sig={sig}")
    }

    /// Checks a query made by [`StreamTokens::sign_query`] (exactly as received, still
    /// encoded) and returns its part before `sig`.
    ///
    /// # Errors
    /// [`UrlError`].
    pub fn verify_query<'a>(&self, query: &'a str, now_unix: u64) -> Result<&'a str, UrlError> {
        self.verify_query_for(UrlPurpose::OutboundMarkup, query, now_unix)
    }

    /// Checks a query made by [`StreamTokens::sign_query_for`] with `purpose`.
    ///
    /// # Errors
    /// [`UrlError`].
    pub fn verify_query_for<'a>(
        &self,
        purpose: UrlPurpose,
        query: &'a str,
        now_unix: u64,
    ) -> Result<&'a str, UrlError> {
        let (signed, sig) = query.rsplit_once("&sig=").ok_or(UrlError::BadSignature)?;
        if !self
            .key
            .verify(&format!("{}:{signed}", purpose.domain()), sig)
        {
            return Err(UrlError::BadSignature);
        }
        let exp = form_urlencoded::parse(signed.as_bytes())
            .filter(|(k, _)| k == "exp")
            .last()
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .ok_or(UrlError::Expired)?;
        if exp <= now_unix {
            return Err(UrlError::Expired);
        }
        Ok(signed)
    }
}

/// Live streams by call SID, for the duplicate-stream policy: keep the newest, close the older.
#[derive(Debug, Default)]
pub struct LiveStreams {
    by_call: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl LiveStreams {
    /// Registers a stream for `call_sid` with its cancellation token. Returns its id (for
    /// [`LiveStreams::remove`]) and whether an older live stream was replaced (and cancelled).
    pub fn register(&self, call_sid: &str, cancel: CancellationToken) -> (u64, bool) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut map = self.by_call.lock().unwrap_or_else(|p| p.into_inner());
        let old = map.insert(call_sid.to_owned(), (id, cancel));
        let replaced = match old {
            Some((_, old_cancel)) => {
                old_cancel.cancel();
                true
            }
            None => false,
        };
        (id, replaced)
    }

    /// Removes the entry for `call_sid` if it is still stream `id`.
    pub fn remove(&self, call_sid: &str, id: u64) {
        let mut map = self.by_call.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(call_sid).is_some_and(|(i, _)| *i == id) {
            map.remove(call_sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_token_roundtrip() {
        let key = CallTokenKey::new(b"0123456789abcdef0123456789abcdef");
        let t = key.token("CA1111");
        assert_eq!(t.len(), CALL_TOKEN_LEN);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(t, key.token("CA1111"), "deterministic");
        assert!(key.verify("CA1111", &t));

        // Other call's token.
        let other_call = key.token("CA2222");
        assert_ne!(t, other_call);
        assert!(!key.verify("CA1111", &other_call));
        assert!(!key.verify("CA2222", &t));
        // Tampered, truncated, padded, empty.
        let mut tampered = t.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        assert!(!key.verify("CA1111", &String::from_utf8(tampered).expect("ascii")));
        assert!(!key.verify("CA1111", &t[..42]));
        assert!(!key.verify("CA1111", &format!("{t}=")));
        assert!(!key.verify("CA1111", ""));
        // Another key.
        let other_key = CallTokenKey::new(b"a different secret of enough len");
        assert!(!other_key.verify("CA1111", &t));
    }

    #[test]
    fn call_token_definition() {
        // token = base64url-no-pad(HMAC-SHA256(secret, "relay-token:v1:" + call_sid)).
        let secret = b"s3cret";
        let mut mac = HmacSha256::new_from_slice(secret).expect("any key length");
        mac.update(b"relay-token:v1:CA42");
        let expected = base64_simd::URL_SAFE_NO_PAD.encode_to_string(mac.finalize().into_bytes());
        assert_eq!(CallTokenKey::new(secret).token("CA42"), expected);
    }

    #[test]
    fn debug_does_not_leak_the_token_secret() {
        let secret = b"call-token-secret-bytes";
        let key = CallTokenKey::new(secret);
        let dbg = format!("{key:?} {key:#?}");
        assert!(!dbg.contains("call-token-secret"), "{dbg}");
        assert!(!dbg.contains(&format!("{:?}", &secret[..4])), "{dbg}");
        assert!(dbg.contains("[redacted]"));
    }

    #[test]
    fn tokens_bind_to_the_call() {
        let t = StreamTokens::new(b"secret");
        let tok = t.token_for_call("CA1");
        assert_eq!(t.check("CA1", Some(&tok)), Ok(()));
        assert_eq!(t.check("CA2", Some(&tok)), Err(TokenError::Invalid));
        assert_eq!(t.check("CA1", None), Err(TokenError::Missing));
        let other = StreamTokens::new(b"other").token_for_call("CA1");
        assert_eq!(t.check("CA1", Some(&other)), Err(TokenError::Invalid));
        // Every instance with the same secret (here: the same auth token) agrees.
        let a = StreamTokens::from_auth_token("auth");
        let b = StreamTokens::from_auth_token("auth");
        assert_eq!(b.check("CA9", Some(&a.token_for_call("CA9"))), Ok(()));
    }

    #[test]
    fn signed_queries_verify_until_they_expire_and_resist_tampering() {
        let t = StreamTokens::new(b"secret");
        let q = t.sign_query("prompt=Hi%21&agent=openai", 1000);
        assert!(
            q.starts_with("prompt=Hi%21&agent=openai&exp=1900&sig="),
            "{q}"
        );
        assert_eq!(
            t.verify_query(&q, 1000),
            Ok("prompt=Hi%21&agent=openai&exp=1900")
        );
        // Another instance with the same secret accepts it.
        assert!(StreamTokens::new(b"secret").verify_query(&q, 1899).is_ok());
        assert_eq!(t.verify_query(&q, 1900), Err(UrlError::Expired));
        let tampered = q.replace("openai", "elevenlabs");
        assert_eq!(t.verify_query(&tampered, 1000), Err(UrlError::BadSignature));
        let later = q.replace("exp=1900", "exp=9900");
        assert_eq!(t.verify_query(&later, 1000), Err(UrlError::BadSignature));
        assert_eq!(
            t.verify_query("prompt=x", 1000),
            Err(UrlError::BadSignature)
        );
        assert_eq!(
            StreamTokens::new(b"other").verify_query(&q, 1000),
            Err(UrlError::BadSignature)
        );
    }

    #[test]
    fn a_url_signed_for_one_purpose_does_not_verify_for_another() {
        let t = StreamTokens::new(b"secret");
        let q = t.sign_query_for(UrlPurpose::DialResult, "call=CA1", 1000);
        assert_eq!(
            t.verify_query_for(UrlPurpose::DialResult, &q, 1000 + 5 * 3600),
            Ok(&q[..q.rfind("&sig=").unwrap()])
        );
        assert_eq!(
            t.verify_query_for(UrlPurpose::Whisper, &q, 1000),
            Err(UrlError::BadSignature)
        );
        assert_eq!(t.verify_query(&q, 1000), Err(UrlError::BadSignature));
    }

    #[test]
    fn newest_stream_replaces_the_older() {
        let live = LiveStreams::default();
        let a = CancellationToken::new();
        let (id_a, replaced) = live.register("CA1", a.clone());
        assert!(!replaced);
        let b = CancellationToken::new();
        let (id_b, replaced) = live.register("CA1", b.clone());
        assert!(replaced && a.is_cancelled() && !b.is_cancelled());
        live.remove("CA1", id_a); // stale id: keeps b
        let (_, replaced) = live.register("CA1", CancellationToken::new());
        assert!(replaced && b.is_cancelled());
        live.remove("CA1", id_b);
    }
}
