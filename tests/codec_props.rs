//! Property tests for every parser: what is encoded decodes to the same
//! thing, however the bytes arrive, and arbitrary bytes never panic a decoder.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use meshtalk::codec::frame::{Frame, FrameView, MAX_REPLY, MAX_REQUEST};
use meshtalk::codec::line::{Command, LineDecoder, LineError, MAX_LINE, ServerLine};
use meshtalk::codec::wire::{
    Dest, OnlineUser, Rejection, Reply, ReplyError, Request, Status, encode_message_push,
    message_args, message_push, op, parse_message,
};
use meshtalk::core::{
    Message, Moderated, Moderation, PeerLink, RoomInfo, Sent, Stats, Target, Topology, UserInfo,
};
use meshtalk::mesh::frame::{self as peer, PeerMessage};
use proptest::prelude::*;

fn word() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,32}"
}

/// Text a line can carry: no line breaks, no leading `/` worries.
fn text() -> impl Strategy<Value = String> {
    "[^\r\n]{1,200}".prop_filter("not blank", |t| !t.trim().is_empty())
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u32>(),
        any::<u8>(),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20),
    )
        .prop_map(|(version, opcode, request_id, status, args)| Frame {
            version,
            opcode,
            request_id,
            status,
            args: args.into_iter().map(Bytes::from).collect(),
        })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        text()
            .prop_filter("say", |t| !t.starts_with('/'))
            .prop_map(Command::Say),
        text().prop_map(|t| Command::Say(format!("/{}", t.trim_start_matches('/')))),
        (word(), word()).prop_map(|(name, password)| Command::Register { name, password }),
        (word(), word()).prop_map(|(name, password)| Command::Login { name, password }),
        word().prop_map(|password| Command::DeleteAccount { password }),
        word().prop_map(Command::Users),
        (
            word(),
            text()
                .prop_map(|t| t.trim().to_owned())
                .prop_filter("text", |t| !t.is_empty())
        )
            .prop_map(|(to, text)| Command::Tell { to, text }),
        word().prop_map(Command::Join),
        word().prop_map(Command::Leave),
        (1u32..=1000).prop_map(Command::History),
        (word(), any::<u16>()).prop_map(|(host, port)| Command::PeerConnect { host, port }),
        word().prop_map(Command::PeerKill),
        (
            prop::sample::select(vec![Moderation::Kick, Moderation::Suspend]),
            word(),
            text().prop_map(|t| t.trim().to_owned())
        )
            .prop_map(|(action, name, reason)| Command::Moderate {
                action,
                name,
                reason
            }),
        word().prop_map(|name| Command::Moderate {
            action: Moderation::Restore,
            name,
            reason: String::new()
        }),
        Just(Command::Help),
        Just(Command::Logout),
        Just(Command::Who),
        Just(Command::Rooms),
        any::<bool>().prop_map(|mesh| Command::Stats { mesh }),
        Just(Command::Quit),
        Just(Command::Peers),
        Just(Command::Topology),
    ]
}

fn server_line() -> impl Strategy<Value = ServerLine> {
    prop_oneof![
        "[^\r\n]{0,100}".prop_map(ServerLine::Ok),
        (word(), "[^\r\n]{0,100}").prop_map(|(code, text)| ServerLine::Err { code, text }),
        (word(), word(), "[^\r\n]{0,100}").prop_map(|(room, from, text)| ServerLine::Room {
            room,
            from,
            text
        }),
        (word(), "[^\r\n]{0,100}").prop_map(|(from, text)| ServerLine::Direct { from, text }),
        "[^\r\n]{0,100}".prop_map(ServerLine::Notice),
    ]
}

fn decode_all(decoder: &mut LineDecoder, buf: &mut BytesMut) -> Vec<Result<String, LineError>> {
    let mut out = vec![];
    while let Some(line) = decoder.decode(buf) {
        out.push(line);
    }
    out
}

