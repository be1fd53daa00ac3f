//! The reusable gRPC client library, and the interactive `meshtalk chat`
//! built on it.

pub mod chat;
pub mod line;
pub mod transport;
pub mod waiters;
pub mod wire;

use std::path::Path;
use tonic::metadata::{Ascii, MetadataValue};

use crate::model::{Moderated, Moderation};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::proto::{
    self, accounts_client::AccountsClient, admin_client::AdminClient, chat_client::ChatClient,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    /// The server's answer. Its message is the server's own sentence; the
    /// status is not a cause to print after it.
    #[error("{}", .0.message())]
    Rpc(Status),
    #[error("not logged in")]
    NotLoggedIn,
    #[error("cannot read the CA certificate {path}: {source}")]
    Ca {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Rpc(status)
    }
}

/// A channel to `url`; `https://` speaks TLS, trusting `ca` (a PEM file) or
/// the system's roots.
pub async fn channel(url: &str, ca: Option<&Path>) -> Result<Channel, ClientError> {
    endpoint(url, ca)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// An endpoint for `url`, set up as [`channel`] connects it.
pub fn endpoint(url: &str, ca: Option<&Path>) -> Result<Endpoint, ClientError> {
    let connect_error = |source| ClientError::Connect {
        url: url.to_owned(),
        source,
    };
    // `host:port` is the common case on the command line: plain gRPC.
    let full = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let mut endpoint = Endpoint::from_shared(full).map_err(connect_error)?;
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| ClientError::Ca {
                    path: path.to_owned(),
                    source,
                })?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(connect_error)?;
    }
    Ok(endpoint)
}

/// A connection to a meshtalk server, with the session token once logged in.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    token: Option<MetadataValue<Ascii>>,
}

/// Who a message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    User(String),
    Room(String),
}

