//! Where an HTTP/1.1 byte stream is between requests, so the HTTP door can
//! hold each request to a deadline: hyper times the reading of a request's
//! head but not a connection that sends nothing, nor a body that trickles
//! in a byte at a time, and either would hold a connection for ever.
//!
//! The clock follows just enough of HTTP/1.1 to know when a request has
//! arrived whole: the head up to its blank line, then a body of
//! `Content-Length` bytes or of chunks up to the last. Between requests,
//! and while a response streams back (a browser's `Subscribe`), the
//! connection is idle and the clock stopped. It judges nothing else:
//! whatever it cannot follow, hyper refuses.

/// Longest request head the clock reads; past it hyper has refused the
/// request already (its own limit is lower).
const MAX_HEAD: usize = 64 * 1024;

/// Largest request body a connection may send: a gRPC-Web request is one
/// message of at most 64 KiB, so this leaves room and no more.
pub const MAX_BODY: u64 = 1024 * 1024;

/// What the clock makes of the bytes it has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Between requests: nothing is due.
    Idle,
    /// A request is under way and due whole by the deadline.
    Busy,
    /// A request announced or sent a body over [`MAX_BODY`].
    TooLarge,
}

#[derive(Debug, Default)]
pub struct RequestClock {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    /// The head so far.
    Head(Vec<u8>),
    /// Body bytes still to come.
    Body(u64),
    Chunked(Chunks),
    TooLarge,
}

/// Where a chunked body is.
#[derive(Debug)]
struct Chunks {
    at: ChunkAt,
    /// Body bytes so far.
    total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkAt {
    /// The size line: its hex digits so far, and whether an extension (`;…`)
    /// began.
    Size {
        size: u64,
        digits: usize,
        ext: bool,
    },
    /// The LF ending the size line.
    SizeEnd {
        size: u64,
    },
    Data(u64),
    /// The CRLF after a chunk's data: bytes of it still to come.
    DataEnd(u8),
    /// After the last chunk: trailer lines, each up to its LF; `empty` while
    /// the line under way has nothing but an optional CR.
    Trailer {
        empty: bool,
    },
}

impl RequestClock {
    /// Follows `bytes`, and says where the stream is after them.
    pub fn saw(&mut self, mut bytes: &[u8]) -> Progress {
        while !bytes.is_empty() {
            let used = match &mut self.state {
                State::TooLarge => break,
                State::Idle => {
                    self.state = State::Head(Vec::new());
                    0
                }
                State::Head(head) => {
                    let (used, done) = read_head(head, bytes);
                    if done {
                        self.state = after_head(head);
                    }
                    used
                }
                State::Body(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Idle;
                    }
                    n as usize
                }
                State::Chunked(chunks) => {
                    let (used, done) = chunks.read(bytes);
                    if chunks.total > MAX_BODY {
                        self.state = State::TooLarge;
                    } else if done {
                        self.state = State::Idle;
                    }
                    used
                }
            };
            bytes = &bytes[used..];
        }
        self.progress()
    }

    pub fn progress(&self) -> Progress {
        match self.state {
            State::Idle => Progress::Idle,
            State::TooLarge => Progress::TooLarge,
            _ => Progress::Busy,
        }
    }
}

/// Adds to `head` up to the end of the head (a blank line) or of `bytes`;
/// returns how many bytes were used and whether the head is whole.
fn read_head(head: &mut Vec<u8>, bytes: &[u8]) -> (usize, bool) {
    for (i, &b) in bytes.iter().enumerate() {
        if head.len() < MAX_HEAD {
            head.push(b);
        }
        // Bare LF line ends are accepted by hyper too.
        if b == b'\n' && (head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n")) {
            return (i + 1, true);
        }
        // Blank lines before a request line are skipped, as hyper does.
        if head.iter().all(|&c| c == b'\r' || c == b'\n') {
            head.clear();
        }
    }
    (bytes.len(), false)
}

/// What follows a whole head: its body, if it has one.
fn after_head(head: &[u8]) -> State {
    let text = String::from_utf8_lossy(head);
    let mut length = None;
    let mut chunked = false;
    for line in text.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<u64>().ok().or(Some(u64::MAX));
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= value.to_ascii_lowercase().contains("chunked");
        }
    }
    match (chunked, length) {
        (true, _) => State::Chunked(Chunks {
            at: ChunkAt::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
            total: 0,
        }),
        (false, Some(n)) if n > MAX_BODY => State::TooLarge,
        (false, Some(0) | None) => State::Idle,
        (false, Some(n)) => State::Body(n),
    }
}

