//! How the line and binary clients reach a server: plain TCP, or TLS over
//! it, behind one pair of reading and writing halves.

use std::io;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The reading half of a client connection.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a client connection.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// TLS settings for connecting to a line or binary door.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl ClientTls {
    /// Trusts `ca` (or the system's roots) and checks the certificate
    /// against the host of `addr` (`HOST:PORT`).
    pub fn new(
        addr: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<ClientTls, crate::tls::TlsError> {
        Ok(ClientTls {
            config: crate::tls::client_config(ca, &[])?,
            name: crate::tls::server_name(addr)?,
        })
    }
}

/// Splits a connected socket, completing a TLS handshake over it first when
/// `tls` is given.
pub async fn open(stream: TcpStream, tls: Option<&ClientTls>) -> io::Result<(Reader, Writer)> {
    stream.set_nodelay(true)?;
    match tls {
        None => {
            let (r, w) = stream.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Some(tls) => {
            let stream = TlsConnector::from(tls.config.clone())
                .connect(tls.name.clone(), stream)
                .await?;
            let (r, w) = tokio::io::split(stream);
            Ok((Box::new(r), Box::new(w)))
        }
    }
}
