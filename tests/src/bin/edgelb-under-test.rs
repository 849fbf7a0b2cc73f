//! The `edgelb` binary, built as part of this crate so that integration tests can run it
//! (`CARGO_BIN_EXE_edgelb-under-test`) without a separate build step. Same entry point.
fn main() -> std::process::ExitCode {
    edgelb::entry::main()
}
