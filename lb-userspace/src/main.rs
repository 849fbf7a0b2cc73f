fn main() -> std::process::ExitCode {
    edgelb::entry::main()
}
