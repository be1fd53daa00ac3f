//! The binary protocol's frame decoder on arbitrary input: frames, a wait for
//! more bytes, or an error; never a panic, an endless loop or a huge allocation.
//! Each frame is read as a request and as a reply too: what parses is said
//! back as the same request or reply.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshtalk::codec::frame::{Frame, MAX_REQUEST};
use meshtalk::codec::wire::{Reply, Request, parse_message};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = Frame::decode(&mut buf, MAX_REQUEST) {
        let _ = parse_message(&frame.args);
        if let Ok(request) = Request::parse(&frame) {
            let again = request.to_bytes(frame.request_id);
            let mut copy = BytesMut::from(&again[..]);
            let reread = Frame::decode(&mut copy, usize::MAX).ok().flatten();
            assert_eq!(reread.as_ref().map(Request::parse), Some(Ok(request)));
        }
        if let Ok(reply) = Reply::parse(&frame) {
            let mut again = BytesMut::new();
            reply.encode(frame.opcode, frame.request_id, &mut again);
            let reread = Frame::decode(&mut again, usize::MAX).ok().flatten();
            assert_eq!(reread.as_ref().map(Reply::parse), Some(Ok(reply)));
        }
        // What decodes re-encodes to the same bytes.
        let again = frame.to_bytes();
        let mut copy = BytesMut::from(&again[..]);
        assert_eq!(Frame::decode(&mut copy, usize::MAX).ok().flatten(), Some(frame));
    }
});
