//! The Noise handshake that opens every mesh link, and the encrypted
//! transport after it.
//!
//! `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`: both sides mix a key derived from
//! the mesh secret into the handshake before anything else, so a side
//! without the secret can neither write a message the other accepts nor read
//! one, and the secret never crosses the wire. Both sides bring fresh
//! ephemeral keys, so every link has keys of its own: bytes recorded from
//! one link are noise on any other. After the two handshake messages every
//! byte of the peer protocol travels inside Noise transport messages, each
//! authenticated, so a byte altered in flight is caught and ends the link.
//! `docs/mesh.md` gives the layout byte by byte.

use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use sha2::{Digest, Sha256};
use snow::TransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The Noise protocol every link speaks.
pub const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: a node speaking another version of the
/// peer protocol fails the handshake instead of misreading what follows.
pub const PROLOGUE: &[u8] = b"meshtalk mesh v2";
/// Hashed before the secret, so the pre-shared key is used for nothing else.
const PSK_CONTEXT: &[u8] = b"meshtalk mesh psk v1\0";
/// Each of the two handshake messages: an ephemeral public key (32 bytes)
/// and the tag of an empty encrypted payload (16 bytes).
pub const HANDSHAKE_LEN: usize = 48;
/// The authentication tag of every transport message.
pub const TAG_LEN: usize = 16;
/// Largest Noise message, tag included: the Noise specification's bound, and
/// what a 2-byte length prefix can say.
pub const MAX_MESSAGE: usize = 65535;
/// Most frame-stream bytes one transport message carries.
pub const MAX_CHUNK: usize = MAX_MESSAGE - TAG_LEN;
/// A responder that cannot authenticate the initiator says so with an empty
/// message before closing. It is unauthenticated, so it can only change
/// what the dialler reports, never what it trusts.
const REFUSAL: [u8; 2] = [0, 0];

#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection during the handshake")]
    Closed,
    #[error("the peer does not hold this mesh's secret: its handshake did not verify")]
    WrongSecret,
    #[error(
        "the peer refused the handshake: it holds another mesh secret or speaks another protocol version"
    )]
    Refused,
    #[error("not a meshtalk mesh handshake: {0}")]
    Malformed(String),
    #[error(
        "integrity failure: a message from the peer did not authenticate (altered in flight, replayed or forged)"
    )]
    Integrity,
    #[error("noise: {0}")]
    Noise(snow::Error),
}

impl From<snow::Error> for NoiseError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Decrypt => NoiseError::Integrity,
            e => NoiseError::Noise(e),
        }
    }
}

/// The 32-byte pre-shared key of a mesh: SHA-256 over a context string and
/// the secret, so a secret of any length gives a key of the size Noise needs.
pub fn psk(secret: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(PSK_CONTEXT);
    hash.update(secret);
    hash.finalize().into()
}

fn builder(psk: &[u8; 32]) -> Result<snow::Builder<'_>, snow::Error> {
    let params: snow::params::NoiseParams = PATTERN.parse()?;
    snow::Builder::new(params).prologue(PROLOGUE)?.psk(0, psk)
}

/// Reads one handshake message; `None` is the refusal.
async fn read_handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<[u8; HANDSHAKE_LEN]>, NoiseError> {
    let eof = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => NoiseError::Closed,
        _ => NoiseError::Io(e),
    };
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(eof)?;
    match u16::from_be_bytes(len) as usize {
        0 => Ok(None),
        HANDSHAKE_LEN => {
            let mut message = [0u8; HANDSHAKE_LEN];
            stream.read_exact(&mut message).await.map_err(eof)?;
            Ok(Some(message))
        }
        other => Err(NoiseError::Malformed(format!(
            "a handshake message of {other} bytes, not {HANDSHAKE_LEN}"
        ))),
    }
}

async fn write_handshake<S: AsyncWrite + Unpin>(
    stream: &mut S,
    noise: &mut snow::HandshakeState,
) -> Result<(), NoiseError> {
    let mut message = [0u8; 2 + HANDSHAKE_LEN];
    let len = noise.write_message(&[], &mut message[2..])?;
    if len != HANDSHAKE_LEN {
        return Err(NoiseError::Malformed(format!(
            "wrote a handshake message of {len} bytes"
        )));
    }
    message[..2].copy_from_slice(&(HANDSHAKE_LEN as u16).to_be_bytes());
    stream.write_all(&message).await?;
    Ok(())
}