proptest! {
    #[test]
    fn frames_round_trip_in_any_chunking(frames in prop::collection::vec(frame(), 1..5), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.sort();
        let mut buf = BytesMut::new();
        let mut decoded = vec![];
        let mut last = 0;
        for point in points.into_iter().chain([wire.len()]) {
            buf.extend_from_slice(&wire[last..point]);
            last = point;
            while let Some(f) = Frame::decode(&mut buf, MAX_REPLY).unwrap() {
                decoded.push(f);
            }
        }
        prop_assert_eq!(decoded, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut buf = BytesMut::from(&bytes[..]);
        // Either frames, a wait for more, or an error: never a panic or a loop.
        for _ in 0..bytes.len() + 1 {
            match Frame::decode(&mut buf, MAX_REQUEST) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn a_frame_view_reads_what_the_decoder_reads(f in frame()) {
        let mut wire = BytesMut::new();
        f.encode(&mut wire);
        let view = FrameView::parse(&wire).expect("a well-formed frame");
        prop_assert_eq!((view.version, view.opcode, view.request_id, view.status), (f.version, f.opcode, f.request_id, f.status));
        prop_assert!(view.args().eq(f.args.iter().map(|a| &a[..])));
    }

    #[test]
    fn ids_encode_as_a_frame_of_8_byte_arguments(request_id in any::<u32>(), ids in prop::collection::vec(any::<u64>(), 0..2000)) {
        let mut direct = BytesMut::new();
        Request::Ack { ids: Cow::Borrowed(&ids) }.encode(request_id, &mut direct);
        let mut framed = BytesMut::new();
        let args = ids.iter().map(|id| Bytes::copy_from_slice(&id.to_be_bytes())).collect();
        Frame::request(op::ACK, request_id, args).encode(&mut framed);
        prop_assert_eq!(direct, framed);
    }

    #[test]
    fn a_frame_view_refuses_what_the_decoder_refuses(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        // Give the bytes a truthful length field, so only their inside decides.
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        wire.extend_from_slice(&bytes);
        let decoded = Frame::decode(&mut wire.clone(), MAX_REPLY);
        let view = FrameView::parse(&wire);
        match decoded {
            Ok(Some(f)) => {
                let view = view.expect("the view reads what the decoder reads");
                prop_assert!(view.args().eq(f.args.iter().map(|a| &a[..])));
            }
            _ => prop_assert!(view.is_none()),
        }
    }

    #[test]
    fn commands_round_trip(c in command()) {
        prop_assert_eq!(Command::parse(&c.to_line()), Ok(Some(c)));
    }

    #[test]
    fn server_lines_round_trip_through_the_decoder(lines in prop::collection::vec(server_line(), 1..10), crlf in any::<bool>()) {
        let mut wire = Vec::new();
        for line in &lines {
            if crlf {
                line.encode(&mut wire);
            } else {
                wire.extend_from_slice(format!("{line}\n").as_bytes());
            }
        }
        let mut decoder = LineDecoder::new();
        let mut buf = BytesMut::from(&wire[..]);
        let decoded: Vec<ServerLine> = decode_all(&mut decoder, &mut buf)
            .into_iter()
            .map(|l| ServerLine::parse(&l.unwrap()).unwrap())
            .collect();
        prop_assert_eq!(decoded, lines);
    }

    #[test]
    fn the_line_decoder_survives_anything(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..8)) {
        let mut decoder = LineDecoder::new();
        let mut buf = BytesMut::new();
        for chunk in &chunks {
            buf.extend_from_slice(chunk);
            for line in decode_all(&mut decoder, &mut buf).into_iter().flatten() {
                prop_assert!(line.len() <= MAX_LINE);
                let _ = Command::parse(&line);
                let _ = ServerLine::parse(&line);
            }
            // The decoder never holds more than one line's worth.
            prop_assert!(buf.len() <= MAX_LINE + 1);
        }
        let _ = decoder.decode_eof(&mut buf);
    }

    #[test]
    fn messages_round_trip_as_arguments(id in any::<u64>(), at in any::<i64>(), from in word(), to in word(), room in any::<bool>(), body in "[^\r\n]{1,100}", client in proptest::option::of(word())) {
        let m = Message {
            id,
            from,
            to: if room { Target::Room(to) } else { Target::User(to) },
            body,
            sent_at_ms: at,
            client_msg_id: client,
        };
        let mut args = vec![];
        message_args(&m, &mut args);
        prop_assert_eq!(parse_message(&args), Some(m.clone()));

        // The push written straight from the message is the push built as
        // a frame, byte for byte, and decodes back to the message.
        let mut direct = Vec::new();
        encode_message_push(&m, &mut direct);
        let mut framed = Vec::new();
        message_push(&m).encode(&mut framed);
        prop_assert_eq!(&direct, &framed);
        let frame = Frame::decode(&mut BytesMut::from(&direct[..]), MAX_REPLY).unwrap().unwrap();
        prop_assert_eq!(parse_message(&frame.args), Some(m));
    }

    #[test]
    fn arbitrary_arguments_never_panic_the_message_parser(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 0..8)) {
        let args: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
        let _ = parse_message(&args);
    }
}

fn peer_message() -> impl Strategy<Value = PeerMessage> {
    use meshtalk::mesh::frame::{Facts, NodeState, Routed, RoutedBody, Speech, StoredSpeech};
    prop_oneof![
        (word(), any::<u64>(), any::<u32>()).prop_map(|(node, instance, version)| {
            PeerMessage::Hello {
                node,
                instance,
                version,
            }
        }),
        Just(PeerMessage::Ping),
        (
            word(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(word(), 0..5),
            prop::option::of(word())
        )
            .prop_map(
                |(node, instance, version, peers, store)| PeerMessage::State(NodeState {
                    node,
                    instance,
                    version,
                    facts: Facts::Links { peers, store },
                })
            ),
        (
            word(),
            any::<u64>(),
            any::<u64>(),
            word(),
            word(),
            text(),
            any::<i64>(),
            prop::option::of((word(), any::<u64>(), any::<i64>(), word()))
        )
            .prop_map(
                |(origin, instance, seq, room, from, body, sent_ms, stored)| {
                    PeerMessage::Speech(Speech {
                        origin,
                        instance,
                        seq,
                        room,
                        from,
                        body,
                        sent_ms,
                        stored: stored.map(|(store, id, room_id, shown)| StoredSpeech {
                            store,
                            id,
                            room_id,
                            shown,
                        }),
                    })
                }
            ),
        (
            word(),
            word(),
            any::<u8>(),
            any::<u64>(),
            word(),
            text(),
            prop::option::of(word())
        )
            .prop_map(|(src, dst, hops, req, to, body, client_msg_id)| {
                PeerMessage::Routed(Routed {
                    src,
                    dst,
                    hops,
                    body: RoutedBody::Direct {
                        req,
                        from: "x".into(),
                        to,
                        body,
                        client_msg_id,
                        sent_ms: 1,
                    },
                })
            }),
        (any::<u64>(), word(), word(), text()).prop_map(|(req, name, by, reason)| {
            PeerMessage::Routed(Routed {
                src: "a".into(),
                dst: "b".into(),
                hops: 3,
                body: RoutedBody::Moderate {
                    req,
                    action: "suspend".into(),
                    name,
                    by,
                    reason,
                },
            })
        }),
    ]
}

proptest! {
    #[test]
    fn peer_frames_round_trip_in_any_chunking(messages in prop::collection::vec(peer_message(), 1..5), cut in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        for m in &messages {
            peer::encode(m, &mut wire).unwrap();
        }
        let at = cut.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..at]);
        let mut decoded = Vec::new();
        while let Some(m) = peer::decode(&mut buf).unwrap() {
            decoded.push(m);
        }
        buf.extend_from_slice(&wire[at..]);
        while let Some(m) = peer::decode(&mut buf).unwrap() {
            decoded.push(m);
        }
        prop_assert_eq!(decoded, messages);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_peer_decoder(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = peer::decode(&mut buf) {}
    }
}

/// The owned makings of a [`Request`], which borrows its texts.
#[derive(Debug, Clone)]
struct RequestSpec {
    kind: u8,
    texts: [String; 3],
    wide: u64,
    narrow: u32,
    port: u16,
    flag: bool,
    ids: Vec<u64>,
    raw: Vec<Vec<u8>>,
}

fn request_spec() -> impl Strategy<Value = RequestSpec> {
    (
        0u8..22,
        ["\\PC{0,40}", "\\PC{0,200}", "\\PC{0,20}"],
        (any::<u64>(), any::<u32>(), any::<u16>(), any::<bool>()),
        prop::collection::vec(any::<u64>(), 0..50),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6),
    )
        .prop_map(
            |(kind, texts, (wide, narrow, port, flag), ids, raw)| RequestSpec {
                kind,
                texts,
                wide,
                narrow,
                port,
                flag,
                ids,
                raw,
            },
        )
}

