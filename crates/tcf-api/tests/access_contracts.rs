//! The JSON contracts of `tokens`, `secrets` and `status.api`, pinned like contracts.rs.

use std::collections::BTreeMap;
use tcf_api::access::*;

#[test]
fn tokens() {
    insta::assert_json_snapshot!(
        "token_created",
        TokenCreated {
            name: "ci-deploy".into(),
            role: "deployer".into(),
            token: "tcfp_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            expires: Some("2027-02-23T16:00:00.000Z".into()),
        }
    );
    insta::assert_json_snapshot!(
        "token_list",
        vec![TokenInfo {
            name: "ci-deploy".into(),
            role: "deployer".into(),
            created: "2026-11-25T16:00:00.000Z".into(),
            created_by: "root".into(),
            expires: None,
            last_used: Some("2026-11-25T17:00:00.000Z".into()),
            revoked: None,
        }]
    );
    insta::assert_json_snapshot!(
        "token_create_request",
        CreateToken {
            name: "ci-deploy".into(),
            role: "deployer".into(),
            expires_s: Some(7_776_000),
        }
    );
}

#[test]
fn secrets() {
    insta::assert_json_snapshot!(
        "secret_list",
        vec![SecretInfo {
            name: "database_url".into(),
            updated: "2026-11-25T16:00:00.000Z".into(),
            updated_by: "ci-deploy".into(),
            used_by: vec!["gateway".into(), "personas".into()],
        }]
    );
    insta::assert_json_snapshot!(
        "secrets_set_request",
        SetSecrets {
            secrets: BTreeMap::from([("database_url".to_string(), "postgres://…".to_string())]),
        }
    );
    insta::assert_json_snapshot!(
        "secrets_changed",
        SecretsChanged {
            names: vec!["database_url".into()],
            stale_services: vec!["gateway".into()],
        }
    );
}

#[test]
fn status_api() {
    insta::assert_json_snapshot!(
        "status_api",
        tcf_api::Status {
            platform: "tcf".into(),
            services: vec![],
            dependencies: vec![],
            deploy_in_progress: None,
            warnings: vec![],
            api: Some(ApiEndpoint {
                listen: "0.0.0.0:8443".into(),
                fingerprint_sha256: "ab".repeat(32),
            }),
            nodes: vec![],
        }
    );
}
