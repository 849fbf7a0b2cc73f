//! The command line: any arguments (one per line) parse or are refused with a one-line error, and a
//! parsed run configuration validates or is refused: never a panic or a hang. Arguments with
//! a `/` are left out so that the fuzzer names no file outside the working directory.
#![no_main]
use edgelb::cli::Command;
use edgelb::config::Config;
use edgelb::usage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args: Vec<&str> = std::iter::once("edgelb").chain(text.split('\n')).collect();
    if args.iter().any(|a| a.contains('/')) {
        return;
    }
    // As the binary parses: explicit flags recorded, a refusal rendered as one line.
    let cli = match usage::parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let (text, _, _) = usage::report(&e);
            assert!(!text.is_empty());
            return;
        }
    };
    match &cli.command {
        Some(Command::Check(run)) => {
            let _ = Config::from_flags(&run.flags());
        }
        None => {
            let _ = Config::from_flags(&cli.run.flags());
        }
        _ => {}
    }
});
