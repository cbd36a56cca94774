use crate::records;
use media_relay::auth::tokens::{
    CallTokenKey, StreamTokens, TokenError, UrlError, OUTBOUND_URL_TTL,
};
use media_relay::carrier::twilio::signature::{compute_signature, SignatureValidator};
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `carrier::twilio::signature` (Twilio request signatures) and `auth::tokens` (per-call
/// tokens, signed outbound URLs), on arbitrary request paths, form bodies, JSON bodies, hosts
/// and header values, with the body parsed by `form_urlencoded` as the server does.
///
/// Input: `[auth token]\0[public host]\0[path and query]\0[body]\0[X-Twilio-Signature]`
/// (missing records are empty).
///
/// Checks, besides "never panics":
/// - arbitrary header values are refused or accepted without panicking, on every entry point,
///   and every refusal has a metric label;
/// - a signature computed by `compute_signature` over the configured host, the path and the
///   form body's parameters (decoded exactly as the server decodes them) is accepted by
///   `validate_form`; the same for `validate_json` with a `bodySHA256` appended to the query,
///   and for `validate_upgrade` (also with the trailing-slash variant);
/// - a signature for a different body or path is refused;
/// - `CallTokenKey`/`StreamTokens`: the token for a call SID verifies for it and for no other;
/// - `StreamTokens::verify_query` on an arbitrary query (the body) never panics; a query the
///   relay signed (the path) verifies until it expires, and not once a parameter is added.
pub fn signature(data: &[u8]) {
    let mut r = records(data);
    let mut next = || String::from_utf8_lossy(r.next().unwrap_or_default()).into_owned();
    let token = next();
    let host = next();
    let path = next();
    let body = next();
    let header = next();
    let body = body.as_bytes();

    let v = SignatureValidator::new(&token, &host);
    let _ = format!("{v:?}");
    // Arbitrary header values: no panic, and whatever the answer, a stable kind.
    for res in [
        v.validate_form(&path, body, &header),
        v.validate_json(&path, body, &header),
        v.validate_upgrade(&path, &header),
    ] {
        if let Err(e) = res {
            assert!(!e.kind().as_str().is_empty());
            let _ = e.to_string();
        }
    }

    let public = v.public_host().to_owned();
    // Form webhooks: the server parses the body with form_urlencoded; so does the signer.
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let sig = compute_signature(token.as_bytes(), &format!("https://{public}{path}"), &refs);
    assert_eq!(
        v.validate_form(&path, body, &sig),
        Ok(()),
        "own form signature refused: host {public:?} path {path:?} body {body:?}"
    );
    // Padding the header with whitespace is tolerated (the header is trimmed).
    assert_eq!(v.validate_form(&path, body, &format!(" {sig}\t")), Ok(()));
    // The same signature over other parameters must not pass.
    let mut other = body.to_vec();
    other.extend_from_slice(b"&Digits=1");
    assert!(
        v.validate_form(&path, &other, &sig).is_err(),
        "a changed body passed"
    );
    assert!(
        v.validate_form(&format!("{path}x"), body, &sig).is_err(),
        "a changed path passed"
    );

    // JSON webhooks: bodySHA256 in the query, the URL alone signed.
    let has_hash = path
        .split_once('?')
        .is_some_and(|(_, q)| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "bodySHA256"));
    if !has_hash {
        let sep = if path.contains('?') { '&' } else { '?' };
        let p = format!("{path}{sep}bodySHA256={}", hex(&Sha256::digest(body)));
        let sig = compute_signature(token.as_bytes(), &format!("https://{public}{p}"), &[]);
        assert_eq!(
            v.validate_json(&p, body, &sig),
            Ok(()),
            "own JSON signature refused: {p:?}"
        );
        let mut changed = body.to_vec();
        changed.push(b' ');
        assert!(
            v.validate_json(&p, &changed, &sig).is_err(),
            "a changed JSON body passed"
        );
    }

    // The WebSocket upgrade: the URL alone, with or without a trailing slash on the path.
    let sig = compute_signature(token.as_bytes(), &format!("wss://{public}{path}"), &[]);
    assert_eq!(
        v.validate_upgrade(&path, &sig),
        Ok(()),
        "own upgrade signature refused: {path:?}"
    );
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (path.as_str(), String::new()),
    };
    if !p.ends_with('/') {
        let sig = compute_signature(token.as_bytes(), &format!("wss://{public}{p}/{q}"), &[]);
        assert_eq!(
            v.validate_upgrade(&path, &sig),
            Ok(()),
            "slash variant refused: {path:?}"
        );
    }

    // Per-call tokens: the path plays the call SID, the header a guess.
    let key = CallTokenKey::new(token.as_bytes());
    let t = key.token(&path);
    assert!(t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert!(key.verify(&path, &t), "own token refused");
    assert!(
        !key.verify(&format!("{path}x"), &t),
        "token accepted for another call"
    );
    assert_eq!(key.verify(&path, &header), header == t);
    let tokens = StreamTokens::new(token.as_bytes());
    assert_eq!(tokens.token_for_call(&path), t);
    assert_eq!(tokens.check(&path, Some(&t)), Ok(()));
    assert_eq!(tokens.check(&path, Some(&header)).is_ok(), header == t);
    assert_eq!(tokens.check(&path, None), Err(TokenError::Missing));

    // Signed outbound TwiML URLs: the body plays an arbitrary query from the internet, the
    // path a query the relay signs.
    let now = 1_750_000_000 + u64::from(body.len() as u32);
    if let Err(e) = tokens.verify_query(&String::from_utf8_lossy(body), now) {
        assert!(!e.kind().as_str().is_empty());
        let _ = e.to_string();
    }
    let signed = tokens.sign_query(&path, now);
    let (unsigned, _) = signed.rsplit_once("&sig=").expect("a sig parameter");
    assert!(
        unsigned.starts_with(path.as_str()),
        "sign_query changed the query: {path:?} -> {signed:?}"
    );
    let ttl = OUTBOUND_URL_TTL.as_secs();
    assert_eq!(
        tokens.verify_query(&signed, now),
        Ok(unsigned),
        "own URL refused: {signed:?}"
    );
    assert_eq!(tokens.verify_query(&signed, now + ttl - 1), Ok(unsigned));
    assert_eq!(
        tokens.verify_query(&signed, now + ttl),
        Err(UrlError::Expired)
    );
    let tampered = format!(
        "{unsigned}&To=%2B1900&sig={}",
        &signed[unsigned.len() + 5..]
    );
    assert_eq!(
        tokens.verify_query(&tampered, now),
        Err(UrlError::BadSignature),
        "a changed query passed: {tampered:?}"
    );
}
