//! The catalogue of checks. IDs are stable: a check that goes away leaves its ID unused.
//! docs/audit.md describes each one; keep them in step.

use crate::model::{Rule, Severity};

const fn rule(
    id: &'static str,
    title: &'static str,
    severity: Severity,
    description: &'static str,
    remediation: &'static str,
) -> Rule {
    Rule {
        id,
        title,
        severity,
        description,
        remediation,
        online: false,
        comprehensive: false,
        cis: None,
    }
}

const fn online(mut r: Rule) -> Rule {
    r.online = true;
    r
}

const fn comprehensive(mut r: Rule) -> Rule {
    r.comprehensive = true;
    r
}

const fn cis(mut r: Rule, number: &'static str) -> Rule {
    r.cis = Some(number);
    r
}

pub static STATE_DIR_MODE: Rule = rule(
    "TCF-FS-001",
    "State directory open to other users",
    Severity::High,
    "The mode of the state directory (store, logs, the API socket): group or others may list, enter or write it.",
    "chmod 700 the state directory (the daemon sets 0700 when it creates it) and chown it to the user the daemon runs as.",
);

pub static STORE_FILE_MODE: Rule = rule(
    "TCF-FS-002",
    "Store or log files readable by other users",
    Severity::High,
    "The modes of state.db (and its -wal/-shm), daemon.lock, the secrets key (secrets.key), the remote API's private key (api-key.pem) and the instance logs, where the state directory lets others reach them.",
    "chmod 600 the files, and chmod 700 the state directory so nobody else can reach them.",
);

pub static CONFIG_FILE_MODE: Rule = rule(
    "TCF-FS-003",
    "Config file writable by other users",
    Severity::High,
    "The mode of the config file: whoever can write it chooses the commands the platform runs.",
    "chmod 644 (or 600) the config file and chown it to the operator.",
);

pub static COMMAND_WRITABLE: Rule = rule(
    "TCF-FS-004",
    "Service executable writable by other users",
    Severity::High,
    "The program of each process-runtime service's command (resolved as the runtime resolves it) and its directory: whoever can write them runs code as the service.",
    "chmod go-w the program and its directory; install programs owned by root or the operator.",
);

pub static HOOK_WRITABLE: Rule = rule(
    "TCF-FS-005",
    "Hook script writable by other users",
    Severity::High,
    "The programs and script files named in [hooks] (pre_deploy, post_deploy, post_rollback): whoever can write them runs code on every deploy.",
    "chmod go-w the hook's program and script files and their directory.",
);

pub static BACKUP_REPOSITORY_MODE: Rule = rule(
    "TCF-FS-006",
    "Backup repository open to other users",
    Severity::High,
    "The mode of [backup] repository: others who may enter it may read every dump in it (in the clear unless [backup] recipients is set).",
    "chmod 700 the repository and chown it to the user that runs backups; set [backup] recipients so dumps are encrypted.",
);

pub static FILE_OWNER: Rule = rule(
    "TCF-FS-007",
    "Platform file owned by another user",
    Severity::High,
    "The owners of the state directory, the store (state.db and its -wal/-shm, daemon.lock), the key files (secrets.key, the remote API's key and certificate, each HTTPS service's key files, the backup identity) and the config: each must belong to the user the daemon runs as, or root. Whoever owns a file may change its mode and rewrite it.",
    "chown the file to the daemon's user (or root for the config and keys installed by an administrator), then check it was not changed: rotate a key file that someone else owned.",
);

pub static PLAINTEXT_SECRET: Rule = rule(
    "TCF-SEC-001",
    "Plain-text credential in the config",
    Severity::High,
    "Each service's env (and [defaults] env) for keys that name a credential (PASSWORD, PASSWD, SECRET, TOKEN, API_KEY, PRIVATE_KEY, CREDENTIALS, ...) with a literal value. Only the key is reported, never the value.",
    "Move the value out of the config file (a secret store or an environment file readable by the daemon only), and rotate it: it has been in a plain file.",
);

pub static URL_CREDENTIALS: Rule = rule(
    "TCF-SEC-002",
    "Credentials embedded in a URL",
    Severity::High,
    "Env values and dependency URLs of the form scheme://user:password@host. Only where it is is reported, never the password.",
    "Remove the password from the URL; pass it separately from a secret store, and rotate it.",
);

