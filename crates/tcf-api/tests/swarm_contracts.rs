//! The status contract of a platform on a Swarm: the node of each instance and the nodes
//! themselves, pinned like contracts.rs.

use tcf_api::*;

#[test]
fn status_on_a_swarm() {
    let instance = |id: &str, node: &str, port: u16| InstanceStatus {
        id: id.into(),
        colour: "blue".into(),
        version: "v1".into(),
        pid: Some(0),
        port,
        state: "running".into(),
        health: "healthy".into(),
        restarts: 0,
        uptime_s: 42,
        runtime_health: None,
        node: Some(node.into()),
    };
    insta::assert_json_snapshot!(
        "status_on_a_swarm",
        Status {
            platform: "tcf-swarm".into(),
            services: vec![ServiceStatus {
                name: "gateway".into(),
                version: "v1".into(),
                listen: "127.0.0.1:3000".into(),
                healthy: true,
                traffic: vec![Traffic {
                    colour: "blue".into(),
                    version: "v1".into(),
                    weight: 100,
                }],
                instances: vec![
                    instance("gateway-blue-1", "node2", 30001),
                    instance("gateway-blue-2", "node3", 30002),
                ],
                metrics: None,
                config_changed: false,
                stale_secrets: vec![],
                panic: false,
                panics: 0,
                maintenance: None,
            }],
            dependencies: vec![],
            deploy_in_progress: None,
            warnings: vec![],
            api: None,
            nodes: vec![
                NodeStatus {
                    name: "node1".into(),
                    addr: "10.192.0.11".into(),
                    state: "ready".into(),
                    availability: "active".into(),
                    manager: true,
                },
                NodeStatus {
                    name: "node2".into(),
                    addr: "10.192.0.12".into(),
                    state: "down".into(),
                    availability: "active".into(),
                    manager: false,
                },
            ],
        }
    );
}
