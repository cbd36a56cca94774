//! Twilio request authentication: `X-Twilio-Signature` validation for webhooks (form- and
//! JSON-bodied) and for the Media Streams WebSocket upgrade (Twilio webhook security,
//! <https://www.twilio.com/docs/usage/security>).
//!
//! Owns: the HMAC-SHA1 signature algorithm, the list of candidate URLs Twilio may have signed
//! (port and trailing-slash variants), the `bodySHA256` check and constant-time comparison.
//! The per-call stream token is `auth::tokens`. Does not own: reading headers or bodies,
//! choosing HTTP status codes or WebSocket close codes, loading the auth token from config,
//! or counting failures (callers label metrics with [`SignatureError::kind`]). Sans-IO: no
//! tokio, no hyper types; everything here takes `&str` / `&[u8]`.
//!
//! The public origin is always the configured one ([`SignatureValidator::new`]), never the
//! `Host` or `X-Forwarded-*` headers seen behind a proxy.

use crate::auth::SignatureError;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt;
use subtle::{Choice, ConstantTimeEq};

type HmacSha1 = Hmac<Sha1>;

/// Length of a base64 (padded) HMAC-SHA1: 20 bytes → 28 characters.
const SIG_B64_LEN: usize = 28;
/// Length of a raw HMAC-SHA1.
const SIG_RAW_LEN: usize = 20;
/// Standard port inserted into the "with port" candidate (scheme is always https/wss here).
const STANDARD_PORT: &str = ":443";
/// Query parameter carrying the body hash of JSON webhooks.
const BODY_SHA256_PARAM: &str = "bodySHA256";

/// Computes Twilio's `X-Twilio-Signature` for `url` and `params` (Twilio webhook security, <https://www.twilio.com/docs/usage/security>):
/// `data = url`, then for each name in byte-wise sorted order and each of its values in
/// byte-wise sorted order, `data += name + value` (decoded values, no separators); the result
/// is `base64(HMAC-SHA1(auth_token, data))`.
///
/// `params` may be in any order and may repeat a name; duplicates are all kept (twilio-python
/// semantics). Pass `&[]` for GET requests, JSON webhooks and WebSocket upgrades. `url` is
/// used verbatim: no port or slash normalisation happens here.
#[must_use]
pub fn compute_signature(auth_token: &[u8], url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_unstable();
    let mut mac =
        HmacSha1::new_from_slice(auth_token).expect("HMAC-SHA1 accepts keys of any length");
    mac.update(url.as_bytes());
    feed_params(&mut mac, &sorted);
    base64_simd::STANDARD.encode_to_string(mac.finalize().into_bytes())
}

/// Validates `X-Twilio-Signature` on requests from Twilio against the relay's configured
/// public origin (Twilio webhook security, <https://www.twilio.com/docs/usage/security>). Cheap to clone; keyed once at construction.
///
/// For every entry point the host variants tried are:
/// the host **with** a port (`:443` inserted when the configured host has none, otherwise the
/// configured port) and the host **without** any port.
#[derive(Clone)]
pub struct SignatureValidator {
    /// HMAC-SHA1 keyed with the primary auth token; cloned per candidate.
    mac: HmacSha1,
    /// The configured public host, e.g. `relay.example.com` or `relay.example.com:8443`.
    public_host: String,
    /// `public_host` with `:443` inserted if it had no port.
    host_with_port: String,
    /// `public_host` with any port removed.
    host_without_port: String,
}

impl fmt::Debug for SignatureValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureValidator")
            .field("auth_token", &"[redacted]")
            .field("public_host", &self.public_host)
            .finish()
    }
}