fn build(s: &RequestSpec) -> Request<'_> {
    let [a, b, c] = &s.texts;
    let (a, b, c) = (a.as_str(), b.as_str(), c.as_str());
    let dest = if s.flag { Dest::Room(a) } else { Dest::User(a) };
    match s.kind {
        0 => Request::Register {
            name: a,
            password: b,
        },
        1 => Request::Login {
            name: a,
            password: b,
        },
        2 => Request::Logout,
        3 => Request::DeleteAccount { password: a },
        4 => Request::ListUsers { pattern: a },
        5 => Request::Send {
            to: dest,
            body: b,
            client_msg_id: c,
        },
        6 => Request::Ack {
            ids: Cow::Borrowed(&s.ids),
        },
        7 => Request::History {
            of: dest,
            after: s.wide,
            limit: s.narrow,
            newest: s.port.is_multiple_of(2),
        },
        8 => Request::Join { room: a },
        9 => Request::Leave { room: a },
        10 => Request::Rooms,
        11 => Request::Who,
        12 => Request::Stats { mesh: s.flag },
        13 => Request::Ping(s.raw.iter().map(|r| &r[..]).collect()),
        14 => Request::Peers,
        15 => Request::Topology,
        16 => Request::PeerListen {
            host: a,
            port: s.port,
        },
        17 => Request::PeerConnect {
            host: a,
            port: s.port,
        },
        18 => Request::PeerKill { node: a },
        19 => Request::Moderate {
            action: Moderation::Kick,
            name: a,
            reason: b,
        },
        20 => Request::Moderate {
            action: Moderation::Suspend,
            name: a,
            reason: b,
        },
        _ => Request::Moderate {
            action: Moderation::Restore,
            name: a,
            reason: "",
        },
    }
}

