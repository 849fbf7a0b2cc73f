//! `--config FILE`: the TOML file with any number of listeners, groups, shared IP address
//! groups and rules. Its tables are read by serde into the very structs the flags fill
//! ([`ListenerSpec`], [`GroupSpec`], [`NodeSpec`]), so the two cannot drift; this module adds
//! only what a file needs: where each table is, for messages, and paths relative to the file.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;
use serde_path_to_error::Segment;
use toml::{Table, Value};

use super::spec::{GroupSpec, IpGroupSpec, ListenerSpec, NodeSpec};
use super::values::{Cidr, TextValue};
use super::{ConfigError, EtcdSnapshot};

/// A listener table and where it is (`FILE: listener "NAME"`).
pub struct FileListener {
    pub spec: ListenerSpec,
    /// `group`: the name of the `[[group]]` that takes requests no rule claims.
    pub group: String,
    pub location: String,
}

pub struct FileGroup {
    pub spec: GroupSpec,
    pub location: String,
}

pub struct FileConfig {
    pub path: PathBuf,
    /// The top-level keys.
    pub node: NodeSpec,
    pub ip_groups: BTreeMap<String, IpGroupSpec>,
    pub listeners: Vec<FileListener>,
    pub groups: Vec<FileGroup>,
}

/// Which kind of table a key is in: decides the hint for a key it does not take.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Top,
    Listener,
    Rule,
    Group,
    IpGroup,
}

pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let shown = path.display().to_string();
    crate::tls::certs::check_regular(path)
        .map_err(|problem| ConfigError::new("--config", &shown, problem))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", &shown, format!("cannot read: {e}")))?;
    // Relative paths in the file are relative to the file, wherever edgelb was started from.
    let dir = path.parent().unwrap_or(Path::new("."));
    from_text(&text, "--config", &shown, dir)
}

/// The configuration stored in etcd: the TOML of `PREFIX/config`, with each
/// `PREFIX/ip_groups/NAME` key (CIDRs, one a line or comma-separated, `#` comments) as IP group
/// NAME, in place of a group of that name in the TOML. Relative paths are relative to the
/// working directory.
pub fn load_etcd(s: &EtcdSnapshot) -> Result<FileConfig, ConfigError> {
    let key = format!("{}/config", s.prefix);
    let shown = format!("etcd {key}");
    let text = s.config.as_deref().ok_or_else(|| {
        ConfigError::new(
            "--config-prefix",
            &s.prefix,
            format!(
                "etcd has no key {key} (revision {}): put the TOML configuration there",
                s.revision
            ),
        )
    })?;
    let mut file = from_text(text, "--config-prefix", &shown, Path::new("."))?;
    for (name, list) in &s.ip_groups {
        let at = format!("etcd {}/ip_groups/{name}", s.prefix);
        let mut cidrs = Vec::new();
        for (n, line) in list.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            for item in line.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let cidr = Cidr::parse(item).map_err(|problem| {
                    ConfigError::new(format!("line {}", n + 1), item, problem)
                        .in_file(at.clone(), false)
                })?;
                cidrs.push(cidr);
            }
        }
        file.ip_groups.insert(
            name.clone(),
            IpGroupSpec {
                cidrs,
                files: Vec::new(),
            },
        );
    }
    Ok(file)
}

