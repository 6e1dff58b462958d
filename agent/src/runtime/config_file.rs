//! Reads the CRI registry settings from containerd's own config file.
//!
//! containerd 2.x no longer reports them over CRI, so for those builds the
//! file is the only source. We follow `imports` the way containerd does,
//! because distributions and cluster tooling put the CRI section in drop-in
//! files (`/etc/containerd/conf.d/*.toml`):
//!
//! - a relative plain path is relative to the importing file; a relative glob
//!   is too from containerd 1.7 on, but before 1.7 it is relative to
//!   containerd's working directory (`/` under systemd). Globs expand in
//!   sorted order, and imports of imports are followed once each;
//! - config version 1 and 2 (containerd 1.x) replace a whole plugin section
//!   with the imported one, while version 3 (containerd 2.x) merges keys.
//!   Both were checked against `containerd config dump` of Debian's builds.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::version::RuntimeVersion;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read containerd config {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("containerd config {path} is not valid TOML: {error}")]
    Parse {
        path: PathBuf,
        error: Box<toml::de::Error>,
    },
    #[error(
        "containerd config {path} imports {pattern:?}, which is not a valid glob pattern: {error}"
    )]
    Import {
        path: PathBuf,
        pattern: String,
        error: glob::PatternError,
    },
    #[error(
        "containerd config {path} has version = {version}; expected 1, 2 or 3. Fix: point \
         --containerd-config at the file containerd really loads"
    )]
    Version { path: PathBuf, version: i64 },
}

/// Where containerd resolves a relative glob in `imports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobBase {
    /// containerd 1.7 and later: the importing file's directory.
    ImportingFile,
    /// containerd before 1.7: its working directory, which is `/` for a
    /// containerd started by systemd.
    Root,
}

impl GlobBase {
    /// The rule of a given containerd; the newer rule when it is unknown.
    pub fn for_containerd(version: Option<&RuntimeVersion>) -> Self {
        let first_relative = RuntimeVersion::from_components(&[1, 7]);
        match version {
            Some(v) if v.cmp_numeric(&first_relative).is_lt() => GlobBase::Root,
            _ => GlobBase::ImportingFile,
        }
    }
}

/// containerd's config after imports, with the file names it came from.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    version: i64,
    glob_base: GlobBase,
    merged: Table,
    files: Vec<PathBuf>,
}

impl ConfigFile {
    pub fn load(path: &Path, glob_base: GlobBase) -> Result<Self, ConfigFileError> {
        let root = read_table(path)?;
        // containerd 1.x reads a file without `version` as version 1.
        let version = root.get("version").and_then(Value::as_integer).unwrap_or(1);
        if !(1..=3).contains(&version) {
            return Err(ConfigFileError::Version {
                path: path.to_owned(),
                version,
            });
        }
        let mut config = Self {
            version,
            glob_base,
            merged: Table::new(),
            files: Vec::new(),
        };
        let mut seen = HashSet::new();
        config.absorb(path, root, &mut seen)?;
        Ok(config)
    }

    /// The config format version: 2 for containerd 1.x, 3 for 2.x, 1 for
    /// files written before containerd 1.3.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Every file that contributed, main file first.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The registry `config_path`; empty when unset, as containerd treats it.
    pub fn registry_config_path(&self) -> String {
        self.lookup(&registry_table(self.version))
            .and_then(|t| t.get("config_path"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    /// containerd's default is false.
    pub fn discard_unpacked_layers(&self) -> bool {
        self.lookup(&discard_table(self.version))
            .and_then(|t| t.get("discard_unpacked_layers"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    fn lookup(&self, keys: &[&str]) -> Option<&Table> {
        let mut table = self.merged.get("plugins")?.as_table()?;
        for key in keys {
            table = table.get(*key)?.as_table()?;
        }
        Some(table)
    }

    fn absorb(
        &mut self,
        path: &Path,
        mut table: Table,
        seen: &mut HashSet<PathBuf>,
    ) -> Result<(), ConfigFileError> {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        if !seen.insert(canonical) {
            return Ok(());
        }
        self.files.push(path.to_owned());
        let imports = imports_of(path, &table, self.glob_base)?;
        table.remove("imports");
        merge(&mut self.merged, table, self.version);
        for import in imports {
            let imported = read_table(&import)?;
            self.absorb(&import, imported, seen)?;
        }
        Ok(())
    }
}

/// The table header of a config version's TOML key, quoted as containerd
/// writes it: `plugins."io.containerd.grpc.v1.cri".registry`.
pub fn table_header(keys: &[&str]) -> String {
    let mut header = String::from("plugins");
    for key in keys {
        if key.contains('.') {
            header.push_str(&format!(".\"{key}\""));
        } else {
            header.push('.');
            header.push_str(key);
        }
    }
    header
}

/// The keys under `plugins` of the table that holds `config_path` in a given
/// config version; also used to write fix hints that paste as they are.
pub fn registry_table(version: i64) -> Vec<&'static str> {
    vec![cri_plugin(version), "registry"]
}

/// The keys under `plugins` of the table that holds `discard_unpacked_layers`.
pub fn discard_table(version: i64) -> Vec<&'static str> {
    match version {
        3 => vec![cri_plugin(3)],
        v => vec![cri_plugin(v), "containerd"],
    }
}

fn cri_plugin(version: i64) -> &'static str {
    match version {
        1 => "cri",
        2 => "io.containerd.grpc.v1.cri",
        _ => "io.containerd.cri.v1.images",
    }
}

fn read_table(path: &Path) -> Result<Table, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        error: source,
    })?;
    text.parse::<Table>()
        .map_err(|source| ConfigFileError::Parse {
            path: path.to_owned(),
            error: Box::new(source),
        })
}

