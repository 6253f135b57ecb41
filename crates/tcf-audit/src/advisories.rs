//! Dependency advisories from a local OSV database (a JSON file holding one advisory or an
//! array of them, or a directory of such files), matched against lockfiles. No network.

use crate::model::Severity;
use serde::Deserialize;
use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum AdvisoryError {
    #[error("cannot read the advisories at {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not OSV JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot extract the advisory archive {path}: {message}")]
    Archive { path: PathBuf, message: String },
    #[error("cannot read the lockfile {path}: {message}")]
    Lockfile { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
pub struct Advisory {
    pub id: String,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub affected: Vec<Affected>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Affected {
    pub package: Package,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub ranges: Vec<Range>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Package {
    pub ecosystem: String,
    pub name: String,
}

impl Package {
    /// The same package: PyPI names compare as PEP 503 normalises them (`PyYAML` is
    /// `pyyaml`, `zope.interface` is `zope-interface`); other ecosystems' names exactly.
    pub fn is(&self, ecosystem: &str, name: &str) -> bool {
        self.ecosystem == ecosystem
            && if ecosystem == PYPI {
                normalize_pypi_name(&self.name) == normalize_pypi_name(name)
            } else {
                self.name == name
            }
    }
}

/// PEP 503: lower case, every run of `-`, `_` and `.` one `-`.
pub fn normalize_pypi_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_separator = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            in_separator = true;
            continue;
        }
        if in_separator && !out.is_empty() {
            out.push('-');
        }
        in_separator = false;
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[derive(Debug, Clone, Deserialize)]
pub struct Range {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub introduced: Option<String>,
    pub fixed: Option<String>,
    pub last_affected: Option<String>,
}

impl Advisory {
    /// GitHub's `database_specific.severity` (LOW, MODERATE, HIGH, CRITICAL) when present.
    pub fn severity(&self) -> Option<Severity> {
        let text = self.database_specific.as_ref()?.get("severity")?.as_str()?;
        match text.to_ascii_uppercase().as_str() {
            "LOW" => Some(Severity::Low),
            "MODERATE" | "MEDIUM" => Some(Severity::Medium),
            "HIGH" => Some(Severity::High),
            "CRITICAL" => Some(Severity::Critical),
            _ => None,
        }
    }

    /// The fixed versions named for `name`, for the remediation.
    pub fn fixed_versions(&self, ecosystem: &str, name: &str) -> Vec<String> {
        self.affected
            .iter()
            .filter(|a| a.package.is(ecosystem, name))
            .flat_map(|a| a.ranges.iter())
            .flat_map(|r| r.events.iter())
            .filter_map(|e| e.fixed.clone())
            .collect()
    }

    pub fn affects(&self, ecosystem: &str, name: &str, version: &str) -> bool {
        self.affected
            .iter()
            .filter(|a| a.package.is(ecosystem, name))
            .any(|a| a.versions.iter().any(|v| v == version) || in_ranges(&a.ranges, version))
    }
}

/// SEMVER and ECOSYSTEM ranges: a version is affected from an `introduced` up to (not
/// including) the next `fixed`, or up to and including `last_affected`.
fn in_ranges(ranges: &[Range], version: &str) -> bool {
    ranges
        .iter()
        .filter(|r| r.kind == "SEMVER" || r.kind == "ECOSYSTEM")
        .any(|range| {
            let mut affected = false;
            for event in &range.events {
                if let Some(intro) = &event.introduced {
                    if compare(version, intro) != Ordering::Less {
                        affected = true;
                    }
                }
                if let Some(fixed) = &event.fixed {
                    if affected && compare(version, fixed) != Ordering::Less {
                        affected = false;
                    }
                }
                if let Some(last) = &event.last_affected {
                    if affected && compare(version, last) == Ordering::Greater {
                        affected = false;
                    }
                }
            }
            affected
        })
}

/// Numeric comparison of dotted versions; a pre-release (`1.2.0-rc.1`) sorts before its
/// release, which is all lockfile matching needs.
fn compare(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> (Vec<u64>, bool) {
        let (core, pre) = match v.split_once(['-', '+']) {
            Some((core, rest)) => (core, !rest.is_empty() && v.contains('-')),
            None => (v, false),
        };
        let nums = core
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect::<Vec<u64>>();
        (nums, pre)
    };
    let (na, pa) = split(a);
    let (nb, pb) = split(b);
    let len = na.len().max(nb.len());
    for i in 0..len {
        let x = na.get(i).copied().unwrap_or(0);
        let y = nb.get(i).copied().unwrap_or(0);
        match x.cmp(&y) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    // Same core: the pre-release is older.
    pb.cmp(&pa)
}

/// The advisories at a path, with the age of the newest file.
#[derive(Debug, Clone)]
pub struct Database {
    pub path: PathBuf,
    pub advisories: Vec<Advisory>,
    pub modified: Option<SystemTime>,
}

impl Database {
    pub fn load(path: &Path) -> Result<Database, AdvisoryError> {
        let read_err = |source| AdvisoryError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let files: Vec<PathBuf> = if meta.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path).map_err(read_err)? {
                let entry = entry.map_err(read_err)?.path();
                if entry.extension().is_some_and(|e| e == "json") {
                    files.push(entry);
                }
            }
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut advisories = Vec::new();
        let mut modified = None;
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| AdvisoryError::Read {
                path: file.clone(),
                source,
            })?;
            let parse_err = |source| AdvisoryError::Parse {
                path: file.clone(),
                source,
            };
            let value: serde_json::Value = serde_json::from_str(&text).map_err(parse_err)?;
            if value.is_array() {
                advisories
                    .extend(serde_json::from_value::<Vec<Advisory>>(value).map_err(parse_err)?);
            } else {
                advisories.push(serde_json::from_value(value).map_err(parse_err)?);
            }
            let mtime = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
            modified = modified.max(mtime);
        }
        Ok(Database {
            path: path.to_path_buf(),
            advisories,
            modified,
        })
    }

    /// `PATH (N advisories, updated D days ago)`.
    pub fn describe(&self, now: SystemTime) -> String {
        let age = self
            .modified
            .and_then(|m| now.duration_since(m).ok())
            .map(|d| format!(", updated {} days ago", d.as_secs() / 86_400))
            .unwrap_or_default();
        format!(
            "{} ({} advisories{age})",
            self.path.display(),
            self.advisories.len()
        )
    }
}

/// The OSV ecosystems whose lockfiles the audit reads (`Cargo.lock`, `package-lock.json`,
/// and the Python and Ruby ones): `--update-advisories` downloads these.
pub const ECOSYSTEMS: [&str; 4] = ["crates.io", "npm", "PyPI", "RubyGems"];

/// The largest advisory a database archive may hold uncompressed: OSV's are a few KB; anything
/// this large is a broken or hostile archive.
const LARGEST_ADVISORY: u64 = 16 << 20;

/// Extract the `*.json` advisories of an OSV `all.zip` into `dir` (flat, as [`Database::load`]
/// reads them). Returns how many. Names are reduced to their last component, so no entry
/// escapes `dir`.
pub fn extract_osv_zip(archive: &Path, dir: &Path) -> Result<usize, AdvisoryError> {
    let read_err = |source| AdvisoryError::Read {
        path: archive.to_path_buf(),
        source,
    };
    let bad = |message: String| AdvisoryError::Archive {
        path: archive.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(archive).map_err(read_err)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let mut count = 0;
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(|e| bad(e.to_string()))?;
        if !entry.is_file() {
            continue;
        }
        let Some(name) = Path::new(entry.name())
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
        else {
            continue;
        };
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        if entry.size() > LARGEST_ADVISORY {
            return Err(bad(format!(
                "{name} is {} bytes, too large for an advisory",
                entry.size()
            )));
        }
        let mut text = Vec::with_capacity(entry.size() as usize);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(&mut entry, LARGEST_ADVISORY + 1),
            &mut text,
        )
        .map_err(|e| bad(format!("{name}: {e}")))?;
        let target = dir.join(&name);
        std::fs::write(&target, &text).map_err(|source| AdvisoryError::Read {
            path: target.clone(),
            source,
        })?;
        count += 1;
    }
    Ok(count)
}

