//! The values of flags and file keys, typed. Each is read and range-checked by one function
//! that clap uses for the flag (`FromStr`) and serde for the file key (`Deserialize`), so a
//! flag and its key accept the same words and refuse a value with the same message.
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum;
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, Visitor};

use crate::tls::sni::is_dns_label;

/// Why a value is refused: what is allowed, e.g. "must be a whole number of seconds, 1-300".
/// The flag or key and the value are added by whoever reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl From<String> for Refused {
    fn from(s: String) -> Self {
        Refused(s)
    }
}

impl From<&str> for Refused {
    fn from(s: &str) -> Self {
        Refused(s.to_string())
    }
}

/// A value written as text on the command line and in the file (or, for numbers, as a TOML
/// integer). `parse` returns the typed value or what is allowed.
pub trait TextValue: Sized {
    /// What the file must hold, for a value of the wrong TOML type ("expected a string").
    const EXPECTED: &'static str;
    /// Whether the file may write it as an integer.
    const NUMBER: bool = false;
    fn parse(text: &str) -> Result<Self, Refused>;
}

struct TextVisitor<T>(PhantomData<T>);

impl<T: TextValue> Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if T::NUMBER {
            T::parse(&v.to_string()).map_err(E::custom)
        } else {
            Err(E::invalid_type(de::Unexpected::Signed(v), &self))
        }
    }
}

/// `FromStr` for clap and `Deserialize` for the file, both through [`TextValue::parse`].
macro_rules! text_value {
    ($([$($generics:tt)*] $t:ty),* $(,)?) => {$(
        impl<$($generics)*> FromStr for $t {
            type Err = Refused;
            fn from_str(s: &str) -> Result<Self, Refused> {
                <Self as TextValue>::parse(s)
            }
        }
        impl<'de, $($generics)*> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(TextVisitor::<Self>(PhantomData))
            }
        }
    )*};
}

text_value!(
    [const MIN: u64, const MAX: u64] Seconds<MIN, MAX>,
    [const MIN: u32, const MAX: u32] Count<MIN, MAX>,
    [const MIN: usize, const MAX: usize] Text<MIN, MAX>,
    [] Tag,
    [] HcPath,
    [] HcDomain,
    [] Addr,
    [] Cidr,
    [] LbIp,
    [] StatusCode,
    [] RouterId,
    [] BgpPeer,
    [] AccessLogTarget,
);

/// `--access-log`: `stderr` (also what the bare flag and `access_log = true` mean) or a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogTarget(pub crate::access_log::Target);

impl TextValue for AccessLogTarget {
    const EXPECTED: &'static str = "true, false or a file path";
    fn parse(text: &str) -> Result<Self, Refused> {
        use crate::access_log::Target;
        match text {
            "stderr" | "-" => Ok(AccessLogTarget(Target::Stderr)),
            "" => Err("must be a file path, or stderr".into()),
            path if path.ends_with('/') => Err("must be a file path, not a directory".into()),
            path => Ok(AccessLogTarget(Target::File(path.into()))),
        }
    }
}

/// The file's `access_log`: true (stderr), false (off) or a path.
pub fn access_log<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AccessLogTarget>, D::Error> {
    bool_or_text(d, AccessLogTarget(crate::access_log::Target::Stderr))
}

/// A file key that is `true` (`on`, what the flag means without a value), `false` (off) or a
/// value written as the flag's.
fn bool_or_text<'de, D: Deserializer<'de>, T: TextValue>(
    d: D,
    on: T,
) -> Result<Option<T>, D::Error> {
    struct Either<T>(T);
    impl<T: TextValue> Visitor<'_> for Either<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::EXPECTED)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<T>, E> {
            Ok(v.then_some(self.0))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<T>, E> {
            T::parse(v).map(Some).map_err(E::custom)
        }
    }
    d.deserialize_any(Either(on))
}

/// A whole number of seconds within `MIN..=MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seconds<const MIN: u64, const MAX: u64>(pub Duration);

