use std::borrow::Cow;
use std::fmt;

/// A flag or config-file key whose value cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The flag as the user types it, e.g. `--ip-group`, or the file key, e.g. `ip_group`.
    pub key: Cow<'static, str>,
    /// The offending value; `None` when the flag is missing.
    pub value: Option<String>,
    /// What is wrong and what is allowed.
    pub problem: String,
    /// Where in a config file the key is (`FILE: listener "web"`); None for flags.
    pub location: Option<String>,
}

impl ConfigError {
    pub fn new(
        key: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
        problem: impl ToString,
    ) -> Self {
        ConfigError {
            key: key.into(),
            value: Some(value.into()),
            problem: problem.to_string(),
            location: None,
        }
    }

    pub fn missing(key: impl Into<Cow<'static, str>>, problem: impl ToString) -> Self {
        ConfigError {
            key: key.into(),
            value: None,
            problem: problem.to_string(),
            location: None,
        }
    }

    /// The same error, said of a config-file table: the flag name becomes the file's key
    /// (`--idle-timeout` is `idle_timeout`; a group table drops the `group_` prefix), and any
    /// flag named inside the problem text is renamed the same way.
    pub fn in_file(mut self, location: String, group_table: bool) -> Self {
        if self.location.is_none() {
            self.key = Cow::Owned(file_key(&self.key, group_table));
            self.problem = rename_flags(&self.problem, group_table);
            self.location = Some(location);
        }
        self
    }
}

/// The config-file key of a flag.
pub fn file_key(flag: &str, group_table: bool) -> String {
    let Some(bare) = flag.strip_prefix("--") else {
        return flag.to_string();
    };
    let bare = if group_table {
        bare.strip_prefix("group-").unwrap_or(bare)
    } else {
        bare
    };
    bare.replace('-', "_")
}

fn rename_flags(text: &str, group_table: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        out.push_str(&rest[..at]);
        let flag_end = rest[at + 2..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .map_or(rest.len(), |e| at + 2 + e);
        out.push_str(&file_key(&rest[at..flag_end], group_table));
        rest = &rest[flag_end..];
    }
    out.push_str(rest);
    out
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.location, &self.value) {
            (Some(at), Some(v)) => write!(f, "{at}: {} = {:?}: {}", self.key, v, self.problem),
            (Some(at), None) => write!(f, "{at}: {}: {}", self.key, self.problem),
            (None, Some(v)) => write!(f, "{} {:?}: {}", self.key, v, self.problem),
            (None, None) => write!(f, "{}: {}", self.key, self.problem),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_file_keys() {
        let e = ConfigError::new("--idle-timeout", "5000", "must be 0-4000")
            .in_file("edgelb.toml: listener \"web\"".into(), false);
        assert_eq!(
            e.to_string(),
            "edgelb.toml: listener \"web\": idle_timeout = \"5000\": must be 0-4000"
        );
        let e = ConfigError::missing("--group-name", "needs --backend-ca or --backend-insecure")
            .in_file("f: group #1".into(), true);
        assert_eq!(
            e.to_string(),
            "f: group #1: name: needs backend_ca or backend_insecure"
        );
    }
}
