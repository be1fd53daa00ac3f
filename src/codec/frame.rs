//! The binary protocol's frame: every message in either direction is one
//! frame, length-prefixed as a whole.
//!
//! ```text
//! u32  length of everything after this field (big-endian, like every integer)
//! u8   protocol version (1)
//! u8   opcode
//! u32  request id (chosen by the client; 0 on server pushes)
//! u8   status (0 in requests; in replies 0 = ok, else an error code)
//! u16  argument count
//! then per argument: u32 length, that many bytes
//! ```
//!
//! Decoding is two-phase: [`Frame::check`] says whether a whole frame is in
//! the buffer and how long it is, without allocating; only then does
//! [`Frame::decode`] build it. A length over the limit is refused before a
//! single byte of the frame is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const VERSION: u8 = 1;
/// Bytes before the arguments, counting the length field.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 4 + 1 + 2;
/// Most arguments a frame holds: its count is a 16-bit field.
pub const MAX_ARGS: usize = u16::MAX as usize;
/// Largest frame a client may send (length field value).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest frame a server sends: a history page of 1000 full-size messages fits.
pub const MAX_REPLY: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub version: u8,
    pub opcode: u8,
    pub request_id: u32,
    pub status: u8,
    pub args: Vec<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {0} bytes is too short for a header")]
    TooShort(usize),
    /// The frame's length was sound but its inside was not; the stream is
    /// still in step, so the request can be answered.
    #[error("{why}")]
    Malformed {
        opcode: u8,
        request_id: u32,
        why: String,
    },
}

impl Frame {
    pub fn request(opcode: u8, request_id: u32, args: Vec<Bytes>) -> Frame {
        Frame {
            version: VERSION,
            opcode,
            request_id,
            status: 0,
            args,
        }
    }