/// `text` as a configuration file; `flag` and `shown` say where it came from.
fn from_text(
    text: &str,
    flag: &'static str,
    shown: &str,
    dir: &Path,
) -> Result<FileConfig, ConfigError> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigError::new(flag, shown, format!("not valid TOML: {e}"))
    })?;
    let mut top = underscored(table);
    let top_at = format!("{shown}: top level");
    let listener_tables = tables(top.remove("listener"), "listener", &top_at)?;
    let group_tables = tables(top.remove("group"), "group", &top_at)?;
    let ip_group_values = match top.remove("ip_groups") {
        None => Table::new(),
        Some(Value::Table(t)) => t,
        Some(other) => {
            return Err(wrong(
                "ip_groups",
                &other,
                "a table of named groups: [ip_groups.NAME]",
                &top_at,
            ));
        }
    };
    let mut node: NodeSpec = typed(&Value::Table(top), &top_at, Scope::Top)?;
    node.resolve_paths(dir);

    let mut groups = Vec::new();
    for (i, t) in group_tables.into_iter().enumerate() {
        let location = located(shown, "group", &t, i);
        if !t.contains_key("name") {
            return Err(ConfigError::missing(
                "name",
                "required: listeners and rules refer to the group by it",
            )
            .in_file(location, true));
        }
        let mut spec: GroupSpec = typed(&Value::Table(t), &location, Scope::Group)?;
        spec.resolve_paths(dir);
        groups.push(FileGroup { spec, location });
    }

    let mut listeners = Vec::new();
    for (i, mut t) in listener_tables.into_iter().enumerate() {
        let location = located(shown, "listener", &t, i);
        for key in ["rule", "rules"] {
            if let Some(Value::Array(rules)) = t.get_mut(key) {
                for r in rules.iter_mut() {
                    if let Value::Table(rt) = r {
                        *rt = underscored(std::mem::take(rt));
                    }
                }
            }
        }
        split_cidr_lists(&mut t);
        let mut spec: ListenerSpec = typed(&Value::Table(t), &location, Scope::Listener)?;
        spec.resolve_paths(dir);
        let group = spec.group.clone().ok_or_else(|| {
            ConfigError::missing(
                "group",
                "required: the name of the [[group]] that takes this listener's requests",
            )
            .in_file(location.clone(), false)
        })?;
        listeners.push(FileListener {
            spec,
            group,
            location,
        });
    }

    let mut ip_groups = BTreeMap::new();
    for (name, mut v) in ip_group_values {
        let at = format!("{shown}: ip_groups.{name}");
        if !v.is_table() {
            v = Value::Table(Table::from_iter([("cidrs".to_string(), v)]));
        }
        let mut g: IpGroupSpec = typed(&v, &at, Scope::IpGroup)?;
        g.resolve_paths(dir);
        ip_groups.insert(name, g);
    }
    Ok(FileConfig {
        path: PathBuf::from(shown),
        node,
        ip_groups,
        listeners,
        groups,
    })
}

/// Keys may be written as the flags are, with `-`: `idle-timeout` is `idle_timeout`.
fn underscored(t: Table) -> Table {
    t.into_iter()
        .map(|(k, v)| (k.replace('-', "_"), v))
        .collect()
}

/// `ip_group = ["10.0.0.0/8,fd00::/8"]` holds comma-separated lists, as `--ip-group` does:
/// one CIDR per entry, so that a refusal names the entry at fault, as the flag's does.
fn split_cidr_lists(t: &mut Table) {
    let entries = match t.get("ip_group") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) if items.iter().all(Value::is_str) => {
            items.iter().filter_map(Value::as_str).collect()
        }
        _ => return,
    };
    let split: Vec<Value> = entries
        .iter()
        .flat_map(|e| e.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| Value::String(c.to_string()))
        .collect();
    t.insert("ip_group".into(), Value::Array(split));
}

fn tables(v: Option<Value>, key: &str, at: &str) -> Result<Vec<Table>, ConfigError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let Value::Array(items) = v else {
        return Err(wrong(key, &v, &format!("[[{key}]] tables"), at));
    };
    items
        .into_iter()
        .map(|i| match i {
            Value::Table(t) => Ok(underscored(t)),
            other => Err(wrong(key, &other, "a table", at)),
        })
        .collect()
}

/// `FILE: listener "web"`, or `FILE: listener #2` for a table without a name.
fn located(shown: &str, kind: &str, t: &Table, i: usize) -> String {
    match t.get("name").and_then(Value::as_str) {
        Some(n) => format!("{shown}: {kind} {n:?}"),
        None => format!("{shown}: {kind} #{}", i + 1),
    }
}

/// Reads one table (or value) into its typed struct; a refusal names the key and the value as
/// written, and says what is allowed.
fn typed<T: for<'de> Deserialize<'de>>(
    raw: &Value,
    location: &str,
    scope: Scope,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(raw.clone()).map_err(|e| explain(&e, raw, location, scope))
}

