//! `tcf-platform`: the thin binary. The command line lives in the `tcf-cli` crate.
//!
//! Why a crate of its own: the release profile optimises the control plane for size, and this
//! crate's level is also the level of the whole-program (LTO) pass that inlines the proxy's hot
//! path. Keeping the CLI out of it lets this crate run at full speed without the CLI's size.

fn main() -> std::process::ExitCode {
    tcf_cli::main()
}