impl<const MIN: u64, const MAX: u64> TextValue for Seconds<MIN, MAX> {
    const EXPECTED: &'static str = "a whole number";
    const NUMBER: bool = true;
    fn parse(text: &str) -> Result<Self, Refused> {
        whole(text, MIN, MAX)
            .map(|s| Seconds(Duration::from_secs(s)))
            .ok_or_else(|| format!("must be a whole number of seconds, {MIN}-{MAX}").into())
    }
}

fn whole(text: &str, min: u64, max: u64) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
}

/// A whole number within `MIN..=MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count<const MIN: u32, const MAX: u32>(pub u32);

impl<const MIN: u32, const MAX: u32> TextValue for Count<MIN, MAX> {
    const EXPECTED: &'static str = "a whole number";
    const NUMBER: bool = true;
    fn parse(text: &str) -> Result<Self, Refused> {
        whole(text, MIN.into(), MAX.into())
            .map(|n| Count(n as u32))
            .ok_or_else(|| format!("must be a whole number, {MIN}-{MAX}").into())
    }
}

/// A port, 1-65535.
pub type Port = Count<1, 65535>;

/// Requests per second per client (`--rate-limit-requests`, a rule's `rate-limit`).
pub type RequestRate = Count<1, 1_000_000>;
/// Events per second per source, for the XDP program's limits.
pub type SourceRate = Count<1, 10_000_000>;

/// Text of `MIN..=MAX` characters without control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text<const MIN: usize, const MAX: usize>(pub String);

/// A name: 1-255 characters.
pub type Label = Text<1, 255>;

/// Free text: at most 255 characters.
pub type Description = Text<0, 255>;

impl<const MIN: usize, const MAX: usize> TextValue for Text<MIN, MAX> {
    const EXPECTED: &'static str = "a string";
    fn parse(text: &str) -> Result<Self, Refused> {
        let len = text.chars().count();
        if !(MIN..=MAX).contains(&len) {
            let allowed = if MIN == 0 {
                format!("at most {MAX}")
            } else {
                format!("{MIN}-{MAX}")
            };
            return Err(format!("must be {allowed} characters, got {len}").into());
        }
        if text.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Text(text.to_string()))
    }
}

