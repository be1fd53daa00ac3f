//! A client for the line protocol: sends command lines, reads server lines,
//! and keeps deliveries that arrive while it waits for a reply.

use std::collections::VecDeque;
use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use super::transport::{self, ClientTls, Reader, Writer};

use crate::codec::line::{Command, LineDecoder, ServerLine};

/// A reply: its `* ` lines, then how it ended (`+OK …` or `-ERR …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub lines: Vec<String>,
    pub end: ServerLine,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        matches!(self.end, ServerLine::Ok(_))
    }

    /// The error code of a `-ERR` reply.
    pub fn error_code(&self) -> Option<&str> {
        match &self.end {
            ServerLine::Err { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub struct LineClient {
    reader: Reader,
    writer: Writer,
    buffer: BytesMut,
    decoder: LineDecoder,
    /// Room speech and direct messages received while waiting for a reply.
    deliveries: VecDeque<ServerLine>,
    /// The server's greeting.
    pub welcome: String,
}

fn protocol_error(text: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, text)
}

impl LineClient {
    /// Connects and reads the greeting.
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<LineClient> {
        Self::over(TcpStream::connect(addr).await?).await
    }

    /// Connects over TLS and reads the greeting.
    pub async fn connect_tls(addr: &str, tls: &ClientTls) -> io::Result<LineClient> {
        Self::over_tls(TcpStream::connect(addr).await?, Some(tls)).await
    }

    /// Speaks over an already connected stream; reads the greeting.
    pub async fn over(stream: TcpStream) -> io::Result<LineClient> {
        Self::over_tls(stream, None).await
    }

    /// Speaks over an already connected stream, with TLS if `tls` is
    /// given; reads the greeting.
    pub async fn over_tls(stream: TcpStream, tls: Option<&ClientTls>) -> io::Result<LineClient> {
        let (reader, writer) = transport::open(stream, tls).await?;
        let mut client = LineClient {
            reader,
            writer,
            buffer: BytesMut::new(),
            decoder: LineDecoder::new(),
            deliveries: VecDeque::new(),
            welcome: String::new(),
        };
        client.welcome = client
            .read_line()
            .await?
            .ok_or_else(|| protocol_error("closed before the greeting".into()))?;
        Ok(client)
    }

    /// Writes raw bytes, for saying exactly what a test needs to.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// Writes one line with CRLF.
    pub async fn send_line(&mut self, line: &str) -> io::Result<()> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
    }

    /// The next line from the server, `None` once it has closed.
    pub async fn read_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(line) = self.decoder.decode(&mut self.buffer) {
                return line
                    .map(Some)
                    .map_err(|e| protocol_error(format!("bad line from server: {e:?}")));
            }
            if self.reader.read_buf(&mut self.buffer).await? == 0 {
                return match self.decoder.decode_eof(&mut self.buffer) {
                    Some(line) => line
                        .map(Some)
                        .map_err(|e| protocol_error(format!("bad line from server: {e:?}"))),
                    None => Ok(None),
                };
            }
        }
    }

    async fn read_server_line(&mut self) -> io::Result<ServerLine> {
        let line = self
            .read_line()
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"))?;
        ServerLine::parse(&line).ok_or_else(|| protocol_error(format!("unmarked line: {line:?}")))
    }

    /// Reads up to the end of a reply, setting deliveries aside.
    pub async fn read_reply(&mut self) -> io::Result<Reply> {
        let mut lines = vec![];
        loop {
            match self.read_server_line().await? {
                ServerLine::Notice(text) => lines.push(text),
                end @ (ServerLine::Ok(_) | ServerLine::Err { .. }) => {
                    return Ok(Reply { lines, end });
                }
                delivery => self.deliveries.push_back(delivery),
            }
        }
    }

    /// Sends a command and waits for its reply.
    pub async fn command(&mut self, command: &Command) -> io::Result<Reply> {
        self.send_line(&command.to_line()).await?;
        self.read_reply().await
    }

    /// Sends a raw line and waits for the reply.
    pub async fn request(&mut self, line: &str) -> io::Result<Reply> {
        self.send_line(line).await?;
        self.read_reply().await
    }

    /// The connection's halves and any bytes already read, for callers that
    /// take over the stream after logging in.
    pub fn into_parts(self) -> (Reader, Writer, BytesMut) {
        (self.reader, self.writer, self.buffer)
    }

    /// The deliveries set aside while waiting for replies.
    pub fn take_deliveries(&mut self) -> Vec<ServerLine> {
        self.deliveries.drain(..).collect()
    }

    /// The next room line or direct message (or a closing `-ERR`).
    pub async fn next_delivery(&mut self) -> io::Result<ServerLine> {
        if let Some(line) = self.deliveries.pop_front() {
            return Ok(line);
        }
        self.read_server_line().await
    }
}
