//! Opening benchmark connections: from a chosen source address, logged in,
//! in a room if asked.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::{BenchError, PASSWORD, Target};
use crate::client::line::LineClient;
use crate::client::transport::{Reader, Writer};
use crate::client::wire::WireClient;
use crate::codec::frame::{Frame, MAX_REPLY};
use crate::codec::wire::{Reply, ReplyError, Request};

/// Connects a TCP socket from a chosen loopback source address, so one
/// machine can hold more connections than one source address has ports.
pub async fn connect_from(
    addr: &str,
    source: Option<IpAddr>,
) -> Result<tokio::net::TcpStream, BenchError> {
    let addr: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(BenchError::setup)?
        .next()
        .ok_or_else(|| BenchError::Setup(format!("no address for {addr}")))?;
    let socket = TcpSocket::new_v4().map_err(BenchError::setup)?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(BenchError::setup)?;
    }
    let stream = socket.connect(addr).await.map_err(BenchError::setup)?;
    stream.set_nodelay(true).map_err(BenchError::setup)?;
    Ok(stream)
}

pub async fn line_login(
    target: &Target,
    name: &str,
    room: Option<&str>,
    source: Option<IpAddr>,
) -> Result<LineClient, BenchError> {
    let tls = target.tls_for(&target.talk)?;
    let mut c = LineClient::over_tls(connect_from(&target.talk, source).await?, tls.as_ref())
        .await
        .map_err(BenchError::setup)?;
    let mut commands = vec![format!("/login {name} {PASSWORD}")];
    commands.extend(room.map(|r| format!("/join {r}")));
    for command in commands {
        let reply = c.request(&command).await.map_err(BenchError::setup)?;
        if !reply.is_ok() {
            return Err(BenchError::Setup(format!("{command}: {:?}", reply.end)));
        }
    }
    Ok(c)
}

pub async fn wire_login(
    target: &Target,
    name: &str,
    room: Option<&str>,
) -> Result<WireClient, BenchError> {
    let tls = target.tls_for(&target.wire)?;
    let stream = connect_from(&target.wire, None).await?;
    let c = WireClient::over(stream, tls.as_ref())
        .await
        .map_err(BenchError::setup)?;
    c.login(name, PASSWORD).await.map_err(BenchError::setup)?;
    if let Some(room) = room {
        c.join(room).await.map_err(BenchError::setup)?;
    }
    Ok(c)
}

/// Runs one binary-protocol request during set-up on a bare socket and
/// checks its reply; what is read past the reply stays in `buffer`.
pub async fn wire_request(
    (reader, writer): (&mut Reader, &mut Writer),
    buffer: &mut BytesMut,
    request_id: u32,
    request: &Request<'_>,
) -> Result<(), BenchError> {
    let mut out = Vec::new();
    request.encode(request_id, &mut out);
    writer.write_all(&out).await.map_err(BenchError::setup)?;
    loop {
        match Frame::decode(buffer, MAX_REPLY).map_err(BenchError::setup)? {
            // A fresh bench account has nothing waiting, so no push comes
            // before the replies to logging in and joining.
            Some(reply) if reply.request_id == request_id => {
                return match Reply::parse(&reply) {
                    Ok(_) => Ok(()),
                    Err(ReplyError::Rejected(r)) => Err(BenchError::Setup(format!(
                        "opcode {:#04x}: status {} {}",
                        request.opcode(),
                        r.code,
                        r.text
                    ))),
                    Err(e) => Err(BenchError::setup(e)),
                };
            }
            Some(_) => continue,
            None => {
                if reader.read_buf(buffer).await.map_err(BenchError::setup)? == 0 {
                    return Err(BenchError::Setup("the server closed the connection".into()));
                }
            }
        }
    }
}
