//! The demo service binary; see crates/tcf-demo and docs/demo-service.md.

fn main() {
    tcf_demo::main();
}
