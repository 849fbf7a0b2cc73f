// mimalloc: the proxy allocates per request (headers, bodies, futures) on every core, where
// glibc's allocator showed up as ~6% of CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    edgelb::entry::main()
}
