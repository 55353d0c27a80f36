//! Standard Webhooks (<https://www.standardwebhooks.com/>): the signature of a message is
//! `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")), sent with `webhook-id`,
//! `webhook-timestamp` (Unix seconds) and `webhook-signature` (one or more space-separated
//! signatures, so that secrets can rotate). Secrets are `whsec_` + base64 of the key bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The three headers of a signed message.
pub const ID_HEADER: &str = "webhook-id";
/// Unix seconds when the message was signed.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// `v1,<base64>` signatures, space-separated.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// How far a message's timestamp may be from now (either way) and still verify: the
/// specification's recommended five minutes.
pub const DEFAULT_TOLERANCE_S: i64 = 300;

/// A signing secret's key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a message did not verify, or a secret did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The secret is not `whsec_` + base64 of at least 24 bytes.
    #[error("a webhook secret is `whsec_` followed by the base64 of 24 to 64 random bytes")]
    BadSecret,
    /// A header is missing or not text.
    #[error("the `{0}` header is missing")]
    Missing(&'static str),
    /// The timestamp is not a number of seconds.
    #[error("`webhook-timestamp` is not Unix seconds")]
    BadTimestamp,
    /// The timestamp is too far from now.
    #[error("`webhook-timestamp` is {0} s from now, more than the tolerance")]
    Stale(i64),
    /// No signature matches.
    #[error("no `webhook-signature` matches the body")]
    NoMatch,
}

impl Secret {
    /// Parse `whsec_<base64>` (the prefix may be left out, as the specification's libraries
    /// accept).
    pub fn parse(text: &str) -> Result<Secret, SigningError> {
        let b64 = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
        let key = STANDARD.decode(b64).map_err(|_| SigningError::BadSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SigningError::BadSecret);
        }
        Ok(Secret(key))
    }

    /// A fresh random secret (32 bytes from the operating system), as `whsec_...` text.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        fill_random(&mut key);
        format!("whsec_{}", STANDARD.encode(key))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The `webhook-signature` value for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body)))
    }

    /// The checks of a message that need no body: its id and timestamp are there and the
    /// timestamp is within `tolerance_s` of `now`; the timestamp.
    pub fn check_timestamp(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        now: i64,
        tolerance_s: i64,
    ) -> Result<i64, SigningError> {
        id.filter(|i| !i.is_empty())
            .ok_or(SigningError::Missing(ID_HEADER))?;
        let ts = timestamp.ok_or(SigningError::Missing(TIMESTAMP_HEADER))?;
        let ts: i64 = ts.trim().parse().map_err(|_| SigningError::BadTimestamp)?;
        let skew = now.saturating_sub(ts);
        if skew.abs() > tolerance_s {
            return Err(SigningError::Stale(skew));
        }
        Ok(ts)
    }

    /// Verify a received message: the timestamp within `tolerance_s` of `now` and one of the
    /// `v1` signatures equal (in constant time) to the body's.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: i64,
        tolerance_s: i64,
    ) -> Result<(), SigningError> {
        let ts = self.check_timestamp(id, timestamp, now, tolerance_s)?;
        let id = id.unwrap_or_default();
        let signatures = signatures.ok_or(SigningError::Missing(SIGNATURE_HEADER))?;
        let expected = self.mac(id, ts, body);
        let matches = signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .any(|sig| bool::from(sig.as_slice().ct_eq(&expected)));
        if matches {
            Ok(())
        } else {
            Err(SigningError::NoMatch)
        }
    }
}

/// Random bytes from the operating system (`/dev/urandom`); a message id or secret must not be
/// guessable.
pub fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
    if filled.is_err() {
        // No /dev/urandom: mix the clock and the address space layout through SHA-256.
        use sha2::Digest;
        let seed = format!("{:?}{:p}", std::time::SystemTime::now(), &buf as *const _);
        let mut out = sha2::Sha256::digest(seed.as_bytes()).to_vec();
        while out.len() < buf.len() {
            out.extend(sha2::Sha256::digest(&out).to_vec());
        }
        buf.copy_from_slice(&out[..buf.len()]);
    }
}

/// A random message or job id: `prefix` + 24 base32-ish characters.
pub fn random_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bytes = [0u8; 24];
    fill_random(&mut bytes);
    let tail: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The specification's published test vector (the reference libraries' tests use it too): a
    // signature computed by this code alone would only show that it agrees with itself.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn verify(sig: &str, body: &[u8], now: i64) -> Result<(), SigningError> {
        Secret::parse(SECRET).expect("secret").verify(
            Some(ID),
            Some(&TIMESTAMP.to_string()),
            Some(sig),
            body,
            now,
            DEFAULT_TOLERANCE_S,
        )
    }

    #[test]
    fn signing_reproduces_the_specifications_test_vector() {
        let secret = Secret::parse(SECRET).expect("secret");
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn the_test_vector_verifies_and_any_change_does_not() {
        assert_eq!(verify(SIGNATURE, BODY, TIMESTAMP + 10), Ok(()));
        assert_eq!(
            verify(SIGNATURE, br#"{"test": 2432232315}"#, TIMESTAMP),
            Err(SigningError::NoMatch)
        );
        let other = Secret::parse(&Secret::generate()).expect("generated");
        assert_eq!(
            other.verify(
                Some(ID),
                Some(&TIMESTAMP.to_string()),
                Some(SIGNATURE),
                BODY,
                TIMESTAMP,
                300
            ),
            Err(SigningError::NoMatch)
        );
    }

    #[test]
    fn one_matching_signature_among_several_is_enough() {
        let rotated = format!("v1,bm90IGl0 v2,abc {SIGNATURE}");
        assert_eq!(verify(&rotated, BODY, TIMESTAMP), Ok(()));
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused_both_ways() {
        assert_eq!(
            verify(SIGNATURE, BODY, TIMESTAMP + 301),
            Err(SigningError::Stale(301))
        );
        assert_eq!(
            verify(SIGNATURE, BODY, TIMESTAMP - 301),
            Err(SigningError::Stale(-301))
        );
        assert_eq!(verify(SIGNATURE, BODY, TIMESTAMP + 300), Ok(()));
    }

    #[test]
    fn missing_headers_and_bad_secrets_are_named() {
        let s = Secret::parse(SECRET).expect("secret");
        assert_eq!(
            s.verify(None, Some("1"), Some(SIGNATURE), BODY, 1, 300),
            Err(SigningError::Missing(ID_HEADER))
        );
        assert_eq!(
            s.verify(Some(ID), Some("soon"), Some(SIGNATURE), BODY, 1, 300),
            Err(SigningError::BadTimestamp)
        );
        assert_eq!(
            Secret::parse("whsec_c2hvcnQ="),
            Err(SigningError::BadSecret)
        );
        assert_eq!(Secret::parse("whsec_!!"), Err(SigningError::BadSecret));
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_id("job_"), random_id("job_"));
        assert!(random_id("msg_").starts_with("msg_"));
    }
}