/// One locked package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    /// OSV ecosystem: `crates.io`, `npm`, `PyPI` or `RubyGems`.
    pub ecosystem: &'static str,
    /// As the lockfile names it (PyPI names PEP 503-normalised).
    pub name: String,
    pub version: String,
}

const PYPI: &str = "PyPI";
const RUBYGEMS: &str = "RubyGems";

/// The kinds of lockfile the audit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockfileKind {
    Cargo,
    Npm,
    /// Bundler's `Gemfile.lock`.
    Gemfile,
    /// pip's `requirements*.txt`: only `name==version` pins count.
    Requirements,
    Poetry,
}

impl LockfileKind {
    /// By file name: `Cargo.lock`, `package-lock.json`, `Gemfile.lock`, `poetry.lock`,
    /// `requirements.txt` and `requirements-*.txt` / `requirements_*.txt`.
    pub fn of(file_name: &str) -> Option<LockfileKind> {
        match file_name {
            "Cargo.lock" => Some(LockfileKind::Cargo),
            "package-lock.json" => Some(LockfileKind::Npm),
            "Gemfile.lock" => Some(LockfileKind::Gemfile),
            "poetry.lock" => Some(LockfileKind::Poetry),
            name => name
                .strip_prefix("requirements")
                .and_then(|rest| rest.strip_suffix(".txt"))
                .filter(|middle| middle.is_empty() || middle.starts_with(['-', '_', '.']))
                .map(|_| LockfileKind::Requirements),
        }
    }
}

