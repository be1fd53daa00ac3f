//! What a receiving benchmark connection hands out: deliveries with the
//! stamps their bodies carry, and how a stream of them ended.

/// A delivery's send time, publisher and sequence number, from its body.
pub type Stamp = (u64, usize, usize);

/// One delivery: its id where the protocol carries one, and its stamp if
/// its body has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub id: Option<u64>,
    pub stamp: Option<Stamp>,
}

/// How a stream of deliveries ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The connection closed without a word.
    Closed,
    /// The server said why.
    Said(String),
}

/// The stamp at the start of a body: send time (16 hex digits, ns),
/// publisher, sequence, each followed by a space. Read straight from the
/// bytes: it runs once per delivery.
pub fn unstamp(body: &[u8]) -> Option<Stamp> {
    let (sent, rest) = (body.get(..16)?, body.get(16..)?);
    let sent = sent.iter().try_fold(0u64, |n, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(digit))
    })?;
    let rest = rest.strip_prefix(b" ")?;
    let (publisher, rest) = decimal(rest)?;
    let (seq, _) = decimal(rest)?;
    Some((sent, publisher, seq))
}

/// A decimal number ended by a space, and what follows the space.
fn decimal(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let end = bytes.iter().position(|b| *b == b' ')?;
    if end == 0 || end > 19 {
        return None;
    }
    let n = bytes[..end].iter().try_fold(0usize, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + usize::from(b - b'0'))
    })?;
    Some((n, &bytes[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fanout::stamp;

    #[test]
    fn a_stamp_reads_back() {
        let body = stamp(3, 4711, 64);
        let (sent, publisher, seq) = unstamp(body.as_bytes()).unwrap();
        assert!(sent > 0);
        assert_eq!((publisher, seq), (3, 4711));
        assert_eq!(unstamp(b"not a stamp"), None);
        assert_eq!(unstamp(b"fffffffffffffffff 1 2 "), None, "17 hex digits");
        assert_eq!(unstamp(b"000000000000000a 1 2 "), Some((10, 1, 2)));
        assert_eq!(
            unstamp(b"000000000000000a 1 2"),
            None,
            "no space after the sequence"
        );
    }
}
