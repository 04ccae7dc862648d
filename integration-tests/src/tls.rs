//! [`TlsFiles`]: a throw-away certificate authority and a certificate for `localhost` /
//! `127.0.0.1` signed by it, written as PEM files, for clusters that speak TLS.

use std::path::{Path, PathBuf};

/// The PEM files of one test deployment's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate clients trust (`NATS_TLS_CA`).
    pub ca: PathBuf,
    /// The server certificate (nats-server's and the gateway's).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Generates a CA and a server certificate into `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ringstore test CA");
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        let key = KeyPair::generate().expect("a server key");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("the server certificate");
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        };
        std::fs::write(&files.ca, ca.pem()).expect("write ca.pem");
        std::fs::write(&files.cert, cert.pem()).expect("write server.pem");
        std::fs::write(&files.key, key.serialize_pem()).expect("write server-key.pem");
        files
    }

    /// The CA certificate as reqwest trusts it.
    pub fn reqwest_ca(&self) -> reqwest::Certificate {
        let pem = std::fs::read(&self.ca).expect("read ca.pem");
        reqwest::Certificate::from_pem(&pem).expect("a PEM certificate")
    }
}
