//! Micro-benchmarks of the protocol codecs: the per-line and per-frame work
//! every connection does, apart from sockets and the store.
//!
//! `cargo bench --bench codecs`; figures are per operation.

use std::borrow::Cow;
use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshtalk::codec::frame::{Frame, FrameView, MAX_REQUEST, arg};
use meshtalk::codec::line::{Command, LineDecoder, ServerLine};
use meshtalk::codec::wire::{Dest, Request, encode_message_push, message_push, op};
use meshtalk::core::{Message, Target};

fn message() -> Message {
    Message {
        id: 1_234_567,
        from: "publisher-17".into(),
        to: Target::Room("lobby".into()),
        body: "x".repeat(64),
        sent_at_ms: 1_764_000_000_000,
        client_msg_id: None,
    }
}

fn line(c: &mut Criterion) {
    let mut group = c.benchmark_group("line");
    let speech = format!("{}\r\n", "y".repeat(64)).repeat(1000);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("decode 1000 speech lines", |b| {
        b.iter(|| {
            let mut decoder = LineDecoder::new();
            let mut buf = BytesMut::from(speech.as_bytes());
            let mut n = 0;
            while let Some(line) = decoder.decode(&mut buf) {
                n += black_box(line).map_or(0, |l| l.len());
            }
            n
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse /tell", |b| {
        b.iter(|| Command::parse(black_box("/tell bob see you at the standup in five")))
    });
    let delivery = ServerLine::Room {
        room: "lobby".into(),
        from: "publisher-17".into(),
        text: "x".repeat(64),
    };
    group.bench_function("encode room delivery", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            black_box(&delivery).encode(&mut out);
            out.len()
        })
    });
    group.finish();
}

fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    let send = Frame::request(
        op::SEND_ROOM,
        7,
        vec![arg::str("lobby"), arg::str(&"x".repeat(64)), arg::str("")],
    )
    .to_bytes();
    group.bench_function("decode SEND_ROOM", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&send[..]);
            Frame::decode(&mut buf, MAX_REQUEST)
        })
    });
    group.bench_function("decode and parse SEND_ROOM", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&send[..]);
            let frame = Frame::decode(&mut buf, MAX_REQUEST).ok()??;
            Request::parse(&frame).ok().map(|r| r.opcode())
        })
    });
    let body = "x".repeat(64);
    group.bench_function("encode SEND_ROOM", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            let send = Request::Send {
                to: Dest::Room("lobby"),
                body: black_box(&body),
                client_msg_id: "",
            };
            send.encode(7, &mut out);
            out.len()
        })
    });
    let m = message();
    group.bench_function("encode MESSAGE push", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            message_push(black_box(&m)).encode(&mut out);
            out.len()
        })
    });
    group.bench_function("encode MESSAGE push directly", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            encode_message_push(black_box(&m), &mut out);
            out.len()
        })
    });
    group.bench_function("encode MESSAGE push into a new buffer", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            encode_message_push(black_box(&m), &mut out);
            out
        })
    });
    let mut push = Vec::new();
    message_push(&m).encode(&mut push);
    group.bench_function("read MESSAGE push in place", |b| {
        b.iter(|| {
            let view = FrameView::parse(black_box(&push))?;
            let mut args = view.args();
            let id = args.next().and_then(arg::to_u64)?;
            Some((id, args.nth(3)?.len()))
        })
    });

    // An ACK of 1,024 ids: what a busy receiver sends per 1,024 deliveries.
    let ids: Vec<u64> = (1..=1024).collect();
    let mut ack = Vec::new();
    let request = Request::Ack {
        ids: Cow::Borrowed(&ids),
    };
    request.encode(9, &mut ack);
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("encode ACK of 1024 ids", |b| {
        let mut out = Vec::with_capacity(ack.len());
        b.iter(|| {
            out.clear();
            let ack = Request::Ack {
                ids: Cow::Borrowed(black_box(&ids)),
            };
            ack.encode(9, &mut out);
            out.len()
        })
    });
    group.bench_function("decode ACK of 1024 ids (Frame)", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&ack[..]);
            let frame = Frame::decode(&mut buf, MAX_REQUEST).ok()??;
            frame
                .args
                .iter()
                .map(|a| arg::to_u64(a))
                .collect::<Option<Vec<u64>>>()
        })
    });
    group.bench_function("decode ACK of 1024 ids (in place)", |b| {
        b.iter(|| {
            let view = FrameView::parse(black_box(&ack))?;
            view.args().map(arg::to_u64).collect::<Option<Vec<u64>>>()
        })
    });
    group.finish();
}

criterion_group!(benches, line, wire);
criterion_main!(benches);
