//! The state directory: the account's credentials, each certificate and its key (0600), the
//! answers to pending validations, and the lock that lets one node order at a time.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;

/// The first `bytes` bytes of SHA-256 of `data`, in hex: file names that follow what they
/// stand for.
fn short_hash(data: &[u8], bytes: usize) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref()[..bytes]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A certificate read from the directory.
pub struct Stored {
    pub key: Arc<CertifiedKey>,
    pub not_before: i64,
    pub not_after: i64,
}

pub struct Store {
    dir: PathBuf,
    /// The CA's directory URL: certificates from one CA are not taken for another's.
    directory: String,
}

/// Held while this node orders; others find the lock taken and wait for the files.
pub struct Lock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl Store {
    /// Creates the directory (0700) and its challenge directories where missing; the
    /// certificates are those of the CA at `directory`.
    pub fn open(dir: &Path, directory: &str) -> std::io::Result<Store> {
        for sub in ["", "challenges/tls-alpn-01", "challenges/http-01"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            directory: directory.to_string(),
        })
    }

    /// The file name of a set's key and certificate: its first name alphabetically, and a hash
    /// of the CA and all the names (a set that changes, or moves to another CA, gets a new file
    /// rather than a certificate missing a name or from the CA it left).
    fn stem(&self, names: &[String]) -> String {
        let mut sorted = names.to_vec();
        sorted.sort();
        sorted.dedup();
        let hash = short_hash(
            format!("{}\n{}", self.directory, sorted.join(",")).as_bytes(),
            4,
        );
        format!("{}-{hash}", sorted.first().map_or("none", String::as_str))
    }

    /// The set's key and certificate chain, in one file so that one rename replaces both: a
    /// reader, or a node restarting after a crash, never finds a key beside another
    /// certificate.
    pub fn pair_path(&self, names: &[String]) -> PathBuf {
        self.dir.join(format!("{}.pem", self.stem(names)))
    }

    /// The certificate for `names` if the directory holds one that covers them all.
    pub fn load(&self, names: &[String]) -> Result<Option<Stored>, String> {
        let cert = self.pair_path(names);
        if !cert.exists() {
            return Ok(None);
        }
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        // The PEM readers take the certificates and the key from the one file.
        let certified = crate::tls::certs::load_certified_key(&cert, &cert, &provider)
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        let leaf = certified
            .cert
            .first()
            .ok_or_else(|| format!("{}: no certificate", cert.display()))?;
        let (not_before, not_after) = crate::tls::certs::validity(leaf)
            .ok_or_else(|| format!("{}: unreadable validity", cert.display()))?;
        let covered = crate::tls::certs::dns_names(leaf);
        if names.iter().any(|n| !covered.contains(n)) {
            return Ok(None);
        }
        Ok(Some(Stored {
            key: certified,
            not_before,
            not_after,
        }))
    }

    /// Writes a new key and certificate chain for `names`: to a temporary file (0600), then
    /// renamed over the old, so that a reader never sees half of the pair.
    pub fn save(&self, names: &[String], chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
        let mut pair = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
        pair.push_str(key_pem);
        if !key_pem.ends_with('\n') {
            pair.push('\n');
        }
        pair.push_str(chain_pem);
        self.write(&self.pair_path(names), pair.as_bytes())
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            // A full disk leaves no half-written key behind.
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    fn account_path(&self, directory: &str) -> PathBuf {
        let hash = short_hash(directory.as_bytes(), 6);
        self.dir.join(format!("account-{hash}.json"))
    }

    /// The account registered with `directory` before, if any.
    pub fn account(&self, directory: &str) -> Option<instant_acme::AccountCredentials> {
        let text = std::fs::read_to_string(self.account_path(directory)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save_account(
        &self,
        directory: &str,
        credentials: &instant_acme::AccountCredentials,
    ) -> std::io::Result<()> {
        let text = serde_json::to_string(credentials).map_err(std::io::Error::other)?;
        self.write(&self.account_path(directory), text.as_bytes())
    }

    /// The ordering lock, or None while another node (or process) holds it.
    pub fn try_lock(&self) -> std::io::Result<Option<Lock>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.dir.join("lock"))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(Lock(lock))),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e.into()),
        }
    }

    /// Publishes the answer to a pending validation (see [`super::challenge`]).
    pub fn put_challenge(&self, kind: &str, key: &str, value: &str) -> std::io::Result<PathBuf> {
        let path = super::challenge::path(&self.dir, kind, key).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unusable challenge key {key:?}"),
            )
        })?;
        self.write(&path, value.as_bytes())?;
        Ok(path)
    }
}