/// The dialler's side of the handshake. On success every later byte in
/// both directions goes through the returned [`Transport`].
pub async fn initiate<S>(stream: &mut S, secret: &[u8]) -> Result<Transport, NoiseError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let psk = psk(secret);
    let mut noise = builder(&psk)?.build_initiator()?;
    write_handshake(stream, &mut noise).await?;
    let Some(reply) = read_handshake(stream).await? else {
        return Err(NoiseError::Refused);
    };
    // The payload is empty: the message length leaves no room for one.
    let mut payload = [0u8; HANDSHAKE_LEN];
    noise
        .read_message(&reply, &mut payload)
        .map_err(|_| NoiseError::WrongSecret)?;
    Ok(Transport::new(noise.into_transport_mode()?))
}

/// The listener's side of the handshake. A dialler that fails it is told
/// so with the refusal before the connection closes.
pub async fn respond<S>(stream: &mut S, secret: &[u8]) -> Result<Transport, NoiseError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let psk = psk(secret);
    let mut noise = builder(&psk)?.build_responder()?;
    let first = match read_handshake(stream).await {
        Ok(Some(first)) => first,
        Ok(None) => {
            return Err(refuse(
                stream,
                NoiseError::Malformed("an empty handshake message".into()),
            )
            .await);
        }
        Err(e @ NoiseError::Malformed(_)) => return Err(refuse(stream, e).await),
        Err(e) => return Err(e),
    };
    let mut payload = [0u8; HANDSHAKE_LEN];
    if noise.read_message(&first, &mut payload).is_err() {
        return Err(refuse(stream, NoiseError::WrongSecret).await);
    }
    write_handshake(stream, &mut noise).await?;
    Ok(Transport::new(noise.into_transport_mode()?))
}

async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, why: NoiseError) -> NoiseError {
    let _ = stream.write_all(&REFUSAL).await;
    let _ = stream.shutdown().await;
    why
}