/// `KEY=VALUE`: a key of 1-128 characters, a value of at most 255. Keys are unique per
/// listener, which the listener checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl TextValue for Tag {
    const EXPECTED: &'static str = "a string";
    fn parse(text: &str) -> Result<Self, Refused> {
        let (key, value) = text.split_once('=').ok_or("expected KEY=VALUE")?;
        let key_len = key.chars().count();
        if !(1..=128).contains(&key_len) {
            return Err(format!("key must be 1-128 characters, got {key_len}").into());
        }
        if value.chars().count() > 255 {
            return Err("value must be at most 255 characters".into());
        }
        if text.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Tag {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// `tag = ["k=v"]` as the flag, or `tag = { k = "v" }`.
pub fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Tag>, D::Error> {
    struct Tags;
    impl<'de> Visitor<'de> for Tags {
        type Value = Vec<Tag>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of \"KEY=VALUE\" or a table of keys and values")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<Tag>, E> {
            Tag::parse(v).map(|t| vec![t]).map_err(E::custom)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Tag>, A::Error> {
            let mut out = Vec::new();
            while let Some(t) = seq.next_element()? {
                out.push(t);
            }
            Ok(out)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<Tag>, A::Error> {
            let mut out = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                out.push(Tag::parse(&format!("{key}={value}")).map_err(de::Error::custom)?);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Tags)
}

/// `--hc-path`: 1-80 characters, starting with `/`, of letters, digits and `-/._~';@$*+,=!:()%&?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HcPath(pub String);

impl TextValue for HcPath {
    const EXPECTED: &'static str = "a string";
    fn parse(text: &str) -> Result<Self, Refused> {
        const ALLOWED: &str = "-/._~';@$*+,=!:()%&?";
        let ok = (1..=80).contains(&text.len())
            && text.starts_with('/')
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ALLOWED.contains(c));
        if !ok {
            return Err(format!(
                "must be 1-80 characters starting with /, of letters, digits and {ALLOWED}"
            )
            .into());
        }
        Ok(HcPath(text.to_string()))
    }
}

/// `--hc-domain`: a backend's private IP address, or a domain name of at least two labels of
/// letters, digits and hyphens (no hyphen first or last), 63 characters per label and 100 in
/// all; kept in lower case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HcDomain(pub String);

impl TextValue for HcDomain {
    const EXPECTED: &'static str = "a string";
    fn parse(text: &str) -> Result<Self, Refused> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            let private = match ip {
                IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
                IpAddr::V6(v6) => v6.is_unique_local() || v6.is_loopback(),
            };
            if !private {
                return Err(
                    "an IP address here must be a backend's private address (10/8, \
                            172.16/12, 192.168/16, fc00::/7 or loopback)"
                        .into(),
                );
            }
            return Ok(HcDomain(text.to_string()));
        }
        let labels: Vec<&str> = text.split('.').collect();
        if text.len() > 100 || labels.len() < 2 || !labels.iter().all(|l| is_dns_label(l)) {
            return Err(
                "expected a private IP, or a domain of at least two labels of letters, digits \
                 and hyphens (no hyphen first or last, at most 63 characters per label, 100 in all)"
                    .into(),
            );
        }
        Ok(HcDomain(text.to_ascii_lowercase()))
    }
}

/// `ADDR:PORT` with a port 1-65535; IPv6 addresses in brackets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr(pub SocketAddr);

impl TextValue for Addr {
    const EXPECTED: &'static str = "a string";
    fn parse(text: &str) -> Result<Self, Refused> {
        let addr: SocketAddr = text.parse().map_err(|_| {
            "expected ADDR:PORT, e.g. 10.0.0.1:443 or [fd00::1]:443, with port 1-65535".to_string()
        })?;
        if addr.port() == 0 {
            return Err("port must be 1-65535".into());
        }
        Ok(Addr(addr))
    }
}

const CIDR_HELP: &str = "expected an IPv4/IPv6 address or CIDR such as 10.0.0.0/8 or fd00::/64 \
                         (prefix length 0-32 for IPv4, 0-128 for IPv6)";

/// One CIDR or bare address (a host prefix). Host bits are cleared: `10.0.0.1/8` is
/// `10.0.0.0/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl TextValue for Cidr {
    const EXPECTED: &'static str = "a string";
    fn parse(text: &str) -> Result<Self, Refused> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        text.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| CIDR_HELP.into())
    }
}

/// `--transfer-lb-ip` with no value (the local address the client connected to) or an IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbIp {
    Local,
    Fixed(IpAddr),
}

impl TextValue for LbIp {
    const EXPECTED: &'static str = "true, false or an IP address";
    fn parse(text: &str) -> Result<Self, Refused> {
        if text.is_empty() {
            return Ok(LbIp::Local);
        }
        text.parse().map(LbIp::Fixed).map_err(|_| {
            "expected an IPv4 or IPv6 address, or no value for the local address".into()
        })
    }
}

/// `transfer_lb_ip = true` (the local address), `false` (off) or an IP.
pub fn lb_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LbIp>, D::Error> {
    bool_or_text(d, LbIp::Local)
}

/// An HTTP status code of a rule's action; the rule checks which codes its action takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusCode(pub u16);

impl TextValue for StatusCode {
    const EXPECTED: &'static str = "an HTTP status code";
    const NUMBER: bool = true;
    fn parse(text: &str) -> Result<Self, Refused> {
        text.parse()
            .map(StatusCode)
            .map_err(|_| "expected an HTTP status code".into())
    }
}

/// A BGP router id: an IPv4 address of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterId(pub std::net::Ipv4Addr);

impl TextValue for RouterId {
    const EXPECTED: &'static str = "a string";
    fn parse(text: &str) -> Result<Self, Refused> {
        text.parse()
            .map(RouterId)
            .map_err(|_| "expected an IPv4 address of this node, e.g. 10.2.1.2".into())
    }
}

/// A BGP peer: `ADDR,as=ASN` (ASN 1-4294967295).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BgpPeer {
    pub addr: IpAddr,
    pub asn: u32,
}