fn imports_of(
    path: &Path,
    table: &Table,
    glob_base: GlobBase,
) -> Result<Vec<PathBuf>, ConfigFileError> {
    let patterns = table
        .get("imports")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut files = Vec::new();
    for pattern in patterns {
        if !pattern.contains(['*', '?', '[']) {
            // A plain path that does not exist is an error to containerd
            // too, so it is left for read_table to report.
            files.push(dir.join(pattern));
            continue;
        }
        let base = match glob_base {
            GlobBase::ImportingFile => dir,
            GlobBase::Root => Path::new("/"),
        };
        let full = base.join(pattern);
        let matches =
            glob::glob(&full.to_string_lossy()).map_err(|source| ConfigFileError::Import {
                path: path.to_owned(),
                pattern: pattern.to_owned(),
                error: source,
            })?;
        let mut matched: Vec<PathBuf> = matches.filter_map(Result::ok).collect();
        matched.sort();
        files.extend(matched);
    }
    Ok(files)
}

/// Merges `from` over `into` the way the given config version does.
fn merge(into: &mut Table, from: Table, version: i64) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(incoming)) if version >= 3 => {
                merge(existing, incoming, version);
            }
            (Some(Value::Table(existing)), Value::Table(incoming)) if key == "plugins" => {
                existing.extend(incoming);
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn version_2_imports_replace_whole_plugin_sections() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            r#"version = 2
imports = ["conf.d/*.toml"]
[plugins."io.containerd.grpc.v1.cri".containerd]
  discard_unpacked_layers = true
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/main"
"#,
        );
        write(
            dir.path(),
            "conf.d/10-registry.toml",
            r#"version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/imported"
"#,
        );
        let config = ConfigFile::load(&main, GlobBase::ImportingFile).unwrap();
        assert_eq!(config.registry_config_path(), "/imported");
        // The imported section replaced the main one, discard setting and all.
        assert!(!config.discard_unpacked_layers());
        assert_eq!(config.files().len(), 2);
    }

    #[test]
    fn version_3_imports_merge_keys() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            r#"version = 3
imports = ["conf.d/*.toml"]
[plugins.'io.containerd.cri.v1.images']
  discard_unpacked_layers = true
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "/main"
"#,
        );
        write(
            dir.path(),
            "conf.d/a.toml",
            r#"version = 3
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = "/imported"
"#,
        );
        let config = ConfigFile::load(&main, GlobBase::ImportingFile).unwrap();
        assert_eq!(config.registry_config_path(), "/imported");
        assert!(config.discard_unpacked_layers());
    }

    #[test]
    fn missing_sections_mean_containerd_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.toml", "version = 2\n");
        let config = ConfigFile::load(&main, GlobBase::ImportingFile).unwrap();
        assert_eq!(config.registry_config_path(), "");
        assert!(!config.discard_unpacked_layers());
    }

    #[test]
    fn version_1_uses_the_short_plugin_name() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[plugins.cri.registry]\nconfig_path = \"/etc/containerd/certs.d\"\n",
        );
        let config = ConfigFile::load(&main, GlobBase::ImportingFile).unwrap();
        assert_eq!(config.version(), 1);
        assert_eq!(config.registry_config_path(), "/etc/containerd/certs.d");
    }

    #[test]
    fn import_cycles_are_followed_once() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "a.toml",
            "version = 3\nimports = [\"b.toml\"]\n",
        );
        write(
            dir.path(),
            "b.toml",
            "version = 3\nimports = [\"a.toml\"]\n",
        );
        let config = ConfigFile::load(&main, GlobBase::ImportingFile).unwrap();
        assert_eq!(config.files().len(), 2);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write(dir.path(), "config.toml", "version = [\n");
        let message = ConfigFile::load(&bad, GlobBase::ImportingFile)
            .unwrap_err()
            .to_string();
        assert!(message.contains("config.toml"), "{message}");
        let missing = dir.path().join("nope.toml");
        let message = ConfigFile::load(&missing, GlobBase::ImportingFile)
            .unwrap_err()
            .to_string();
        assert!(message.contains("nope.toml"), "{message}");
        let future = write(dir.path(), "v9.toml", "version = 9\n");
        let message = ConfigFile::load(&future, GlobBase::ImportingFile)
            .unwrap_err()
            .to_string();
        assert!(message.contains("version = 9"), "{message}");
    }

    #[test]
    fn containerd_before_1_7_globs_from_root() {
        let v = |s| RuntimeVersion::parse(s).unwrap();
        assert_eq!(
            GlobBase::for_containerd(Some(&v("1.6.20~ds1"))),
            GlobBase::Root
        );
        assert_eq!(
            GlobBase::for_containerd(Some(&v("1.7.24~ds1"))),
            GlobBase::ImportingFile
        );
        assert_eq!(GlobBase::for_containerd(None), GlobBase::ImportingFile);
    }

    #[test]
    fn headers_quote_dotted_plugin_names() {
        assert_eq!(
            table_header(&["io.containerd.grpc.v1.cri", "registry"]),
            r#"plugins."io.containerd.grpc.v1.cri".registry"#
        );
    }
}