pub static WEAK_SECRET: Rule = rule(
    "TCF-SEC-003",
    "Default or weak password",
    Severity::Critical,
    "Credential-named env values that are well-known defaults (password, changeme, admin, root, secret, 123456, ...) or shorter than 8 characters.",
    "Set a long random value (openssl rand -base64 32) in the service's backing store and in the secret, then restart the service.",
);

pub static SECRET_IN_FILES: Rule = comprehensive(rule(
    "TCF-SEC-004",
    "Plain-text credential in an env or compose file",
    Severity::High,
    "Env files (.env, .env.*, *.env) and compose files (compose*.y[a]ml, docker-compose*.y[a]ml) in the config's directory and beside each process service's program (its directory and the one above): KEY=value and KEY: value lines whose key names a credential with a literal value, and URLs with a password. Only file, line and key are reported, never the value.",
    "Move the value into a secret store or a file only the service's user can read (chmod 600), keep such files out of version control, and rotate the credential.",
));

pub static SECRET_UNUSED: Rule = rule(
    "TCF-SEC-005",
    "Secret set but used by nothing",
    Severity::Low,
    "The secrets in the store (`secrets list`) against the `${secret:NAME}` references in the services' env and the [backup.sources] passwords: a secret nothing refers to is a credential kept for no one, that can only leak.",
    "Remove it (`tcf-platform secrets rm NAME`) and revoke the credential where it was issued, or refer to it from the service that needs it.",
);

pub static SECRET_NOT_ROTATED: Rule = rule(
    "TCF-SEC-006",
    "Secret not rotated",
    Severity::Medium,
    "When each secret in the store was last set (`secrets list`, column updated) against [audit] secret_max_age (default 90 days): a long-lived credential has had longer to leak.",
    "Issue a new credential where it comes from, `tcf-platform secrets set NAME` with it, deploy the services that use it (`status` lists them as stale), then revoke the old one.",
);

pub static SECRET_IN_SERVICE_TREE: Rule = comprehensive(rule(
    "TCF-SEC-007",
    "Credential in a service's files",
    Severity::High,
    "Every text file under each process service's directories (its program's directory and the one above, when below the config's directory), skipping .git, target and node_modules, binaries and files over 1 MiB: PEM private keys, assignments whose name is a credential's (password = \"…\") with a literal value, URLs with a password, known token formats and long random-looking strings (the rules of TCF-SEC-001). Only file, line and rule are reported, never the value.",
    "Remove the credential from the file (and from version control history), rotate it, and hand it to the service as a secret: `tcf-platform secrets set NAME` and `${secret:NAME}` in its env.",
));

pub static PUBLIC_WITHOUT_TLS: Rule = rule(
    "TCF-NET-001",
    "Service served on a public address without TLS",
    Severity::Medium,
    "Each service's listen address without `tls`: anything but loopback is reachable from the network, and such a service is served over plain HTTP.",
    "Give the service tls = { cert, key } or tls = { acme = {...} } (docs/tls.md), or listen on 127.0.0.1 and restrict the port with a firewall to trusted networks.",
);

pub static LISTENERS_VS_CONFIG: Rule = online(rule(
    "TCF-NET-002",
    "Listeners of the daemon differ from the config",
    Severity::Medium,
    "The TCP sockets the daemon process actually listens on (/proc/PID/fd and /proc/PID/net/tcp{,6}) against the listen addresses of the config: one configured but not bound, or one bound that no service declares.",
    "Restart the daemon with the config it should serve (`tcf-platform down` then `up`), and find what opened an unexpected listener.",
));

pub static INSTANCE_EXTRA_PORTS: Rule = online(rule(
    "TCF-NET-003",
    "Instance listens beyond its PORT",
    Severity::Medium,
    "The TCP sockets each running instance listens on (its process's fds against /proc/PID/net/tcp{,6}) besides the PORT it was given: a debug or admin port the proxy does not guard.",
    "Turn the extra listener off in the service, or bind it to 127.0.0.1 and declare why in its docs.",
));

