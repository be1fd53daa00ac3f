//! The line decoder on arbitrary input fed in two chunks: every line it
//! yields is within the limit, and it never holds more than one line's worth.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshtalk::codec::line::{LineDecoder, MAX_LINE, ServerLine};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut decoder = LineDecoder::new();
    let mut buf = BytesMut::new();
    for chunk in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(chunk);
        while let Some(line) = decoder.decode(&mut buf) {
            if let Ok(line) = line {
                assert!(line.len() <= MAX_LINE);
                let _ = ServerLine::parse(&line);
            }
        }
        assert!(buf.len() <= MAX_LINE + 1);
    }
    let _ = decoder.decode_eof(&mut buf);
});
