//! Finding the daemon's socket from a config file that does not validate: an operator with a
//! typo in the file must still reach the running daemon (`status`, `down`, `rollback`, `logs`).
//! Only `[platform] state_dir` and `[daemon] socket` matter here (and their environment
//! overrides); everything else in the file is ignored.

use std::path::{Path, PathBuf};

/// The socket the config at `path` names, read as loosely as possible: as TOML if it parses,
/// else line by line. Defaults as the full config has them (`.tcf/tcf.sock` beside the file).
pub fn socket_of_invalid_config(path: &Path, source: &str, environment: Option<&str>) -> PathBuf {
    paths_of_invalid_config(path, source, environment).1
}

/// The state directory and the socket, read the same loose way.
pub fn paths_of_invalid_config(
    path: &Path,
    source: &str,
    environment: Option<&str>,
) -> (PathBuf, PathBuf) {
    let (state_dir, socket) = match source.parse::<toml::Table>() {
        Ok(table) => from_table(&table, environment),
        Err(_) => from_lines(source),
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    let state_dir = base.join(state_dir.unwrap_or_else(|| ".tcf".into()));
    let socket = state_dir.join(socket.unwrap_or_else(|| "tcf.sock".into()));
    (state_dir, socket)
}

fn get<'a>(t: &'a toml::Table, table: &str, key: &str) -> Option<&'a str> {
    t.get(table)?.as_table()?.get(key)?.as_str()
}

fn from_table(t: &toml::Table, environment: Option<&str>) -> (Option<String>, Option<String>) {
    let mut state_dir = get(t, "platform", "state_dir").map(str::to_string);
    let mut socket = get(t, "daemon", "socket").map(str::to_string);
    if let Some(env) = environment.and_then(|e| {
        t.get("environments")?
            .as_table()?
            .get(e)?
            .as_table()
            .cloned()
    }) {
        if let Some(d) = get(&env, "platform", "state_dir") {
            state_dir = Some(d.to_string());
        }
        if let Some(s) = get(&env, "daemon", "socket") {
            socket = Some(s.to_string());
        }
    }
    (state_dir, socket)
}

/// A file that is not even TOML: look for the two keys under their table headers.
fn from_lines(source: &str) -> (Option<String>, Option<String>) {
    let (mut table, mut state_dir, mut socket) = (String::new(), None, None);
    for line in source.lines().map(str::trim) {
        if line.starts_with('[') {
            table = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match (table.as_str(), key.trim()) {
            ("platform", "state_dir") => state_dir = Some(value),
            ("daemon", "socket") => socket = Some(value),
            _ => {}
        }
    }
    (state_dir, socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_socket_in_a_file_that_does_not_validate_or_parse() {
        let path = Path::new("/srv/tcf/tcf-platform.toml");
        let invalid =
            "[platform]\nname = \"t\"\nstate_dir = \"state\"\n[services.a]\ninstnces = 2\n";
        assert_eq!(
            socket_of_invalid_config(path, invalid, None),
            PathBuf::from("/srv/tcf/state/tcf.sock")
        );
        let broken = "[platform]\nstate_dir = \"state\"\n[daemon]\nsocket = \"/run/t.sock\"\n[services.a\ncommand = [\n";
        assert_eq!(
            socket_of_invalid_config(path, broken, None),
            PathBuf::from("/run/t.sock")
        );
        let env = "[platform]\nname = \"t\"\n[environments.staging]\nplatform = { state_dir = \".s\" }\nbad = \n";
        assert_eq!(
            socket_of_invalid_config(path, "[platform]\nname=\"t\"\n[environments.staging]\nplatform = { state_dir = \".s\" }\n", Some("staging")),
            PathBuf::from("/srv/tcf/.s/tcf.sock")
        );
        assert_eq!(
            socket_of_invalid_config(path, env, None),
            PathBuf::from("/srv/tcf/.tcf/tcf.sock")
        );
    }
}
