//! Base64 audio payloads (RFC 4648 §4, standard alphabet, padded), as every carrier and agent
//! dialect carries μ-law: validated by decoding, nothing that fails here is forwarded.

/// Why a base64 audio payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid base64 audio payload")]
pub struct PayloadError;

/// Decodes a base64 `payload` into `out`, replacing its contents.
///
/// # Errors
/// [`PayloadError`] if `payload` is not valid standard base64.
#[inline]
pub fn decode(payload: &str, out: &mut Vec<u8>) -> Result<(), PayloadError> {
    out.clear();
    decode_append(payload, out).map(|_| ())
}

/// Like [`decode`], but appends to `out` and returns the number of bytes appended; on error
/// `out` is left as it was.
///
/// # Errors
/// [`PayloadError`] if `payload` is not valid standard base64.
#[inline]
pub fn decode_append(payload: &str, out: &mut Vec<u8>) -> Result<usize, PayloadError> {
    let before = out.len();
    match base64_simd::STANDARD.decode_append(payload.as_bytes(), &mut *out) {
        Ok(_) => Ok(out.len() - before),
        Err(_) => {
            out.truncate(before);
            Err(PayloadError)
        }
    }
}

/// Appends `prefix`, the base64 of `audio`, then `suffix` to `out` (cleared first): how every
/// hand-built audio message is written (`{"user_audio_chunk":"` … `"}` and the like).
#[inline]
pub fn message(prefix: &[u8], audio: &[u8], suffix: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(prefix.len() + suffix.len() + base64_simd::STANDARD.encoded_length(audio.len()));
    out.extend_from_slice(prefix);
    base64_simd::STANDARD.encode_append(audio, out);
    out.extend_from_slice(suffix);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_validation() {
        let mut out = Vec::new();
        decode("AAEC", &mut out).unwrap();
        assert_eq!(out, [0, 1, 2]);
        assert_eq!(decode("AAE", &mut out), Err(PayloadError));
        assert_eq!(decode("AA*=", &mut out), Err(PayloadError));
        assert_eq!(decode("", &mut out), Ok(()));
        assert!(out.is_empty());
        out.extend_from_slice(b"xy");
        assert_eq!(decode_append("AA*=", &mut out), Err(PayloadError));
        assert_eq!(out, b"xy");
    }

    #[test]
    fn messages_wrap_the_base64() {
        let mut out = b"old".to_vec();
        message(b"{\"a\":\"", &[0xff; 3], b"\"}", &mut out);
        assert_eq!(out, br#"{"a":"////"}"#);
    }
}
