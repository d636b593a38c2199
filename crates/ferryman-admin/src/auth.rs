//! Who may use the admin listener: API clients with the token as a bearer,
//! browsers with a session cookie obtained by logging in with the token once.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
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
/// A session lasts at most this long, however busy.
const SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Wrong tokens one address may try in a burst...
const GUESSES_PER_ADDRESS: f64 = 5.0;
/// ...after which it earns one more try this often.
const GUESS_EVERY: Duration = Duration::from_secs(2);
/// Wrong tokens from every address together, per second: no crowd of
/// addresses guesses faster than this.
const GUESSES_PER_SECOND: f64 = 10.0;
/// Addresses whose guesses are remembered at once.
const TRACKED_ADDRESSES: usize = 4096;

/// A logged-in browser.
struct Session {
    id: String,
    created: Instant,
    used: Instant,
}

/// A budget of tries that refills with time (a token bucket).
#[derive(Clone, Copy)]
struct Budget {
    left: f64,
    at: Instant,
}

impl Budget {
    fn full(size: f64) -> Self {
        Self {
            left: size,
            at: Instant::now(),
        }
    }

    /// Takes one try if there is one; else how long until there is.
    fn take(&mut self, size: f64, per_second: f64) -> Result<(), Duration> {
        let now = Instant::now();
        self.left = (self.left + now.duration_since(self.at).as_secs_f64() * per_second).min(size);
        self.at = now;
        if self.left >= 1.0 {
            self.left -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.left) / per_second))
        }
    }
}

/// Wrong tokens seen, per address and overall.
struct Guesses {
    by_address: HashMap<IpAddr, Budget>,
    overall: Budget,
}

/// The token, the sessions of logged-in browsers, and the budget for
/// guessing the token.
pub(crate) struct Gate {
    token: Secret,
    sessions: Mutex<VecDeque<Session>>,
    /// A session unused this long is logged out.
    idle: Duration,
    guesses: Mutex<Guesses>,
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
    /// Browser sessions end after `idle` unused (and a week in any case).
    pub(crate) fn new(token: Secret, idle: Duration) -> Self {
        Self {
            token,
            sessions: Mutex::new(VecDeque::new()),
            idle,
            guesses: Mutex::new(Guesses {
                by_address: HashMap::new(),
                overall: Budget::full(GUESSES_PER_SECOND),
            }),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, VecDeque<Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `client` may try a token now; else how long it waits.
    fn may_guess(&self, client: IpAddr) -> Result<(), Duration> {
        let mut guesses = self.guesses.lock().unwrap_or_else(|e| e.into_inner());
        if guesses.by_address.len() >= TRACKED_ADDRESSES
            && !guesses.by_address.contains_key(&client)
        {
            // Forget addresses whose budget has refilled; a flood of
            // addresses still meets the overall budget.
            let now = Instant::now();
            let refill = GUESS_EVERY.as_secs_f64() * GUESSES_PER_ADDRESS;
            guesses
                .by_address
                .retain(|_, b| now.duration_since(b.at).as_secs_f64() < refill);
        }
        let per_second = 1.0 / GUESS_EVERY.as_secs_f64();
        let mine = guesses
            .by_address
            .entry(client)
            .or_insert_with(|| Budget::full(GUESSES_PER_ADDRESS));
        let mut trial = *mine;
        trial.take(GUESSES_PER_ADDRESS, per_second)?;
        let mut overall = guesses.overall;
        overall.take(GUESSES_PER_SECOND, GUESSES_PER_SECOND)?;
        guesses.overall = overall;
        if let Some(mine) = guesses.by_address.get_mut(&client) {
            *mine = trial;
        }
        Ok(())
    }

    /// A right token from `client`: its wrong ones are forgotten.
    fn forgive(&self, client: IpAddr) {
        let mut guesses = self.guesses.lock().unwrap_or_else(|e| e.into_inner());
        guesses.by_address.remove(&client);
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
        let now = Instant::now();
        let mut sessions = self.sessions();
        let idle = self.idle;
        sessions.retain(|s| {
            now.duration_since(s.used) < idle && now.duration_since(s.created) < SESSION_LIFETIME
        });
        match sessions
            .iter_mut()
            .find(|s| same(s.id.as_bytes(), id.as_bytes()))
        {
            Some(session) => {
                session.used = now;
                true
            }
            None => false,
        }
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
/// Wrong tokens are budgeted per address and overall: past the budget the
/// answer is 429 with the wait, whatever the token.
pub(crate) async fn login(
    State(shared): State<std::sync::Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(login): Json<Login>,
) -> Response {
    let client = peer.ip().to_canonical();
    if let Err(wait) = shared.gate.may_guess(client) {
        let seconds = wait.as_secs() + 1;
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("too many wrong tokens; try again in {seconds} s"),
        );
        if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    if !same(
        login.token.trim().as_bytes(),
        shared.gate.token.expose().as_bytes(),
    ) {
        tracing::warn!(%client, "wrong admin token at login");
        return error(StatusCode::UNAUTHORIZED, "wrong admin token");
    }
    shared.gate.forgive(client);
    let id = match random_hex(24) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    {
        let mut sessions = shared.gate.sessions();
        if sessions.len() >= MAX_SESSIONS {
            sessions.pop_front();
        }
        let now = Instant::now();
        sessions.push_back(Session {
            id: id.clone(),
            created: now,
            used: now,
        });
    }
    let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

pub(crate) async fn logout(
    State(shared): State<std::sync::Arc<Shared>>,
    headers: HeaderMap,
) -> Response {
    if let Some(id) = session_cookie(&headers) {
        shared.gate.sessions().retain(|s| s.id != id);
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
    fn guesses_are_budgeted_per_address_and_overall() {
        let gate = Gate::new(Secret::new("0123456789abcdef"), Duration::from_secs(60));
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert!(gate.may_guess(one).is_ok());
        }
        let wait = gate.may_guess(one).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= GUESS_EVERY, "{wait:?}");
        gate.forgive(one);
        assert!(
            gate.may_guess(one).is_ok(),
            "a right token resets the address"
        );
        // Many addresses together meet the overall budget.
        let refused = (0..40u8)
            .map(|i| IpAddr::from([10, 1, 0, i]))
            .filter(|ip| gate.may_guess(*ip).is_err())
            .count();
        assert!(refused >= 40 - GUESSES_PER_SECOND as usize, "{refused}");
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