impl TextValue for BgpPeer {
    const EXPECTED: &'static str = "a string";
    fn parse(text: &str) -> Result<Self, Refused> {
        let shape = "expected ADDR,as=ASN, e.g. 10.2.1.1,as=65000";
        let (addr, asn) = text.split_once(",as=").ok_or(shape)?;
        let addr = addr.trim().parse().map_err(|_| shape)?;
        let asn = asn
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|a| *a > 0)
            .ok_or("the AS number must be 1-4294967295")?;
        Ok(BgpPeer { addr, asn })
    }
}

impl fmt::Display for BgpPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},as={}", self.addr, self.asn)
    }
}

/// A backend: `ADDR:PORT[,weight=N]` (weight 0-100, default 1), or in the file
/// `{ address = "ADDR:PORT", weight = N }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// 0-100; 0 receives no new requests.
    pub weight: u8,
}

impl FromStr for Backend {
    type Err = Refused;
    fn from_str(value: &str) -> Result<Self, Refused> {
        let mut parts = value.split(',');
        let addr = parts.next().unwrap_or_default();
        let addr: SocketAddr = addr.parse().map_err(|_| {
            let port = addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u64>().ok());
            match port {
                Some(p) if p > 65535 => format!("port {p} is out of range 1-65535"),
                _ => "expected ADDR:PORT[,weight=N], e.g. 10.0.1.5:8080,weight=3".to_string(),
            }
        })?;
        if addr.port() == 0 {
            return Err("port must be 1-65535".into());
        }
        let mut weight = 1u8;
        for opt in parts {
            match opt.split_once('=') {
                Some(("weight", w)) => {
                    weight = w
                        .parse::<u8>()
                        .ok()
                        .filter(|w| *w <= 100)
                        .ok_or_else(|| format!("weight {w:?} must be an integer 0-100"))?;
                }
                _ => {
                    return Err(format!(
                        "unknown option {opt:?}: the only option is weight=N (0-100)"
                    )
                    .into());
                }
            }
        }
        Ok(Backend { addr, weight })
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BackendVisitor;
        impl<'de> Visitor<'de> for BackendVisitor {
            type Value = Backend;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"ADDR:PORT[,weight=N]\" or { address, weight }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Backend, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Backend, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Table {
                    address: String,
                    weight: Option<Count<0, 100>>,
                }
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let text = match t.weight {
                    Some(w) => format!("{},weight={}", t.address, w.0),
                    None => t.address,
                };
                text.parse().map_err(de::Error::custom)
            }
        }
        d.deserialize_any(BackendVisitor)
    }
}

/// A certificate for a server name: `DOMAIN=CERT:KEY` on the command line (the paths split at
/// the last colon), or in the file that or `{ domain, cert, key }`, whose paths may hold
/// colons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniCert {
    pub domain: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl FromStr for SniCert {
    type Err = Refused;
    fn from_str(value: &str) -> Result<Self, Refused> {
        let shape =
            || Refused::from("expected DOMAIN=CERT:KEY, e.g. www.example.com=www.pem:www.key");
        let (domain, files) = value.split_once('=').ok_or_else(shape)?;
        let (cert, key) = files.rsplit_once(':').ok_or_else(shape)?;
        if domain.is_empty() || cert.is_empty() || key.is_empty() {
            return Err(shape());
        }
        Ok(SniCert {
            domain: domain.to_string(),
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        })
    }
}

impl fmt::Display for SniCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}:{}",
            self.domain,
            self.cert.display(),
            self.key.display()
        )
    }
}

impl<'de> Deserialize<'de> for SniCert {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SniVisitor;
        impl<'de> Visitor<'de> for SniVisitor {
            type Value = SniCert;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("DOMAIN=CERT:KEY or { domain, cert, key }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SniCert, E> {
                v.parse()
                    .map_err(|_| E::custom("expected DOMAIN=CERT:KEY or { domain, cert, key }"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<SniCert, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Table {
                    domain: String,
                    cert: PathBuf,
                    key: PathBuf,
                }
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(SniCert {
                    domain: t.domain,
                    cert: t.cert,
                    key: t.key,
                })
            }
        }
        d.deserialize_any(SniVisitor)
    }
}

/// A string or a list: `host = "a.com"` is `host = ["a.com"]`.
pub fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OneOrMany<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|t| vec![t])
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(t) = seq.next_element()? {
                out.push(t);
            }
            Ok(out)
        }
    }
    d.deserialize_any(OneOrMany(PhantomData))
}