impl Chunks {
    /// Follows a chunked body through `bytes`; returns how many bytes it
    /// used and whether the body ended.
    fn read(&mut self, bytes: &[u8]) -> (usize, bool) {
        let mut used = 0;
        while used < bytes.len() {
            let b = bytes[used];
            match &mut self.at {
                ChunkAt::Data(left) => {
                    let n = (*left).min((bytes.len() - used) as u64);
                    *left -= n;
                    self.total += n;
                    used += n as usize;
                    if *left == 0 {
                        self.at = ChunkAt::DataEnd(2);
                    }
                    continue;
                }
                ChunkAt::Size { size, digits, ext } => match b {
                    b'\r' => self.at = ChunkAt::SizeEnd { size: *size },
                    b'\n' => self.at = after_size(*size),
                    _ if *ext => {}
                    b';' => *ext = true,
                    _ => match (b as char).to_digit(16) {
                        Some(d) if *digits < 16 => {
                            *size = *size << 4 | u64::from(d);
                            *digits += 1;
                        }
                        // Not a size hyper would take: it ends the
                        // connection, and the request is as good as over.
                        _ => return (bytes.len(), true),
                    },
                },
                ChunkAt::SizeEnd { size } => self.at = after_size(*size),
                ChunkAt::DataEnd(left) => {
                    *left -= 1;
                    if *left == 0 {
                        self.at = ChunkAt::Size {
                            size: 0,
                            digits: 0,
                            ext: false,
                        };
                    }
                }
                ChunkAt::Trailer { empty } => match b {
                    b'\n' if *empty => return (used + 1, true),
                    b'\n' => *empty = true,
                    b'\r' => {}
                    _ => *empty = false,
                },
            }
            used += 1;
        }
        (used, false)
    }
}

/// What follows a chunk's size line: its data, or after the last (size 0)
/// the trailers.
fn after_size(size: u64) -> ChunkAt {
    if size == 0 {
        ChunkAt::Trailer { empty: true }
    } else {
        ChunkAt::Data(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fed_whole(bytes: &[u8]) -> Progress {
        RequestClock::default().saw(bytes)
    }

    #[test]
    fn requests_end_where_http_says() {
        assert_eq!(fed_whole(b""), Progress::Idle);
        assert_eq!(fed_whole(b"G"), Progress::Busy);
        assert_eq!(fed_whole(b"GET / HTTP/1.1\r\nHost: x\r\n"), Progress::Busy);
        assert_eq!(
            fed_whole(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Progress::Idle
        );
        assert_eq!(fed_whole(b"GET / HTTP/1.1\nHost: x\n\n"), Progress::Idle);
        let post = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(fed_whole(post), Progress::Busy);
        assert_eq!(fed_whole(&[&post[..], b"1234"].concat()), Progress::Busy);
        assert_eq!(fed_whole(&[&post[..], b"12345"].concat()), Progress::Idle);
        // The next request on the connection starts the clock again.
        assert_eq!(fed_whole(&[&post[..], b"12345G"].concat()), Progress::Busy);
    }

    #[test]
    fn chunked_bodies_end_at_the_last_chunk_and_its_trailers() {
        let head = b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        let whole = |body: &[u8]| fed_whole(&[&head[..], body].concat());
        assert_eq!(whole(b"5\r\nhello\r\n"), Progress::Busy);
        assert_eq!(whole(b"5\r\nhello\r\n0\r\n"), Progress::Busy);
        assert_eq!(whole(b"5\r\nhello\r\n0\r\n\r\n"), Progress::Idle);
        assert_eq!(
            whole(b"5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n"),
            Progress::Idle
        );
        assert_eq!(whole(b"A\r\n0123456789\r\n0\r\n\r\n"), Progress::Idle);
    }

    #[test]
    fn bodies_over_the_cap_are_too_large() {
        let announced = format!(
            "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(fed_whole(announced.as_bytes()), Progress::TooLarge);
        let garbage = b"POST /a HTTP/1.1\r\nContent-Length: lots\r\n\r\n";
        assert_eq!(fed_whole(garbage), Progress::TooLarge);
        let mut clock = RequestClock::default();
        clock.saw(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        let chunk = format!("{:x}\r\n", 64 * 1024);
        let data = vec![b'x'; 64 * 1024];
        let mut last = Progress::Busy;
        for _ in 0..20 {
            clock.saw(chunk.as_bytes());
            last = clock.saw(&data);
            clock.saw(b"\r\n");
        }
        assert_eq!(last, Progress::TooLarge);
    }

    proptest! {
        /// However a stream of requests is cut into reads, the clock ends
        /// where it ends when given the stream at once.
        #[test]
        fn reads_cut_anywhere_end_the_same(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..4),
            chunked in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut stream = Vec::new();
            for body in &bodies {
                if chunked {
                    stream.extend_from_slice(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
                    for part in body.chunks(7) {
                        stream.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                        stream.extend_from_slice(part);
                        stream.extend_from_slice(b"\r\n");
                    }
                    stream.extend_from_slice(b"0\r\n\r\n");
                } else {
                    stream.extend_from_slice(
                        format!("POST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    stream.extend_from_slice(body);
                }
            }
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            at.sort_unstable();
            let mut clock = RequestClock::default();
            let mut from = 0;
            for to in at.into_iter().chain([stream.len()]) {
                clock.saw(&stream[from..to]);
                from = to;
            }
            prop_assert_eq!(clock.progress(), Progress::Idle);
        }

        /// No input panics the clock.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let _ = RequestClock::default().saw(&bytes);
        }
    }
}
