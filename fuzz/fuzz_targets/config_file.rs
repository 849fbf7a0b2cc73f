//! `--config FILE`: any file content is a configuration or an error naming the key: never a
//! panic or a hang. The content is written to a private scratch directory; relative paths in
//! it resolve there.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use edgelb::config::spec::{GroupSpec, ListenerSpec, NodeSpec};
use edgelb::config::{Config, Flags};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("edgelb-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let file = scratch().join("edgelb.toml");
    if std::fs::write(&file, data).is_err() {
        return;
    }
    let flags = Flags {
        file: Some(&file),
        etcd: None,
        listener: &ListenerSpec::default(),
        group: &GroupSpec::default(),
        node: &NodeSpec::default(),
        given: &[],
    };
    if let Ok(config) = Config::from_flags(&flags) {
        // What `check` prints must be printable.
        let _ = config.to_string();
    }
});
