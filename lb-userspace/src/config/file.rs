//! `--config FILE`: the TOML file with any number of listeners, groups, shared IP address
//! groups and rules. Every key is a flag of the same name (`--idle-timeout` is `idle_timeout`;
//! in a `[[group]]` table `--group-name` is `name`), so the file is read into the very flag
//! structures the command line fills and validated by the same code: the two cannot drift.
//! This module only walks the TOML; what the values mean is decided in `config`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::cli::SniCert;
use toml::{Table, Value};

use super::ConfigError;
use crate::cli::RunArgs;
use crate::rules::{ActionSpec, PathMatch, RuleSpec};

/// A listener table, as flags plus what only the file can say.
pub struct FileListener {
    pub args: RunArgs,
    /// `group`: the name of the `[[group]]` that takes requests no rule claims.
    pub group: String,
    /// `ip_groups`: names of `[ip_groups.NAME]` tables.
    pub ip_groups: Vec<String>,
    pub rules: Vec<RuleSpec>,
    /// `FILE: listener "NAME"`, for errors.
    pub location: String,
}

pub struct FileGroup {
    pub args: RunArgs,
    pub location: String,
}

/// A named IP address group: CIDRs written inline and files of CIDRs (read when validated).
#[derive(Default)]
pub struct FileIpGroup {
    pub cidrs: Vec<String>,
    pub files: Vec<PathBuf>,
}

pub struct FileConfig {
    pub path: PathBuf,
    /// The top-level keys (admin, xdp...) as flags; everything else at its default.
    pub globals: RunArgs,
    pub ip_groups: BTreeMap<String, FileIpGroup>,
    pub listeners: Vec<FileListener>,
    pub groups: Vec<FileGroup>,
}

pub(super) const GLOBAL_KEYS: &[&str] = &[
    "admin",
    "admin_allow_remote",
    "drain_timeout",
    "access_log",
    "allow_readable_keys",
    "user",
    "xdp_iface",
    "xdp_mode",
    "ip_groups",
    "listener",
    "group",
];

/// Reads and walks the file. `defaults` is the flags' default values, the start of every table.
pub fn load(path: &Path, defaults: &RunArgs) -> Result<FileConfig, ConfigError> {
    let shown = path.display().to_string();
    crate::tls::certs::check_regular(path)
        .map_err(|problem| ConfigError::new("--config", &shown, problem))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", &shown, format!("cannot read: {e}")))?;
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigError::new("--config", &shown, format!("not valid TOML: {e}"))
    })?;
    // Relative paths in the file are relative to the file, wherever edgelb was started from.
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut file = FileConfig {
        path: path.to_path_buf(),
        globals: defaults.clone(),
        ip_groups: BTreeMap::new(),
        listeners: Vec::new(),
        groups: Vec::new(),
    };
    let top = Walker {
        location: format!("{shown}: top level"),
        dir: &dir,
    };
    for (raw_key, value) in &table {
        let key = raw_key.replace('-', "_");
        match key.as_str() {
            "listener" => {
                for (i, t) in top.tables(&key, value)?.into_iter().enumerate() {
                    file.listeners
                        .push(listener(t, i, &shown, &dir, defaults.clone())?);
                }
            }
            "group" => {
                for (i, t) in top.tables(&key, value)?.into_iter().enumerate() {
                    file.groups
                        .push(group(t, i, &shown, &dir, defaults.clone())?);
                }
            }
            "ip_groups" => {
                let Value::Table(groups) = value else {
                    return Err(top.wrong(
                        &key,
                        value,
                        "a table of named groups: [ip_groups.NAME]",
                    ));
                };
                for (name, g) in groups {
                    file.ip_groups
                        .insert(name.clone(), ip_group(g, name, &shown, &dir)?);
                }
            }
            _ => top.global(&mut file.globals, &key, value)?,
        }
    }
    Ok(file)
}

fn table_name(t: &Table) -> Option<&str> {
    t.get("name").and_then(Value::as_str)
}

