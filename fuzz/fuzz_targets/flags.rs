//! The command line: any arguments (one per line) parse or are refused with an error, and a
//! parsed run configuration validates or is refused: never a panic or a hang. Arguments with
//! a `/` are left out so that the fuzzer names no file outside the working directory.
#![no_main]
use clap::Parser;
use edgelb::cli::{Cli, Command};
use edgelb::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args: Vec<&str> = std::iter::once("edgelb").chain(text.split('\n')).collect();
    if args.iter().any(|a| a.contains('/')) {
        return;
    }
    let Ok(cli) = Cli::try_parse_from(&args) else {
        return;
    };
    match &cli.command {
        Some(Command::Check(run)) => {
            let _ = Config::from_args(run);
        }
        None => {
            let _ = Config::from_args(&cli.run);
        }
        _ => {}
    }
});