    /// Whether `buf` starts with a whole frame: `Ok(Some(total bytes))`,
    /// `Ok(None)` if more bytes are needed, or an error once the length field
    /// alone shows the frame cannot be accepted.
    pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
        let Some(len) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        if len < HEADER_LEN - 4 {
            return Err(FrameError::TooShort(len));
        }
        Ok((buf.len() >= 4 + len).then_some(4 + len))
    }

    /// Takes one whole frame off the front of `buf`, if there is one.
    pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
        let Some(total) = Frame::check(buf, max)? else {
            return Ok(None);
        };
        let mut frame = buf.split_to(total).freeze();
        frame.advance(4);
        let version = frame.get_u8();
        let opcode = frame.get_u8();
        let request_id = frame.get_u32();
        let status = frame.get_u8();
        let count = frame.get_u16() as usize;
        // Every argument needs at least its 4-byte length: bound the
        // allocation by what the frame can hold, not by what it claims.
        let mut args = Vec::with_capacity(count.min(frame.len() / 4));
        let malformed = |why: String| FrameError::Malformed {
            opcode,
            request_id,
            why,
        };
        for index in 0..count {
            if frame.len() < 4 {
                return Err(malformed(format!(
                    "argument {index} of {count} runs past the end of the frame"
                )));
            }
            let len = frame.get_u32() as usize;
            if frame.len() < len {
                return Err(malformed(format!(
                    "argument {index} of {count} runs past the end of the frame"
                )));
            }
            args.push(frame.split_to(len));
        }
        if !frame.is_empty() {
            return Err(malformed(format!(
                "{} bytes left over after the last argument",
                frame.len()
            )));
        }
        Ok(Some(Frame {
            version,
            opcode,
            request_id,
            status,
            args,
        }))
    }

    /// Appends the frame's bytes on the wire to `out`. The argument count is
    /// a 16-bit field: callers keep frames within it (see the server's
    /// list replies), and only the first 65,535 arguments are written.
    pub fn encode(&self, out: &mut impl FrameBuf) {
        let head = Header {
            version: self.version,
            opcode: self.opcode,
            request_id: self.request_id,
            status: self.status,
        };
        head.put_all(out, &self.args);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

/// A buffer a frame is written into, with room made for the whole frame
/// first: grown a field at a time, an empty buffer is reallocated at every
/// doubling, half a dozen times for a small frame.
pub trait FrameBuf: BufMut {
    fn make_room(&mut self, additional: usize);
}

impl FrameBuf for Vec<u8> {
    fn make_room(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

impl FrameBuf for BytesMut {
    fn make_room(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

/// The fixed fields of a frame, for writers that put its arguments
/// straight into the buffer.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub version: u8,
    pub opcode: u8,
    pub request_id: u32,
    pub status: u8,
}

impl Header {
    pub fn request(opcode: u8, request_id: u32) -> Header {
        Header {
            version: VERSION,
            opcode,
            request_id,
            status: 0,
        }
    }

    /// The fixed fields at the front of `frame`, and its argument count;
    /// `None` if it is shorter than a header.
    pub fn read(frame: &[u8]) -> Option<(Header, u16)> {
        let header = frame.get(..HEADER_LEN)?;
        let head = Header {
            version: header[4],
            opcode: header[5],
            request_id: u32::from_be_bytes([header[6], header[7], header[8], header[9]]),
            status: header[10],
        };
        Some((head, u16::from_be_bytes([header[11], header[12]])))
    }

    /// Starts a frame of `count` arguments that take `args_len` bytes
    /// with their length fields, making room for all of it.
    pub fn put(self, out: &mut impl FrameBuf, count: u16, args_len: usize) {
        out.make_room(HEADER_LEN + args_len);
        out.put_u32((HEADER_LEN - 4 + args_len) as u32);
        out.put_u8(self.version);
        out.put_u8(self.opcode);
        out.put_u32(self.request_id);
        out.put_u8(self.status);
        out.put_u16(count);
    }

    /// Writes a whole frame of these arguments, the first 65,535 of them:
    /// for a writer whose arguments are borrowed, with no [`Frame`] (and
    /// no copy of each argument) to build first.
    pub fn put_all<A: AsRef<[u8]>>(self, out: &mut impl FrameBuf, args: &[A]) {
        let args = &args[..args.len().min(MAX_ARGS)];
        let args_len = args.iter().map(|a| 4 + a.as_ref().len()).sum();
        self.put(out, args.len() as u16, args_len);
        for arg in args {
            let arg = arg.as_ref();
            out.put_u32(arg.len() as u32);
            out.put_slice(arg);
        }
    }

    /// Writes a whole frame of `args`, the first 65,535 of them. They are
    /// walked twice, once to measure the frame and once to write it, so a
    /// typed request or reply is written straight from its fields with room
    /// made once and nothing built in between.
    pub fn put_args(self, out: &mut impl FrameBuf, args: &impl FrameArgs) {
        let mut measure = Measure::default();
        args.write_args(&mut measure);
        self.put(out, measure.count as u16, measure.len);
        args.write_args(&mut Put {
            out,
            left: measure.count,
        });
    }
}

/// Something written as a frame's arguments.
pub trait FrameArgs {
    /// Gives `sink` the arguments in order; the same ones every time.
    fn write_args(&self, sink: &mut impl ArgSink);

    /// How many arguments there are, counting any past [`MAX_ARGS`].
    fn arg_count(&self) -> usize {
        let mut measure = Measure::default();
        self.write_args(&mut measure);
        measure.all
    }
}

/// Where a frame's arguments go, one at a time.
pub trait ArgSink {
    /// One argument made of `parts` laid end to end.
    fn parts(&mut self, parts: &[&[u8]]);

    fn bytes(&mut self, b: &[u8]) {
        self.parts(&[b]);
    }

    fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }

    fn i64(&mut self, v: i64) {
        self.bytes(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }

    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    fn bool(&mut self, v: bool) {
        self.bytes(&[u8::from(v)]);
    }
}

/// Counts arguments and their bytes; past [`MAX_ARGS`] it counts in
/// `all` only, which says whether they would fit.
#[derive(Debug, Default)]
struct Measure {
    count: usize,
    len: usize,
    all: usize,
}

impl ArgSink for Measure {
    fn parts(&mut self, parts: &[&[u8]]) {
        self.all += 1;
        if self.count < MAX_ARGS {
            self.count += 1;
            self.len += 4 + parts.iter().map(|p| p.len()).sum::<usize>();
        }
    }
}

/// Writes the first `left` arguments into a buffer with room made for them.
struct Put<'o, B> {
    out: &'o mut B,
    left: usize,
}

impl<B: FrameBuf> ArgSink for Put<'_, B> {
    fn parts(&mut self, parts: &[&[u8]]) {
        if self.left == 0 {
            return;
        }
        self.left -= 1;
        self.out
            .put_u32(parts.iter().map(|p| p.len()).sum::<usize>() as u32);
        for part in parts {
            self.out.put_slice(part);
        }
    }
}

/// One whole frame read in place, its arguments borrowed rather than
/// copied: for a reader that looks at a few fields of very many frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameView<'a> {
    pub version: u8,
    pub opcode: u8,
    pub request_id: u32,
    pub status: u8,
    count: u16,
    args: &'a [u8],
}

impl<'a> FrameView<'a> {
    /// Reads `frame`, exactly one frame as measured by [`Frame::check`];
    /// `None` where [`Frame::decode`] would find it malformed.
    pub fn parse(frame: &'a [u8]) -> Option<FrameView<'a>> {
        let (head, count) = Header::read(frame)?;
        let view = FrameView {
            version: head.version,
            opcode: head.opcode,
            request_id: head.request_id,
            status: head.status,
            count,
            args: &frame[HEADER_LEN..],
        };
        // Every argument must fit, and nothing may follow the last.
        let mut rest = view.args;
        for _ in 0..view.count {
            let (_, after) = split_arg(rest)?;
            rest = after;
        }
        rest.is_empty().then_some(view)
    }

    /// The arguments in order.
    pub fn args(&self) -> Args<'a> {
        Args {
            rest: self.args,
            left: self.count,
        }
    }
}

/// The arguments of a [`FrameView`], borrowed in order.
#[derive(Debug, Clone)]
pub struct Args<'a> {
    rest: &'a [u8],
    left: u16,
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        self.left = self.left.checked_sub(1)?;
        let (arg, after) = split_arg(self.rest)?;
        self.rest = after;
        Some(arg)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Exact: a view is made only of a frame whose arguments all fit.
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Args<'_> {}

/// The argument at the front of `bytes`, and what follows it.
fn split_arg(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let rest = &bytes[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Argument helpers: integers are big-endian and fixed-width.
pub mod arg {
    use bytes::Bytes;

    pub fn u64(v: u64) -> Bytes {
        Bytes::copy_from_slice(&v.to_be_bytes())
    }

    pub fn i64(v: i64) -> Bytes {
        Bytes::copy_from_slice(&v.to_be_bytes())
    }

    pub fn u32(v: u32) -> Bytes {
        Bytes::copy_from_slice(&v.to_be_bytes())
    }

    pub fn u16(v: u16) -> Bytes {
        Bytes::copy_from_slice(&v.to_be_bytes())
    }

    pub fn bool(v: bool) -> Bytes {
        Bytes::from_static(if v { &[1] } else { &[0] })
    }

    pub fn str(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    pub fn to_u64(b: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(b.try_into().ok()?))
    }

    pub fn to_i64(b: &[u8]) -> Option<i64> {
        Some(i64::from_be_bytes(b.try_into().ok()?))
    }

    pub fn to_u32(b: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }

    pub fn to_u16(b: &[u8]) -> Option<u16> {
        Some(u16::from_be_bytes(b.try_into().ok()?))
    }

    pub fn to_bool(b: &[u8]) -> Option<bool> {
        match b {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_login_example() {
        // docs/wire-protocol.md, "LOGIN request".
        let documented = "00 00 00 1b 01 02 00 00 00 01 00 00 02 00 00 00 03 62 6f 62 \
                          00 00 00 07 68 75 6e 74 65 72 32";
        let expected: Vec<u8> = documented
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        let frame = Frame::request(0x02, 1, vec![arg::str("bob"), arg::str("hunter2")]);
        assert_eq!(frame.to_bytes().as_ref(), &expected[..]);
        let mut buf = BytesMut::from(&expected[..]);
        assert_eq!(Frame::decode(&mut buf, MAX_REQUEST), Ok(Some(frame)));
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_oversized_and_lying_frames() {
        let bytes = Frame::request(1, 1, vec![arg::str("x")]).to_bytes();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(Frame::decode(&mut buf, MAX_REQUEST), Ok(None), "cut {cut}");
        }
        let mut huge = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            Frame::decode(&mut huge, MAX_REQUEST),
            Err(FrameError::TooLarge { .. })
        ));
        // Claims 65535 arguments in a frame with room for none.
        let mut liar = BytesMut::from(&[0, 0, 0, 9, 1, 1, 0, 0, 0, 1, 0, 0xff, 0xff][..]);
        assert!(matches!(
            Frame::decode(&mut liar, MAX_REQUEST),
            Err(FrameError::Malformed {
                opcode: 1,
                request_id: 1,
                ..
            })
        ));
        assert!(liar.is_empty(), "the bad frame is consumed whole");
    }
}