fn listener(
    t: &Table,
    i: usize,
    shown: &str,
    dir: &Path,
    mut args: RunArgs,
) -> Result<FileListener, ConfigError> {
    let location = match table_name(t) {
        Some(n) => format!("{shown}: listener {n:?}"),
        None => format!("{shown}: listener #{}", i + 1),
    };
    let w = Walker {
        location: location.clone(),
        dir,
    };
    let mut group = None;
    let mut ip_groups = Vec::new();
    let mut rule_tables = None;
    for (raw_key, v) in t {
        let key = raw_key.replace('-', "_");
        match key.as_str() {
            "name" => args.name = w.string(&key, v)?,
            "description" => args.description = Some(w.string(&key, v)?),
            "tag" | "tags" => args.tags = w.tags(&key, v)?,
            "protocol" => args.protocol = w.choice(&key, v)?,
            "listen" => args.listen = Some(w.string(&key, v)?),
            "cert" => args.cert = Some(w.path(&key, v)?),
            "key" => args.key = Some(w.path(&key, v)?),
            "sni_cert" | "sni_certs" => args.sni_certs = w.sni_certs(&key, v)?,
            "ssl_auth" => args.ssl_auth = Some(w.choice(&key, v)?),
            "client_ca" => args.client_ca = Some(w.path(&key, v)?),
            "tls_policy" => args.tls_policy = Some(w.string(&key, v)?),
            "http2" => args.http2 = w.on_off(&key, v)?,
            "transfer_lb_ip" => {
                args.transfer_lb_ip = match v {
                    Value::Boolean(true) => Some(String::new()),
                    Value::Boolean(false) => None,
                    _ => Some(w.string(&key, v)?),
                }
            }
            "idle_timeout" => args.idle_timeout = w.scalar(&key, v)?,
            "request_timeout" => args.request_timeout = w.scalar(&key, v)?,
            "response_timeout" => args.response_timeout = w.scalar(&key, v)?,
            "handshake_timeout" => args.handshake_timeout = w.scalar(&key, v)?,
            "max_connections" => args.max_connections = w.scalar(&key, v)?,
            "access_control" => args.access_control = w.choice(&key, v)?,
            "ip_group" => args.ip_groups = w.strings(&key, v)?,
            "ip_group_file" => args.ip_group_files = w.paths(&key, v)?,
            "ip_groups" => ip_groups = w.strings(&key, v)?,
            "group" => group = Some(w.string(&key, v)?),
            "rule" | "rules" => rule_tables = Some((key.clone(), v)),
            other => {
                let hint = if GROUP_KEYS.contains(&other) {
                    "belongs in a [[group]] table; name that group with group = \"NAME\""
                } else {
                    "not a listener key (keys are the listener flags with _ for -, plus group, ip_groups and [[listener.rule]])"
                };
                return Err(w.unknown(raw_key, hint));
            }
        }
    }
    let group = group.ok_or_else(|| {
        ConfigError::missing(
            "group",
            "required: the name of the [[group]] that takes this listener's requests",
        )
        .in_file(location.clone(), false)
    })?;
    let mut rules = Vec::new();
    if let Some((key, v)) = rule_tables {
        for (n, rt) in w.tables(&key, v)?.into_iter().enumerate() {
            rules.push(rule(rt, n, &location, &group)?);
        }
    }
    Ok(FileListener {
        args,
        group,
        ip_groups,
        rules,
        location,
    })
}

const GROUP_KEYS: &[&str] = &[
    "backend",
    "backends",
    "algorithm",
    "backend_protocol",
    "backend_ca",
    "backend_insecure",
    "hc_domain",
    "health_check",
    "hc_port",
    "hc_path",
    "hc_interval",
    "hc_timeout",
    "hc_retries",
    "slow_start",
    "sticky_session",
    "cookie_name",
    "sticky_duration",
    "sticky_key_file",
];

