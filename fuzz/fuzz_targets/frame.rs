//! The binary protocol's frame decoder on arbitrary input: frames, a wait for
//! more bytes, or an error; never a panic, an endless loop or a huge allocation.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshtalk::codec::frame::{Frame, MAX_REQUEST};
use meshtalk::codec::wire::parse_message;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = Frame::decode(&mut buf, MAX_REQUEST) {
        let _ = parse_message(&frame.args);
        // What decodes re-encodes to the same bytes.
        let again = frame.to_bytes();
        let mut copy = BytesMut::from(&again[..]);
        assert_eq!(Frame::decode(&mut copy, usize::MAX).ok().flatten(), Some(frame));
    }
});
