//! Sticky-session settings of a group: the mode, the cookie and the key. The sessions of
//! app-cookie mode and the tokens of lb-cookie mode are `proxy::sticky`'s, at run time.
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::{hmac, rand};

/// Shorter keys would make the HMAC easier to brute-force than the 256 bits it can offer.
const MIN_KEY_LEN: usize = 32;
/// Refusing larger files catches a flag pointing at the wrong file (or at /dev/urandom, which
/// would never finish reading).
const MAX_KEY_FILE_LEN: u64 = 4096;
const GENERATED_KEY_LEN: usize = 32;

/// The key that authenticates lb-cookies.
///
/// From a file, the key is the file's bytes exactly as stored, a trailing newline included:
/// nodes meant to honour each other's cookies need byte-identical files.
#[derive(Clone)]
pub struct StickyKey(
    // Boxed because the HMAC state dwarfs the other variant of `Stickiness`.
    Box<hmac::Key>,
);

impl StickyKey {
    /// The HMAC key itself, for sealing and opening tokens.
    pub(crate) fn hmac(&self) -> &hmac::Key {
        &self.0
    }
}

/// Why no lb-cookie key could be had. The file's errors name the file; an OS error keeps its
/// errno as the source.
#[derive(Debug, thiserror::Error)]
pub enum StickyKeyError {
    #[error("the system random generator failed")]
    Random,
    #[error("{}: {source}", path.display())]
    NotAFile {
        path: PathBuf,
        #[source]
        source: crate::tls::certs::FileCheckError,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds {len} bytes; a key needs at least {MIN_KEY_LEN}", path.display())]
    TooShort { path: PathBuf, len: usize },
    #[error("{} is longer than {MAX_KEY_FILE_LEN} bytes; is it the right file?", path.display())]
    TooLong { path: PathBuf },
}

impl StickyKey {
    /// A random key, for a node that shares cookies with no other: its cookies stop being
    /// honoured when it restarts.
    pub fn generate() -> Result<Self, StickyKeyError> {
        let mut bytes = [0u8; GENERATED_KEY_LEN];
        rand::fill(&mut bytes).map_err(|_| StickyKeyError::Random)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        bytes.fill(0);
        Ok(StickyKey(Box::new(key)))
    }

    /// A key file holds at least 32 bytes of anything (at most 4096); all of its bytes are the
    /// key.
    pub fn from_file(path: &Path) -> Result<Self, StickyKeyError> {
        let owned = || path.to_path_buf();
        crate::tls::certs::check_regular(path).map_err(|source| StickyKeyError::NotAFile {
            path: owned(),
            source,
        })?;
        let read = |source| StickyKeyError::Read {
            path: owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        let too_long = bytes.len() as u64 > MAX_KEY_FILE_LEN;
        let len = bytes.len();
        let result = if len < MIN_KEY_LEN {
            Err(StickyKeyError::TooShort { path: owned(), len })
        } else if too_long {
            Err(StickyKeyError::TooLong { path: owned() })
        } else {
            Ok(StickyKey(Box::new(hmac::Key::new(
                hmac::HMAC_SHA256,
                &bytes,
            ))))
        };
        bytes.fill(0);
        result
    }
}

impl fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StickyKey(<redacted>)")
    }
}

/// How a backend group keeps clients on one backend: settings only. The sessions of
/// app-cookie mode are runtime state, in `proxy::sticky::Sticky`.
#[derive(Debug)]
pub enum Stickiness {
    /// `key`: from `--sticky-key-file`; None for the node's own random key, made at start
    /// and kept across reloads (by the node, as its TLS ticket keys are).
    LbCookie {
        key: Option<StickyKey>,
        duration: Duration,
    },
    AppCookie {
        name: String,
        duration: Duration,
    },
}

/// A cookie name that is not an RFC 6265 token.
#[derive(Debug, thiserror::Error)]
pub enum CookieNameError {
    #[error("a cookie name cannot be empty")]
    Empty,
    #[error(
        "{0:?} is not a valid cookie name: use ASCII letters, digits and \
         !#$%&'*+-.^_`|~ only (no spaces, '=', ';' or other separators)"
    )]
    NotAToken(String),
}

/// Cookie names must be RFC 6265 tokens (RFC 9110 `tchar`s).
pub fn validate_cookie_name(name: &str) -> Result<(), CookieNameError> {
    if name.is_empty() {
        return Err(CookieNameError::Empty);
    }
    if name.bytes().all(is_tchar) {
        Ok(())
    } else {
        Err(CookieNameError::NotAToken(name.to_string()))
    }
}

/// A byte of an HTTP token (RFC 9110 `tchar`), as cookie names are.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
