//! The fencing token on the wire, and the proof a replica gives of itself, both signed with the
//! cluster's shared secret (`cluster.fence_secret`, `IM_FENCE_SECRET`).
//!
//! A scheduling replica sends its lease's epoch with every upstream call as
//! `x-im-fence: <epoch>.<signature>`, the signature being the lowercase hex HMAC-SHA256 of
//! `im-fence/v1:<epoch>` under the secret. A gate that holds the secret accepts only tokens it can
//! verify, so nobody without the secret can push the epoch it has seen (and with it every
//! scheduler's calls) out of reach. A refused token is answered with the highest epoch the gate
//! has seen in `x-im-fence-highest`, which the real scheduler uses to raise its own epoch above
//! it (only while the lease in Redis is still its own): see ARCHITECTURE.md, "Fencing".
//!
//! Followers forwarding work to the scheduler add `x-im-replica: <replica>.<signature>` (over
//! `im-replica/v1:<replica>`), which exempts their address from the per-peer connection cap.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header a scheduler's upstream calls carry their fencing token in.
pub const HEADER: &str = "x-im-fence";
/// The header a refusal carries the highest epoch a gate has seen in.
pub const HIGHEST: &str = "x-im-fence-highest";
/// The header a replica proves itself with to another replica.
pub const REPLICA: &str = "x-im-replica";

/// The cluster's shared secret. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct FenceSecret(Vec<u8>);

impl std::fmt::Debug for FenceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FenceSecret(<set>)")
    }
}

impl FenceSecret {
    /// The secret `text` (spaces around it ignored); `None` when empty.
    pub fn new(text: &str) -> Option<FenceSecret> {
        let t = text.trim();
        (!t.is_empty()).then(|| FenceSecret(t.as_bytes().to_vec()))
    }

    fn mac(&self, message: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(message.as_bytes());
        let mut out = String::with_capacity(64);
        for b in mac.finalize().into_bytes() {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }

    fn matches(&self, message: &str, signature: &str) -> bool {
        bool::from(self.mac(message).as_bytes().ct_eq(signature.as_bytes()))
    }

    /// `epoch`'s token: `<epoch>.<signature>`.
    pub fn sign(&self, epoch: u64) -> String {
        format!("{epoch}.{}", self.mac(&format!("im-fence/v1:{epoch}")))
    }

    /// The epoch of a token signed with this secret; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<u64> {
        let (epoch, sig) = token.trim().split_once('.')?;
        let e = digits(epoch)?;
        self.matches(&format!("im-fence/v1:{e}"), sig).then_some(e)
    }

    /// The proof replica `id` sends: `<id>.<signature>`.
    pub fn prove(&self, replica: &str) -> String {
        format!(
            "{replica}.{}",
            self.mac(&format!("im-replica/v1:{replica}"))
        )
    }

    /// Whether `proof` is a replica's, signed with this secret.
    pub fn verify_replica(&self, proof: &str) -> bool {
        proof.trim().rsplit_once('.').is_some_and(|(id, sig)| {
            !id.is_empty() && self.matches(&format!("im-replica/v1:{id}"), sig)
        })
    }
}

/// The epoch of a token read without a secret (a gate or simulator that was given none): the
/// digits before an optional `.<signature>`.
pub fn unsigned_epoch(token: &str) -> Option<u64> {
    let t = token.trim();
    digits(t.split_once('.').map_or(t, |(e, _)| e))
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_under_its_own_secret_and_epoch() {
        let s = FenceSecret::new("s3cret").expect("secret");
        let t = s.sign(7);
        assert!(t.starts_with("7."));
        assert_eq!(s.verify(&t), Some(7));
        assert_eq!(FenceSecret::new("other").expect("secret").verify(&t), None);
        let forged = t.replacen('7', "8", 1);
        assert_eq!(
            s.verify(&forged),
            None,
            "another epoch under the same signature"
        );
        for junk in [
            "",
            "7",
            "7.",
            ".abc",
            "18446744073709551615",
            "x.y",
            "-1.00",
        ] {
            assert_eq!(s.verify(junk), None, "{junk:?}");
        }
        assert_eq!(unsigned_epoch(&t), Some(7));
        assert_eq!(unsigned_epoch("12"), Some(12));
        assert_eq!(unsigned_epoch("1e9"), None);
        assert!(FenceSecret::new("  ").is_none());
        assert_eq!(format!("{s:?}"), "FenceSecret(<set>)");
    }

    #[test]
    fn a_replica_proof_names_its_replica() {
        let s = FenceSecret::new("s3cret").expect("secret");
        let p = s.prove("host-1.abcd");
        assert!(s.verify_replica(&p));
        assert!(!s.verify_replica(&p.replace("host-1", "host-2")));
        assert!(!FenceSecret::new("x").expect("secret").verify_replica(&p));
        assert!(!s.verify_replica("host-1"));
    }
}
