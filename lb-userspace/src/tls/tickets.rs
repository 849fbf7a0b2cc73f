//! TLS session tickets: the keys that encrypt them, so that a session resumes on any node
//! given the same key file, and across reloads.
//!
//! A ticket is what a server hands a client to resume its session later without a full
//! handshake: the session's secrets, encrypted with a key only servers hold. rustls asks a
//! [`ProducesTickets`] to seal and open them; this module has two:
//! - [`TicketKeys`], keys read from `--tls-ticket-key-file` (or one random key): the first
//!   seals new tickets, every key opens them, so operators rotate keys without breaking
//!   resumption;
//! - [`ScopedTickets`], one listener's view of the node's keys: a ticket opens only on a
//!   listener that authenticates clients the same way as the one that issued it.
//!
//! A ticket is `key id (8) | issued at (8, Unix seconds) | nonce (12) | sealed session`,
//! sealed with AES-256-GCM-SIV, the first two fields as associated data. GCM-SIV because a
//! file's key may seal tickets on a whole fleet for days: random 96-bit nonces eventually
//! repeat, which with plain GCM would expose the key, and with GCM-SIV only shows that two
//! identical sessions are identical. The key id (a hash of the key) lets a ticket find its
//! key without trying each one.
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::{digest, rand};
use rustls::crypto::GetRandomFailed;
use rustls::server::ProducesTickets;
use rustls::ticketer::TicketRotator;
use rustls_pki_types::UnixTime;

use super::certs::FileCheckError;

/// How long a ticket resumes a session: rustls's own default. Opening refuses older tickets,
/// whatever keys the file still holds.
pub const TICKET_LIFETIME_SECS: u32 = 12 * 60 * 60;
/// Without a key file, the node's random key is replaced this often (the previous one still
/// opens tickets until the next change), so that a key read from the process's memory opens
/// the tickets of 12 hours at most: rustls's own ticketer does the same.
const GENERATED_KEY_ROTATION_SECS: u32 = TICKET_LIFETIME_SECS / 2;

const KEY_LEN: usize = 32;
const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = KEY_ID_LEN + 8;
/// A key file is a few lines; a larger one is the wrong file (or /dev/urandom, which would
/// never end).
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;
/// What the errors call a key.
pub const KEY_FORMAT: &str = "64 hexadecimal characters (32 random bytes: `openssl rand -hex 32`)";

/// Why a ticket key file (or a random key) cannot be used. Never carries key material: a bad
/// line is named by its number and its length, not its text.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error(transparent)]
    File(#[from] FileCheckError),
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("larger than {MAX_KEY_FILE_LEN} bytes; is it the right file?")]
    TooLong,
    #[error("holds no key: write one key per line, {KEY_FORMAT}")]
    NoKey,
    #[error(
        "line {line}: not a key ({found}); a key is {KEY_FORMAT}, one per line, `#` starts a comment"
    )]
    BadLine { line: usize, found: BadKey },
    #[error("line {line} repeats the key of line {first}; give each key once")]
    Repeated { line: usize, first: usize },
    #[error("the system random generator failed")]
    Random,
    #[error("the AES-256-GCM-SIV key could not be made")]
    Cipher,
}

/// What is wrong with a line that should be a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadKey {
    /// Its length in characters (64 wanted).
    Length(usize),
    NotHex,
}

impl fmt::Display for BadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadKey::Length(n) => write!(f, "{n} characters"),
            BadKey::NotHex => f.write_str("a character that is not hexadecimal"),
        }
    }
}

struct TicketKey {
    id: [u8; KEY_ID_LEN],
    aead: RandomizedNonceKey,
}

impl TicketKey {
    fn new(secret: &[u8; KEY_LEN]) -> Result<Self, TicketKeyError> {
        // Every node derives the same id from the same key; the hash reveals nothing of it.
        let mut hashed = Vec::with_capacity(32 + KEY_LEN);
        hashed.extend_from_slice(b"edgelb TLS ticket key id, v1\0\0\0\0");
        hashed.extend_from_slice(secret);
        let digest = digest::digest(&digest::SHA256, &hashed);
        hashed.fill(0);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        let aead = RandomizedNonceKey::new(&AES_256_GCM_SIV, secret)
            .map_err(|_| TicketKeyError::Cipher)?;
        Ok(TicketKey { id, aead })
    }
}

/// The keys that seal and open tickets: the first seals, all open.
pub struct TicketKeys {
    keys: Vec<TicketKey>,
}

