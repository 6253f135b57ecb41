//! Which colour a request goes to: the route (colours with weights) and the sticky key that
//! keeps a client on one colour while traffic is split.

use super::*;

/// How a client keeps to one colour while traffic is split.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sticky {
    /// A cookie the proxy sets on the first answer.
    #[default]
    Cookie,
    /// A hash of this request header (falling back to the client address).
    Header(HeaderName),
    /// A hash of the client's IP address.
    ClientIp,
}

/// The name of the cookie that keeps a client on one colour during a split.
pub const STICKY_COOKIE: &str = "tcf_sticky";

/// Where a service's requests go right now: one or more colours with weights.
#[derive(Debug, Default, Clone)]
pub struct Route {
    pub pools: Vec<(Arc<Pool>, u32)>,
    pub sticky: Sticky,
}

impl Route {
    pub fn single(pool: Arc<Pool>) -> Route {
        Route {
            pools: vec![(pool, 100)],
            sticky: Sticky::default(),
        }
    }

    /// The colour for a client whose sticky key hashes to `key`: the first pools take the
    /// lowest buckets, so raising the first pool's weight only ever moves clients into it.
    pub(crate) fn choose(&self, key: u64) -> Option<&Arc<Pool>> {
        // The common case, one colour, allocates nothing and hashes nothing.
        if let [(pool, w)] = self.pools.as_slice() {
            return (*w > 0).then_some(pool);
        }
        let total: u64 = self.pools.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut bucket = key % total;
        for (pool, w) in self.pools.iter().filter(|(_, w)| *w > 0) {
            if bucket < u64::from(*w) {
                return Some(pool);
            }
            bucket -= u64::from(*w);
        }
        None
    }

    pub(crate) fn is_split(&self) -> bool {
        self.pools.iter().filter(|(_, w)| *w > 0).count() > 1
    }
}

/// The key that keeps a client on one colour, and the cookie to set when we made one up.
pub(crate) fn sticky_key(
    route: &Route,
    headers: &HeaderMap,
    client: SocketAddr,
) -> (u64, Option<HeaderValue>) {
    if !route.is_split() {
        return (0, None);
    }
    let hash = |bytes: &[u8]| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    };
    let ip = client.ip().to_string();
    match &route.sticky {
        Sticky::ClientIp => (hash(ip.as_bytes()), None),
        Sticky::Header(name) => match headers.get(name) {
            Some(v) => (hash(v.as_bytes()), None),
            None => (hash(ip.as_bytes()), None),
        },
        Sticky::Cookie => {
            let existing = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == STICKY_COOKIE)
                .map(|(_, v)| v.to_string());
            match existing {
                Some(v) => (hash(v.as_bytes()), None),
                None => {
                    let id = format!("{:016x}", fastrand::u64(..));
                    let cookie = HeaderValue::from_str(&format!(
                        "{STICKY_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"
                    ))
                    .ok();
                    (hash(id.as_bytes()), cookie)
                }
            }
        }
    }
}
