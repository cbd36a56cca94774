//! Binding media streams to calls (issue 4, protocols.md §1.6.4 last bullet).
//!
//! The `X-Twilio-Signature` on a stream upgrade is the same for every call to the same URL,
//! so it proves the request came from Twilio but not which call it belongs to. The relay
//! therefore puts a `relay_token` `<Parameter>` in every TwiML it returns and checks it in
//! `start` before any audio reaches an agent:
//!
//! - inbound (`/twiml`, call SID known): `relay_token = token(CallSid)`;
//! - outbound (`/outbound-call`, inline TwiML, call SID not known yet): a random single-use
//!   `relay_nonce` plus `relay_token = token("nonce:" + nonce)`; the nonce is remembered for
//!   [`NONCE_TTL`] and consumed by the first stream that presents it.
//!
//! Also owns the live-stream registry that implements the duplicate policy: a second stream
//! for a call SID that already has a live one replaces it (the newest is kept, the older is
//! closed). No I/O here.

use crate::auth::signature::CallTokenKey;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long an outbound call's nonce stays valid (ringing + answer time).
pub const NONCE_TTL: Duration = Duration::from_secs(15 * 60);

/// Most outstanding outbound nonces; issuing more fails (bounded memory).
pub const MAX_PENDING_NONCES: usize = 100_000;

/// Why a stream's token was refused; [`TokenError::kind`] is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `start.customParameters` has no `relay_token`.
    #[error("stream has no relay_token parameter")]
    Missing,
    /// The token does not match the call SID (or nonce).
    #[error("relay_token does not match this call")]
    Invalid,
    /// The nonce is unknown, expired, or already used.
    #[error("relay_nonce is unknown, expired or already used")]
    NonceUnknown,
}

impl TokenError {
    /// Stable snake_case label.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Invalid => "token_invalid",
            TokenError::NonceUnknown => "token_nonce_unknown",
        }
    }
}

/// Issues and checks stream tokens.
#[derive(Debug)]
pub struct StreamTokens {
    key: CallTokenKey,
    nonces: Mutex<HashMap<String, Instant>>,
}

impl StreamTokens {
    /// Uses `secret` as the HMAC key.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: CallTokenKey::new(secret),
            nonces: Mutex::new(HashMap::new()),
        }
    }

    /// Derives the token secret from the Twilio auth token (when no `RELAY_TOKEN_SECRET` is
    /// configured), domain-separated so the token never reveals the auth token's HMACs.
    pub fn from_auth_token(auth_token: &str) -> Self {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(auth_token.as_bytes())
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(b"media-relay stream token secret v1");
        Self::new(&mac.finalize().into_bytes())
    }

    /// The `relay_token` for an inbound call.
    pub fn token_for_call(&self, call_sid: &str) -> String {
        self.key.token(call_sid)
    }

    /// Issues a single-use `(relay_nonce, relay_token)` pair for an outbound call.
    ///
    /// # Errors
    /// `None` when [`MAX_PENDING_NONCES`] are outstanding.
    pub fn issue_nonce(&self, now: Instant) -> Option<(String, String)> {
        let mut raw = [0u8; 18];
        getrandom_fill(&mut raw);
        let nonce = base64_simd::URL_SAFE_NO_PAD.encode_to_string(raw);
        let mut map = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_PENDING_NONCES {
            map.retain(|_, exp| *exp > now);
            if map.len() >= MAX_PENDING_NONCES {
                return None;
            }
        }
        map.insert(nonce.clone(), now + NONCE_TTL);
        let token = self.key.token(&format!("nonce:{nonce}"));
        Some((nonce, token))
    }

    /// Checks a stream's parameters: with `relay_nonce`, the token must match the nonce and
    /// the nonce must be pending (it is consumed); otherwise the token must match `call_sid`.
    ///
    /// # Errors
    /// [`TokenError`].
    pub fn check(
        &self,
        call_sid: &str,
        token: Option<&str>,
        nonce: Option<&str>,
        now: Instant,
    ) -> Result<(), TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        match nonce {
            Some(nonce) => {
                if !self.key.verify(&format!("nonce:{nonce}"), token) {
                    return Err(TokenError::Invalid);
                }
                let mut map = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
                match map.remove(nonce) {
                    Some(exp) if exp > now => Ok(()),
                    _ => Err(TokenError::NonceUnknown),
                }
            }
            None if self.key.verify(call_sid, token) => Ok(()),
            None => Err(TokenError::Invalid),
        }
    }

    /// Drops expired nonces (called from the server's periodic upkeep).
    pub fn prune(&self, now: Instant) {
        let mut map = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, exp| *exp > now);
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    // ring's system RNG; failure means the OS cannot provide randomness at all.
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
        .expect("the OS random number generator is available");
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
    fn inbound_tokens_bind_to_the_call() {
        let t = StreamTokens::new(b"secret");
        let now = Instant::now();
        let tok = t.token_for_call("CA1");
        assert_eq!(t.check("CA1", Some(&tok), None, now), Ok(()));
        assert_eq!(
            t.check("CA2", Some(&tok), None, now),
            Err(TokenError::Invalid)
        );
        assert_eq!(t.check("CA1", None, None, now), Err(TokenError::Missing));
        let other = StreamTokens::new(b"other").token_for_call("CA1");
        assert_eq!(
            t.check("CA1", Some(&other), None, now),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn outbound_nonces_are_single_use_and_expire() {
        let t = StreamTokens::from_auth_token("auth");
        let now = Instant::now();
        let (n, tok) = t.issue_nonce(now).unwrap();
        assert_eq!(t.check("CAx", Some(&tok), Some(&n), now), Ok(()));
        assert_eq!(
            t.check("CAx", Some(&tok), Some(&n), now),
            Err(TokenError::NonceUnknown)
        );
        let (n2, tok2) = t.issue_nonce(now).unwrap();
        assert_eq!(
            t.check("CAx", Some(&tok), Some(&n2), now),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            t.check(
                "CAx",
                Some(&tok2),
                Some(&n2),
                now + NONCE_TTL + Duration::from_secs(1)
            ),
            Err(TokenError::NonceUnknown)
        );
        let (n3, _) = t.issue_nonce(now).unwrap();
        t.prune(now + NONCE_TTL * 2);
        assert!(t.nonces.lock().unwrap().get(&n3).is_none());
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
