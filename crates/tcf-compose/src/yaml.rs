//! YAML text to a JSON-like tree: anchors and aliases resolved (by the parser), `<<` merge keys
//! applied, mapping keys turned into strings.

use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// Parse one compose file's text. An empty file is an empty mapping.
pub fn parse(text: &str) -> Result<Value, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    match docs.len() {
        0 => Ok(Value::Object(Map::new())),
        1 => convert(&docs[0], "").map(|v| match v {
            Value::Null => Value::Object(Map::new()),
            other => other,
        }),
        n => Err(format!(
            "{n} YAML documents in one file; a compose file holds one"
        )),
    }
}

fn convert(node: &Yaml, path: &str) -> Result<Value, String> {
    Ok(match node {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::Real(text) => match text.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Value::Number(n),
            // .inf, .nan: no compose field takes them; keep the text.
            None => Value::String(text.clone()),
        },
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| convert(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(hash) => {
            let mut out = Map::new();
            // Merge keys (`<<: *base`, `<<: [*a, *b]`) fill in what the mapping does not set;
            // among several, the first one listed wins.
            let mut merged: Vec<Map<String, Value>> = Vec::new();
            for (key, value) in hash {
                let key_text = key_string(key, path)?;
                let child = join(path, &key_text);
                if key_text == "<<" && matches!(key, Yaml::String(_)) {
                    match convert(value, &child)? {
                        Value::Object(m) => merged.push(m),
                        Value::Array(list) => {
                            for item in list {
                                match item {
                                    Value::Object(m) => merged.push(m),
                                    _ => return Err(format!("{child}: a merge key (<<) takes a mapping or a list of mappings")),
                                }
                            }
                        }
                        _ => {
                            return Err(format!(
                                "{child}: a merge key (<<) takes a mapping or a list of mappings"
                            ))
                        }
                    }
                    continue;
                }
                out.insert(key_text, convert(value, &child)?);
            }
            for m in merged {
                for (k, v) in m {
                    out.entry(k).or_insert(v);
                }
            }
            Value::Object(out)
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err(format!(
                "{}: a value that cannot be read (an unknown alias or a tag with an invalid value)",
                if path.is_empty() { "(top)" } else { path }
            ))
        }
    })
}

fn key_string(key: &Yaml, path: &str) -> Result<String, String> {
    match key {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Integer(i) => Ok(i.to_string()),
        Yaml::Real(r) => Ok(r.clone()),
        Yaml::Boolean(b) => Ok(b.to_string()),
        Yaml::Null => Ok("null".to_string()),
        _ => Err(format!(
            "{}: a mapping key must be a plain value",
            if path.is_empty() { "(top)" } else { path }
        )),
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn anchors_and_merge_keys() {
        let v = parse(
            "x-common: &common\n  restart: always\n  environment:\n    A: '1'\nservices:\n  web:\n    <<: *common\n    restart: 'no'\n    ports: [\"3000:3000\"]\n",
        )
        .unwrap();
        assert_eq!(
            v["services"]["web"],
            json!({"restart": "no", "environment": {"A": "1"}, "ports": ["3000:3000"]})
        );
    }

    #[test]
    fn quoted_scalars_stay_strings_and_numbers_stay_numbers() {
        let v = parse("a: '3000'\nb: 3000\nc: 0.5\nd: yes\ne: true\n").unwrap();
        assert_eq!(
            v,
            json!({"a": "3000", "b": 3000, "c": 0.5, "d": "yes", "e": true})
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("services:\n  web:\n    image: [unclosed\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
        assert!(parse("a: 1\na: 2\n")
            .unwrap_err()
            .contains("duplicated key"));
        assert_eq!(parse("").unwrap(), json!({}));
    }
}