/// A choice among a flag's words, with its aliases, in any case; `http2` also takes
/// `true`/`false`.
macro_rules! choice {
    ($($t:ty),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ChoiceVisitor::<Self>(PhantomData))
            }
        }
    )*};
}

struct ChoiceVisitor<T>(PhantomData<T>);

impl<T: ValueEnum> Visitor<'_> for ChoiceVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_str(v, true).map_err(|_| {
            let allowed: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|e| e.to_possible_value())
                .map(|p| p.get_name().to_string())
                .collect();
            E::custom(format!("expected one of: {}", allowed.join(", ")))
        })
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        // Only on/off has true and false among its words.
        T::from_str(if v { "true" } else { "false" }, true)
            .map_err(|_| E::invalid_type(de::Unexpected::Bool(v), &self))
    }
}

choice!(
    crate::acl::AclMode,
    super::FrontendProtocol,
    SslAuthArg,
    OnOff,
    BackendProtocolArg,
    crate::balance::Algorithm,
    super::CheckKind,
    StickyArg,
    super::XdpMode,
    BgpAnnounce,
    SynProtect,
    AcmeChallenge,
    crate::proxy_protocol::Version,
    BackendProxyProtocol,
    crate::access_log::Format,
);

/// `--acme-challenge`: how the ACME CA checks that this node answers for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AcmeChallenge {
    /// A TLS handshake with ALPN `acme-tls/1` on the https listener (RFC 8737).
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
    /// A GET of `/.well-known/acme-challenge/TOKEN` on an http listener (RFC 8555 8.3).
    #[value(name = "http-01")]
    Http01,
}