/// The lockfiles the audit reads, as the docs and messages name them.
pub const LOCKFILE_NAMES: &str =
    "Cargo.lock, package-lock.json, Gemfile.lock, poetry.lock or requirements*.txt";

/// The lockfiles in `dir` (not below it), sorted by name.
pub fn lockfiles_in(dir: &Path) -> Vec<PathBuf> {
    files_named(dir, |name| LockfileKind::of(name).is_some())
}

/// The regular files directly in `dir` whose names `wanted` accepts, sorted; none if `dir`
/// cannot be read.
pub fn files_named(dir: &Path, wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(&wanted))
        .collect();
    files.sort();
    files
}

pub fn read_lockfile(path: &Path) -> Result<Vec<Locked>, AdvisoryError> {
    let err = |message: String| AdvisoryError::Lockfile {
        path: path.to_path_buf(),
        message,
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let kind = LockfileKind::of(name)
        .ok_or_else(|| err(format!("{name:?} is not a lockfile the audit reads")))?;
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut locked = match kind {
        LockfileKind::Cargo => toml_packages(&text, "crates.io").map_err(err)?,
        LockfileKind::Poetry => toml_packages(&text, PYPI).map_err(err)?,
        LockfileKind::Npm => npm_packages(&text).map_err(err)?,
        LockfileKind::Gemfile => gemfile_packages(&text),
        LockfileKind::Requirements => requirements_pins(&text),
    };
    locked.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    locked.dedup();
    Ok(locked)
}

/// `[[package]]` tables with `name` and `version`: Cargo.lock and poetry.lock.
fn toml_packages(text: &str, ecosystem: &'static str) -> Result<Vec<Locked>, String> {
    #[derive(Deserialize)]
    struct Lock {
        #[serde(default)]
        package: Vec<LockPackage>,
    }
    #[derive(Deserialize)]
    struct LockPackage {
        name: String,
        version: String,
    }
    let lock: Lock = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(lock
        .package
        .into_iter()
        .map(|p| Locked {
            ecosystem,
            name: if ecosystem == PYPI {
                normalize_pypi_name(&p.name)
            } else {
                p.name
            },
            version: p.version,
        })
        .collect())
}

fn npm_packages(text: &str) -> Result<Vec<Locked>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut locked = Vec::new();
    if let Some(packages) = value.get("packages").and_then(|p| p.as_object()) {
        // lockfileVersion 2 and 3: "node_modules/a/node_modules/b" → b.
        for (key, entry) in packages {
            let Some((_, name)) = key.rsplit_once("node_modules/") else {
                continue;
            };
            if let Some(version) = entry.get("version").and_then(|v| v.as_str()) {
                locked.push(Locked {
                    ecosystem: "npm",
                    name: name.to_string(),
                    version: version.to_string(),
                });
            }
        }
    } else if let Some(deps) = value.get("dependencies").and_then(|d| d.as_object()) {
        // lockfileVersion 1: nested "dependencies".
        fn walk(deps: &serde_json::Map<String, serde_json::Value>, out: &mut Vec<Locked>) {
            for (name, entry) in deps {
                if let Some(version) = entry.get("version").and_then(|v| v.as_str()) {
                    out.push(Locked {
                        ecosystem: "npm",
                        name: name.clone(),
                        version: version.to_string(),
                    });
                }
                if let Some(nested) = entry.get("dependencies").and_then(|d| d.as_object()) {
                    walk(nested, out);
                }
            }
        }
        walk(deps, &mut locked);
    }
    Ok(locked)
}

