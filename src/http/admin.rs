//! Admin routes: `GET /calls` (live calls with their running figures) and
//! `GET /calls/{call_sid}` (a live or recently ended call), both behind
//! `Authorization: Bearer $RELAY_ADMIN_TOKEN`. Without that setting both answer 404, as if
//! they did not exist; a wrong token gets 401. The figures come from `obs::calls`.

use super::{error_json, json_response, BearerToken, Resp};
use crate::obs::calls::CallRegistry;
use hyper::{Request, StatusCode};

/// Answers `GET /calls` and `GET /calls/{call_sid}`.
pub fn calls<B>(req: &Request<B>, token: Option<&BearerToken>, registry: &CallRegistry) -> Resp {
    let Some(token) = token else {
        return super::text(StatusCode::NOT_FOUND, "not found\n");
    };
    if !token.matches(req) {
        let mut r = error_json(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let path = req.uri().path();
    match path.strip_prefix("/calls/") {
        None => {
            let live = registry.live();
            json_response(
                StatusCode::OK,
                &serde_json::json!({ "calls": live, "count": live.len() }),
            )
        }
        Some(sid) => match registry.get(sid) {
            Some(s) => json_response(StatusCode::OK, &serde_json::to_value(s).unwrap_or_default()),
            None => error_json(
                StatusCode::NOT_FOUND,
                "unknown_call",
                "no live or recent call with this call SID",
            ),
        },
    }
}