impl SignatureValidator {
    /// Creates a validator for the account's **primary** auth token and the public
    /// host Twilio is configured to call: `host` or `host:port`, no scheme,
    /// no path; IPv6 literals in brackets. Surrounding whitespace and trailing `/` are
    /// trimmed; nothing else is normalised (case is kept as configured).
    #[must_use]
    pub fn new(auth_token: &str, public_host: &str) -> Self {
        let public_host = public_host.trim().trim_end_matches('/').to_owned();
        let (bare, port) = split_port(&public_host);
        let host_with_port = match port {
            Some(_) => public_host.clone(),
            None => format!("{public_host}{STANDARD_PORT}"),
        };
        let host_without_port = bare.to_owned();
        let mac = HmacSha1::new_from_slice(auth_token.as_bytes())
            .expect("HMAC-SHA1 accepts keys of any length");
        Self {
            mac,
            public_host,
            host_with_port,
            host_without_port,
        }
    }

    /// The public host this validator builds candidate URLs from (after trimming).
    #[must_use]
    pub fn public_host(&self) -> &str {
        &self.public_host
    }

    /// Validates a form-encoded (or body-less GET) webhook.
    ///
    /// `path_and_query` is the request-target exactly as received (still percent-encoded,
    /// starting with `/`); `form_body` is the raw `application/x-www-form-urlencoded` body
    /// (empty for GET). The body is decoded with `form_urlencoded` (`+` → space, `%2B` → `+`),
    /// keeping repeated keys and untrimmed values. Candidates:
    /// `https://{host with port}{path_and_query}` and `https://{host without port}{path_and_query}`.
    ///
    /// # Errors
    /// [`Missing`](SignatureError::Missing) or [`Malformed`](SignatureError::Malformed) for a
    /// bad header, [`Mismatch`](SignatureError::Mismatch) when no candidate matches.
    pub fn validate_form(
        &self,
        path_and_query: &str,
        form_body: &[u8],
        signature: &str,
    ) -> Result<(), SignatureError> {
        let header = parse_header(signature)?;
        let pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = form_urlencoded::parse(form_body).collect();
        let mut params: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        params.sort_unstable();
        if self.any_host_matches("https://", &[path_and_query], &params, header) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    /// Validates a JSON-bodied webhook: (1) the HMAC over the URL only (no params,
    /// same two host variants as [`validate_form`](Self::validate_form)) must match, then
    /// (2) the `bodySHA256` query value must equal the lowercase hex SHA-256 of `body`.
    ///
    /// Errors are reported in that order: `Missing`/`Malformed`, `Mismatch`,
    /// `BodyHashMissing`, `BodyHashMismatch`. If `bodySHA256` repeats, the first is used.
    ///
    /// # Errors
    /// The first failed check, in the order above.
    pub fn validate_json(
        &self,
        path_and_query: &str,
        body: &[u8],
        signature: &str,
    ) -> Result<(), SignatureError> {
        let header = parse_header(signature)?;
        if !self.any_host_matches("https://", &[path_and_query], &[], header) {
            return Err(SignatureError::Mismatch);
        }
        let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
        let claimed = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == BODY_SHA256_PARAM)
            .map(|(_, v)| v)
            .ok_or(SignatureError::BodyHashMissing)?;
        let actual = sha256_hex(body);
        if bool::from(claimed.as_bytes().ct_eq(&actual)) {
            Ok(())
        } else {
            Err(SignatureError::BodyHashMismatch)
        }
    }

