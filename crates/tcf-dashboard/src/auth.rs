//! Who is looking: on loopback the local user of the daemon, elsewhere a token exchanged for a
//! session cookie. Every action carries a CSRF token tied to that session.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a token may do. Ordered: each role can do what the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Deployer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    /// Roll back, silence and unsilence.
    pub fn can_act(self) -> bool {
        self >= Role::Deployer
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this token is unknown, expired or revoked")]
    InvalidToken,
    #[error("tokens could not be checked: {0}")]
    Unavailable(String),
}

/// The daemon's token check (tokens with roles): a token's name and role, or why not.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify(&self, token: &str) -> Result<(String, Role), AuthError>;
}

/// How callers are known.
#[derive(Clone)]
pub enum Access {
    /// Loopback only: no login; every action acts as this actor (the daemon's local user).
    Local { actor: String },
    /// Anything else: a token, checked by the daemon, for a session cookie.
    Tokens(Arc<dyn TokenVerifier>),
}

/// Who a request comes from, once known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// Recorded as the actor of what they do.
    pub actor: String,
    pub role: Role,
    /// The token every form of theirs must carry.
    pub csrf: String,
}

pub const SESSION_COOKIE: &str = "tcf_dashboard";
/// How long a login lasts without a new one.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

struct Session {
    /// Checked again on each request, so a revoked token ends its sessions at once.
    token: String,
    csrf: String,
    expires: Instant,
}

/// Logins, in memory: a daemon restart asks for the token again.
pub struct Sessions {
    access: Access,
    /// Local mode's CSRF token (one per daemon run).
    local_csrf: String,
    sessions: Mutex<HashMap<String, Session>>,
}

