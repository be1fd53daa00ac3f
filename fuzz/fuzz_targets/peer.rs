//! The mesh peer-frame decoder on arbitrary input: messages, a wait for more
//! bytes, or an error; never a panic. What decodes re-encodes and decodes
//! to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshtalk::mesh::frame::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(message)) = decode(&mut buf) {
        let mut again = BytesMut::new();
        encode(&message, &mut again).expect("a decoded message encodes");
        assert_eq!(decode(&mut again).ok().flatten(), Some(message));
    }
});