/// Bundler's lockfile: in each section's `specs:` (GEM, GIT, PATH), the gems at four spaces,
/// `    name (version)`; their own dependencies at six spaces are constraints, not versions.
/// A platform suffix (`1.13.9-x86_64-linux`) is not part of the version advisories name.
fn gemfile_packages(text: &str) -> Vec<Locked> {
    let mut locked = Vec::new();
    let mut in_specs = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            // A section header (GEM, PLATFORMS, DEPENDENCIES, BUNDLED WITH, ...).
            in_specs = false;
            continue;
        }
        if line.trim_end() == "  specs:" {
            in_specs = true;
            continue;
        }
        let Some(spec) = line.strip_prefix("    ").filter(|s| !s.starts_with(' ')) else {
            continue;
        };
        if !in_specs {
            continue;
        }
        let Some((name, rest)) = spec.trim_end().split_once(" (") else {
            continue;
        };
        let Some(version) = rest.strip_suffix(')') else {
            continue;
        };
        let version = version.split_once('-').map_or(version, |(v, _)| v);
        if name.is_empty() || version.is_empty() || version.contains([' ', ',', '<', '>', '=']) {
            continue;
        }
        locked.push(Locked {
            ecosystem: RUBYGEMS,
            name: name.to_string(),
            version: version.to_string(),
        });
    }
    locked
}