/// 32 bytes from the kernel's generator, hex.
pub fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equal strings in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sessions {
    pub fn new(access: Access) -> std::io::Result<Sessions> {
        Ok(Sessions {
            access,
            local_csrf: random_token()?,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    pub fn needs_login(&self) -> bool {
        matches!(self.access, Access::Tokens(_))
    }

    /// The viewer behind a request's session cookie value (None: log in first).
    pub fn viewer(&self, cookie: Option<&str>) -> Option<Viewer> {
        let verifier = match &self.access {
            Access::Local { actor } => {
                return Some(Viewer {
                    actor: actor.clone(),
                    role: Role::Admin,
                    csrf: self.local_csrf.clone(),
                })
            }
            Access::Tokens(v) => v,
        };
        let id = cookie?;
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        let session = sessions.get(id)?;
        match verifier.verify(&session.token) {
            Ok((name, role)) => Some(Viewer {
                actor: format!("{name} (dashboard)"),
                role,
                csrf: session.csrf.clone(),
            }),
            Err(_) => {
                sessions.remove(id);
                None
            }
        }
    }

    /// Exchange a token for a session: its id (the cookie's value) and the viewer.
    pub fn login(&self, token: &str) -> Result<(String, Viewer), LoginError> {
        let Access::Tokens(verifier) = &self.access else {
            return Err(LoginError::NotNeeded);
        };
        let (name, role) = verifier.verify(token.trim())?;
        let id = random_token().map_err(|e| LoginError::Random(e.to_string()))?;
        let csrf = random_token().map_err(|e| LoginError::Random(e.to_string()))?;
        lock(&self.sessions).insert(
            id.clone(),
            Session {
                token: token.trim().to_string(),
                csrf: csrf.clone(),
                expires: Instant::now() + SESSION_TTL,
            },
        );
        Ok((
            id,
            Viewer {
                actor: format!("{name} (dashboard)"),
                role,
                csrf,
            },
        ))
    }

    pub fn logout(&self, cookie: Option<&str>) {
        if let Some(id) = cookie {
            lock(&self.sessions).remove(id);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("no login is needed on a loopback address")]
    NotNeeded,
    #[error("could not make a session id: {0}")]
    Random(String),
}

/// The `Set-Cookie` value for a session: HttpOnly, SameSite=Strict, Secure under TLS.
pub fn session_cookie(id: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn expired_cookie(secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Our session cookie's value among a request's `Cookie` headers.
pub fn cookie_value<'a>(headers: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// A cross-site form post: an `Origin` that is not this host. Browsers send `Origin` on every
/// POST; its absence (curl, old browsers) leaves the CSRF token as the check.
pub fn cross_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    match (origin, host) {
        (None, _) => false,
        (Some(o), Some(h)) => {
            let rest = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"));
            rest != Some(h)
        }
        (Some(_), None) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens as #14's store answers them: a table, with revocation.
    struct Table(Mutex<Vec<(String, String, Role)>>);

    impl TokenVerifier for Table {
        fn verify(&self, token: &str) -> Result<(String, Role), AuthError> {
            lock(&self.0)
                .iter()
                .find(|(t, _, _)| same(t, token))
                .map(|(_, n, r)| (n.clone(), *r))
                .ok_or(AuthError::InvalidToken)
        }
    }

    fn tokens() -> (Arc<Table>, Sessions) {
        let table = Arc::new(Table(Mutex::new(vec![
            ("tok-viewer".into(), "vera".into(), Role::Viewer),
            ("tok-deployer".into(), "dan".into(), Role::Deployer),
        ])));
        let sessions = Sessions::new(Access::Tokens(table.clone())).unwrap();
        (table, sessions)
    }

    #[test]
    fn a_token_makes_a_session_with_its_own_csrf_token() {
        let (_, s) = tokens();
        assert!(s.needs_login());
        assert_eq!(s.viewer(None), None);
        assert_eq!(s.viewer(Some("made-up")), None);
        let (id, v) = s.login(" tok-deployer\n").unwrap();
        assert_eq!(v.role, Role::Deployer);
        assert_eq!(v.actor, "dan (dashboard)");
        assert_eq!(id.len(), 64);
        assert_ne!(id, v.csrf);
        assert_eq!(s.viewer(Some(&id)), Some(v.clone()));
        let (id2, v2) = s.login("tok-viewer").unwrap();
        assert_ne!(id, id2);
        assert_ne!(v.csrf, v2.csrf, "each session has its own CSRF token");
        assert!(!v2.role.can_act());
        assert!(v.role.can_act());
        s.logout(Some(&id));
        assert_eq!(s.viewer(Some(&id)), None);
        assert_eq!(s.viewer(Some(&id2)), Some(v2));
    }

    #[test]
    fn a_wrong_token_is_refused_and_a_revoked_one_ends_its_session() {
        let (table, s) = tokens();
        assert!(matches!(
            s.login("tok-nope"),
            Err(LoginError::Auth(AuthError::InvalidToken))
        ));
        let (id, _) = s.login("tok-viewer").unwrap();
        lock(&table.0).retain(|(t, _, _)| t != "tok-viewer");
        assert_eq!(s.viewer(Some(&id)), None);
    }

    #[test]
    fn local_access_needs_no_login_and_still_has_a_csrf_token() {
        let s = Sessions::new(Access::Local {
            actor: "dashboard (local)".into(),
        })
        .unwrap();
        assert!(!s.needs_login());
        let v = s.viewer(None).unwrap();
        assert_eq!(v.actor, "dashboard (local)");
        assert_eq!(v.csrf.len(), 64);
        assert!(matches!(s.login("x"), Err(LoginError::NotNeeded)));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_under_tls() {
        let c = session_cookie("abc", false);
        assert!(c.starts_with("tcf_dashboard=abc; "));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"));
        assert!(!c.contains("Secure"));
        assert!(session_cookie("abc", true).ends_with("; Secure"));
        assert!(expired_cookie(false).contains("Max-Age=0"));
        let headers = ["theme=dark; tcf_dashboard=s1", "other=2"];
        assert_eq!(cookie_value(headers.iter().copied()), Some("s1"));
        assert_eq!(cookie_value(["tcf_dashboard="].iter().copied()), None);
        assert_eq!(cookie_value(std::iter::empty()), None);
    }

    #[test]
    fn cross_origin_posts_are_recognised() {
        assert!(!cross_origin(None, Some("127.0.0.1:3006")));
        assert!(!cross_origin(
            Some("http://127.0.0.1:3006"),
            Some("127.0.0.1:3006")
        ));
        assert!(!cross_origin(
            Some("https://ops.example"),
            Some("ops.example")
        ));
        assert!(cross_origin(
            Some("http://evil.example"),
            Some("127.0.0.1:3006")
        ));
        assert!(cross_origin(Some("null"), Some("127.0.0.1:3006")));
        assert!(cross_origin(Some("http://x"), None));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
