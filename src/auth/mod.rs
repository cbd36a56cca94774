//! Authentication: Twilio request signatures ([`signature`]), per-call stream tokens and the
//! live-stream registry ([`tokens`]), and the [`Secret`] type that keeps keys out of logs.
//! Used by `http` at the upgrade and by `call` at `start`. No I/O.

pub mod signature;
pub mod tokens;

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
