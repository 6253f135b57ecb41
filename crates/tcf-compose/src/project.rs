//! Loading a compose project: read each file, interpolate it, normalise the fields that have a
//! short and a long form, merge the files in order (the Compose Specification's merge rules, as
//! `docker compose -f a -f b` does) and fold `env_file` into `environment`.

use crate::interpolate::{interpolate, Variables};
use crate::yaml::join;
use crate::{dotenv, ComposeError};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The file names `docker compose` looks for when no `-f` is given, in its order of preference,
/// each with the override file it loads next.
const DEFAULT_FILES: [(&str, &str); 4] = [
    ("compose.yaml", "compose.override.yaml"),
    ("compose.yml", "compose.override.yml"),
    ("docker-compose.yaml", "docker-compose.override.yaml"),
    ("docker-compose.yml", "docker-compose.override.yml"),
];

/// A compose project, merged and interpolated.
#[derive(Debug, Clone)]
pub struct Project {
    /// The files, in the order they were merged.
    pub files: Vec<PathBuf>,
    /// The project directory: relative paths in every file are relative to it (the first file's).
    pub dir: PathBuf,
    /// `name:`, else `COMPOSE_PROJECT_NAME`, else the directory's name, normalised as compose does.
    pub name: String,
    /// The merged model: `services`, `volumes`, `networks`, ... as a JSON-like tree.
    pub model: Value,
    /// The `.env` file that was read, if there was one.
    pub env_file: Option<PathBuf>,
    /// Variables used but set nowhere (they became empty strings, as in compose), with where.
    pub unset_variables: Vec<String>,
}

/// The compose files `docker compose` would read in `dir` without `-f`: the first of
/// compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml, and its override file.
pub fn discover(dir: &Path) -> Vec<PathBuf> {
    for (main, over) in DEFAULT_FILES {
        let main = dir.join(main);
        if main.is_file() {
            let over = dir.join(over);
            return if over.is_file() {
                vec![main, over]
            } else {
                vec![main]
            };
        }
    }
    Vec::new()
}

/// Read and merge `files` (later ones override earlier ones). `shell` holds the variables of the
/// environment the command runs in: they win over the project's `.env` file.
pub fn load(files: &[PathBuf], shell: &Variables) -> Result<Project, ComposeError> {
    let first = files.first().ok_or(ComposeError::NoFiles)?;
    let dir = std::path::absolute(first)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));

    let mut vars = shell.clone();
    let env_path = dir.join(".env");
    let env_file = if env_path.is_file() {
        let text = read(&env_path)?;
        let entries = dotenv::parse(&text, shell).map_err(|message| ComposeError::EnvFile {
            path: env_path.clone(),
            message,
        })?;
        for (k, v) in entries {
            vars.add_missing(&k, &v);
        }
        Some(env_path)
    } else {
        None
    };

    let mut unset = Vec::new();
    let mut merged = Value::Object(Map::new());
    for file in files {
        let text = read(file)?;
        let mut doc = crate::yaml::parse(&text).map_err(|message| ComposeError::Yaml {
            path: file.clone(),
            message,
        })?;
        if !doc.is_object() {
            return Err(ComposeError::Invalid {
                path: file.clone(),
                message: "the top level must be a mapping (services:, volumes:, ...)".into(),
            });
        }
        interpolate_tree(&mut doc, "", &vars, &mut unset).map_err(|(at, message)| {
            ComposeError::Interpolation {
                path: file.clone(),
                at,
                message,
            }
        })?;
        normalise(&mut doc).map_err(|message| ComposeError::Invalid {
            path: file.clone(),
            message,
        })?;
        merged = merge(merged, doc, "");
    }

    let name_source = merged
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| vars.get("COMPOSE_PROJECT_NAME").map(str::to_string))
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_default();
    let name = normalise_project_name(&name_source);

    fold_env_files(&mut merged, &dir, &vars)?;

    unset.sort();
    unset.dedup();
    Ok(Project {
        files: files.to_vec(),
        dir,
        name,
        model: merged,
        env_file,
        unset_variables: unset,
    })
}