    /// Validates the Media Streams WebSocket upgrade `GET`. No params are signed.
    ///
    /// `path` is the request path (Media Streams URLs carry no query; if one is present it is
    /// kept verbatim after the path). Accepted candidates, following Twilio's recommended
    /// procedure, generalised to configured ports with the "drop the port" rule of Twilio's voice webhooks:
    ///
    /// - `wss://{host}{path}` and `wss://{host}{path}/` (the latter only if `path` does not
    ///   already end in `/`; the `/` goes before any `?query`),
    /// - for a host configured **without** a port: both again with `:443` inserted,
    /// - for a host configured **with** a port: both again with the port removed.
    ///
    /// Not accepted: `https://` URLs, and the `:80` variant the SDKs produce for non-`https`
    /// schemes (an SDK artefact; Twilio never dials a `wss` relay on port 80).
    ///
    /// # Errors
    /// [`Missing`](SignatureError::Missing) or [`Malformed`](SignatureError::Malformed) for a
    /// bad header, [`Mismatch`](SignatureError::Mismatch) when no candidate matches.
    pub fn validate_upgrade(&self, path: &str, signature: &str) -> Result<(), SignatureError> {
        let header = parse_header(signature)?;
        let (path_only, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let (qmark, query) = match query {
            Some(q) => ("?", q),
            None => ("", ""),
        };
        let mut ok = self.any_host_matches("wss://", &[path_only, qmark, query], &[], header);
        if !path_only.ends_with('/') {
            ok |= self.any_host_matches("wss://", &[path_only, "/", qmark, query], &[], header);
        }
        if ok {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    /// True if `header` matches `{scheme}{host}{tail...}` for either host variant. `params`
    /// must already be sorted. Every candidate is computed and compared in constant time.
    fn any_host_matches(
        &self,
        scheme: &str,
        tail: &[&str],
        params: &[(&str, &str)],
        header: &[u8],
    ) -> bool {
        let mut ok = Choice::from(0);
        for host in [&self.host_with_port, &self.host_without_port] {
            let mut mac = self.mac.clone();
            mac.update(scheme.as_bytes());
            mac.update(host.as_bytes());
            for piece in tail {
                mac.update(piece.as_bytes());
            }
            feed_params(&mut mac, params);
            let mut buf = [0u8; SIG_B64_LEN];
            let expected = base64_simd::STANDARD.encode(
                &mac.finalize().into_bytes(),
                base64_simd::Out::from_slice(&mut buf),
            );
            ok |= expected.ct_eq(header);
        }
        ok.into()
    }
}

/// Appends `name + value` for each (already sorted) param.
fn feed_params<M: Mac>(mac: &mut M, params: &[(&str, &str)]) {
    for (name, value) in params {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
}

/// Checks the header's shape and returns its bytes (surrounding whitespace trimmed).
fn parse_header(signature: &str) -> Result<&[u8], SignatureError> {
    let sig = signature.trim_ascii().as_bytes();
    if sig.is_empty() {
        return Err(SignatureError::Missing);
    }
    if sig.len() != SIG_B64_LEN {
        return Err(SignatureError::Malformed);
    }
    match base64_simd::STANDARD.decoded_length(sig) {
        Ok(SIG_RAW_LEN) if base64_simd::STANDARD.check(sig).is_ok() => Ok(sig),
        _ => Err(SignatureError::Malformed),
    }
}

/// Lowercase hex SHA-256 of `body`.
fn sha256_hex(body: &[u8]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(body);
    let mut out = [0u8; 64];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    out
}

/// Splits `host[:port]` (IPv6 literal in brackets) into the bare host and the port, if any.
/// An unbracketed host with several `:` is treated as having no port.
fn split_port(host: &str) -> (&str, Option<&str>) {
    let start = if host.starts_with('[') {
        match host.find(']') {
            Some(close) => close,
            None => return (host, None),
        }
    } else {
        0
    };
    let Some(colon) = host[start..].rfind(':').map(|i| start + i) else {
        return (host, None);
    };
    let (bare, port) = (&host[..colon], &host[colon + 1..]);
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    if digits && (start > 0 || !bare.contains(':')) {
        (bare, Some(port))
    } else {
        (host, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in Twilio's webhook security documentation.
    const DOC_TOKEN: &str = "12345";
    const DOC_URL: &str = "https://example.com/myapp.php?foo=1&bar=2";
    const DOC_PARAMS: [(&str, &str); 5] = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675310"),
        ("Digits", "1234"),
        ("From", "+14158675310"),
        ("To", "+18005551212"),
    ];
    const DOC_SIG: &str = "L/OH5YylLD5NRKLltdqwSvS0BnU=";
    const DOC_STRING_TO_SIGN: &str = "https://example.com/myapp.php?foo=1&bar=2CallSidCA1234567890ABCDECaller+14158675310Digits1234From+14158675310To+18005551212";
    /// The same params as an `application/x-www-form-urlencoded` body (`+` → `%2B`).
    const DOC_FORM_BODY: &[u8] = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675310&Digits=1234&From=%2B14158675310&To=%2B18005551212";

    /// A JSON-bodied webhook (`bodySHA256`), hashed independently.
    const JSON_BODY: &[u8] = br#"{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}"#;
    const JSON_BODY_SHA256: &str =
        "5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9";

    /// The stream upgrade: token `12345`, no params.
    const WSS_URL: &str = "wss://relay.example.com/media";
    const WSS_SIG: &str = "MVVXQK8WMm1ywK7bu7blrI+Pdd8=";

    const TOKEN: &str = "auth-token-0123456789abcdef";
    const HOST: &str = "relay.example.com";

    fn sign(url: &str, params: &[(&str, &str)]) -> String {
        compute_signature(TOKEN.as_bytes(), url, params)
    }

    #[test]
    fn doc_vector_signature() {
        assert_eq!(
            compute_signature(DOC_TOKEN.as_bytes(), DOC_URL, &DOC_PARAMS),
            DOC_SIG
        );
        // The concatenation format: signing the documented string-to-sign with no params.
        assert_eq!(
            compute_signature(DOC_TOKEN.as_bytes(), DOC_STRING_TO_SIGN, &[]),
            DOC_SIG
        );
    }

    #[test]
    fn param_order_does_not_matter() {
        let mut reversed = DOC_PARAMS;
        reversed.reverse();
        assert_eq!(
            compute_signature(DOC_TOKEN.as_bytes(), DOC_URL, &reversed),
            DOC_SIG
        );
    }

    #[test]
    fn sort_is_bytewise_case_sensitive() {
        // 'Z' (0x5A) sorts before 'a' (0x61).
        let sig = compute_signature(b"k", "https://h/", &[("a", "1"), ("Z", "2")]);
        assert_eq!(sig, compute_signature(b"k", "https://h/Z2a1", &[]));
    }

    #[test]
    fn doc_vector_via_validate_form_with_encoded_plus() {
        let v = SignatureValidator::new(DOC_TOKEN, "example.com");
        assert_eq!(
            v.validate_form("/myapp.php?foo=1&bar=2", DOC_FORM_BODY, DOC_SIG),
            Ok(())
        );
        // A raw '+' in a form body decodes to a space, so it is not the same message.
        let raw_plus = b"CallSid=CA1234567890ABCDE&Caller=+14158675310&Digits=1234&From=+14158675310&To=+18005551212";
        assert_eq!(
            v.validate_form("/myapp.php?foo=1&bar=2", raw_plus, DOC_SIG),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn form_plus_is_space_and_percent_decoded() {
        let v = SignatureValidator::new(TOKEN, HOST);
        let url = "https://relay.example.com/sms";
        let sig = sign(url, &[("Body", "hello world & more"), ("From", "+1415")]);
        assert_eq!(
            v.validate_form("/sms", b"From=%2B1415&Body=hello+world+%26+more", &sig),
            Ok(())
        );
    }

    #[test]
    fn form_port_variants_default_host() {
        let v = SignatureValidator::new(TOKEN, HOST);
        let params = [("CallSid", "CA1"), ("CallStatus", "ringing")];
        let body = b"CallSid=CA1&CallStatus=ringing";
        // Signed with :443, validated against a host configured without a port.
        let sig = sign("https://relay.example.com:443/voice?x=1", &params);
        assert_eq!(v.validate_form("/voice?x=1", body, &sig), Ok(()));
        // Signed without a port.
        let sig = sign("https://relay.example.com/voice?x=1", &params);
        assert_eq!(v.validate_form("/voice?x=1", body, &sig), Ok(()));
        // Other ports and http are not accepted.
        for url in [
            "https://relay.example.com:8443/voice?x=1",
            "https://relay.example.com:80/voice?x=1",
            "http://relay.example.com/voice?x=1",
        ] {
            let sig = sign(url, &params);
            assert_eq!(
                v.validate_form("/voice?x=1", body, &sig),
                Err(SignatureError::Mismatch),
                "{url}"
            );
        }
    }

    #[test]
    fn form_port_variants_host_with_port() {
        let params = [("a", "1")];
        // Host configured with :443: the port-less signature is accepted too.
        let v = SignatureValidator::new(TOKEN, "relay.example.com:443");
        assert_eq!(
            v.validate_form("/p", b"a=1", &sign("https://relay.example.com/p", &params)),
            Ok(())
        );
        assert_eq!(
            v.validate_form(
                "/p",
                b"a=1",
                &sign("https://relay.example.com:443/p", &params)
            ),
            Ok(())
        );
        // Non-standard port: configured port or no port; :443 is not inserted.
        let v = SignatureValidator::new(TOKEN, "relay.example.com:8443");
        assert_eq!(
            v.validate_form(
                "/p",
                b"a=1",
                &sign("https://relay.example.com:8443/p", &params)
            ),
            Ok(())
        );
        assert_eq!(
            v.validate_form("/p", b"a=1", &sign("https://relay.example.com/p", &params)),
            Ok(())
        );
        assert_eq!(
            v.validate_form(
                "/p",
                b"a=1",
                &sign("https://relay.example.com:443/p", &params)
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn form_repeated_keys_values_sorted() {
        let v = SignatureValidator::new(TOKEN, HOST);
        let body = b"b=2&a=z&a=y&a=y";
        // Signer given the values in another order: names and values are sorted.
        let sig = sign(
            "https://relay.example.com/cb",
            &[("a", "y"), ("b", "2"), ("a", "z"), ("a", "y")],
        );
        assert_eq!(sig, sign("https://relay.example.com/cbayayazb2", &[]));
        assert_eq!(v.validate_form("/cb", body, &sig), Ok(()));
        // Insertion order (unsorted values) is not what Twilio signs.
        let unsorted = sign("https://relay.example.com/cbazayayb2", &[]);
        assert_eq!(
            v.validate_form("/cb", body, &unsorted),
            Err(SignatureError::Mismatch)
        );
        // Dropping a repeated value changes the signature.
        assert_eq!(
            v.validate_form("/cb", b"b=2&a=z&a=y", &sig),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn form_get_without_body() {
        let v = SignatureValidator::new(TOKEN, HOST);
        let sig = sign("https://relay.example.com/twiml?CallSid=CA1&From=%2B1", &[]);
        assert_eq!(
            v.validate_form("/twiml?CallSid=CA1&From=%2B1", b"", &sig),
            Ok(())
        );
        // The query is signed as received (still encoded), not decoded.
        assert_eq!(
            v.validate_form("/twiml?CallSid=CA1&From=+1", b"", &sig),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn form_rejections() {
        let v = SignatureValidator::new(TOKEN, HOST);
        let body: &[u8] = b"CallSid=CA1&From=%2B14155550100&Digits=12";
        let params = [
            ("CallSid", "CA1"),
            ("From", "+14155550100"),
            ("Digits", "12"),
        ];
        let good = sign("https://relay.example.com/gather", &params);
        assert_eq!(v.validate_form("/gather", body, &good), Ok(()));

        // Forged: well-formed but random.
        assert_eq!(
            v.validate_form("/gather", body, "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(SignatureError::Mismatch)
        );
        // Flipped last significant character.
        let mut forged = good.clone().into_bytes();
        forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).expect("ascii");
        assert_eq!(
            v.validate_form("/gather", body, &forged),
            Err(SignatureError::Mismatch)
        );
        // Wrong token.
        let other = SignatureValidator::new("another-token", HOST);
        assert_eq!(
            other.validate_form("/gather", body, &good),
            Err(SignatureError::Mismatch)
        );
        // Tampered body: altered value, added param, removed param, trimmed whitespace.
        for tampered in [
            &b"CallSid=CA1&From=%2B14155550100&Digits=13"[..],
            b"CallSid=CA1&From=%2B14155550100&Digits=12&Extra=1",
            b"CallSid=CA1&From=%2B14155550100",
            b"CallSid=CA2&From=%2B14155550100&Digits=12",
        ] {
            assert_eq!(
                v.validate_form("/gather", tampered, &good),
                Err(SignatureError::Mismatch)
            );
        }
        // Altered path or query, wrong host, trailing slash (webhooks get no slash variant).
        assert_eq!(
            v.validate_form("/gather2", body, &good),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.validate_form("/gather?x=1", body, &good),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.validate_form("/gather/", body, &good),
            Err(SignatureError::Mismatch)
        );
        let wrong_host = SignatureValidator::new(TOKEN, "evil.example.com");
        assert_eq!(
            wrong_host.validate_form("/gather", body, &good),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn header_shape_errors() {
        let v = SignatureValidator::new(TOKEN, HOST);
        for missing in ["", "   ", "\t"] {
            assert_eq!(
                v.validate_form("/", b"", missing),
                Err(SignatureError::Missing)
            );
            assert_eq!(
                v.validate_upgrade("/", missing),
                Err(SignatureError::Missing)
            );
            assert_eq!(
                v.validate_json("/", b"", missing),
                Err(SignatureError::Missing)
            );
        }
        for malformed in [
            "abc",
            "L/OH5YylLD5NRKLltdqwSvS0BnU",              // 27 chars
            "L/OH5YylLD5NRKLltdqwSvS0BnU==",            // 29 chars
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!=",             // 28 chars, not base64
            "L/OH5YylLD5NRKLltdqwSvS0Bn==",             // 28 chars, 19 bytes
            "L/OH5YylLD5NRKLltdqwSvS0BnUx",             // 28 chars, 21 bytes
            "L_OH5YylLD5NRKLltdqwSvS0BnU=",             // url-safe alphabet
            "L/OH5YylLD5NRKLltdqwSvS0BnU=L/OH5YylLD5N", // too long
            "sha256=L/OH5YylLD5NRKLltdqwSvS0BnU=",
        ] {
            assert_eq!(
                v.validate_form("/", b"", malformed),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
            assert_eq!(
                v.validate_upgrade("/", malformed),
                Err(SignatureError::Malformed)
            );
            assert_eq!(
                v.validate_json("/", b"", malformed),
                Err(SignatureError::Malformed)
            );
        }
    }

    #[test]
    fn header_surrounding_whitespace_tolerated() {
        let v = SignatureValidator::new(DOC_TOKEN, "example.com");
        let padded = format!("  {DOC_SIG}\t");
        assert_eq!(
            v.validate_form("/myapp.php?foo=1&bar=2", DOC_FORM_BODY, &padded),
            Ok(())
        );
    }

    #[test]
    fn json_body_sha256_vector() {
        assert_eq!(&sha256_hex(JSON_BODY)[..], JSON_BODY_SHA256.as_bytes());
    }

    #[test]
    fn validate_json_end_to_end() {
        let v = SignatureValidator::new(TOKEN, HOST);
        let pq = format!("/status?bodySHA256={JSON_BODY_SHA256}");
        let sig = sign(&format!("https://relay.example.com{pq}"), &[]);
        assert_eq!(v.validate_json(&pq, JSON_BODY, &sig), Ok(()));
        // :443 variant.
        let sig443 = sign(&format!("https://relay.example.com:443{pq}"), &[]);
        assert_eq!(v.validate_json(&pq, JSON_BODY, &sig443), Ok(()));
        // Tampered body.
        let tampered = br#"{"CallSid":"CA1234567890ABCDE","Caller":"+12349013031"}"#;
        assert_eq!(
            v.validate_json(&pq, tampered, &sig),
            Err(SignatureError::BodyHashMismatch)
        );
        // Tampered bodySHA256 (URL changes, so the signature fails first).
        let pq2 = format!("/status?bodySHA256={}", "0".repeat(64));
        assert_eq!(
            v.validate_json(&pq2, JSON_BODY, &sig),
            Err(SignatureError::Mismatch)
        );
        // Wrong token.
        let other = SignatureValidator::new("nope", HOST);
        assert_eq!(
            other.validate_json(&pq, JSON_BODY, &sig),
            Err(SignatureError::Mismatch)
        );
        // Missing bodySHA256 with an otherwise valid signature.
        let sig_plain = sign("https://relay.example.com/status?x=1", &[]);
        assert_eq!(
            v.validate_json("/status?x=1", JSON_BODY, &sig_plain),
            Err(SignatureError::BodyHashMissing)
        );
        let sig_noq = sign("https://relay.example.com/status", &[]);
        assert_eq!(
            v.validate_json("/status", JSON_BODY, &sig_noq),
            Err(SignatureError::BodyHashMissing)
        );
        // Uppercase hex is not what Twilio sends: rejected.
        let pq_upper = format!("/status?bodySHA256={}", JSON_BODY_SHA256.to_uppercase());
        let sig_upper = sign(&format!("https://relay.example.com{pq_upper}"), &[]);
        assert_eq!(
            v.validate_json(&pq_upper, JSON_BODY, &sig_upper),
            Err(SignatureError::BodyHashMismatch)
        );
        // Other query params alongside; the body is not treated as form params.
        let pq_more = format!("/status?a=1&bodySHA256={JSON_BODY_SHA256}&b=2");
        let sig_more = sign(&format!("https://relay.example.com{pq_more}"), &[]);
        assert_eq!(v.validate_json(&pq_more, JSON_BODY, &sig_more), Ok(()));
    }

    #[test]
    fn wss_vector() {
        assert_eq!(compute_signature(b"12345", WSS_URL, &[]), WSS_SIG);
        let v = SignatureValidator::new("12345", HOST);
        assert_eq!(v.validate_upgrade("/media", WSS_SIG), Ok(()));
    }

    #[test]
    fn upgrade_candidates() {
        let v = SignatureValidator::new(TOKEN, HOST);
        for url in [
            "wss://relay.example.com/media",
            "wss://relay.example.com/media/",
            "wss://relay.example.com:443/media",
            "wss://relay.example.com:443/media/",
        ] {
            assert_eq!(
                v.validate_upgrade("/media", &sign(url, &[])),
                Ok(()),
                "{url}"
            );
        }
        for url in [
            "https://relay.example.com/media",
            "wss://relay.example.com:80/media",
            "wss://relay.example.com/media//",
            "wss://relay.example.com/medi",
            "wss://relay.example.com/media/x",
        ] {
            assert_eq!(
                v.validate_upgrade("/media", &sign(url, &[])),
                Err(SignatureError::Mismatch),
                "{url}"
            );
        }
        // Params are never signed on the upgrade.
        let with_params = sign("wss://relay.example.com/media", &[("a", "1")]);
        assert_eq!(
            v.validate_upgrade("/media", &with_params),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn upgrade_path_already_ending_in_slash() {
        let v = SignatureValidator::new(TOKEN, HOST);
        assert_eq!(
            v.validate_upgrade("/media/", &sign("wss://relay.example.com/media/", &[])),
            Ok(())
        );
        assert_eq!(
            v.validate_upgrade("/media/", &sign("wss://relay.example.com:443/media/", &[])),
            Ok(())
        );
        assert_eq!(
            v.validate_upgrade("/media/", &sign("wss://relay.example.com/media//", &[])),
            Err(SignatureError::Mismatch)
        );
        // Twilio signed "/media" but the request came as "/media/": not accepted.
        assert_eq!(
            v.validate_upgrade("/media/", &sign("wss://relay.example.com/media", &[])),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn upgrade_with_query_and_empty_path() {
        let v = SignatureValidator::new(TOKEN, HOST);
        assert_eq!(
            v.validate_upgrade(
                "/media?t=1",
                &sign("wss://relay.example.com/media?t=1", &[])
            ),
            Ok(())
        );
        assert_eq!(
            v.validate_upgrade(
                "/media?t=1",
                &sign("wss://relay.example.com/media/?t=1", &[])
            ),
            Ok(())
        );
        assert_eq!(
            v.validate_upgrade("", &sign("wss://relay.example.com", &[])),
            Ok(())
        );
        assert_eq!(
            v.validate_upgrade("", &sign("wss://relay.example.com/", &[])),
            Ok(())
        );
    }

    #[test]
    fn upgrade_host_with_port() {
        let v = SignatureValidator::new(TOKEN, "relay.example.com:8443");
        for url in [
            "wss://relay.example.com:8443/media",
            "wss://relay.example.com:8443/media/",
            "wss://relay.example.com/media",
            "wss://relay.example.com/media/",
        ] {
            assert_eq!(
                v.validate_upgrade("/media", &sign(url, &[])),
                Ok(()),
                "{url}"
            );
        }
        assert_eq!(
            v.validate_upgrade("/media", &sign("wss://relay.example.com:443/media", &[])),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn host_splitting_and_trimming() {
        assert_eq!(split_port("a.example"), ("a.example", None));
        assert_eq!(split_port("a.example:8443"), ("a.example", Some("8443")));
        assert_eq!(split_port("a.example:"), ("a.example:", None));
        assert_eq!(split_port("a.example:x1"), ("a.example:x1", None));
        assert_eq!(split_port("[::1]"), ("[::1]", None));
        assert_eq!(split_port("[::1]:8443"), ("[::1]", Some("8443")));
        assert_eq!(split_port("::1"), ("::1", None));
        assert_eq!(split_port("[::1"), ("[::1", None));
        assert_eq!(split_port(""), ("", None));

        let v = SignatureValidator::new(TOKEN, " relay.example.com/ ");
        assert_eq!(v.public_host(), HOST);
        assert_eq!(v.validate_upgrade("/media", &sign(WSS_URL, &[])), Ok(()));

        let v6 = SignatureValidator::new(TOKEN, "[2001:db8::1]");
        assert_eq!(
            v6.validate_upgrade("/m", &sign("wss://[2001:db8::1]:443/m", &[])),
            Ok(())
        );
    }

    #[test]
    fn error_kinds_are_stable_and_distinct() {
        let all = [
            SignatureError::Missing,
            SignatureError::Mismatch,
            SignatureError::BodyHashMissing,
            SignatureError::BodyHashMismatch,
            SignatureError::Malformed,
        ];
        let kinds: Vec<&str> = all.iter().map(|e| e.kind().as_str()).collect();
        assert_eq!(
            kinds,
            [
                "signature_missing",
                "signature_mismatch",
                "body_hash_missing",
                "body_hash_mismatch",
                "signature_malformed"
            ]
        );
        for k in &kinds {
            assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        for e in all {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let token = "super-secret-auth-token";
        let v = SignatureValidator::new(token, HOST);
        let dbg = format!("{v:?} {v:#?}");
        assert!(!dbg.contains(token), "{dbg}");
        assert!(dbg.contains("[redacted]"));
        assert!(dbg.contains(HOST));

    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn b64_header() -> impl Strategy<Value = String> {
            "[A-Za-z0-9+/]{27}="
        }

        proptest! {
            #[test]
            fn never_panics_on_arbitrary_input(
                sig in prop_oneof![any::<String>(), b64_header()],
                body in proptest::collection::vec(any::<u8>(), 0..256),
                path in any::<String>(),
                host in any::<String>(),
            ) {
                let v = SignatureValidator::new(TOKEN, &host);
                prop_assert!(v.validate_form(&path, &body, &sig).is_err());
                prop_assert!(v.validate_json(&path, &body, &sig).is_err());
                prop_assert!(v.validate_upgrade(&path, &sig).is_err());
                let _ = v.public_host();
                let _ = format!("{v:?}");
            }

            #[test]
            fn form_roundtrip(
                params in proptest::collection::vec((".{0,8}", ".{0,8}"), 0..8),
                path in "/[a-z0-9/._-]{0,16}(\\?[a-z0-9=&]{0,12})?",
                with_port in any::<bool>(),
            ) {
                let refs: Vec<(&str, &str)> =
                    params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(refs.iter().copied())
                    .finish();
                let port = if with_port { ":443" } else { "" };
                let sig = sign(&format!("https://relay.example.com{port}{path}"), &refs);
                let v = SignatureValidator::new(TOKEN, HOST);
                prop_assert_eq!(v.validate_form(&path, body.as_bytes(), &sig), Ok(()));
                // Any other token rejects.
                let other = SignatureValidator::new("other", HOST);
                prop_assert_eq!(
                    other.validate_form(&path, body.as_bytes(), &sig),
                    Err(SignatureError::Mismatch)
                );
            }
        }
    }
}