fn name() -> impl Strategy<Value = String> {
    "\\PC{1,20}"
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        any::<i64>(),
        name(),
        name(),
        any::<bool>(),
        "\\PC{0,100}",
        proptest::option::of(name()),
    )
        .prop_map(
            |(id, sent_at_ms, from, to, room, body, client_msg_id)| Message {
                id,
                from,
                to: if room {
                    Target::Room(to)
                } else {
                    Target::User(to)
                },
                body,
                sent_at_ms,
                client_msg_id,
            },
        )
}

/// A reply and the opcode of a request it answers.
fn reply() -> impl Strategy<Value = (u8, Reply)> {
    let names = || prop::collection::vec(name(), 0..5);
    prop_oneof![
        (prop::sample::select(vec![op::REGISTER, op::LOGIN]), name())
            .prop_map(|(o, n)| (o, Reply::Name(n))),
        name().prop_map(|n| (op::PEER_LISTEN, Reply::Bound(n))),
        name().prop_map(|n| (op::PEER_CONNECT, Reply::Linked(n))),
        (
            prop::sample::select(vec![op::KICK, op::SUSPEND, op::RESTORE]),
            name(),
            name(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(|(o, name, node, sessions_ended, changed)| (
                o,
                Reply::Moderated(Moderated {
                    name,
                    node,
                    sessions_ended,
                    changed
                })
            )),
        prop::sample::select(vec![op::LOGOUT, op::DELETE_ACCOUNT, op::ACK, op::PEER_KILL])
            .prop_map(|o| (o, Reply::Done)),
        prop::collection::vec((name(), any::<bool>(), name()), 0..5).prop_map(|rows| (
            op::LIST_USERS,
            Reply::Users(
                rows.into_iter()
                    .map(|(name, online, node)| UserInfo { name, online, node })
                    .collect()
            )
        )),
        (
            prop::sample::select(vec![op::SEND_DM, op::SEND_ROOM]),
            any::<u64>(),
            any::<i64>(),
            any::<bool>()
        )
            .prop_map(|(o, id, sent_at_ms, duplicate)| (
                o,
                Reply::Sent(Sent {
                    id,
                    sent_at_ms,
                    duplicate
                })
            )),
        prop::collection::vec(message(), 0..5).prop_map(|m| (op::HISTORY, Reply::Messages(m))),
        (name(), any::<bool>())
            .prop_map(|(room, joined)| (op::JOIN, Reply::Joined { room, joined })),
        any::<bool>().prop_map(|left| (op::LEAVE, Reply::Left(left))),
        prop::collection::vec((name(), any::<u32>(), any::<bool>()), 0..5).prop_map(|rows| (
            op::ROOMS,
            Reply::Rooms(
                rows.into_iter()
                    .map(|(name, members, joined)| RoomInfo {
                        name,
                        members,
                        joined
                    })
                    .collect()
            )
        )),
        (prop::collection::vec((name(), name()), 0..5), names()).prop_map(|(online, missing)| (
            op::WHO,
            Reply::Who {
                online: online
                    .into_iter()
                    .map(|(name, node)| OnlineUser { name, node })
                    .collect(),
                missing,
            }
        )),
        (prop::array::uniform5(any::<u64>()), name(), names()).prop_map(|(n, node, missing)| (
            op::STATS,
            Reply::Stats {
                stats: Stats {
                    messages: n[0],
                    accounts: n[1],
                    sessions_online: n[2],
                    rooms: n[3],
                    uptime_secs: n[4],
                    node
                },
                missing,
            }
        )),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..30), 0..6).prop_map(|args| (
            op::PING,
            Reply::Pong(args.into_iter().map(Bytes::from).collect())
        )),
        prop::collection::vec((name(), name(), any::<bool>()), 0..5).prop_map(|rows| (
            op::PEERS,
            Reply::Peers(
                rows.into_iter()
                    .map(|(node, address, outbound)| PeerLink {
                        node,
                        address,
                        outbound
                    })
                    .collect()
            )
        )),
        (names(), prop::collection::vec((name(), name()), 0..5))
            .prop_map(|(nodes, links)| (op::TOPOLOGY, Reply::Topology(Topology { nodes, links }))),
    ]
}

