//! Proving the mesh secret without sending it.
//!
//! Each side sends a fresh random nonce in its `hello`; each answers with
//! HMAC-SHA256(secret, context ‖ other's nonce ‖ own nonce ‖ own name). A
//! proof binds the challenger's nonce (so it cannot be replayed on another
//! link) and the prover's name (so one node cannot pass off another's proof).

use hmac::{Hmac, Mac};
use sha2::Sha256;

const CONTEXT: &[u8] = b"meshtalk-peer-v1";

/// 32 random bytes, hex-encoded.
pub fn nonce() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// The proof `prover` sends in answer to `challenge`.
pub fn prove(secret: &[u8], challenge: &str, own_nonce: &str, prover: &str) -> String {
    hex(&mac(secret, challenge, own_nonce, prover)
        .finalize()
        .into_bytes())
}

/// Checks, in constant time, a proof `prover` sent for our `challenge`.
pub fn verify(
    secret: &[u8],
    challenge: &str,
    their_nonce: &str,
    prover: &str,
    proof: &str,
) -> bool {
    let Some(bytes) = unhex(proof) else {
        return false;
    };
    mac(secret, challenge, their_nonce, prover)
        .verify_slice(&bytes)
        .is_ok()
}

fn mac(secret: &[u8], challenge: &str, prover_nonce: &str, prover: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for part in [
        CONTEXT,
        challenge.as_bytes(),
        prover_nonce.as_bytes(),
        prover.as_bytes(),
    ] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of `docs/mesh.md`.
    #[test]
    fn the_documented_test_vector_holds() {
        let secret = b"a shared secret of the test mesh";
        let (a, b) = ("11".repeat(32), "22".repeat(32));
        assert_eq!(
            prove(secret, &a, &b, "b"),
            "ed8cf117f568fe8326511b6b16564db19fa4c3f0a8fccf7807c1c41d591552ee"
        );
        assert_eq!(
            prove(secret, &b, &a, "a"),
            "c917ce49c6229f99244ae5775eb68bf82c9736d479d6905f7988a5d42335319d"
        );
    }

    #[test]
    fn a_proof_holds_only_for_its_secret_challenge_and_name() {
        let (a, b) = (nonce(), nonce());
        let proof = prove(b"s3cret", &a, &b, "node-b");
        assert!(verify(b"s3cret", &a, &b, "node-b", &proof));
        assert!(!verify(b"other", &a, &b, "node-b", &proof));
        assert!(!verify(b"s3cret", &b, &a, "node-b", &proof));
        assert!(!verify(b"s3cret", &a, &b, "node-c", &proof));
        assert!(!verify(b"s3cret", &a, &b, "node-b", "zz"));
        assert!(!verify(b"s3cret", &a, &b, "node-b", ""));
    }
}