fn group(
    t: &Table,
    i: usize,
    shown: &str,
    dir: &Path,
    mut args: RunArgs,
) -> Result<FileGroup, ConfigError> {
    let location = match table_name(t) {
        Some(n) => format!("{shown}: group {n:?}"),
        None => format!("{shown}: group #{}", i + 1),
    };
    let w = Walker {
        location: location.clone(),
        dir,
    };
    if table_name(t).is_none() {
        return Err(ConfigError::missing(
            "name",
            "required: listeners and rules refer to the group by it",
        )
        .in_file(location, true));
    }
    for (raw_key, v) in t {
        let key = raw_key.replace('-', "_");
        match key.as_str() {
            "name" => args.group_name = w.string(&key, v)?,
            "description" => args.group_description = Some(w.string(&key, v)?),
            "backend" | "backends" => args.backends = w.backends(&key, v)?,
            "algorithm" => args.algorithm = w.choice(&key, v)?,
            "backend_protocol" => args.backend_protocol = w.choice(&key, v)?,
            "backend_ca" => args.backend_ca = Some(w.path(&key, v)?),
            "backend_insecure" => args.backend_insecure = w.boolean(&key, v)?,
            "hc_domain" => args.hc_domain = Some(w.string(&key, v)?),
            "health_check" => args.health_check = w.choice(&key, v)?,
            "hc_port" => args.hc_port = Some(w.scalar(&key, v)?),
            "hc_path" => args.hc_path = w.string(&key, v)?,
            "hc_interval" => args.hc_interval = w.scalar(&key, v)?,
            "hc_timeout" => args.hc_timeout = w.scalar(&key, v)?,
            "hc_retries" => args.hc_retries = w.scalar(&key, v)?,
            "slow_start" => args.slow_start = Some(w.scalar(&key, v)?),
            "sticky_session" => args.sticky_session = w.choice(&key, v)?,
            "cookie_name" => args.cookie_name = Some(w.string(&key, v)?),
            "sticky_duration" => args.sticky_duration = w.scalar(&key, v)?,
            "sticky_key_file" => args.sticky_key_file = Some(w.path(&key, v)?),
            _ => {
                return Err(w.unknown(
                    raw_key,
                    "not a group key (keys are the group flags with _ for -, and name/description for --group-name/--group-description)",
                ));
            }
        }
    }
    Ok(FileGroup { args, location })
}

fn ip_group(v: &Value, name: &str, shown: &str, dir: &Path) -> Result<FileIpGroup, ConfigError> {
    let w = Walker {
        location: format!("{shown}: ip_groups.{name}"),
        dir,
    };
    match v {
        Value::Array(_) | Value::String(_) => Ok(FileIpGroup {
            cidrs: w.strings("cidrs", v)?,
            files: Vec::new(),
        }),
        Value::Table(t) => {
            let mut g = FileIpGroup::default();
            for (key, v) in t {
                match key.as_str() {
                    "cidrs" => g.cidrs = w.strings(key, v)?,
                    "files" => g.files = w.paths(key, v)?,
                    _ => {
                        return Err(
                            w.unknown(key, "an IP group has cidrs = [...] and files = [...]")
                        );
                    }
                }
            }
            Ok(g)
        }
        _ => Err(w.wrong(
            name,
            v,
            "a list of CIDRs, or a table with cidrs = [...] and files = [...]",
        )),
    }
}

fn rule(t: &Table, n: usize, listener: &str, group: &str) -> Result<RuleSpec, ConfigError> {
    let name = table_name(t)
        .map(str::to_string)
        .unwrap_or_else(|| format!("rule-{}", n + 1));
    let w = Walker {
        location: format!("{listener}: rule {name:?}"),
        dir: Path::new("."),
    };
    let mut spec = RuleSpec {
        name,
        ..RuleSpec::default()
    };
    let (mut action, mut target, mut status, mut location) = (None, None, None, None);
    let (mut content_type, mut body) = (None, None);
    for (raw_key, v) in t {
        let key = raw_key.replace('-', "_");
        match key.as_str() {
            "name" => {}
            "host" => spec.hosts = w.strings(&key, v)?,
            "path" => spec
                .paths
                .extend(w.strings(&key, v)?.into_iter().map(PathMatch::Exact)),
            "path_prefix" => spec
                .paths
                .extend(w.strings(&key, v)?.into_iter().map(PathMatch::Prefix)),
            "path_regex" => spec
                .paths
                .extend(w.strings(&key, v)?.into_iter().map(PathMatch::Regex)),
            "method" => spec.methods = w.strings(&key, v)?,
            "header" => spec.headers = w.named_values(&key, v)?,
            "query" => spec.query = w.named_values(&key, v)?,
            "client" => spec.client_cidrs = w.strings(&key, v)?,
            "action" => action = Some(w.string(&key, v)?),
            "group" => target = Some(w.string(&key, v)?),
            "status" => status = Some(w.scalar(&key, v)?),
            "location" => location = Some(w.string(&key, v)?),
            "content_type" => content_type = Some(w.string(&key, v)?),
            "body" => body = Some(w.string(&key, v)?),
            _ => {
                return Err(w.unknown(
                    raw_key,
                    "rule keys: name, host, path, path_prefix, path_regex, method, header, query, client, action, group, status, location, content_type, body",
                ));
            }
        }
    }
    let missing = |key: &'static str, why: &str| {
        ConfigError::missing(key, why.to_string()).in_file(w.location.clone(), false)
    };
    let status_code = |s: Option<String>| -> Result<u16, ConfigError> {
        let s = s.ok_or_else(|| missing("status", "required for this action"))?;
        s.parse()
            .map_err(|_| w.problem("status", &s, "expected an HTTP status code"))
    };
    spec.action = match action.as_deref() {
        Some("forward") | None if target.is_some() || action.is_some() => ActionSpec::Forward {
            group: target.unwrap_or_else(|| group.to_string()),
        },
        Some("redirect") => ActionSpec::Redirect {
            status: status_code(status)?,
            location: location.ok_or_else(|| missing("location", "required for a redirect"))?,
        },
        Some("fixed") => ActionSpec::Fixed {
            status: status_code(status)?,
            content_type: content_type.unwrap_or_else(|| "text/plain".to_string()),
            body: body.unwrap_or_default(),
        },
        Some(other) => {
            return Err(w.problem("action", other, "expected forward, redirect or fixed"));
        }
        None => {
            return Err(missing(
                "action",
                "required: forward (to group = \"NAME\"), redirect or fixed",
            ));
        }
    };
    Ok(spec)
}