fn read(path: &Path) -> Result<String, ComposeError> {
    std::fs::read_to_string(path).map_err(|source| ComposeError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Compose's rule: lowercase letters, digits, dashes and underscores, starting with a letter or digit.
fn normalise_project_name(raw: &str) -> String {
    let lower: String = raw
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let trimmed = lower.trim_start_matches(['-', '_']).to_string();
    if trimmed.is_empty() {
        "compose".to_string()
    } else {
        trimmed
    }
}

/// Interpolate every string value (not keys), in place. `x-` extension fields are interpolated too,
/// as compose does.
fn interpolate_tree(
    v: &mut Value,
    path: &str,
    vars: &Variables,
    unset: &mut Vec<String>,
) -> Result<(), (String, String)> {
    match v {
        Value::String(s) => {
            let out = interpolate(s, vars).map_err(|e| (path.to_string(), e))?;
            for name in out.unset {
                unset.push(format!("{name} (at {path})"));
            }
            *s = out.value;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &format!("{path}[{i}]"), vars, unset)?;
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                interpolate_tree(item, &join(path, k), vars, unset)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Bring the fields that have a list and a mapping form (or a string and a list form) to one form,
/// so that files can be merged key by key.
fn normalise(doc: &mut Value) -> Result<(), String> {
    let Some(services) = doc.get_mut("services") else {
        return Ok(());
    };
    let Some(services) = services.as_object_mut() else {
        if services.is_null() {
            *services = Value::Object(Map::new());
            return Ok(());
        }
        return Err("services must be a mapping of service names".into());
    };
    for (name, svc) in services.iter_mut() {
        if svc.is_null() {
            *svc = Value::Object(Map::new());
        }
        let Some(svc) = svc.as_object_mut() else {
            return Err(format!("services.{name} must be a mapping"));
        };
        for key in ["environment", "labels", "extra_hosts", "sysctls"] {
            if let Some(v) = svc.get_mut(key) {
                let sep = if key == "extra_hosts" { ':' } else { '=' };
                *v = list_to_map(v, sep).map_err(|e| format!("services.{name}.{key}: {e}"))?;
            }
        }
        if let Some(v) = svc.get_mut("depends_on") {
            if let Value::Array(list) = v {
                let mut map = Map::new();
                for item in list.iter() {
                    let Some(dep) = item.as_str() else {
                        return Err(format!(
                            "services.{name}.depends_on: list entries must be service names"
                        ));
                    };
                    map.insert(
                        dep.to_string(),
                        serde_json::json!({ "condition": "service_started" }),
                    );
                }
                *v = Value::Object(map);
            }
        }
        for key in ["env_file", "dns", "dns_search", "tmpfs"] {
            if let Some(v) = svc.get_mut(key) {
                if v.is_string() {
                    *v = Value::Array(vec![v.take()]);
                }
            }
        }
        if let Some(v) = svc.get_mut("build") {
            if let Value::String(context) = v {
                *v = serde_json::json!({ "context": context });
            }
        }
    }
    Ok(())
}

/// `["A=1", "B"]` → `{A: "1", B: null}`; a mapping's scalar values become strings.
fn list_to_map(v: &Value, sep: char) -> Result<Value, String> {
    match v {
        Value::Array(items) => {
            let mut map = Map::new();
            for item in items {
                let Some(text) = item.as_str() else {
                    return Err("list entries must be strings like KEY=VALUE".into());
                };
                match text.split_once(sep) {
                    Some((k, val)) => map.insert(k.trim().to_string(), Value::String(val.into())),
                    None => map.insert(text.trim().to_string(), Value::Null),
                };
            }
            Ok(Value::Object(map))
        }
        Value::Object(map) => Ok(Value::Object(
            map.iter()
                .map(|(k, val)| (k.clone(), scalar_to_string(val)))
                .collect(),
        )),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err("expected a mapping or a list".into()),
    }
}

fn scalar_to_string(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        other => other.clone(),
    }
}

/// Merge `over` into `base` as compose merges files: mappings key by key; `command`, `entrypoint`
/// and `healthcheck.test` replaced whole; `volumes` by target path; other sequences appended
/// without duplicates; scalars replaced.
fn merge(base: Value, over: Value, path: &str) -> Value {
    match (base, over) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, bv) in b {
                let child = join(path, &k);
                let merged = match a.remove(&k) {
                    Some(av) => merge(av, bv, &child),
                    None => bv,
                };
                a.insert(k, merged);
            }
            Value::Object(a)
        }
        (Value::Array(a), Value::Array(b)) => {
            let key = path.rsplit('.').next().unwrap_or(path);
            let in_service = path.starts_with("services.");
            if in_service && matches!(key, "command" | "entrypoint" | "test") {
                Value::Array(b)
            } else if in_service && key == "volumes" {
                let mut out: Vec<Value> = a;
                for v in b {
                    let target = volume_target(&v);
                    out.retain(|old| target.is_none() || volume_target(old) != target);
                    out.push(v);
                }
                Value::Array(out)
            } else {
                let mut out = a;
                for v in b {
                    if !out.contains(&v) {
                        out.push(v);
                    }
                }
                Value::Array(out)
            }
        }
        (_, over) => over,
    }
}

