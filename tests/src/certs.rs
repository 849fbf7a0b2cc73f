//! Real certificates made for each test with rcgen, written to a directory removed on drop.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, KeyPair, SanType};

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(crate::netns::unique("edgelb-test-"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// As [`TempDir::write`], readable by the owner only, as edgelb wants private keys.
    pub fn write_private(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.write(name, contents);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed ECDSA P-256 server certificate for `localhost` and the given addresses.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn self_signed(dir: &TempDir, name: &str, ips: &[IpAddr]) -> ServerCert {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string()]).expect("static DNS name is valid");
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let key = KeyPair::generate().expect("P-256 key generation");
    let cert = params
        .self_signed(&key)
        .expect("self-signing a fresh certificate");
    ServerCert {
        cert: dir.write(&format!("{name}.crt"), cert.pem()),
        key: dir.write_private(&format!("{name}.key"), key.serialize_pem()),
    }
}