impl TicketKeys {
    /// Reads a key file: one key per line, [`KEY_FORMAT`]; blank lines and `#` comments are
    /// ignored. The file's permissions are the configuration's to check (see
    /// `--allow-readable-keys`).
    pub fn from_file(path: &Path) -> Result<Self, TicketKeyError> {
        super::certs::check_regular(path)?;
        let file = std::fs::File::open(path).map_err(TicketKeyError::Read)?;
        let mut text = Vec::new();
        let read = file
            .take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut text)
            .map_err(TicketKeyError::Read);
        let keys = match read {
            Ok(_) if text.len() as u64 > MAX_KEY_FILE_LEN => Err(TicketKeyError::TooLong),
            Ok(_) => Self::parse(&text),
            Err(e) => Err(e),
        };
        text.fill(0);
        keys
    }

    /// Reads the text of a key file (see [`TicketKeys::from_file`]).
    pub fn parse(text: &[u8]) -> Result<Self, TicketKeyError> {
        // Each key with its line, to name both lines of a repeated key.
        let mut keys: Vec<(usize, TicketKey)> = Vec::new();
        for (n, line) in text.split(|b| *b == b'\n').enumerate() {
            let line = line.split(|b| *b == b'#').next().unwrap_or_default();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let mut secret = [0u8; KEY_LEN];
            let key = decode_hex(line, &mut secret)
                .map_err(|found| TicketKeyError::BadLine { line: n + 1, found })
                .and_then(|()| TicketKey::new(&secret));
            secret.fill(0);
            let key = key?;
            if let Some((first, _)) = keys.iter().find(|(_, k)| k.id == key.id) {
                return Err(TicketKeyError::Repeated {
                    line: n + 1,
                    first: *first,
                });
            }
            keys.push((n + 1, key));
        }
        if keys.is_empty() {
            return Err(TicketKeyError::NoKey);
        }
        Ok(TicketKeys {
            keys: keys.into_iter().map(|(_, k)| k).collect(),
        })
    }

    /// One random key, for a node whose tickets no other node opens.
    pub fn generate() -> Result<Self, TicketKeyError> {
        let mut secret = [0u8; KEY_LEN];
        let key = rand::fill(&mut secret)
            .map_err(|_| TicketKeyError::Random)
            .and_then(|()| TicketKey::new(&secret));
        secret.fill(0);
        Ok(TicketKeys { keys: vec![key?] })
    }

    /// How many keys open tickets.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a key set has at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn seal(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut header = [0u8; HEADER_LEN];
        header[..KEY_ID_LEN].copy_from_slice(&key.id);
        header[KEY_ID_LEN..].copy_from_slice(&now.to_be_bytes());
        let mut sealed = plain.to_vec();
        let nonce = key
            .aead
            .seal_in_place_append_tag(Aad::from(&header), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&header);
        ticket.extend_from_slice(nonce.as_ref());
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// `ticket` comes from the network: any bytes at all give the session or None.
    fn open(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        let (header, rest) = ticket.split_first_chunk::<HEADER_LEN>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let (id, issued) = header.split_at(KEY_ID_LEN);
        let key = self.keys.iter().find(|k| k.id == id)?;
        let issued = u64::from_be_bytes(issued.try_into().ok()?);
        // Both ways: a node whose clock runs ahead must not make tickets that live longer.
        if now.abs_diff(issued) > u64::from(TICKET_LIFETIME_SECS) {
            return None;
        }
        let mut plain = sealed.to_vec();
        let len = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(header),
                &mut plain,
            )
            .ok()?
            .len();
        plain.truncate(len);
        Some(plain)
    }
}

fn decode_hex(text: &[u8], out: &mut [u8; KEY_LEN]) -> Result<(), BadKey> {
    if text.len() != 2 * KEY_LEN {
        // Characters, not bytes, as an editor counts them.
        let chars = String::from_utf8_lossy(text).chars().count();
        return Err(BadKey::Length(chars));
    }
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16).ok_or(BadKey::NotHex);
        // Both digits are below 16, so the byte cannot overflow.
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Ok(())
}

fn now() -> u64 {
    UnixTime::now().as_secs()
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, now())
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.open(ticket, now())
    }
}