impl AcmeChallenge {
    pub fn name(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

/// `--syn-protect`: when the XDP program answers a listener's new connections with SYN cookies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SynProtect {
    Off,
    /// While SYNs arrive faster than `--syn-protect-threshold`.
    Auto,
    On,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SslAuthArg {
    #[value(name = "one-way")]
    OneWay,
    Mutual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    #[value(alias = "true")]
    On,
    #[value(alias = "false")]
    Off,
}

/// `--backend-proxy-protocol`: the PROXY protocol header backend connections start with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendProxyProtocol {
    Off,
    V1,
    V2,
}

impl BackendProxyProtocol {
    pub fn version(self) -> Option<crate::proxy_protocol::Version> {
        match self {
            BackendProxyProtocol::Off => None,
            BackendProxyProtocol::V1 => Some(crate::proxy_protocol::Version::V1),
            BackendProxyProtocol::V2 => Some(crate::proxy_protocol::Version::V2),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendProtocolArg {
    Http,
    Https,
}

/// When a listener's address is announced over BGP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BgpAnnounce {
    /// Serving (socket bound or XDP attached) and its group has a healthy backend.
    Healthy,
    /// Serving, whatever its backends' health.
    Serving,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StickyArg {
    Off,
    /// edgelb's own authenticated cookie names the backend.
    #[value(name = "lb-cookie")]
    LbCookie,
    /// The backend's own cookie (--cookie-name) pins the client to the backend that set it.
    #[value(name = "app-cookie")]
    AppCookie,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_accept_hosts_and_clear_host_bits() {
        assert_eq!(
            Cidr::parse("10.1.2.3").expect("host").0.to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            Cidr::parse("10.1.2.3/8").expect("net").0.to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            Cidr::parse("fd00::1/64").expect("v6").0.to_string(),
            "fd00::/64"
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("").is_err());
    }

    #[test]
    fn backends_take_weights_0_to_100() {
        let b = |s: &str| s.parse::<Backend>();
        assert_eq!(b("127.0.0.1:80").expect("plain").weight, 1);
        assert_eq!(b("127.0.0.1:80,weight=0").expect("zero").weight, 0);
        assert_eq!(b("[::1]:80,weight=100").expect("max").weight, 100);
        for bad in [
            "127.0.0.1:80,weight=101",
            "127.0.0.1:80,weight=-1",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:80,w=1",
        ] {
            assert!(b(bad).is_err(), "{bad}");
        }
        assert_eq!(
            b("127.0.0.1:70000").expect_err("port").to_string(),
            "port 70000 is out of range 1-65535"
        );
    }

    #[test]
    fn addresses_need_a_port() {
        assert!(Addr::parse("0.0.0.0:0").is_err());
        assert!(Addr::parse("localhost:443").is_err());
        assert_eq!(Addr::parse("[::]:443").expect("v6").0.port(), 443);
    }

    #[test]
    fn numbers_tags_and_domains_are_range_checked() {
        assert_eq!(
            Seconds::<0, 4000>::parse("0").expect("zero").0,
            Duration::ZERO
        );
        for bad in ["4001", "-1", "1.5", ""] {
            let e = Seconds::<0, 4000>::parse(bad).expect_err(bad);
            assert!(e.0.contains("0-4000"), "{e}");
        }
        assert!(Seconds::<1, 300>::parse("0").is_err());
        assert!(Tag::parse("team=").is_ok());
        assert!(Tag::parse("=x").is_err());
        assert!(Tag::parse(&format!("{}=x", "k".repeat(129))).is_err());
        assert!(HcDomain::parse("www.example.com").is_ok());
        assert!(HcDomain::parse("10.0.0.7").is_ok());
        for bad in [
            "8.8.8.8",
            "localhost",
            "-a.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(HcDomain::parse(bad).is_err(), "{bad}");
        }
        let sni: SniCert = "*.Example.com=/a/b:c.pem:/a/b.key".parse().expect("sni");
        assert_eq!(
            (sni.domain.as_str(), sni.cert.to_str(), sni.key.to_str()),
            ("*.Example.com", Some("/a/b:c.pem"), Some("/a/b.key"))
        );
        assert!("example.com=/a/b.pem".parse::<SniCert>().is_err());
        assert!(HcPath::parse("/healthz?full=1").is_ok());
        for bad in [
            "",
            "healthz",
            "/a b",
            "/<script>",
            &format!("/{}", "a".repeat(80)),
        ] {
            assert!(HcPath::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Count::<1, 10>::parse("10").expect("max").0, 10);
        assert!(Count::<1, 10>::parse("11").is_err());
    }

    #[test]
    fn keys_that_take_true_false_or_a_value() {
        #[derive(Debug, Deserialize)]
        struct File {
            #[serde(default, deserialize_with = "lb_ip")]
            transfer_lb_ip: Option<LbIp>,
            #[serde(default, deserialize_with = "access_log")]
            access_log: Option<AccessLogTarget>,
        }
        let read = |text: &str| toml::from_str::<File>(text).map_err(|e| e.message().to_string());
        let f = read("transfer_lb_ip = true\naccess_log = true").expect("true");
        assert_eq!(f.transfer_lb_ip, Some(LbIp::Local));
        assert_eq!(
            f.access_log,
            Some(AccessLogTarget(crate::access_log::Target::Stderr))
        );
        let f = read("transfer_lb_ip = false\naccess_log = false").expect("false");
        assert_eq!((f.transfer_lb_ip, f.access_log), (None, None));
        let f =
            read("transfer_lb_ip = \"fd00::5\"\naccess_log = \"/var/log/a.log\"").expect("values");
        assert_eq!(
            f.transfer_lb_ip,
            Some(LbIp::Fixed("fd00::5".parse().expect("ip")))
        );
        assert_eq!(
            f.access_log,
            Some(AccessLogTarget(crate::access_log::Target::File(
                "/var/log/a.log".into()
            )))
        );
        let e = read("transfer_lb_ip = \"nope\"").expect_err("not an IP");
        assert!(e.contains("expected an IPv4 or IPv6 address"), "{e}");
        let e = read("transfer_lb_ip = 5").expect_err("an integer");
        assert!(e.contains("expected true, false or an IP address"), "{e}");
        let e = read("access_log = 5").expect_err("an integer");
        assert!(e.contains("expected true, false or a file path"), "{e}");
    }

    #[test]
    fn labels_are_1_to_255_chars() {
        assert!(Label::parse("").is_err());
        assert!(Label::parse(&"x".repeat(256)).is_err());
        assert!(Label::parse("a\nb").is_err());
        assert!(Label::parse(&"é".repeat(255)).is_ok());
    }
}
