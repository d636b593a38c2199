//! Who may use the admin listener: API clients with the token as a bearer,
//! browsers with a session cookie obtained by logging in with the token once.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use ferryman_capture::Secret;
use serde::Deserialize;

use crate::{error, Shared};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "ferryman_session";
/// Browser sessions kept at once; the oldest is logged out first.
const MAX_SESSIONS: usize = 256;

/// The token, and the sessions of logged-in browsers.
pub(crate) struct Gate {
    token: Secret,
    sessions: Mutex<VecDeque<String>>,
}

/// The configured token, or the one in `<data_dir>/admin-token`, created
/// (mode 0600) on first start.
pub(crate) fn token(configured: Option<&Secret>, data_dir: &Path) -> Result<Secret, String> {
    if let Some(token) = configured {
        return Ok(token.clone());
    }
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(Secret::new(text.trim())),
        Ok(_) => {
            return Err(format!(
                "{} is empty; delete it to get a new token",
                path.display()
            ))
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot read {}: {e}", path.display()))
        }
        Err(_) => {}
    }
    let token = random_hex(32)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(&path)
        .and_then(|mut file| writeln!(file, "{token}"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "admin token created");
    Ok(Secret::new(token))
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).map_err(|e| format!("no randomness for the admin token: {e}"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Gate {
    pub(crate) fn new(token: Secret) -> Self {
        Self {
            token,
            sessions: Mutex::new(VecDeque::new()),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|token| same(token.trim().as_bytes(), self.token.expose().as_bytes()))
    }

    fn cookie_ok(&self, headers: &HeaderMap) -> bool {
        let Some(id) = session_cookie(headers) else {
            return false;
        };
        self.sessions()
            .iter()
            .any(|s| same(s.as_bytes(), id.as_bytes()))
    }

    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        self.bearer_ok(headers) || self.cookie_ok(headers)
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Everything behind it needs the token or a session. A browser asking
/// for a page is sent to the login page; anything else gets 401.
pub(crate) async fn require(
    State(shared): State<std::sync::Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if shared.gate.allows(request.headers()) {
        return next.run(request).await;
    }
    let path = request.uri().path();
    if path == "/" || path == "/index.html" {
        return Redirect::to("/login").into_response();
    }
    let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

#[derive(Deserialize)]
pub(crate) struct Login {
    token: String,
}

/// Trades the token for a session cookie the page's scripts cannot read.
pub(crate) async fn login(
    State(shared): State<std::sync::Arc<Shared>>,
    Json(login): Json<Login>,
) -> Response {
    if !same(
        login.token.trim().as_bytes(),
        shared.gate.token.expose().as_bytes(),
    ) {
        return error(StatusCode::UNAUTHORIZED, "wrong admin token");
    }
    let id = match random_hex(24) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    {
        let mut sessions = shared.gate.sessions();
        if sessions.len() >= MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back(id.clone());
    }
    let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

pub(crate) async fn logout(
    State(shared): State<std::sync::Arc<Shared>>,
    headers: HeaderMap,
) -> Response {
    if let Some(id) = session_cookie(&headers) {
        shared.gate.sessions().retain(|s| s != id);
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_created_once_private_and_then_reused() {
        let dir = std::env::temp_dir().join(format!("ferryman-admin-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = token(None, &dir).unwrap();
        assert_eq!(first.expose().len(), 64);
        let second = token(None, &dir).unwrap();
        assert_eq!(first.expose(), second.expose());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let configured = Secret::new("configured-token-123");
        assert_eq!(
            token(Some(&configured), &dir).unwrap().expose(),
            "configured-token-123"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