/// Reads typed values out of one table, with errors that name the table and the key.
struct Walker<'a> {
    location: String,
    dir: &'a Path,
}

impl Walker<'_> {
    fn problem(&self, key: &str, value: &str, problem: &str) -> ConfigError {
        ConfigError::new(key.to_string(), value, problem).in_file(self.location.clone(), false)
    }

    fn wrong(&self, key: &str, v: &Value, expected: &str) -> ConfigError {
        // A string is shown as its text: the message quotes values once, itself.
        let shown = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        let found = match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a number with a fraction",
            Value::Boolean(_) => "true or false",
            Value::Datetime(_) => "a date",
            Value::Array(_) => "a list",
            Value::Table(_) => "a table",
        };
        self.problem(key, &shown, &format!("expected {expected}, found {found}"))
    }

    fn unknown(&self, key: &str, hint: &str) -> ConfigError {
        ConfigError::missing(key.to_string(), format!("unknown key: {hint}"))
            .in_file(self.location.clone(), false)
    }

    fn string(&self, key: &str, v: &Value) -> Result<String, ConfigError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.wrong(key, v, "a string"))
    }

    /// Numbers may be written as TOML integers or strings; the flag validators check them.
    fn scalar(&self, key: &str, v: &Value) -> Result<String, ConfigError> {
        match v {
            Value::Integer(n) => Ok(n.to_string()),
            Value::String(s) => Ok(s.clone()),
            _ => Err(self.wrong(key, v, "a whole number")),
        }
    }

    fn boolean(&self, key: &str, v: &Value) -> Result<bool, ConfigError> {
        v.as_bool()
            .ok_or_else(|| self.wrong(key, v, "true or false"))
    }

    fn on_off(&self, key: &str, v: &Value) -> Result<crate::cli::OnOff, ConfigError> {
        match v {
            Value::Boolean(true) => Ok(crate::cli::OnOff::On),
            Value::Boolean(false) => Ok(crate::cli::OnOff::Off),
            _ => self.choice(key, v),
        }
    }

    /// One of the flag's values, with the flag's own aliases.
    fn choice<E: ValueEnum>(&self, key: &str, v: &Value) -> Result<E, ConfigError> {
        let s = self.string(key, v)?;
        // Case as on the command line, where every choice ignores it.
        E::from_str(&s, true).map_err(|_| {
            let allowed: Vec<String> = E::value_variants()
                .iter()
                .filter_map(|e| e.to_possible_value())
                .map(|p| p.get_name().to_string())
                .collect();
            self.problem(key, &s, &format!("expected one of: {}", allowed.join(", ")))
        })
    }

    /// A string or a list of strings.
    fn strings(&self, key: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
        match v {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(items) => items.iter().map(|i| self.string(key, i)).collect(),
            _ => Err(self.wrong(key, v, "a string or a list of strings")),
        }
    }

    fn path(&self, key: &str, v: &Value) -> Result<PathBuf, ConfigError> {
        Ok(self.dir.join(self.string(key, v)?))
    }

    fn paths(&self, key: &str, v: &Value) -> Result<Vec<PathBuf>, ConfigError> {
        Ok(self
            .strings(key, v)?
            .into_iter()
            .map(|p| self.dir.join(p))
            .collect())
    }

    fn tables<'v>(&self, key: &str, v: &'v Value) -> Result<Vec<&'v Table>, ConfigError> {
        let Value::Array(items) = v else {
            return Err(self.wrong(key, v, &format!("[[{key}]] tables")));
        };
        items
            .iter()
            .map(|i| i.as_table().ok_or_else(|| self.wrong(key, i, "a table")))
            .collect()
    }

    /// `tag = ["k=v"]` as the flag, or `tag = { k = "v" }`.
    fn tags(&self, key: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
        match v {
            Value::Table(t) => t
                .iter()
                .map(|(k, val)| Ok(format!("{k}={}", self.string(k, val)?)))
                .collect(),
            _ => self.strings(key, v),
        }
    }

    /// `sni_cert = ["DOMAIN=CERT:KEY"]` as the flag, or tables `{ domain, cert, key }` (whose
    /// paths may hold colons); paths are made relative to the file either way.
    fn sni_certs(&self, key: &str, v: &Value) -> Result<Vec<SniCert>, ConfigError> {
        let items = match v {
            Value::Array(items) => items.as_slice(),
            _ => return Err(self.wrong(key, v, "a list")),
        };
        items
            .iter()
            .map(|item| {
                let sni = match item {
                    Value::String(s) => crate::cli::sni_cert(s).map_err(|_| {
                        self.problem(key, s, "expected DOMAIN=CERT:KEY or { domain, cert, key }")
                    })?,
                    Value::Table(t) => {
                        let field = |f: &str| {
                            t.get(f).and_then(Value::as_str).ok_or_else(|| {
                                self.wrong(key, item, "a table with domain, cert and key strings")
                            })
                        };
                        SniCert {
                            domain: field("domain")?.to_string(),
                            cert: field("cert")?.into(),
                            key: field("key")?.into(),
                        }
                    }
                    _ => {
                        return Err(self.wrong(
                            key,
                            item,
                            "DOMAIN=CERT:KEY or { domain, cert, key }",
                        ));
                    }
                };
                Ok(SniCert {
                    cert: self.dir.join(&sni.cert),
                    key: self.dir.join(&sni.key),
                    ..sni
                })
            })
            .collect()
    }

    /// `backend = ["ADDR:PORT,weight=N"]` as the flag, or tables `{ address, weight }`.
    fn backends(&self, key: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
        let items = match v {
            Value::Array(items) => items.as_slice(),
            _ => return Err(self.wrong(key, v, "a list of backends")),
        };
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Table(t) => {
                    let addr = t.get("address").and_then(Value::as_str).ok_or_else(|| {
                        self.wrong(key, item, "a table with address = \"ADDR:PORT\" and weight")
                    })?;
                    Ok(match t.get("weight") {
                        None => addr.to_string(),
                        Some(w) => format!("{addr},weight={}", self.scalar("weight", w)?),
                    })
                }
                _ => Err(self.wrong(key, item, "\"ADDR:PORT[,weight=N]\" or { address, weight }")),
            })
            .collect()
    }

    /// `header = { "x-env" = ["prod", "stage"] }`: name to the values it may have.
    fn named_values(
        &self,
        key: &str,
        v: &Value,
    ) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let Value::Table(t) = v else {
            return Err(self.wrong(key, v, "a table such as { \"x-env\" = [\"prod\"] }"));
        };
        t.iter()
            .map(|(name, values)| Ok((name.clone(), self.strings(name, values)?)))
            .collect()
    }

    /// A top-level key: the node-wide flags.
    fn global(&self, args: &mut RunArgs, key: &str, v: &Value) -> Result<(), ConfigError> {
        match key {
            "admin" => args.admin = Some(self.string(key, v)?),
            "admin_allow_remote" => args.admin_allow_remote = self.boolean(key, v)?,
            "drain_timeout" => args.drain_timeout = self.scalar(key, v)?,
            "access_log" => args.access_log = self.boolean(key, v)?,
            "allow_readable_keys" => args.allow_readable_keys = self.boolean(key, v)?,
            "user" => args.user = Some(self.string(key, v)?),
            "xdp_iface" => args.xdp_ifaces = self.strings(key, v)?,
            "xdp_mode" => args.xdp_mode = self.choice(key, v)?,
            _ => {
                return Err(self.unknown(
                    key,
                    &format!("top-level keys are {}", GLOBAL_KEYS.join(", ")),
                ));
            }
        }
        Ok(())
    }
}
