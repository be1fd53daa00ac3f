//! Property tests for every parser: what is encoded decodes to the same
//! thing, however the bytes arrive, and arbitrary bytes never panic a decoder.

use bytes::{Bytes, BytesMut};
use meshtalk::codec::frame::{Frame, FrameView, MAX_REPLY, MAX_REQUEST};
use meshtalk::codec::line::{Command, LineDecoder, LineError, MAX_LINE, ServerLine};
use meshtalk::codec::wire::{encode_message_push, message_args, message_push, parse_message};
use meshtalk::core::{Message, Target};
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
    fn ids_encode_as_a_frame_of_8_byte_arguments(opcode in any::<u8>(), request_id in any::<u32>(), ids in prop::collection::vec(any::<u64>(), 0..2000)) {
        let mut direct = BytesMut::new();
        Frame::encode_ids(opcode, request_id, &ids, &mut direct);
        let mut framed = BytesMut::new();
        let args = ids.iter().map(|id| Bytes::copy_from_slice(&id.to_be_bytes())).collect();
        Frame::request(opcode, request_id, args).encode(&mut framed);
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
    use meshtalk::mesh::frame::{Facts, NodeState, Routed, RoutedBody, Speech};
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
            prop::collection::vec(word(), 0..5)
        )
            .prop_map(
                |(node, instance, version, peers)| PeerMessage::State(NodeState {
                    node,
                    instance,
                    version,
                    facts: Facts::Links { peers },
                })
            ),
        (
            word(),
            any::<u64>(),
            any::<u64>(),
            word(),
            word(),
            text(),
            any::<i64>()
        )
            .prop_map(|(origin, instance, seq, room, from, body, sent_ms)| {
                PeerMessage::Speech(Speech {
                    origin,
                    instance,
                    seq,
                    room,
                    from,
                    body,
                    sent_ms,
                })
            }),
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