impl fmt::Debug for TicketKeys {
    // The number of keys only: key material never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The keys of a node without a key file: random, made at start and kept by the running node
/// across reloads, replaced every 6 hours (the previous key still opens tickets).
pub fn generated() -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    let rotator = TicketRotator::new(GENERATED_KEY_ROTATION_SECS, || {
        TicketKeys::generate()
            .map(|k| Box::new(k) as Box<dyn ProducesTickets>)
            .map_err(|_| GetRandomFailed)
    })?;
    Ok(Arc::new(rotator))
}

/// One listener's tickets, sealed with the node's keys and bound to how the listener
/// authenticates clients.
///
/// rustls resumes a session without asking for a client certificate again. With one set of
/// keys for the whole node (and fleet), a ticket from a listener without mutual TLS would
/// otherwise resume on a listener that demands client certificates for the same server
/// name, and a ticket from before a reload that changed `--client-ca` would skip the new CA.
/// So the listener's client-authentication scope is sealed into each ticket, and a ticket
/// opens only where the scope is the same.
#[derive(Debug)]
pub struct ScopedTickets {
    keys: Arc<dyn ProducesTickets>,
    scope: [u8; SCOPE_LEN],
}

const SCOPE_LEN: usize = 32;

impl ScopedTickets {
    /// `client_ca`: the trust anchors client certificates must chain to (None: no client
    /// authentication).
    pub fn new(keys: Arc<dyn ProducesTickets>, client_ca: Option<&rustls::RootCertStore>) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"edgelb ticket scope, v1");
        // Length-prefixed, so no two different lists of anchors hash alike.
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        match client_ca {
            None => field(b"no client authentication"),
            Some(roots) => {
                field(b"client certificates from");
                for anchor in &roots.roots {
                    field(&anchor.subject);
                    field(&anchor.subject_public_key_info);
                    field(anchor.name_constraints.as_deref().unwrap_or_default());
                }
            }
        }
        let mut scope = [0u8; SCOPE_LEN];
        scope.copy_from_slice(ctx.finish().as_ref());
        ScopedTickets { keys, scope }
    }
}

impl ProducesTickets for ScopedTickets {
    fn enabled(&self) -> bool {
        self.keys.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.keys.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut scoped = Vec::with_capacity(SCOPE_LEN + plain.len());
        scoped.extend_from_slice(&self.scope);
        scoped.extend_from_slice(plain);
        self.keys.encrypt(&scoped)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let mut plain = self.keys.decrypt(ticket)?;
        // Authenticated already: the scope is compared, not guessed at.
        if plain.get(..SCOPE_LEN)? != self.scope {
            return None;
        }
        plain.drain(..SCOPE_LEN);
        Some(plain)
    }
}

/// Where the keys of `--tls-ticket-key-file` came from, for `check` and messages.
#[derive(Clone, Debug)]
pub struct TicketKeyFile {
    pub path: PathBuf,
    pub keys: Arc<TicketKeys>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "F0E1D2C3B4A5968778695A4B3C2D1E0F00112233445566778899AABBCCDDEEFF";
    const NOW: u64 = 1_800_000_000;

    fn keys(text: &str) -> TicketKeys {
        TicketKeys::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = keys(K1);
        let ticket = old.seal(b"session state", NOW).expect("sealed");
        assert_eq!(
            old.open(&ticket, NOW).as_deref(),
            Some(&b"session state"[..])
        );

        let rotated = keys(&format!("# new key first\n{K2}\n\n  {K1}  # the old one\n"));
        assert_eq!(rotated.len(), 2);
        assert_eq!(
            rotated.open(&ticket, NOW + 60).as_deref(),
            Some(&b"session state"[..]),
            "a ticket of the second key opens"
        );
        let fresh = rotated.seal(b"new", NOW).expect("sealed");
        assert_eq!(
            fresh[..KEY_ID_LEN],
            keys(K2).keys[0].id,
            "the first key seals"
        );
        assert_eq!(keys(K2).open(&fresh, NOW).as_deref(), Some(&b"new"[..]));
        assert_eq!(
            old.open(&fresh, NOW),
            None,
            "a key not in the set does not open"
        );
        assert_eq!(keys(K2).open(&ticket, NOW), None, "a removed key's tickets");
    }

    #[test]
    fn nonces_are_random_and_tickets_expire_after_their_lifetime() {
        let k = keys(K1);
        let (a, b) = (k.seal(b"x", NOW), k.seal(b"x", NOW));
        assert_ne!(a, b, "same session, same second: different nonces");
        let a = a.expect("sealed");
        let lifetime = u64::from(TICKET_LIFETIME_SECS);
        assert!(k.open(&a, NOW + lifetime).is_some());
        assert_eq!(k.open(&a, NOW + lifetime + 1), None, "expired");
        assert_eq!(k.open(&a, NOW - lifetime - 1), None, "from the future");
    }