pub static DEPENDENCY_EXPOSED: Rule = rule(
    "TCF-NET-004",
    "Dependency reachable from outside loopback",
    Severity::High,
    "Each [dependencies] entry whose address is on this host (a loopback address, localhost, or an address of this host): the host's TCP listeners on its port (/proc/net/tcp{,6}) bound to 0.0.0.0, :: or a non-loopback address. A database or cache the services reach over loopback needs no other interface, and is often not protected for one.",
    "Bind the dependency to 127.0.0.1 (postgresql.conf listen_addresses, redis.conf bind, or -p 127.0.0.1:PORT:PORT for a container), or firewall the port to the hosts that need it.",
);

pub static UNEXPECTED_LISTENER: Rule = online(rule(
    "TCF-NET-005",
    "Unexpected listener on the host",
    Severity::Low,
    "Every TCP socket listening on this host (/proc/net/tcp{,6}), mapped to its processes through their /proc/PID/fd: one that is neither the daemon's (its proxy and API included), an instance's, nor on a port the config declares (services, the daemon, the monitor, the instances' PORTs, [dependencies] addresses). Low when reachable from the network, info on loopback.",
    "Find what the process is (the finding names it and its pid); stop it, bind it to 127.0.0.1 or firewall the port if it has no business on this host, or declare it (a [dependencies] address) if the platform uses it.",
));

pub static INSTANCE_ROOT: Rule = online(rule(
    "TCF-PROC-001",
    "Instance running as root",
    Severity::High,
    "The effective uid of each running instance (/proc/PID/status): a compromised service running as root owns the machine.",
    "Run the daemon as an unprivileged user (the Debian package's `tcf` user) so its instances are not root, or for containers set `user`.",
));

pub static SOCKET_MODE: Rule = online(rule(
    "TCF-API-001",
    "API socket open to other users",
    Severity::Critical,
    "The mode and owner of the daemon's Unix socket: whoever can connect can deploy, roll back and stop the platform.",
    "The daemon creates it 0600; if something changed it, chmod 600 the socket (and 700 its directory) or restart the daemon.",
));

pub static CONTAINER_ROOT: Rule = cis(
    rule(
        "TCF-CTR-001",
        "Container runs as root",
        Severity::Medium,
        "Docker services without `user` (or with user root / 0): the image's default user, root for most images.",
        "Set `user = \"1000:1000\"` (or a named user the image has) for the service.",
    ),
    "4.1",
);

pub static CONTAINER_WRITABLE_ROOT: Rule = cis(
    rule(
        "TCF-CTR-002",
        "Container root filesystem writable",
        Severity::Low,
        "Docker services without `read_only = true`.",
        "Set `read_only = true` and mount a volume (or tmpfs) where the service must write.",
    ),
    "5.13",
);

pub static CONTAINER_NO_MEMORY_LIMIT: Rule = cis(
    rule(
        "TCF-CTR-003",
        "Container without a memory limit",
        Severity::Medium,
        "Docker services without `memory`: one leaking container can take the host's memory.",
        "Set `memory = \"512MiB\"` (what the service needs, with headroom) for the service.",
    ),
    "5.11",
);

pub static CONTAINER_DOCKER_SOCKET: Rule = cis(
    rule(
        "TCF-CTR-004",
        "Docker socket mounted into a container",
        Severity::Critical,
        "Docker services whose volumes mount /var/run/docker.sock (or /run/docker.sock): the container controls the engine, which is root on the host.",
        "Remove the mount; if the service must talk to Docker, give it a socket proxy that allows only the calls it needs.",
    ),
    "5.32",
);

pub static BODY_LIMIT: Rule = rule(
    "TCF-CFG-001",
    "Request body limit too large",
    Severity::Low,
    "Each service's max_request_body: above 1 GiB the proxy effectively accepts any upload, and one client can fill the service's disk or memory.",
    "Set max_request_body to what the service really accepts (the default is 16MiB).",
);

pub static NO_HEALTH_CHECK: Rule = rule(
    "TCF-CFG-002",
    "Health check left to the defaults",
    Severity::Low,
    "Services with no [health] in the config (neither their own nor in [defaults]): they are probed with GET /health, which the service may not implement meaningfully.",
    "Declare [services.NAME.health] (or [defaults.health]) with the path that proves the service works (its database reachable, say).",
);