fn explain(
    e: &serde_path_to_error::Error<toml::de::Error>,
    raw: &Value,
    location: &str,
    scope: Scope,
) -> ConfigError {
    let mut segments: Vec<&Segment> = e.path().iter().collect();
    let (mut location, mut raw, mut scope) = (location.to_string(), raw, scope);
    // A problem inside a `[[listener.rule]]` table is said of that rule.
    if let (Scope::Listener, [Segment::Map { key }, Segment::Seq { index }, ..]) =
        (scope, segments.as_slice())
        && (key == "rule" || key == "rules")
        && let Some(rule) = raw.get(key.as_str()).and_then(|r| r.get(*index))
    {
        let name = rule
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("rule-{}", index + 1), str::to_string);
        location = format!("{location}: rule {name:?}");
        raw = rule;
        scope = Scope::Rule;
        segments.drain(..2);
    }
    let message = e.inner().message();
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        let key = rest.split('`').next().unwrap_or_default();
        return ConfigError::missing(
            key.to_string(),
            "given twice (a key and its other spelling: tag/tags, rule/rules, backend/backends, \
             sni_cert/sni_certs, - and _)",
        )
        .in_file(location, false);
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or_default();
        return ConfigError::missing(
            key.to_string(),
            format!("unknown key: {}", hint(scope, key)),
        )
        .in_file(location, false);
    }
    // `backend.weight`, `header.x-env`: the keys down to the value at fault.
    let keys: Vec<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let key = keys.join(".");
    let value = segments.iter().try_fold(raw, |v, s| match s {
        Segment::Map { key } => v.get(key.as_str()),
        Segment::Seq { index } => v.get(*index),
        _ => Some(v),
    });
    let Some(value) = value else {
        return ConfigError::missing(key, message.to_string()).in_file(location, false);
    };
    // serde's "invalid type: string "yes", expected a boolean" in the file's words.
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return ConfigError::new(key, shown(value), format!("{field} is required"))
            .in_file(location, false);
    }
    let problem = match message.strip_prefix("invalid type: ") {
        Some(rest) => {
            let expected = rest.rsplit_once(", expected ").map_or("", |(_, e)| e);
            let expected = if expected == "a boolean" {
                "true or false"
            } else {
                expected
            };
            format!("expected {expected}, found {}", kind(value))
        }
        None => message.to_string(),
    };
    ConfigError::new(key, shown(value), problem).in_file(location, false)
}

fn hint(scope: Scope, key: &str) -> String {
    let flag_keys = |command: clap::Command| -> Vec<String> {
        command
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect()
    };
    match scope {
        Scope::Top => {
            let mut keys = flag_keys(NodeSpec::augment_args(clap::Command::new("node")));
            keys.extend(["ip_groups", "listener", "group"].map(String::from));
            format!("top-level keys are {}", keys.join(", "))
        }
        Scope::Listener => {
            let group = flag_keys(GroupSpec::augment_args(clap::Command::new("group")));
            if group.iter().any(|k| k == key) || key == "backends" {
                "belongs in a [[group]] table; name that group with group = \"NAME\"".into()
            } else {
                "not a listener key (keys are the listener flags with _ for -, plus group, \
                 ip_groups and [[listener.rule]])"
                    .into()
            }
        }
        Scope::Group => "not a group key (keys are the group flags with _ for -; name and \
                         description stand for group-name and group-description)"
            .into(),
        Scope::Rule => "rule keys: name, host, path, path_prefix, path_regex, method, header, \
                        query, client, action, group, status, location, content_type, body"
            .into(),
        Scope::IpGroup => "an IP group has cidrs = [...] and files = [...]".into(),
    }
}

/// A value as the message shows it: a string as its text, since the message quotes it once.
fn shown(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number with a fraction",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

fn wrong(key: &str, v: &Value, expected: &str, at: &str) -> ConfigError {
    ConfigError::new(
        key.to_string(),
        shown(v),
        format!("expected {expected}, found {}", kind(v)),
    )
    .in_file(at.to_string(), false)
}