    #[test]
    fn tampered_and_garbage_tickets_open_to_none_without_panicking() {
        let k = keys(K1);
        let ticket = k.seal(b"session state", NOW).expect("sealed");
        for i in 0..ticket.len() {
            let mut t = ticket.clone();
            t[i] ^= 0x01;
            assert_eq!(k.open(&t, NOW), None, "byte {i} flipped");
        }
        for len in 0..ticket.len() {
            assert_eq!(k.open(&ticket[..len], NOW), None, "cut to {len} bytes");
        }
        let mut longer = ticket.clone();
        longer.push(0);
        assert_eq!(k.open(&longer, NOW), None, "one byte more");
        // The right key id with anything after it, of every length up to a real ticket's.
        let mut noise = [0u8; 256];
        rand::fill(&mut noise).expect("random");
        for len in 0..noise.len() {
            let mut t = ticket[..HEADER_LEN.min(len)].to_vec();
            t.extend_from_slice(&noise[..len.saturating_sub(HEADER_LEN)]);
            assert_eq!(k.open(&t, NOW), None);
            assert_eq!(k.open(&noise[..len], NOW), None);
            assert_eq!(k.decrypt(&noise[..len]), None);
        }
    }

    #[test]
    fn a_ticket_opens_only_on_a_listener_that_authenticates_clients_alike() {
        let node: Arc<dyn ProducesTickets> = Arc::new(keys(K1));
        let open = ScopedTickets::new(node.clone(), None);
        let mut roots = rustls::RootCertStore::empty();
        roots.roots.push(rustls_pki_types::TrustAnchor {
            subject: b"CN=ca".as_slice().into(),
            subject_public_key_info: b"spki".as_slice().into(),
            name_constraints: None,
        });
        let mutual = ScopedTickets::new(node.clone(), Some(&roots));
        let ticket = open.encrypt(b"state").expect("sealed");
        assert_eq!(open.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        assert_eq!(
            ScopedTickets::new(node.clone(), None)
                .decrypt(&ticket)
                .as_deref(),
            Some(&b"state"[..]),
            "another listener without client authentication"
        );
        assert_eq!(mutual.decrypt(&ticket), None, "to a mutual TLS listener");
        assert_eq!(
            open.decrypt(&mutual.encrypt(b"state").expect("sealed")),
            None
        );
        assert_eq!(node.decrypt(&ticket).map(|p| p.len()), Some(SCOPE_LEN + 5));
    }

    #[test]
    fn bad_key_files_are_refused_by_line_without_showing_the_key() {
        let secretish = "abcdef0123456789";
        let cases: [(String, &str); 6] = [
            (
                String::new(),
                "holds no key: write one key per line, 64 hexadecimal",
            ),
            ("# only a comment\n\n".into(), "holds no key"),
            (
                format!("{K1}\n{secretish}\n"),
                "line 2: not a key (16 characters); a key is 64 hexadecimal characters",
            ),
            (
                format!("{}zz\n", &K1[..62]),
                "line 1: not a key (a character that is not hexadecimal)",
            ),
            (
                format!("{K1}\n# again\n{}\n", K1.to_uppercase()),
                "line 3 repeats the key of line 1",
            ),
            (format!("{K1}é\n"), "line 1: not a key (65 characters)"),
        ];
        for (text, expected) in &cases {
            let e = TicketKeys::parse(text.as_bytes()).expect_err(text);
            let said = e.to_string();
            assert!(said.starts_with(expected), "{text:?}: {said}");
            assert!(
                !said.contains(secretish) && !said.contains(&K1[..16]),
                "{said}"
            );
        }
        assert_eq!(format!("{:?}", keys(K1)), "TicketKeys { keys: 1 }");
    }

    #[test]
    fn generated_keys_seal_and_open_and_differ_per_node() {
        let a = generated().expect("random keys");
        let b = generated().expect("random keys");
        let ticket = a.encrypt(b"state").expect("sealed");
        assert_eq!(a.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        assert_eq!(b.decrypt(&ticket), None);
        assert_eq!(a.lifetime(), TICKET_LIFETIME_SECS);
    }
}
