//! What peers say to each other, and how it is framed.
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of
//! one JSON object, whose `"type"` names the message. JSON keeps the peer
//! protocol easy to implement and to debug; the length prefix keeps framing
//! trivial and bounded. On a link the frames form one byte stream that
//! travels inside Noise transport messages ([`super::handshake`]), never in
//! clear. `docs/mesh.md` is the spec.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The peer protocol version this node speaks.
pub const VERSION: u32 = 2;
/// Largest frame body a node accepts or sends. Above a Noise message's
/// 65,535 bytes, since an accounts record of a busy node is larger: a frame
/// spans as many transport messages as it needs.
pub const MAX_FRAME: usize = 1024 * 1024;
/// Most hops a routed message travels before it is dropped.
pub const MAX_HOPS: u8 = 32;

/// One frame's worth of peer talk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerMessage {
    /// First frame on a link, from each side, once the Noise handshake
    /// has proven the secret.
    Hello {
        node: String,
        /// Start time of the sending process (ms since the epoch): a restart
        /// gets a higher one, so its records supersede the old ones.
        instance: u64,
        version: u32,
    },
    /// The sender accepted the other side's hello.
    Ready,
    /// The sender will not link, and why; it closes next.
    Refuse { reason: String },
    /// Keeps an idle link alive.
    Ping,
    /// A node's current state of one kind; flooded, newest version wins.
    State(NodeState),
    /// Room speech; flooded, once per (origin, instance, seq).
    Speech(Speech),
    /// A message for one node, forwarded hop by hop.
    Routed(Routed),
}

/// One kind of a node's state, as that node published it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub node: String,
    pub instance: u64,
    /// Counts up within one instance.
    pub version: u64,
    #[serde(flatten)]
    pub facts: Facts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Facts {
    /// The nodes this node has a live link to, and the id of the shared
    /// store it runs on, if any: nodes with the same store id are siblings,
    /// which find each other's accounts and messages in that store.
    Links {
        peers: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        store: Option<String>,
    },
    /// The accounts homed on this node: `[name, created_ms]`.
    Accounts { accounts: Vec<(String, i64)> },
    /// The accounts online on this node.
    Presence { online: Vec<String> },
}