/// Both directions of an established link's encryption. The reader and the
/// writer of a link each hold a clone; snow keeps both directions' nonces
/// in one state, which each takes for one message at a time.
#[derive(Clone)]
pub struct Transport {
    state: Arc<Mutex<TransportState>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    fn new(state: TransportState) -> Self {
        Transport {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TransportState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `plain` (any run of frame-stream bytes) to `out` as framed
    /// transport messages of at most [`MAX_CHUNK`] plaintext bytes each.
    pub fn seal(&self, plain: &[u8], out: &mut BytesMut) -> Result<(), NoiseError> {
        let mut state = self.state();
        for chunk in plain.chunks(MAX_CHUNK) {
            let start = out.len();
            out.resize(start + 2 + chunk.len() + TAG_LEN, 0);
            let len = state.write_message(chunk, &mut out[start + 2..])?;
            out[start..start + 2].copy_from_slice(&(len as u16).to_be_bytes());
            out.truncate(start + 2 + len);
        }
        Ok(())
    }

    /// Takes one whole transport message off the front of `wire`, if one has
    /// arrived, and appends its plaintext to `plain`. Returns whether it
    /// took one. An error means the link can no longer be trusted.
    pub fn open(&self, wire: &mut BytesMut, plain: &mut BytesMut) -> Result<bool, NoiseError> {
        if wire.len() < 2 {
            return Ok(false);
        }
        let len = u16::from_be_bytes([wire[0], wire[1]]) as usize;
        if wire.len() < 2 + len {
            wire.reserve(2 + len - wire.len());
            return Ok(false);
        }
        wire.advance(2);
        let message = wire.split_to(len);
        let start = plain.len();
        plain.resize(start + len, 0);
        let opened = self.state().read_message(&message, &mut plain[start..]);
        match opened {
            Ok(n) => {
                plain.truncate(start + n);
                Ok(true)
            }
            Err(e) => {
                plain.truncate(start);
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        a: &[u8],
        b: &[u8],
    ) -> (Result<Transport, NoiseError>, Result<Transport, NoiseError>) {
        let (mut x, mut y) = tokio::io::duplex(4096);
        tokio::join!(initiate(&mut x, a), respond(&mut y, b))
    }

    /// The test vector of `docs/mesh.md`.
    #[test]
    fn the_documented_psk_holds() {
        let hex: String = psk(b"a shared secret of the test mesh")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "ad0bd69268c04bda1f9310ade9f2ae0d1b91dd42fbcd95c61569b46adda20cda"
        );
    }

    #[test]
    fn the_psk_depends_on_every_byte_of_the_secret() {
        assert_eq!(psk(b"0123456789abcdef"), psk(b"0123456789abcdef"));
        assert_ne!(psk(b"0123456789abcdef"), psk(b"0123456789abcdeF"));
        assert_ne!(psk(b"0123456789abcdef"), psk(b"0123456789abcdef0"));
    }

    #[tokio::test]
    async fn the_same_secret_links_and_frames_cross_in_any_size() {
        let (dialler, listener) = pair(b"a shared secret!", b"a shared secret!").await;
        let (dialler, listener) = (dialler.unwrap(), listener.unwrap());
        // Larger than one message: it spans several.
        let stream: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = BytesMut::new();
        dialler.seal(&stream, &mut wire).unwrap();
        assert_eq!(wire.len(), stream.len() + 4 * (2 + TAG_LEN));
        let mut plain = BytesMut::new();
        while listener.open(&mut wire, &mut plain).unwrap() {}
        assert!(wire.is_empty());
        assert_eq!(&plain[..], &stream[..]);
        // And the other way.
        let mut wire = BytesMut::new();
        listener.seal(b"back", &mut wire).unwrap();
        let mut plain = BytesMut::new();
        assert!(dialler.open(&mut wire, &mut plain).unwrap());
        assert_eq!(&plain[..], b"back");
    }

    #[tokio::test]
    async fn another_secret_is_refused_on_both_sides() {
        let (dialler, listener) = pair(b"a shared secret!", b"another secret!!").await;
        assert!(matches!(dialler, Err(NoiseError::Refused)), "{dialler:?}");
        assert!(
            matches!(listener, Err(NoiseError::WrongSecret)),
            "{listener:?}"
        );
    }

    #[tokio::test]
    async fn an_altered_or_replayed_message_fails_its_integrity_check() {
        let (dialler, listener) = pair(b"a shared secret!", b"a shared secret!").await;
        let (dialler, listener) = (dialler.unwrap(), listener.unwrap());
        let mut wire = BytesMut::new();
        dialler.seal(b"first", &mut wire).unwrap();
        let recorded = wire.clone();
        let mut plain = BytesMut::new();
        assert!(listener.open(&mut wire, &mut plain).unwrap());
        // The same bytes again: the nonce has moved on.
        let mut again = recorded.clone();
        assert!(matches!(
            listener.open(&mut again, &mut plain),
            Err(NoiseError::Integrity)
        ));

        let (dialler, listener) = pair(b"a shared secret!", b"a shared secret!").await;
        let (dialler, listener) = (dialler.unwrap(), listener.unwrap());
        // A message of another link.
        let mut replayed = recorded.clone();
        assert!(matches!(
            listener.open(&mut replayed, &mut plain),
            Err(NoiseError::Integrity)
        ));
        let mut wire = BytesMut::new();
        dialler.seal(b"second", &mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert!(matches!(
            listener.open(&mut wire, &mut BytesMut::new()),
            Err(NoiseError::Integrity)
        ));
        // Too short to hold a tag.
        let mut short = BytesMut::from(&[0u8, 3, 1, 2, 3][..]);
        let (_, listener) = pair(b"a shared secret!", b"a shared secret!").await;
        assert!(matches!(
            listener.unwrap().open(&mut short, &mut BytesMut::new()),
            Err(NoiseError::Integrity)
        ));
    }

    #[tokio::test]
    async fn garbage_instead_of_a_handshake_is_refused() {
        let (mut x, mut y) = tokio::io::duplex(4096);
        x.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let refused = respond(&mut y, b"a shared secret!").await;
        assert!(
            matches!(refused, Err(NoiseError::Malformed(_))),
            "{refused:?}"
        );
        let mut back = Vec::new();
        x.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, REFUSAL);
    }
}