/// pip requirements: `name==version` pins (extras, environment markers and `--hash`
/// options allowed). Comments, options (`-r`, `-e`, `--index-url`, ...), URLs and anything
/// not pinned to one version (`>=`, `~=`, `==1.*`) are not locked versions and are skipped.
fn requirements_pins(text: &str) -> Vec<Locked> {
    let mut locked = Vec::new();
    // A line ending in `\` continues on the next.
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    for line in joined.lines() {
        // A comment starts at `#` at the line's start or after whitespace.
        let line = match line.find(" #").or_else(|| line.find("\t#")) {
            Some(at) => &line[..at],
            None => line,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('-') {
            continue;
        }
        // Environment markers and per-requirement options follow the specifier.
        let requirement = line.split(';').next().unwrap_or("");
        let requirement = requirement.split(" --").next().unwrap_or("").trim();
        if requirement.contains(" @ ") || requirement.contains("://") {
            continue;
        }
        let Some((name, version)) = requirement
            .split_once("===")
            .or_else(|| requirement.split_once("=="))
        else {
            continue;
        };
        let name = name.split('[').next().unwrap_or("").trim();
        let version = version.trim();
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let version_ok = !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '!'));
        if name_ok && version_ok {
            locked.push(Locked {
                ecosystem: PYPI,
                name: normalize_pypi_name(name),
                version: version.to_string(),
            });
        }
    }
    locked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advisory(json: &str) -> Advisory {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare("1.10.0", "1.9.9"), Ordering::Greater);
        assert_eq!(compare("1.2", "1.2.0"), Ordering::Equal);
        assert_eq!(compare("1.2.0-rc.1", "1.2.0"), Ordering::Less);
        assert_eq!(compare("0.0.1", "0"), Ordering::Greater);
    }

    #[test]
    fn ranges_and_explicit_versions() {
        let a = advisory(
            r#"{"id":"RUSTSEC-2099-0001","summary":"x","affected":[{"package":{"ecosystem":"crates.io","name":"smallvec"},
            "ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.6.1"},{"introduced":"2.0.0"},{"last_affected":"2.0.3"}]}],
            "versions":["0.9.9-weird"]}],"database_specific":{"severity":"CRITICAL"}}"#,
        );
        assert!(a.affects("crates.io", "smallvec", "1.6.0"));
        assert!(!a.affects("crates.io", "smallvec", "1.6.1"));
        assert!(!a.affects("crates.io", "smallvec", "1.13.2"));
        assert!(a.affects("crates.io", "smallvec", "2.0.3"));
        assert!(!a.affects("crates.io", "smallvec", "2.0.4"));
        assert!(a.affects("crates.io", "smallvec", "0.9.9-weird"));
        assert!(!a.affects("npm", "smallvec", "1.0.0"));
        assert!(!a.affects("crates.io", "smallvec2", "1.0.0"));
        assert_eq!(a.severity(), Some(Severity::Critical));
        assert_eq!(a.fixed_versions("crates.io", "smallvec"), vec!["1.6.1"]);
    }

    #[test]
    fn reads_cargo_and_npm_lockfiles() {
        let dir = tempfile::tempdir().unwrap();
        let cargo = dir.path().join("Cargo.lock");
        std::fs::write(
            &cargo,
            "version = 3\n[[package]]\nname = \"smallvec\"\nversion = \"1.6.0\"\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\n",
        )
        .unwrap();
        let locked = read_lockfile(&cargo).unwrap();
        assert_eq!(locked.len(), 2);
        assert_eq!(locked[1].name, "smallvec");
        let npm = dir.path().join("package-lock.json");
        std::fs::write(
            &npm,
            r#"{"lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/lodash":{"version":"4.17.20"},"node_modules/a/node_modules/minimist":{"version":"1.2.5"}}}"#,
        )
        .unwrap();
        let locked = read_lockfile(&npm).unwrap();
        let names: Vec<_> = locked
            .iter()
            .map(|l| (l.name.as_str(), l.version.as_str()))
            .collect();
        assert_eq!(names, vec![("lodash", "4.17.20"), ("minimist", "1.2.5")]);
        std::fs::write(
            &npm,
            r#"{"lockfileVersion":1,"dependencies":{"lodash":{"version":"4.17.20","dependencies":{"minimist":{"version":"0.0.8"}}}}}"#,
        )
        .unwrap();
        assert_eq!(read_lockfile(&npm).unwrap().len(), 2);
    }

    fn pairs(locked: &[Locked]) -> Vec<(&str, &str, &str)> {
        locked
            .iter()
            .map(|l| (l.ecosystem, l.name.as_str(), l.version.as_str()))
            .collect()
    }

    #[test]
    fn lockfile_names() {
        for (name, kind) in [
            ("Cargo.lock", Some(LockfileKind::Cargo)),
            ("package-lock.json", Some(LockfileKind::Npm)),
            ("Gemfile.lock", Some(LockfileKind::Gemfile)),
            ("poetry.lock", Some(LockfileKind::Poetry)),
            ("requirements.txt", Some(LockfileKind::Requirements)),
            ("requirements-dev.txt", Some(LockfileKind::Requirements)),
            ("requirements_prod.txt", Some(LockfileKind::Requirements)),
            ("requirements.in", None),
            ("requirementsfoo.txt", None),
            ("Gemfile", None),
            ("pyproject.toml", None),
        ] {
            assert_eq!(LockfileKind::of(name), kind, "{name}");
        }
    }

    #[test]
    fn pypi_names_normalise_as_pep_503_says() {
        assert_eq!(normalize_pypi_name("PyYAML"), "pyyaml");
        assert_eq!(normalize_pypi_name("zope.interface"), "zope-interface");
        assert_eq!(normalize_pypi_name("Foo__Bar-.baz"), "foo-bar-baz");
        let a = advisory(
            r#"{"id":"PYSEC-1","affected":[{"package":{"ecosystem":"PyPI","name":"PyYAML"},"versions":["5.3"]}]}"#,
        );
        assert!(a.affects("PyPI", "pyyaml", "5.3"));
        assert!(a.affects("PyPI", "PyYaml", "5.3"));
        assert!(!a.affects("PyPI", "py-yaml", "5.3"));
        // Other ecosystems compare names exactly.
        let b = advisory(
            r#"{"id":"GHSA-1","affected":[{"package":{"ecosystem":"RubyGems","name":"Rack"},"versions":["2.0.0"]}]}"#,
        );
        assert!(!b.affects("RubyGems", "rack", "2.0.0"));
    }

    #[test]
    fn reads_gemfile_lock_specs_only() {
        let text = "GIT\n  remote: https://github.com/rails/rails.git\n  revision: abc\n  specs:\n    rails (7.1.0.alpha)\n      actionpack (= 7.1.0.alpha)\n\nGEM\n  remote: https://rubygems.org/\n  specs:\n    nokogiri (1.13.9-x86_64-linux)\n      racc (~> 1.4)\n    rack (2.2.3)\n    racc (1.6.0)\n\nPLATFORMS\n  x86_64-linux\n\nDEPENDENCIES\n  nokogiri (>= 1.13)\n  rack (= 2.2.3)\n\nRUBY VERSION\n   ruby 3.2.0p0\n\nBUNDLED WITH\n   2.4.10\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Gemfile.lock");
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            pairs(&read_lockfile(&path).unwrap()),
            vec![
                ("RubyGems", "nokogiri", "1.13.9"),
                ("RubyGems", "racc", "1.6.0"),
                ("RubyGems", "rack", "2.2.3"),
                ("RubyGems", "rails", "7.1.0.alpha"),
            ]
        );
        // Not a lockfile's specs: constraints, platforms and DEPENDENCIES lines.
        assert!(gemfile_packages("DEPENDENCIES\n    rack (= 2.2.3)\n  specs:\n").is_empty());
        assert!(gemfile_packages("GEM\n  specs:\n      racc (~> 1.4)\n").is_empty());
        assert!(gemfile_packages("GEM\n  specs:\n    rack (>= 2, < 3)\n").is_empty());
    }

    #[test]
    fn reads_requirements_pins_only() {
        let text = "# pinned by pip-compile\n--index-url https://pypi.org/simple\n-r base.txt\n-e git+https://example.com/x.git#egg=x\nDjango==3.2.4  # via -r requirements.in\nPyYAML[libyaml]==5.3.1 ; python_version >= \"3.6\"\nrequests==2.25.1 \\\n    --hash=sha256:abc \\\n    --hash=sha256:def\nzope.interface===5.4.0\nflask>=2.0\nurllib3~=1.26\nsix==1.*\nnumpy\nmypkg @ https://example.com/mypkg-1.0.tar.gz\n   \n#django==1.0\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requirements-prod.txt");
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            pairs(&read_lockfile(&path).unwrap()),
            vec![
                ("PyPI", "django", "3.2.4"),
                ("PyPI", "pyyaml", "5.3.1"),
                ("PyPI", "requests", "2.25.1"),
                ("PyPI", "zope-interface", "5.4.0"),
            ]
        );
    }

    #[test]
    fn reads_poetry_lock_packages() {
        let text = "[[package]]\nname = \"Jinja2\"\nversion = \"2.11.2\"\ndescription = \"x\"\noptional = false\npython-versions = \">=3.6\"\n\n[package.dependencies]\nMarkupSafe = \">=0.23\"\n\n[[package]]\nname = \"markupsafe\"\nversion = \"2.0.1\"\n\n[metadata]\nlock-version = \"1.1\"\ncontent-hash = \"abc\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poetry.lock");
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            pairs(&read_lockfile(&path).unwrap()),
            vec![
                ("PyPI", "jinja2", "2.11.2"),
                ("PyPI", "markupsafe", "2.0.1")
            ]
        );
        // Not TOML: an error naming the file, not an empty list.
        std::fs::write(&path, "[[package]\nname = ").unwrap();
        let error = read_lockfile(&path).unwrap_err().to_string();
        assert!(error.contains("poetry.lock"), "{error}");
    }
}
