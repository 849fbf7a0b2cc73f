//! A test certificate authority: real CA and leaf certificates made with rcgen, written as
//! PEM files (the same files an operator would give edgelb).
use std::net::IpAddr;
use std::path::PathBuf;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::certs::TempDir;

pub struct Ca {
    pub cert_pem: PathBuf,
    cert: Certificate,
    key: KeyPair,
}

/// A certificate and key on disk, and the certificate's DER for comparing what a server sent.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(dir: &TempDir, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names is valid");
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("P-256 key generation");
        let cert = params.self_signed(&key).expect("self-signing the CA");
        let cert_pem = dir.write(&format!("{name}-ca.pem"), cert.pem());
        Ca {
            cert_pem,
            cert,
            key,
        }
    }

    /// A server certificate for DNS `names` and `ips`, subject CN = the first name.
    pub fn server(&self, dir: &TempDir, file: &str, names: &[&str], ips: &[IpAddr]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("test DNS names are valid");
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name = dn(names.first().copied().unwrap_or(file));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(dir, file, params)
    }

    /// A client certificate with subject `CN=<cn>, O=edgelb tests`.
    pub fn client(&self, dir: &TempDir, file: &str, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names is valid");
        params.distinguished_name = dn(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(dir, file, params)
    }

    fn issue(&self, dir: &TempDir, file: &str, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("P-256 key generation");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing a test certificate");
        Leaf {
            cert: dir.write(&format!("{file}.crt"), cert.pem()),
            key: dir.write_private(&format!("{file}.key"), key.serialize_pem()),
            der: cert.der().to_vec(),
        }
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "edgelb tests");
    dn
}
