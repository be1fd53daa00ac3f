//! A message as arguments, in a MESSAGE push or a HISTORY reply.

use bytes::Bytes;

use super::op;
use crate::codec::frame::{ArgSink, Frame, FrameBuf, Header, VERSION, arg};
use crate::model::{Message, Target};

/// Arguments per message in a push or a history reply.
pub const MESSAGE_ARGS: usize = 6;

/// A message as six arguments: id (u64), sent-at ms (i64), sender, recipient
/// (`@user` or `#room`), body, client_msg_id (may be empty).
pub fn message_args(m: &Message, out: &mut Vec<Bytes>) {
    out.push(arg::u64(m.id));
    out.push(arg::i64(m.sent_at_ms));
    out.push(arg::str(&m.from));
    out.push(Bytes::from(match &m.to {
        Target::User(user) => format!("@{user}"),
        Target::Room(room) => format!("#{room}"),
    }));
    out.push(arg::str(&m.body));
    out.push(arg::str(m.client_msg_id.as_deref().unwrap_or("")));
}

/// A MESSAGE push of `m`: the six message arguments, request id 0.
pub fn message_push(m: &Message) -> Frame {
    let mut args = Vec::with_capacity(MESSAGE_ARGS);
    message_args(m, &mut args);
    Frame {
        version: VERSION,
        opcode: op::PUSH_MESSAGE,
        request_id: 0,
        status: 0,
        args,
    }
}

/// Appends the MESSAGE push of `m` to `out`, the same bytes as
/// `message_push(m).encode(out)`, written straight from the message: a
/// server encodes one per message it delivers, and building a [`Frame`]
/// first costs an allocation per argument.
pub fn encode_message_push(m: &Message, out: &mut impl FrameBuf) {
    let (mark, name) = match &m.to {
        Target::User(user) => (b'@', user),
        Target::Room(room) => (b'#', room),
    };
    let client_id = m.client_msg_id.as_deref().unwrap_or("");
    let texts = m.from.len() + 1 + name.len() + m.body.len() + client_id.len();
    let head = Header {
        version: VERSION,
        opcode: op::PUSH_MESSAGE,
        request_id: 0,
        status: 0,
    };
    head.put(out, MESSAGE_ARGS as u16, MESSAGE_ARGS * 4 + 16 + texts);
    out.put_u32(8);
    out.put_u64(m.id);
    out.put_u32(8);
    out.put_i64(m.sent_at_ms);
    put_text(out, m.from.as_bytes());
    out.put_u32((1 + name.len()) as u32);
    out.put_u8(mark);
    out.put_slice(name.as_bytes());
    put_text(out, m.body.as_bytes());
    put_text(out, client_id.as_bytes());
}

/// The six arguments of `m`, as [`message_args`] makes them.
pub fn write_message(m: &Message, sink: &mut impl ArgSink) {
    let (mark, name) = match &m.to {
        Target::User(user) => (b"@", user),
        Target::Room(room) => (b"#", room),
    };
    sink.u64(m.id);
    sink.i64(m.sent_at_ms);
    sink.text(&m.from);
    sink.parts(&[mark, name.as_bytes()]);
    sink.text(&m.body);
    sink.text(m.client_msg_id.as_deref().unwrap_or(""));
}

fn put_text(out: &mut impl FrameBuf, text: &[u8]) {
    out.put_u32(text.len() as u32);
    out.put_slice(text);
}

/// Reads six arguments back into a message.
pub fn parse_message(args: &[Bytes]) -> Option<Message> {
    let [id, sent, from, to, body, client_id] = args else {
        return None;
    };
    let text = |b: &Bytes| std::str::from_utf8(b).ok().map(str::to_owned);
    let to = text(to)?;
    let to = if let Some(room) = to.strip_prefix('#') {
        Target::Room(room.into())
    } else {
        Target::User(to.strip_prefix('@')?.into())
    };
    let client_msg_id = text(client_id)?;
    Some(Message {
        id: arg::to_u64(id)?,
        sent_at_ms: arg::to_i64(sent)?,
        from: text(from)?,
        to,
        body: text(body)?,
        client_msg_id: (!client_msg_id.is_empty()).then_some(client_msg_id),
    })
}
