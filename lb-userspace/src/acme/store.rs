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
        read_pair(&self.pair_path(names), names)
    }

    /// Saves a newly issued key and chain for `names` once they are known to be usable (the
    /// key the chain's, every name covered): until then the pair in the directory, which
    /// this node's restart and every other node read, stays as it was.
    pub fn install(
        &self,
        names: &[String],
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Stored, String> {
        let path = self.pair_path(names);
        let candidate = path.with_extension("new");
        self.write(&candidate, &pair(chain_pem, key_pem))
            .map_err(|e| format!("saving the certificate: {e}"))?;
        let checked = read_pair(&candidate, names).and_then(|stored| {
            stored.ok_or_else(|| "the issued certificate does not name every domain".to_string())
        });
        let installed = checked.and_then(|stored| {
            std::fs::rename(&candidate, &path)
                .map(|()| stored)
                .map_err(|e| format!("saving the certificate: {e}"))
        });
        if installed.is_err() {
            let _ = std::fs::remove_file(&candidate);
        }
        installed
    }

    /// Writes a key and certificate chain for `names` as they are (tests: a pair some node
    /// saved).
    #[cfg(test)]
    pub fn save(&self, names: &[String], chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
        self.write(&self.pair_path(names), &pair(chain_pem, key_pem))
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

    /// The account registered with `directory` before, if any. A file that is there but
    /// cannot be read or understood is an error, not "no account": registering a new one
    /// would overwrite it, and with it the account's history at the CA (rate limits, an
    /// External Account Binding the CA will not give twice).
    pub fn account(
        &self,
        directory: &str,
    ) -> Result<Option<instant_acme::AccountCredentials>, String> {
        let path = self.account_path(directory);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("account file {}: {e}", path.display())),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            format!(
                "account file {}: not an account this edgelb can read ({e}); kept as it is: move it away for a new account to be registered",
                path.display()
            )
        })
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

/// The certificate in the key-and-chain file `cert` if it covers every one of `names`.
fn read_pair(cert: &Path, names: &[String]) -> Result<Option<Stored>, String> {
    if !cert.exists() {
        return Ok(None);
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    // The PEM readers take the certificates and the key from the one file.
    let certified = crate::tls::certs::load_certified_key(cert, cert, &provider)
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

/// The file's text: the key, then the chain.
fn pair(chain_pem: &str, key_pem: &str) -> Vec<u8> {
    let mut pair = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
    pair.push_str(key_pem);
    if !key_pem.ends_with('\n') {
        pair.push('\n');
    }
    pair.push_str(chain_pem);
    pair.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::Store;

    #[test]
    fn an_unreadable_account_file_is_an_error_and_stays() {
        let dir = std::env::temp_dir().join(format!("acme-account-{}", std::process::id()));
        let store = Store::open(&dir, "https://ca.test/dir").expect("store");
        assert_eq!(
            store.account("https://ca.test/dir").map(|a| a.is_some()),
            Ok(false)
        );
        let path = store.account_path("https://ca.test/dir");
        std::fs::write(&path, "{\"id\": \"https://ca.test/acct/1\", \"key_pk").expect("write");
        let e = store
            .account("https://ca.test/dir")
            .err()
            .expect("a cut account file is an error");
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            e.contains(&path.display().to_string()) && e.contains("move it away"),
            "{e}"
        );
        assert!(kept.ends_with("key_pk"), "the file was touched: {kept}");
    }

    /// A chain that does not name the set's domains (or whose key is not the chain's) is
    /// refused, and the pair saved before stays in the directory for restarts and other
    /// nodes.
    #[test]
    fn an_unusable_issued_pair_does_not_replace_the_stored_one() {
        let dir = std::env::temp_dir().join(format!("acme-install-{}", std::process::id()));
        let store = Store::open(&dir, "https://ca.test/dir").expect("store");
        let names = vec!["a.test".to_string()];
        let cert = |names: &[&str]| {
            let key = rcgen::KeyPair::generate().expect("key");
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let cert = rcgen::CertificateParams::new(names)
                .and_then(|p| p.self_signed(&key))
                .expect("cert");
            (cert.pem(), key.serialize_pem())
        };
        let (good_chain, good_key) = cert(&["a.test"]);
        let stored = store
            .install(&names, &good_chain, &good_key)
            .expect("install");
        let before = std::fs::read(store.pair_path(&names)).expect("saved");

        let (other_chain, other_key) = cert(&["b.test"]);
        let wrong_name = store.install(&names, &other_chain, &other_key);
        let wrong_key = store.install(&names, &good_chain, &other_key);
        let after = std::fs::read(store.pair_path(&names)).expect("still there");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".new") || n.ends_with(".tmp"))
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            wrong_name.err().as_deref(),
            Some("the issued certificate does not name every domain")
        );
        assert!(wrong_key.is_err());
        assert!(after == before, "a refused pair replaced the stored one");
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(stored.not_after > stored.not_before);
    }
}