pub static VULNERABLE_DEPENDENCY: Rule = comprehensive(rule(
    "TCF-DEP-001",
    "Dependency with a known vulnerability",
    Severity::High,
    "The lockfiles next to each process-runtime service's program (its directory and the one above): Cargo.lock, package-lock.json, Gemfile.lock, poetry.lock and requirements*.txt pins, against a local OSV advisory file or directory given with --advisories; no network.",
    "Upgrade the package to a fixed version (see the advisory), rebuild and deploy the service.",
));

pub static ADVISORIES_STALE: Rule = comprehensive(rule(
    "TCF-DEP-002",
    "Advisory database out of date",
    Severity::Medium,
    "The age of the OSV database TCF-DEP-001 matches against (the time of its newest file, which --update-advisories sets to the download's) against [audit] advisories_max_age (default 7 days): advisories published since are not known, so TCF-DEP-001 passes packages it should not.",
    "Run `tcf-platform prod audit --update-advisories` (or copy a fresh database and pass --advisories), from cron on a machine that is online.",
));

pub static NO_BACKUPS: Rule = rule(
    "TCF-BAK-001",
    "No backups configured",
    Severity::Medium,
    "The config's [backup] section: none at all, or one without sources.",
    "Configure [backup] with a repository and a source for each data store (docs/backups.md), then `tcf-platform backup create` and `backup verify --level restore`.",
);

pub static BACKUPS_UNENCRYPTED: Rule = rule(
    "TCF-BAK-002",
    "Backups not encrypted",
    Severity::Medium,
    "[backup] recipients: without them every artifact (database dumps included) is stored in the clear in the repository.",
    "Set [backup] recipients = [\"age1...\"] (age-keygen -o key.txt) and keep the key away from the repository.",
);

pub static BACKUPS_UNSCHEDULED: Rule = rule(
    "TCF-BAK-003",
    "Backups not scheduled",
    Severity::Low,
    "[backup] schedule: without it backups happen only when someone runs `backup create` (or a deploy with --backup).",
    "Set [backup] schedule = \"0 3 * * *\" (UTC), or run `tcf-platform backup create` from cron.",
);

pub static RESTORE_NOT_PROVEN: Rule = rule(
    "TCF-BAK-004",
    "No backup proven restorable recently",
    Severity::Medium,
    "The backup repository: no backup passed `backup verify --level restore` in the last 7 days (or none ever did). A backup that was never restored is a hope, not a backup.",
    "Run `tcf-platform backup verify ID --level restore` on the newest backup, and schedule it (the monitor's restore_verify_stale alert watches the same age).",
);

pub static CERTIFICATE_EXPIRY: Rule = rule(
    "TCF-TLS-001",
    "Certificate expired or expiring",
    Severity::High,
    "Every certificate the platform uses (each HTTPS service's files, ACME's kept certificates, the remote API's) and, with --comprehensive, every one it serves (a live handshake with each HTTPS listener, the remote API and dependencies that speak TLS): expired (critical), expiring within 7 days (high) or within 30 days (medium). ACME certificates renew 30 days before expiry, so one this close means renewal is failing.",
    "Replace the certificate files (they are reloaded when they change) or see why ACME renewal fails (`tcf-platform events`, `tls renew`); a served certificate older than its file means the listener was not reloaded (`tls reload`).",
);

pub static NO_HSTS: Rule = rule(
    "TCF-TLS-002",
    "HTTPS service without HSTS",
    Severity::Low,
    "Each service with `tls`: without `hsts`, a browser that once used HTTPS may be talked into plain HTTP again (SSL stripping).",
    "Set hsts = \"max-age=31536000\" on the service once HTTPS works for all its hostnames.",
);

pub static TOKEN_NEVER_EXPIRES: Rule = online(rule(
    "TCF-AUTH-001",
    "API token that never expires",
    Severity::Medium,
    "The remote API's tokens (`tokens list`): a deployer or admin token without an expiry stays valid until someone remembers to revoke it (a viewer's: low).",
    "Create tokens with --expires (90d, say), rotate them, and revoke the old ones: `tcf-platform tokens revoke NAME`.",
));

pub static TOKEN_UNUSED: Rule = online(rule(
    "TCF-AUTH-002",
    "API token unused for 90 days",
    Severity::Low,
    "Tokens not revoked whose last use (or creation, never used) is more than 90 days old: a credential nobody needs is one that can only leak.",
    "Revoke it: `tcf-platform tokens revoke NAME`.",
));

