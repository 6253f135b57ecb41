//! The JSON of `tls status` and `tls reload`/`tls renew`, pinned (docs/tls.md).

use tcf_api::tls::*;

#[test]
fn tls_status_and_reload() {
    insta::assert_json_snapshot!(
        "tls_status",
        TlsStatus {
            certificates: vec![
                TlsCertificate {
                    service: "gateway".into(),
                    hostnames: vec!["tcf.example.com".into(), "*.tcf.example.com".into()],
                    issuer: "R11".into(),
                    serial: "04a1b2".into(),
                    not_before: "2026-10-01T00:00:00Z".into(),
                    not_after: "2026-12-30T00:00:00Z".into(),
                    days_left: 34,
                    expired: false,
                    source: "file".into(),
                    cert_file: Some("/etc/tcf/gateway.pem".into()),
                    last_attempt: Some("2026-11-25T16:00:00Z".into()),
                    last_error: None,
                },
                TlsCertificate {
                    service: "api".into(),
                    hostnames: vec!["api.example.com".into()],
                    issuer: "Pebble Intermediate CA 1a2b3c".into(),
                    serial: "7f".into(),
                    not_before: "2026-01-01T00:00:00Z".into(),
                    not_after: "2026-11-01T00:00:00Z".into(),
                    days_left: -25,
                    expired: true,
                    source: "acme".into(),
                    cert_file: None,
                    last_attempt: Some("2026-11-25T16:00:00Z".into()),
                    last_error: Some(
                        "authorization for api.example.com failed: connection refused".into()
                    ),
                },
            ],
        }
    );
    insta::assert_json_snapshot!(
        "tls_reload",
        TlsReload {
            services: vec![TlsReloadOutcome {
                service: "gateway".into(),
                reloaded: false,
                error: Some("the key /etc/tcf/gateway.key does not match the certificate /etc/tcf/gateway.pem".into()),
            }],
        }
    );
}
