use std::fmt;

/// A flag (or, later, config key) whose value cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The flag as the user types it, e.g. `--ip-group`.
    pub flag: &'static str,
    /// The offending value; `None` when the flag is missing.
    pub value: Option<String>,
    /// What is wrong and what is allowed.
    pub problem: String,
}

impl ConfigError {
    pub fn new(flag: &'static str, value: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            flag,
            value: Some(value.into()),
            problem: problem.into(),
        }
    }

    pub fn missing(flag: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            flag,
            value: None,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{} {:?}: {}", self.flag, v, self.problem),
            None => write!(f, "{}: {}", self.flag, self.problem),
        }
    }
}