pub static TOO_MANY_ADMINS: Rule = online(rule(
    "TCF-AUTH-003",
    "More admin tokens than configured",
    Severity::Medium,
    "The live (not revoked, not expired) admin tokens against [audit] max_admins (default 2): every admin token can stop the platform, read every secret and mint more tokens.",
    "Revoke the admin tokens nobody needs (`tcf-platform tokens revoke NAME`), give automation deployer or viewer tokens, or raise [audit] max_admins deliberately.",
));

pub static FAILED_AUTH_BURST: Rule = online(rule(
    "TCF-AUTH-004",
    "Burst of failed authentications",
    Severity::High,
    "The daemon's auth.failed events of the last 24 hours, by client address: [audit] failed_auth_burst (default 10) or more from one address within failed_auth_window (default 10 minutes) is someone guessing tokens or a client with a revoked one.",
    "Find who owns the address (`tcf-platform events` shows each refusal); block it at the firewall if it is not yours, or give the client a valid token.",
));

pub static HOSTNAME_MISMATCH: Rule = comprehensive(rule(
    "TCF-TLS-003",
    "Served certificate does not match the hostname",
    Severity::High,
    "A live handshake with each HTTPS listener (SNI set to each name it has a certificate for: its ACME domains, the first name of each certificate file) and each dependency reached over TLS (its URL's host): the certificate presented must cover that name.",
    "Serve a certificate whose subjectAltName covers the name (the files of the service's tls, or the ACME domains), then `tls reload`; for a dependency, fix its certificate or the URL's host.",
));

pub static CHAIN_UNTRUSTED: Rule = rule(
    "TCF-TLS-004",
    "Certificate chain not trusted",
    Severity::High,
    "Each certificate file the platform uses and, with --comprehensive, each served chain: it must lead to a root of the system's bundle (SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt) or of a CA the config names (an ACME server's ca). The remote API's own self-signed certificate is exempt: clients pin its fingerprint.",
    "Serve the full chain (leaf then intermediates) from a CA clients trust, or add the private CA to the system's bundle where the clients run.",
);

pub static WEAK_KEY: Rule = rule(
    "TCF-TLS-005",
    "Certificate key too small",
    Severity::High,
    "The keys of each certificate file and, with --comprehensive, each served chain: RSA (or DSA) under 2048 bits, EC under 256 bits.",
    "Issue a new certificate with an ECDSA P-256 key or an RSA key of at least 2048 bits (3072 for use beyond 2030).",
);

pub static WEAK_SIGNATURE: Rule = rule(
    "TCF-TLS-006",
    "Certificate signed with SHA-1 or MD5",
    Severity::High,
    "The signature algorithm of each certificate of each file and, with --comprehensive, each served chain (roots excepted: their self-signature is not checked): SHA-1 (high), MD5 or MD2 (critical). Collisions for these hashes can be bought.",
    "Reissue the certificate signed with SHA-256 or better (every public CA does so; for a private CA, re-sign with -sha256).",
);

pub static LEGACY_PROTOCOL: Rule = comprehensive(rule(
    "TCF-TLS-007",
    "TLS older than 1.2 offered",
    Severity::Medium,
    "Each endpoint reached over TLS (HTTPS listeners, the remote API, dependencies): a raw ClientHello offering only TLS 1.0, then only TLS 1.1, and whether the server answers with a ServerHello for that version (the probe testssl.sh makes; rustls itself cannot speak these versions).",
    "Allow TLS 1.2 and 1.3 only on that endpoint (the platform's own listeners never offer less; for a dependency, its ssl_protocols / ssl_min_protocol_version).",
));

pub static CONTAINER_PRIVILEGED: Rule = comprehensive(cis(
    rule(
        "TCF-CTR-005",
        "Privileged container",
        Severity::Critical,
        "Every container of the platform (by its tcf.platform label) on the Docker engine: HostConfig.Privileged. A privileged container has every capability and every device: root on the host.",
        "Recreate it without --privileged; add only the capabilities it needs (--cap-add).",
    ),
    "5.5",
));

pub static CONTAINER_HOST_NETWORK: Rule = comprehensive(cis(
    rule(
        "TCF-CTR-006",
        "Container shares the host's network namespace",
        Severity::High,
        "Every container of the platform on the engine: HostConfig.NetworkMode host. It can bind any host port and reach every loopback service (the daemon's API included).",
        "Run it on the platform's network (tcf-NAME) and publish the port it serves.",
    ),
    "5.10",
));