/// The path inside the container a volume entry mounts at.
pub fn volume_target(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.len() {
                1 => Some(parts[0].to_string()),
                _ => Some(parts[1].to_string()),
            }
        }
        Value::Object(m) => m.get("target").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Read each service's `env_file`s (relative to the project directory) under its `environment`
/// (which wins), then resolve `KEY` entries without a value from the variables, as compose does.
fn fold_env_files(model: &mut Value, dir: &Path, vars: &Variables) -> Result<(), ComposeError> {
    let Some(services) = model.get_mut("services").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    for (_, svc) in services.iter_mut() {
        let Some(svc) = svc.as_object_mut() else {
            continue;
        };
        let mut env = Map::new();
        if let Some(Value::Array(files)) = svc.remove("env_file") {
            for f in files {
                let (path, required) = match &f {
                    Value::String(p) => (p.clone(), true),
                    Value::Object(m) => (
                        m.get("path")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        m.get("required").and_then(Value::as_bool).unwrap_or(true),
                    ),
                    _ => continue,
                };
                let full = dir.join(&path);
                if !full.is_file() {
                    if required {
                        return Err(ComposeError::Read {
                            path: full,
                            source: std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                "env_file not found",
                            ),
                        });
                    }
                    continue;
                }
                let text = read(&full)?;
                let entries =
                    dotenv::parse(&text, vars).map_err(|message| ComposeError::EnvFile {
                        path: full.clone(),
                        message,
                    })?;
                for (k, v) in entries {
                    env.insert(k, Value::String(v));
                }
            }
        }
        if let Some(Value::Object(own)) = svc.remove("environment") {
            for (k, v) in own {
                env.insert(k, v);
            }
        }
        let resolved: Map<String, Value> = env
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::Null => vars
                        .get(&k)
                        .map(|s| Value::String(s.to_string()))
                        .unwrap_or(Value::Null),
                    other => other,
                };
                (k, v)
            })
            .collect();
        if !resolved.is_empty() {
            svc.insert("environment".into(), Value::Object(resolved));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn norm(mut v: Value) -> Value {
        normalise(&mut v).unwrap();
        v
    }

    #[test]
    fn merges_like_compose() {
        let base = norm(json!({"services": {"web": {
            "image": "a:1",
            "command": ["serve", "--x"],
            "environment": ["A=1", "B=2"],
            "ports": ["3000:3000"],
            "volumes": ["./data:/data", "logs:/logs"],
            "depends_on": ["db"],
            "healthcheck": {"test": ["CMD", "true"], "interval": "5s"}
        }}}));
        let over = norm(json!({"services": {"web": {
            "image": "a:2",
            "command": ["serve"],
            "environment": {"B": 3},
            "ports": ["3000:3000", "9000:9000"],
            "volumes": ["/srv/data:/data"],
            "depends_on": {"cache": {"condition": "service_healthy"}},
            "healthcheck": {"test": ["CMD", "false"]}
        }}}));
        let m = merge(base, over, "");
        assert_eq!(
            m["services"]["web"],
            json!({
                "image": "a:2",
                "command": ["serve"],
                "environment": {"A": "1", "B": "3"},
                "ports": ["3000:3000", "9000:9000"],
                "volumes": ["logs:/logs", "/srv/data:/data"],
                "depends_on": {"db": {"condition": "service_started"}, "cache": {"condition": "service_healthy"}},
                "healthcheck": {"test": ["CMD", "false"], "interval": "5s"}
            })
        );
    }

    #[test]
    fn project_names() {
        assert_eq!(normalise_project_name("My App.v2"), "myappv2");
        assert_eq!(normalise_project_name("__x"), "x");
        assert_eq!(normalise_project_name("..."), "compose");
    }
}