impl Facts {
    pub fn kind(&self) -> Kind {
        match self {
            Facts::Links { .. } => Kind::Links,
            Facts::Accounts { .. } => Kind::Accounts,
            Facts::Presence { .. } => Kind::Presence,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Links,
    Accounts,
    Presence,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speech {
    pub origin: String,
    pub instance: u64,
    pub seq: u64,
    pub room: String,
    pub from: String,
    pub body: String,
    pub sent_ms: i64,
    /// Set when the origin committed the speech to a shared store: its
    /// siblings deliver it as stored there instead of storing it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredSpeech>,
}

/// Where speech committed to a shared store lies in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSpeech {
    /// The shared store's id.
    pub store: String,
    /// The message's id in that store.
    pub id: u64,
    /// The room's id in that store.
    pub room_id: i64,
    /// The sender as the store holds it.
    pub shown: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routed {
    pub src: String,
    pub dst: String,
    /// Hops left: a node forwards a message only while more than one is
    /// left, decrementing it; the destination takes it whatever is left.
    pub hops: u8,
    #[serde(flatten)]
    pub body: RoutedBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RoutedBody {
    /// Store a direct message for one of your accounts and deliver it.
    Direct {
        req: u64,
        from: String,
        to: String,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        sent_ms: i64,
    },
    /// The answer to `direct`: the stored id, or why not.
    DirectAck {
        req: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stored: Option<Stored>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<RemoteError>,
    },
    /// A scatter-gather question.
    Query { req: u64, query: Query },
    /// One node's answer to a query.
    Answer { req: u64, answer: Answer },
    /// A direct message a sibling committed to the shared store: deliver it
    /// to the recipient's sessions here, without storing it again.
    Deliver {
        id: u64,
        from: String,
        to: String,
        /// The recipient's account id in the shared store: a name deleted
        /// and made again meanwhile is another account.
        account: i64,
        body: String,
        sent_ms: i64,
    },
    /// A membership a sibling committed to the shared store.
    Member {
        room_id: i64,
        room: String,
        account: i64,
        joined: bool,
    },
    /// An account deleted through a sibling: its sessions here end.
    Deleted { account: i64 },
    /// A session a sibling ended (logged out, or evicted): its token stops
    /// working here too.
    Ended { session: i64 },
    /// An operator's act on an account homed on the destination: `action`
    /// is `kick`, `suspend` or `restore`; `by` is the operator's account
    /// on the source node.
    Moderate {
        req: u64,
        action: String,
        name: String,
        by: String,
        #[serde(default)]
        reason: String,
    },
    /// The answer to `moderate`: what was done, or why not.
    Moderated {
        req: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        done: Option<Done>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<RemoteError>,
    },
    /// A sibling ended every session of an account (a kick or a
    /// suspension): end them here too, with this notice.
    Removed { account: i64, notice: String },
}

/// What a `moderate` did on the account's home node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// The account as its home node names it.
    pub name: String,
    /// Sessions ended there.
    pub sessions: u32,
    /// False when a restore found no suspension to lift.
    pub changed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub id: u64,
    pub sent_ms: i64,
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    /// The kind of error as [`ErrorKind::code`](crate::model::ErrorKind::code)
    /// spells it; an unknown code reads as `internal`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Query {
    /// Who is online on the node.
    Who,
    /// The node's own figures.
    Stats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Answer {
    Who {
        online: Vec<String>,
    },
    Stats {
        messages: u64,
        accounts: u64,
        sessions: u64,
        rooms: u64,
        uptime_secs: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Appends one framed message to `out`.
pub fn encode(message: &PeerMessage, out: &mut BytesMut) -> Result<(), FrameError> {
    let body = serde_json::to_vec(message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    out.reserve(4 + body.len());
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    Ok(())
}

/// Takes one whole message off the front of `buf`, or `None` if the frame is
/// not complete yet. An error means the stream can no longer be trusted.
pub fn decode(buf: &mut BytesMut) -> Result<Option<PeerMessage>, FrameError> {
    decode_within(buf, MAX_FRAME)
}

/// As [`decode`], with frames bounded by `max` bytes: until a link is
/// accepted the peer gets no more than a hello needs.
pub fn decode_within(buf: &mut BytesMut, max: usize) -> Result<Option<PeerMessage>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        // Room grows with what arrives, not with what the header promises.
        buf.reserve((4 + len - buf.len()).min(64 * 1024));
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len);
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// A peer message as bytes for the link queues, or `None` (logged) if it
/// cannot be encoded.
pub fn to_bytes(message: &PeerMessage) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    match encode(message, &mut buf) {
        Ok(()) => Some(buf.freeze()),
        Err(e) => {
            tracing::warn!(error = %e, "a peer message could not be encoded");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_frames_read_as_documented() {
        let json =
            r#"{"type":"state","node":"a","instance":7,"version":2,"kind":"links","peers":["b"]}"#;
        let mut buf = BytesMut::new();
        buf.put_u32(json.len() as u32);
        buf.put_slice(json.as_bytes());
        assert_eq!(
            decode(&mut buf),
            Ok(Some(PeerMessage::State(NodeState {
                node: "a".into(),
                instance: 7,
                version: 2,
                facts: Facts::Links {
                    peers: vec!["b".into()],
                    store: None,
                },
            })))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn routed_frames_round_trip() {
        let message = PeerMessage::Routed(Routed {
            src: "a".into(),
            dst: "c".into(),
            hops: MAX_HOPS,
            body: RoutedBody::Direct {
                req: 1,
                from: "alice".into(),
                to: "bob".into(),
                body: "hi".into(),
                client_msg_id: None,
                sent_ms: 5,
            },
        });
        let mut buf = BytesMut::new();
        encode(&message, &mut buf).unwrap();
        let text = std::str::from_utf8(&buf[4..]).unwrap();
        assert_eq!(
            text,
            r#"{"type":"routed","src":"a","dst":"c","hops":32,"op":"direct","req":1,"from":"alice","to":"bob","body":"hi","sent_ms":5}"#
        );
        assert_eq!(decode(&mut buf), Ok(Some(message)));
    }

    /// The lines of the first code block after `heading` in docs/mesh.md.
    fn documented(heading: &str) -> Vec<&'static str> {
        let doc = include_str!("../../docs/mesh.md");
        let start = doc.find(heading).expect("the examples");
        doc[start..]
            .lines()
            .skip_while(|l| !l.starts_with("```"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .collect()
    }

    #[test]
    fn documented_frames_read_and_write_back_as_shown() {
        let every_kind = documented("One of each, as sent");
        let siblings = documented("Between siblings");
        assert_eq!((every_kind.len(), siblings.len()), (16, 7));
        for json in every_kind.into_iter().chain(siblings) {
            let message: PeerMessage = serde_json::from_str(json).expect(json);
            assert_eq!(serde_json::to_string(&message).unwrap(), json);
        }
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME as u32 + 1);
        assert!(matches!(decode(&mut buf), Err(FrameError::TooLarge(_))));
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(b"{x}");
        assert!(matches!(decode(&mut buf), Err(FrameError::Malformed(_))));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 9, b'{'][..]);
        assert_eq!(decode(&mut buf), Ok(None));
    }
}
