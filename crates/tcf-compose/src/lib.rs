//! Moving in from docker compose: read one or more compose files as `docker compose -f a -f b`
//! does (merge rules of the Compose Specification, `.env` interpolation) and translate them into
//! a commented `tcf-platform.toml`, accounting for every key: translated, translated with a note,
//! or listed as untranslated — never dropped silently.
//!
//! ```no_run
//! let files = tcf_compose::discover(std::path::Path::new("."));
//! let project = tcf_compose::load(&files, &tcf_compose::Variables::from_process()).unwrap();
//! let translation = tcf_compose::translate(&project, &tcf_compose::Options::default());
//! print!("{}", tcf_compose::render(&translation));
//! ```
//!
//! YAML is read with `yaml-rust2` (pure Rust, YAML 1.2, maintained): `serde_yaml` is archived and
//! its forks are either unmaintained or still on `unsafe-libyaml`; a compose file needs only a
//! document tree (anchors, aliases, `<<` merge keys), which we convert to a `serde_json::Value`.

mod dotenv;
mod interpolate;
mod ports;
mod project;
mod render;
mod translate;
mod yaml;

pub use interpolate::{interpolate, Outcome, Variables};
pub use project::{discover, load, Project};
pub use render::render;
pub use translate::{
    looks_like_credential, translate, BackupSource, DependencyOut, Finding, HealthOut, Options,
    SecretTodo, ServiceOut, Translation,
};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("no compose file given")]
    NoFiles,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: {at}: {message}")]
    Interpolation {
        path: PathBuf,
        at: String,
        message: String,
    },
    #[error("{path}: {message}")]
    EnvFile { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Variables {
    /// The environment of this process (it wins over the project's `.env`, as in compose).
    pub fn from_process() -> Variables {
        let mut v = Variables::new();
        for (k, val) in std::env::vars_os() {
            if let (Some(k), Some(val)) = (k.to_str(), val.to_str()) {
                v.add_missing(k, val);
            }
        }
        v
    }
}