pub static CONTAINER_NO_HEALTHCHECK: Rule = comprehensive(cis(
    rule(
        "TCF-CTR-007",
        "Container without a health check",
        Severity::Low,
        "Every container of the platform on the engine: no HEALTHCHECK in its config (its image's or its own), or one set to NONE. The platform still probes the service over HTTP, but the engine cannot tell a hung container.",
        "Add a HEALTHCHECK to the image (HEALTHCHECK CMD [\"/app\", \"healthcheck\"]).",
    ),
    "5.27",
));

pub static CONTAINER_PUBLISHED_EVERYWHERE: Rule = comprehensive(cis(
    rule(
        "TCF-CTR-008",
        "Container port published on every interface",
        Severity::Medium,
        "Every container of the platform on the engine: port bindings with host IP empty, 0.0.0.0 or ::, reachable from the network around the proxy (and around Docker's own firewall rules).",
        "Publish on 127.0.0.1 only (the platform does for the containers it starts); let the proxy serve the public address.",
    ),
    "5.14",
));

/// Every check, in the order reports list them.
pub static ALL: [&Rule; 48] = [
    &STATE_DIR_MODE,
    &STORE_FILE_MODE,
    &CONFIG_FILE_MODE,
    &COMMAND_WRITABLE,
    &HOOK_WRITABLE,
    &BACKUP_REPOSITORY_MODE,
    &FILE_OWNER,
    &PLAINTEXT_SECRET,
    &URL_CREDENTIALS,
    &WEAK_SECRET,
    &SECRET_IN_FILES,
    &SECRET_UNUSED,
    &SECRET_NOT_ROTATED,
    &SECRET_IN_SERVICE_TREE,
    &PUBLIC_WITHOUT_TLS,
    &LISTENERS_VS_CONFIG,
    &INSTANCE_EXTRA_PORTS,
    &DEPENDENCY_EXPOSED,
    &UNEXPECTED_LISTENER,
    &INSTANCE_ROOT,
    &SOCKET_MODE,
    &CONTAINER_ROOT,
    &CONTAINER_WRITABLE_ROOT,
    &CONTAINER_NO_MEMORY_LIMIT,
    &CONTAINER_DOCKER_SOCKET,
    &CONTAINER_PRIVILEGED,
    &CONTAINER_HOST_NETWORK,
    &CONTAINER_NO_HEALTHCHECK,
    &CONTAINER_PUBLISHED_EVERYWHERE,
    &BODY_LIMIT,
    &NO_HEALTH_CHECK,
    &VULNERABLE_DEPENDENCY,
    &ADVISORIES_STALE,
    &NO_BACKUPS,
    &BACKUPS_UNENCRYPTED,
    &BACKUPS_UNSCHEDULED,
    &RESTORE_NOT_PROVEN,
    &CERTIFICATE_EXPIRY,
    &NO_HSTS,
    &HOSTNAME_MISMATCH,
    &CHAIN_UNTRUSTED,
    &WEAK_KEY,
    &WEAK_SIGNATURE,
    &LEGACY_PROTOCOL,
    &TOKEN_NEVER_EXPIRES,
    &TOKEN_UNUSED,
    &TOO_MANY_ADMINS,
    &FAILED_AUTH_BURST,
];

pub fn all() -> impl Iterator<Item = &'static Rule> {
    ALL.iter().copied()
}

pub fn find(id: &str) -> Option<&'static Rule> {
    all().find(|r| r.id.eq_ignore_ascii_case(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let ids: Vec<&str> = all().map(|r| r.id).collect();
        let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "duplicate check IDs: {ids:?}");
        for id in ids {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(parts.len(), 3, "{id}");
            assert_eq!(parts[0], "TCF");
            assert!(parts[2].len() == 3 && parts[2].chars().all(|c| c.is_ascii_digit()));
        }
    }

    #[test]
    fn docs_describe_every_check() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/audit.md"))
                .expect("docs/audit.md");
        for rule in all() {
            assert!(
                doc.contains(rule.id),
                "docs/audit.md does not describe {}",
                rule.id
            );
        }
    }
}
