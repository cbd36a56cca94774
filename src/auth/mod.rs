//! Authentication shared by every carrier: per-call stream tokens and the live-stream
//! registry ([`tokens`]), the constant-time bearer check ([`BearerToken`]), the one
//! [`SignatureError`] every carrier's signature check reports (each carrier's algorithm lives
//! with the carrier), and the [`Secret`] type that keeps keys out of logs. No I/O.

pub mod tokens;

use crate::obs::labels::ErrorKind;

/// A secret string (API key, auth token). `Debug` and `Display` print `[redacted]`; use
/// [`Secret::expose`] at the one place the value is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(v: impl Into<String>) -> Self {
        Self(v.into())
    }
    /// The secret value, for the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Why a request failed a carrier's signature check (Twilio `X-Twilio-Signature`,
/// <https://www.twilio.com/docs/usage/security>; Telnyx `telnyx-signature-ed25519`). Each
/// variant has a stable [`SignatureError::kind`] for the `kind` label of error metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature value (absent, empty or only whitespace). Callers pass `""` when the
    /// header is absent.
    #[error("the signature header is missing")]
    Missing,
    /// The header is well-formed but matches none of the candidate URLs: wrong auth token, wrong public host, altered URL/params, or a forgery.
    #[error("the signature does not match")]
    Mismatch,
    /// JSON webhook whose URL carries no `bodySHA256` query parameter.
    #[error("bodySHA256 query parameter is missing")]
    BodyHashMissing,
    /// JSON webhook whose `bodySHA256` is not the lowercase hex SHA-256 of the raw body: the
    /// body was altered after signing.
    #[error("bodySHA256 does not match the request body")]
    BodyHashMismatch,
    /// The header cannot be a base64 HMAC-SHA1 (not 28 characters of padded base64 decoding
    /// to 20 bytes), or another carrier's signature header is not in its documented form.
    #[error("the signature header is not in the expected form")]
    Malformed,
    /// A timestamped signature (Telnyx) whose timestamp is outside the tolerance.
    #[error("the signed timestamp is outside the tolerance")]
    Stale,
}

impl SignatureError {
    /// The `kind` label of `relay_errors_total` (never changes across releases).
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            SignatureError::Missing => ErrorKind::SignatureMissing,
            SignatureError::Mismatch => ErrorKind::SignatureMismatch,
            SignatureError::BodyHashMissing => ErrorKind::BodyHashMissing,
            SignatureError::BodyHashMismatch => ErrorKind::BodyHashMismatch,
            SignatureError::Malformed => ErrorKind::SignatureMalformed,
            SignatureError::Stale => ErrorKind::SignatureStale,
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A bearer token compared in constant time through its SHA-256 (neither the value nor its
/// length leaks through timing). The one bearer check of the relay (`/outbound-call`,
/// `/calls`).
#[derive(Clone)]
pub struct BearerToken([u8; 32]);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

impl BearerToken {
    /// The expected token.
    pub fn new(token: &str) -> BearerToken {
        use sha2::Digest;
        BearerToken(sha2::Sha256::digest(token.as_bytes()).into())
    }

    /// True when `authorization` (an `Authorization` header value, if any) carries this
    /// token.
    pub fn matches_header(&self, authorization: Option<&str>) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        authorization.and_then(bearer_token).is_some_and(|t| {
            let hash: [u8; 32] = sha2::Sha256::digest(t.as_bytes()).into();
            bool::from(hash.ct_eq(&self.0))
        })
    }

    /// True when the request's `Authorization` header carries this token.
    pub fn matches<B>(&self, req: &hyper::Request<B>) -> bool {
        self.matches_header(
            req.headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
        let t = BearerToken::new("s3cret");
        assert!(t.matches_header(Some("Bearer s3cret")));
        assert!(!t.matches_header(Some("Bearer s3cre")));
        assert!(!t.matches_header(None));
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
