//! The demo service, built from this crate alone (no platform dependencies) so that
//! scripts/build-images can compile it quickly as a static binary for `FROM scratch` images.

fn main() {
    tcf_demo::main();
}
