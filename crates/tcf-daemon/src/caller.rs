//! Who is calling the API. On the Unix socket the kernel tells us (SO_PEERCRED): the Unix user
//! of the connecting process is the actor recorded in events, releases and locks. What the
//! client claims (`user@host` from its environment) is kept only as detail, so the audit trail
//! cannot be forged by setting `USER`.

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

/// On the Unix socket: the peer's uid. On the remote API: its address and, once its token is
/// verified (access.rs), the token's name, which is then the actor.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub uid: Option<u32>,
    pub remote: Option<std::net::SocketAddr>,
    pub token: Option<String>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        let cred = stream.io().peer_cred().ok();
        Peer {
            uid: cred.map(|c| c.uid()),
            ..Peer::default()
        }
    }
}

impl Peer {
    /// The caller's Unix user name (or `uid N`), or the remote caller's token name.
    pub fn user(&self) -> String {
        if let Some(token) = &self.token {
            return token.clone();
        }
        match self.uid {
            None => "unknown".into(),
            Some(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {uid}"), |u| u.name),
        }
    }

    /// The actor to record: the Unix user, with the client's claim only where it adds a host
    /// (`alice@build-1`) or differs (`root (claims alice@laptop)`).
    pub fn actor(&self, claimed: &str) -> String {
        if let Some(token) = &self.token {
            return token.clone();
        }
        let user = self.user();
        let claimed = printable(claimed);
        if claimed.is_empty() || claimed == user {
            user
        } else if claimed
            .strip_prefix(&user)
            .is_some_and(|rest| rest.starts_with('@'))
        {
            claimed
        } else {
            format!("{user} (claims {claimed})")
        }
    }
}

/// Text from a client with control characters (newlines, terminal escapes) shown as escapes,
/// so it can never forge a line or recolour a terminal in `history`, `events` or the log.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A reason or claim with control characters is refused rather than stored.
pub fn check_text(what: &str, text: &str) -> Result<(), String> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{what} contains a control character ({:?}); use plain text on one line",
            c
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_is_the_unix_user_and_a_claim_is_only_detail() {
        let root = Peer {
            uid: Some(0),
            ..Peer::default()
        };
        assert_eq!(root.actor("root@box"), "root@box");
        assert_eq!(root.actor(""), "root");
        assert_eq!(root.actor("alice@laptop"), "root (claims alice@laptop)");
        assert_eq!(
            root.actor("alice\n2026 deploy.switched forged"),
            "root (claims alice\\n2026 deploy.switched forged)"
        );
        assert_eq!(printable("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        assert!(check_text("reason", "hotfix\nforged line").is_err());
        assert!(check_text("reason", "hotfix for #12").is_ok());
    }
}
