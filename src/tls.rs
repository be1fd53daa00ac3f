//! TLS for every client door and every client, on one rustls build with one
//! crypto provider (ring), and the self-signed pair `meshtalk cert` makes.
//!
//! The server terminates TLS itself, door by door, after a connection has
//! been admitted (see `gateway::listener`): so the per-address cap and the
//! handshake's time limit apply before any cryptography is spent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN for gRPC: HTTP/2 only.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1, which the HTTP door speaks too.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path} is not valid PEM: {why}")]
    Pem { path: PathBuf, why: String },
    #[error("the certificate and key do not go together: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0:?} is not a name a certificate can be checked against")]
    ServerName(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_owned(),
            what: "private key",
        },
        e => TlsError::Pem {
            path: path.to_owned(),
            why: e.to_string(),
        },
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side of TLS for one door; `alpn` names the protocols it
/// offers (`[ALPN_H2]` for gRPC, none for the line and binary doors).
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certificates(cert)?, private_key(key)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The client side: trusts `ca` if given, else the system's roots.
pub fn client_config(ca: Option<&Path>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(path)? {
                roots.add(cert)?;
            }
        }
        None => {
            // Unreadable system certificates are skipped, as a browser does.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: the host of
/// `HOST:PORT` (an IP address or a DNS name).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
}

/// What `meshtalk cert` wrote.
pub struct MadeCertificates {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a certificate authority and a server certificate it signs, for
/// `localhost`, the loopback addresses and `names`, and writes `ca.pem`,
/// `server.pem` (the server's chain) and `server-key.pem` into `dir`. The
/// authority's key is not kept: nothing else can be signed with it.
pub fn make_certificates(dir: &Path, names: &[String]) -> Result<MadeCertificates, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "meshtalk local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let mut subject_names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    subject_names.extend(names.iter().cloned());
    let mut params = CertificateParams::new(subject_names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "meshtalk server");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let made = MadeCertificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    write(&made.ca, ca.pem().as_bytes(), false)?;
    write(&made.cert, (cert.pem() + &ca.pem()).as_bytes(), false)?;
    write(&made.key, key.serialize_pem().as_bytes(), true)?;
    Ok(made)
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(error)?;
    file.write_all(bytes).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_certificates_load_on_both_sides() {
        let dir = tempfile::tempdir().unwrap();
        let made = make_certificates(dir.path(), &["chat.example".into()]).unwrap();
        server_config(&made.cert, &made.key, &[ALPN_H2]).unwrap();
        client_config(Some(&made.ca), &[]).unwrap();
    }

    #[test]
    fn a_missing_or_empty_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = server_config(&empty, &empty, &[]).unwrap_err();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
        let err = server_config(&dir.path().join("nope.pem"), &empty, &[]).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }

    #[test]
    fn server_names_come_from_host_and_port() {
        assert!(server_name("127.0.0.1:8889").is_ok());
        assert!(server_name("[::1]:8889").is_ok());
        assert!(server_name("chat.example:443").is_ok());
        assert!(server_name("bad name:1").is_err());
    }
}
