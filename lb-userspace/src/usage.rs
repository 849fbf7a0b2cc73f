//! The command line as clap reads it, plus two things clap's derive API drops: which flags were
//! given on the command line (a flag given at its default value still beats the config file,
//! and a listener flag next to `--config` without `--listen` is refused rather than ignored),
//! and usage errors as one line naming the flag, the value and what is allowed, like every
//! other error edgelb reports.
use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};

use crate::cli::{Cli, Command, RunArgs};

/// Parses `args` (the program name first). `Err` carries clap's error: help and version
/// requests are errors too, which [`report`] prints as clap does.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = brief_check_help(crate::cli::command());
    let matches = command.clone().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    match &mut cli.command {
        Some(Command::Check(run)) => {
            if let (Some(sub), Some(m)) = (
                command.find_subcommand("check"),
                matches.subcommand_matches("check"),
            ) {
                run.explicit = explicit(sub, m);
            }
        }
        None => cli.run.explicit = explicit(&command, &matches),
        Some(_) => {}
    }
    Ok(cli)
}

/// `check` takes every run flag; its `--help` says so in three lines rather than repeating
/// the few hundred of `edgelb --help`.
fn brief_check_help(command: clap::Command) -> clap::Command {
    command.mut_subcommand("check", |check| {
        check
            .mut_args(|a| if a.get_id() == "help" { a } else { a.hide(true) })
            .after_help("Takes every flag of edgelb itself, -c/--config among them: `edgelb --help` lists them by topic.")
    })
}

/// The run flags given on the command line, in the order of `--help`, with their values as
/// typed (several joined by spaces; "true" for switches).
fn explicit(command: &clap::Command, matches: &ArgMatches) -> Vec<(String, String)> {
    command
        .get_arguments()
        .filter(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        .filter_map(|a| {
            let flag = format!("--{}", a.get_long()?);
            let value = matches
                .get_raw(a.get_id().as_str())
                .map(|values| {
                    values
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            Some((flag, value))
        })
        .collect()
}

impl RunArgs {
    /// Whether `flag` (e.g. `--drain-timeout`) was given on the command line.
    pub fn given(&self, flag: &str) -> bool {
        self.explicit.iter().any(|(f, _)| f == flag)
    }
}

/// What to print for a parse error, and the exit code: help and version go to stdout with 0,
/// a usage error is one line on stderr with 2.
pub fn report(e: &clap::Error) -> (String, bool, u8) {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => (e.to_string(), false, 0),
        _ => (format!("edgelb: error: {}", one_line(e)), true, 2),
    }
}

/// A clap error in edgelb's words: `--flag "value": what is allowed`.
pub fn one_line(e: &clap::Error) -> String {
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    // clap names an option with its placeholder ("--http2 <on|off>"): the flag alone.
    let flag = text(ContextKind::InvalidArg)
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_string());
    let value = text(ContextKind::InvalidValue);
    let valid = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(v)) => v.join(", "),
        _ => String::new(),
    };
    let suggested = match e.get(ContextKind::SuggestedArg) {
        Some(ContextValue::String(s)) => format!("; did you mean {s}?"),
        _ => String::new(),
    };
    match (e.kind(), flag, value) {
        (ErrorKind::InvalidValue, Some(flag), Some(value)) if value.is_empty() => {
            format!("{flag}: needs a value{}", one_of(&valid))
        }
        (ErrorKind::InvalidValue, Some(flag), Some(value)) if !valid.is_empty() => {
            format!("{flag} {value:?}: expected one of: {valid}")
        }
        (ErrorKind::MissingRequiredArgument, _, _) => {
            let missing = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::Strings(args)) => args
                    .iter()
                    .map(|a| a.split_whitespace().next().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => return first_line(e),
            };
            format!("{missing}: required (see --help)")
        }
        // A value parser's own refusal: its message says what is allowed.
        (ErrorKind::ValueValidation, Some(flag), Some(value)) => {
            let why = std::error::Error::source(e).map_or_else(|| first_line(e), |s| s.to_string());
            format!("{flag} {value:?}: {why}")
        }
        (ErrorKind::UnknownArgument, Some(arg), _) => {
            format!("{arg:?}: no such flag{suggested} (edgelb --help lists them)")
        }
        (ErrorKind::InvalidSubcommand, Some(arg), _) => {
            format!("{arg:?}: no such command{suggested} (edgelb --help lists them)")
        }
        _ => first_line(e),
    }
}

fn one_of(valid: &str) -> String {
    if valid.is_empty() {
        String::new()
    } else {
        format!(", one of: {valid}")
    }
}

/// clap's own message, without its "error: " prefix, usage and hints.
fn first_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(args: &[&str]) -> String {
        match parse_from(std::iter::once("edgelb").chain(args.iter().copied())) {
            Ok(_) => panic!("{args:?} parsed"),
            Err(e) => one_line(&e),
        }
    }

    #[test]
    fn usage_errors_name_the_flag_the_value_and_what_is_allowed() {
        assert_eq!(
            error(&["--http2", "maybe"]),
            "--http2 \"maybe\": expected one of: on, off"
        );
        assert_eq!(
            error(&["--bogus"]),
            "\"--bogus\": no such flag (edgelb --help lists them)"
        );
        assert!(error(&["--listne", "x"]).contains("did you mean --listen?"));
        assert_eq!(
            error(&["decap", "--from", "10.0.0.0/8"]),
            "--iface: required (see --help)"
        );
    }

    #[test]
    fn explicit_flags_are_known_even_at_their_default() {
        let cli = parse_from([
            "edgelb",
            "--drain-timeout",
            "10",
            "--backend",
            "10.0.0.1:80",
            "--backend",
            "10.0.0.2:80",
        ])
        .expect("parses");
        assert!(cli.run.given("--drain-timeout"));
        assert!(!cli.run.given("--idle-timeout"));
        assert!(
            cli.run
                .explicit
                .contains(&("--backend".into(), "10.0.0.1:80 10.0.0.2:80".into()))
        );
        let cli = parse_from(["edgelb", "check", "--access-log"]).expect("parses");
        let Some(Command::Check(run)) = cli.command else {
            panic!("not check")
        };
        assert_eq!(run.explicit, vec![("--access-log".into(), "stderr".into())]);
    }
}