impl Client {
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, None).await
    }

    /// Connects to `url`; an `https://` URL is checked against `ca` (a PEM
    /// file), or the system's roots without one.
    pub async fn connect_with(url: &str, ca: Option<&Path>) -> Result<Client, ClientError> {
        Ok(Client::new(channel(url, ca).await?))
    }

    /// A client over an already configured channel.
    pub fn new(channel: Channel) -> Client {
        Client {
            channel,
            token: None,
        }
    }

    /// The same session (token) over another channel.
    pub fn on_channel(&self, channel: Channel) -> Client {
        Client {
            channel,
            token: self.token.clone(),
        }
    }

    /// A client that presents an existing token.
    pub fn with_token(&self, token: &str) -> Result<Client, ClientError> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the token is not printable text"))?;
        Ok(Client {
            channel: self.channel.clone(),
            token: Some(value),
        })
    }

    pub fn accounts(&self) -> AccountsClient<Channel> {
        AccountsClient::new(self.channel.clone())
    }

    pub fn chat(&self) -> ChatClient<Channel> {
        ChatClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    /// Wraps a message with this session's `authorization` header.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    pub async fn register(&self, name: &str, password: &str) -> Result<String, ClientError> {
        let reply = self
            .accounts()
            .register(proto::RegisterRequest {
                name: name.into(),
                password: password.into(),
            })
            .await?;
        Ok(reply.into_inner().name)
    }

    /// Logs in and returns a client carrying the new token, with the token
    /// and the account name in its registered case.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
    ) -> Result<(Client, proto::LoginResponse), ClientError> {
        let reply = self
            .accounts()
            .login(proto::LoginRequest {
                name: name.into(),
                password: password.into(),
            })
            .await?
            .into_inner();
        Ok((self.with_token(&reply.token)?, reply))
    }

    pub async fn logout(&self) -> Result<(), ClientError> {
        self.accounts()
            .logout(self.request(proto::LogoutRequest {}))
            .await?;
        Ok(())
    }

    pub async fn send(
        &self,
        to: &To,
        body: &str,
        client_msg_id: Option<&str>,
    ) -> Result<proto::SendResponse, ClientError> {
        let to = Some(match to {
            To::User(u) => proto::send_request::To::User(u.clone()),
            To::Room(r) => proto::send_request::To::Room(r.clone()),
        });
        let reply = self
            .chat()
            .send(self.request(proto::SendRequest {
                to,
                body: body.into(),
                client_msg_id: client_msg_id.unwrap_or_default().into(),
            }))
            .await?;
        Ok(reply.into_inner())
    }

    pub async fn subscribe(&self) -> Result<Streaming<proto::Event>, ClientError> {
        Ok(self
            .chat()
            .subscribe(self.request(proto::SubscribeRequest {}))
            .await?
            .into_inner())
    }

    pub async fn ack(&self, ids: Vec<u64>) -> Result<(), ClientError> {
        self.chat()
            .ack(self.request(proto::AckRequest { ids }))
            .await?;
        Ok(())
    }

    /// The newest `limit` messages of a conversation, oldest first.
    pub async fn recent(&self, of: &To, limit: u32) -> Result<Vec<proto::Message>, ClientError> {
        let conversation = Some(match of {
            To::User(u) => proto::get_messages_request::Conversation::User(u.clone()),
            To::Room(r) => proto::get_messages_request::Conversation::Room(r.clone()),
        });
        let mut stream = self
            .chat()
            .get_messages(self.request(proto::GetMessagesRequest {
                conversation,
                after_id: 0,
                limit,
                newest: true,
            }))
            .await?
            .into_inner();
        let mut messages = Vec::new();
        while let Some(message) = stream.message().await? {
            messages.push(message);
        }
        Ok(messages)
    }

    pub async fn join(&self, room: &str) -> Result<proto::JoinRoomResponse, ClientError> {
        Ok(self
            .chat()
            .join_room(self.request(proto::JoinRoomRequest { room: room.into() }))
            .await?
            .into_inner())
    }

    /// Leaves a room; true if the caller was a member.
    pub async fn leave(&self, room: &str) -> Result<bool, ClientError> {
        Ok(self
            .chat()
            .leave_room(self.request(proto::LeaveRoomRequest { room: room.into() }))
            .await?
            .into_inner()
            .left)
    }

    pub async fn rooms(&self) -> Result<Vec<proto::Room>, ClientError> {
        Ok(self
            .chat()
            .list_rooms(self.request(proto::ListRoomsRequest {}))
            .await?
            .into_inner()
            .rooms)
    }

    pub async fn users(&self, pattern: &str) -> Result<Vec<proto::User>, ClientError> {
        let mut stream = self
            .accounts()
            .list_users(self.request(proto::ListUsersRequest {
                pattern: pattern.into(),
            }))
            .await?
            .into_inner();
        let mut users = Vec::new();
        while let Some(user) = stream.message().await? {
            users.push(user);
        }
        Ok(users)
    }

    pub async fn who(&self) -> Result<proto::WhoResponse, ClientError> {
        Ok(self
            .chat()
            .who(self.request(proto::WhoRequest {}))
            .await?
            .into_inner())
    }

    /// This node's figures, or with `mesh` the totals over every node.
    pub async fn stats(&self, mesh: bool) -> Result<proto::Stats, ClientError> {
        Ok(self
            .chat()
            .get_stats(self.request(proto::GetStatsRequest { mesh }))
            .await?
            .into_inner())
    }

    /// Deletes the logged-in account; the password is asked for again.
    pub async fn delete_account(&self, password: String) -> Result<(), ClientError> {
        let request = self.request(proto::DeleteAccountRequest { password });
        self.accounts().delete_account(request).await?;
        Ok(())
    }

    /// The direct links of the node (operators only).
    pub async fn peers(&self) -> Result<Vec<proto::Peer>, ClientError> {
        let request = self.request(proto::PeersRequest {});
        Ok(self.admin().peers(request).await?.into_inner().peers)
    }

    /// Every node and link the node knows of (operators only).
    pub async fn topology(&self) -> Result<proto::TopologyResponse, ClientError> {
        let request = self.request(proto::TopologyRequest {});
        Ok(self.admin().topology(request).await?.into_inner())
    }

    /// Opens a port for other nodes to link to; the address it listens on.
    pub async fn peer_listen(&self, host: String, port: u16) -> Result<String, ClientError> {
        let port = port.into();
        let request = self.request(proto::PeerListenRequest { host, port });
        Ok(self
            .admin()
            .peer_listen(request)
            .await?
            .into_inner()
            .address)
    }

    /// Links to another node; the name of the node reached.
    pub async fn peer_connect(&self, host: String, port: u16) -> Result<String, ClientError> {
        let port = port.into();
        let request = self.request(proto::PeerConnectRequest { host, port });
        Ok(self.admin().peer_connect(request).await?.into_inner().node)
    }

    /// Drops the link to a node.
    pub async fn peer_kill(&self, node: String) -> Result<(), ClientError> {
        let request = self.request(proto::PeerDisconnectRequest { node });
        self.admin().peer_disconnect(request).await?;
        Ok(())
    }

    /// Kicks, suspends or restores an account, wherever in the mesh it
    /// lives (operators only); `reason` is not sent with a restore.
    pub async fn moderate(
        &self,
        action: Moderation,
        name: String,
        reason: String,
    ) -> Result<Moderated, ClientError> {
        let mut admin = self.admin();
        let done = match action {
            Moderation::Kick => {
                let request = self.request(proto::KickRequest { name, reason });
                admin.kick(request).await?
            }
            Moderation::Suspend => {
                let request = self.request(proto::SuspendRequest { name, reason });
                admin.suspend(request).await?
            }
            Moderation::Restore => {
                let request = self.request(proto::RestoreRequest { name });
                admin.restore(request).await?
            }
        }
        .into_inner();
        Ok(Moderated {
            name: done.name,
            node: done.node,
            sessions_ended: done.sessions_ended,
            changed: done.changed,
        })
    }
}