/// Opcodes a parser meets: mostly known ones, sometimes anything.
fn opcode() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => (0x01u8..=0x0f).boxed(),
        2 => (0x20u8..=0x24).boxed(),
        1 => any::<u8>().boxed(),
    ]
}

fn decode_one(bytes: &[u8], max: usize) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = Frame::decode(&mut buf, max).unwrap().unwrap();
    assert!(buf.is_empty(), "one whole frame");
    frame
}

proptest! {
    #[test]
    fn requests_round_trip_through_a_frame(spec in request_spec(), request_id in any::<u32>()) {
        let request = build(&spec);
        let bytes = request.to_bytes(request_id);
        let frame = decode_one(&bytes, MAX_REPLY);
        prop_assert_eq!((frame.opcode, frame.request_id, frame.status), (request.opcode(), request_id, 0));
        prop_assert_eq!(Request::parse(&frame), Ok(request.clone()));
        let view = FrameView::parse(&bytes).expect("a well-formed frame");
        prop_assert_eq!(Request::parse_view(&view), Ok(request));
    }

    #[test]
    fn replies_round_trip_through_a_frame((opcode, reply) in reply(), request_id in any::<u32>()) {
        let mut bytes = Vec::new();
        reply.encode(opcode, request_id, &mut bytes);
        let frame = decode_one(&bytes, MAX_REPLY);
        prop_assert_eq!((frame.opcode, frame.request_id, frame.status), (opcode, request_id, 0));
        prop_assert_eq!(Reply::parse(&frame), Ok(reply));
    }

    #[test]
    fn rejections_round_trip_through_a_frame(opcode in opcode(), request_id in any::<u32>(), code in 1u8..=18, text in "\\PC{0,100}") {
        let rejection = Rejection { code, text };
        let mut bytes = Vec::new();
        rejection.encode(opcode, request_id, &mut bytes);
        let frame = decode_one(&bytes, MAX_REPLY);
        prop_assert_eq!(rejection.status().map(|s| s as u8), Some(code));
        prop_assert_eq!(Reply::parse(&frame), Err(ReplyError::Rejected(rejection)));
    }

    #[test]
    fn arbitrary_frames_never_panic_the_request_and_reply_parsers(
        opcode in opcode(),
        status in prop_oneof![Just(0u8), any::<u8>()],
        args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 0..8),
    ) {
        let frame = Frame { version: 1, opcode, request_id: 1, status, args: args.into_iter().map(Bytes::from).collect() };
        let bytes = frame.to_bytes();
        let view = FrameView::parse(&bytes).expect("a well-formed frame");
        let parsed = Request::parse(&frame);
        prop_assert_eq!(&Request::parse_view(&view), &parsed);
        match parsed {
            // What parses is said back as the same request.
            Ok(request) => {
                let again = decode_one(&request.to_bytes(1), MAX_REPLY);
                prop_assert_eq!(Request::parse(&again), Ok(request));
            }
            Err(e) => prop_assert!(e.status() != Status::Ok && !e.to_string().is_empty()),
        }
        if let Ok(reply) = Reply::parse(&frame) {
            let mut again = Vec::new();
            reply.encode(opcode, 1, &mut again);
            prop_assert_eq!(Reply::parse(&decode_one(&again, MAX_REPLY)), Ok(reply));
        }
    }
}
