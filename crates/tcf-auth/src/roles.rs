//! Roles, ordered: a viewer reads; a deployer also changes what runs; an admin also manages
//! tokens and secrets, restores backups and stops the platform. Every API route is in
//! [`ROUTES`]; a route missing from it needs admin, so a new route is closed until listed.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Deployer,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Deployer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Method, path pattern (`{x}` matches one segment) and the least role that may call it.
pub const ROUTES: &[(&str, &str, Role)] = &[
    // Reading.
    ("GET", "/v1/ping", Role::Viewer),
    ("GET", "/v1/status", Role::Viewer),
    ("GET", "/v1/events", Role::Viewer),
    ("GET", "/v1/logs/{service}", Role::Viewer),
    ("GET", "/v1/releases", Role::Viewer),
    ("GET", "/v1/lock", Role::Viewer),
    ("GET", "/v1/metrics", Role::Viewer),
    ("GET", "/v1/metrics/query", Role::Viewer),
    ("GET", "/v1/alerts", Role::Viewer),
    ("GET", "/v1/alerts/history", Role::Viewer),
    ("GET", "/v1/monitor", Role::Viewer),
    ("GET", "/v1/backups", Role::Viewer),
    // Changing what runs.
    ("POST", "/v1/deploy", Role::Deployer),
    ("POST", "/v1/rollback", Role::Deployer),
    ("POST", "/v1/restart", Role::Deployer),
    ("POST", "/v1/scale", Role::Deployer),
    ("POST", "/v1/validate", Role::Deployer),
    ("POST", "/v1/abort", Role::Deployer),
    ("POST", "/v1/lock/release", Role::Deployer),
    ("POST", "/v1/alerts/silences", Role::Deployer),
    ("POST", "/v1/alerts/silences/{id}/expire", Role::Deployer),
    ("POST", "/v1/monitor", Role::Deployer),
    ("POST", "/v1/backups", Role::Deployer),
    ("POST", "/v1/backups/{id}/verify", Role::Deployer),
    // Administration.
    ("POST", "/v1/down", Role::Admin),
    ("POST", "/v1/backup/events", Role::Admin),
    ("GET", "/v1/backups/{id}/restore", Role::Admin),
    ("POST", "/v1/backups/{id}/restore", Role::Admin),
    ("POST", "/v1/backups/prune", Role::Admin),
    ("GET", "/v1/tokens", Role::Admin),
    ("POST", "/v1/tokens", Role::Admin),
    ("POST", "/v1/tokens/{name}/revoke", Role::Admin),
    ("GET", "/v1/secrets", Role::Admin),
    ("POST", "/v1/secrets", Role::Admin),
    ("DELETE", "/v1/secrets/{name}", Role::Admin),
    // The audit report maps the platform's weak points: admin, as tokens and secrets are.
    ("GET", "/v1/audit", Role::Admin),
];

/// The least role that may call `method path` (a path without its query). Unlisted: admin.
pub fn required_role(method: &str, path: &str) -> Role {
    ROUTES
        .iter()
        .find(|(m, pattern, _)| m.eq_ignore_ascii_case(method) && matches(pattern, path))
        .map_or(Role::Admin, |(_, _, role)| *role)
}

fn matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some(want), Some(got)) => {
                let wildcard = want.starts_with('{') && want.ends_with('}');
                if !(wildcard && !got.is_empty() || want == got) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Admin.allows(Role::Deployer));
        assert!(Role::Deployer.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Deployer));
        assert!(!Role::Deployer.allows(Role::Admin));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn each_route_needs_its_role_and_unknown_routes_need_admin() {
        assert_eq!(required_role("GET", "/v1/status"), Role::Viewer);
        assert_eq!(required_role("GET", "/v1/logs/web"), Role::Viewer);
        assert_eq!(required_role("POST", "/v1/deploy"), Role::Deployer);
        assert_eq!(
            required_role("POST", "/v1/alerts/silences/7/expire"),
            Role::Deployer
        );
        assert_eq!(required_role("POST", "/v1/down"), Role::Admin);
        assert_eq!(required_role("GET", "/v1/backups"), Role::Viewer);
        assert_eq!(required_role("POST", "/v1/backups"), Role::Deployer);
        assert_eq!(
            required_role("POST", "/v1/backups/20261125T161824Z-3fa1/verify"),
            Role::Deployer
        );
        assert_eq!(
            required_role("POST", "/v1/backups/20261125T161824Z-3fa1/restore"),
            Role::Admin
        );
        assert_eq!(required_role("POST", "/v1/backups/prune"), Role::Admin);
        assert_eq!(required_role("DELETE", "/v1/secrets/db"), Role::Admin);
        assert_eq!(required_role("GET", "/v1/audit"), Role::Admin);
        // A method or path the table does not list is closed.
        assert_eq!(required_role("POST", "/v1/status"), Role::Admin);
        assert_eq!(required_role("GET", "/v1/logs/"), Role::Admin);
        assert_eq!(required_role("GET", "/v1/logs/a/b"), Role::Admin);
        assert_eq!(required_role("GET", "/v1/something-new"), Role::Admin);
    }
}
