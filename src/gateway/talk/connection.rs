//! A line connection: reads lines within their deadline, gathers server
//! lines and deliveries into one write.

use bytes::BytesMut;

use super::replies::message_line;
use crate::codec::line::{LineDecoder, LineError, ServerLine};
use crate::core::{Delivery, Encoding};
use crate::gateway::listener::{
    self, Accepted, Deadlines, Pass, ReadHalf, WriteHalf, read_more, write_out,
};

/// A connection: reads lines, writes server lines.
pub(super) struct Connection {
    reader: ReadHalf,
    /// Unbuffered: `out` already gathers a batch into one write.
    writer: WriteHalf,
    buffer: BytesMut,
    decoder: LineDecoder,
    out: Vec<u8>,
    /// The client's address, which password checks are counted by.
    pub(super) peer: std::net::IpAddr,
    /// The connection's place at the gate, held for its life.
    _pass: Pass,
    /// When the unfinished line in `buffer` began to arrive.
    started: Option<std::time::Instant>,
    pub(super) deadlines: Deadlines,
}

impl Connection {
    pub(super) fn new(accepted: Accepted, deadlines: Deadlines) -> Connection {
        let (reader, writer) = accepted.stream.split();
        Connection {
            peer: accepted.peer.ip(),
            _pass: accepted.pass,
            reader,
            writer,
            buffer: BytesMut::new(),
            decoder: LineDecoder::new(),
            out: Vec::new(),
            started: None,
            deadlines,
        }
    }

    /// The next line; `None` at end of input. A line begun but not finished
    /// within the read deadline fails the read with `TimedOut`.
    pub(super) async fn read_line(&mut self) -> std::io::Result<Option<Result<String, LineError>>> {
        loop {
            if let Some(line) = self.decoder.decode(&mut self.buffer) {
                self.started = None;
                return Ok(Some(line));
            }
            let read = read_more(
                &mut self.reader,
                &mut self.buffer,
                &mut self.started,
                self.deadlines.read,
            );
            if read.await? == 0 {
                return Ok(self.decoder.decode_eof(&mut self.buffer));
            }
        }
    }

    pub(super) fn push(&mut self, line: ServerLine) {
        line.encode(&mut self.out);
    }

    /// Queues a delivery, encoded once for every line connection it goes to.
    pub(super) fn push_delivery(&mut self, delivery: &Delivery, following: usize) {
        listener::push_delivery(
            &mut self.out,
            delivery,
            following,
            Encoding::Line,
            |m, out| message_line(m).encode(out),
        );
    }

    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        write_out(&mut self.writer, &mut self.out).await
    }
}
