//! The servers a chat session may use. Nodes that share one store serve
//! any account, and a token from one is good on all of them; so when the
//! node in use stops answering, the session goes on at the next one that
//! does, as the same session, instead of ending.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::Code;

use crate::client::{Client, ClientError};

/// The servers, in the order they are tried, and the one in use. Clones
/// share the one in use, so the session and its receiving task move on
/// together.
#[derive(Clone, Debug)]
pub struct Servers {
    urls: Arc<[String]>,
    ca: Option<PathBuf>,
    current: Arc<AtomicUsize>,
}

impl Servers {
    /// `urls` is never empty: clap gives the default when none is named.
    pub fn new(urls: Vec<String>, ca: Option<PathBuf>) -> Servers {
        Servers {
            urls: urls.into(),
            ca,
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The URL of the server in use.
    pub fn current(&self) -> &str {
        let i = self.current.load(Ordering::SeqCst) % self.urls.len().max(1);
        self.urls.get(i).map_or("", String::as_str)
    }

    /// A client of the first server that answers, starting with the one in
    /// use; the error from the last one tried when none does.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        let start = self.current.load(Ordering::SeqCst);
        let mut last = None;
        for step in 0..self.urls.len() {
            let i = (start + step) % self.urls.len();
            match Client::connect_with(&self.urls[i], self.ca.as_deref()).await {
                Ok(client) => {
                    self.current.store(i, Ordering::SeqCst);
                    return Ok(client);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::NotLoggedIn))
    }

    /// The session of `client` on the next server that answers, once the
    /// one at `failed` stopped. If another part of the session has moved
    /// on already, it goes where that one went.
    pub async fn fail_over(&self, client: &Client, failed: &str) -> Result<Client, ClientError> {
        if let Some(i) = self.urls.iter().position(|u| u == failed) {
            let next = (i + 1) % self.urls.len();
            let _ = self
                .current
                .compare_exchange(i, next, Ordering::SeqCst, Ordering::SeqCst);
        }
        let fresh = self.connect().await?;
        Ok(client.on_channel(fresh.channel))
    }
}

/// Whether an error says the server is gone (not that it refused): only
/// then is another server tried.
pub fn is_unreachable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Rpc(status) => matches!(status.code(), Code::Unavailable | Code::Cancelled),
        _ => false,
    }
}
