//! Standard Webhooks signatures.
//!
//! A webhook carries `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed
//! with the base64-decoded endpoint secret. Secrets are written
//! `whsec_<base64>`. Any Standard Webhooks library verifies what [`sign`]
//! produces (the test below uses the specification's own example).

use std::fmt;
use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest secret bytes accepted.
pub const MIN_SECRET_BYTES: usize = 24;
/// Most secret bytes accepted.
pub const MAX_SECRET_BYTES: usize = 64;
/// What [`Secret::parse`] accepts, as a regular expression (the API's
/// document states it): `whsec_` and the canonical base64 of
/// [`MIN_SECRET_BYTES`] to [`MAX_SECRET_BYTES`] bytes: 8 to 20 full groups
/// of four characters (24 to 60 bytes), then perhaps a 21st, and perhaps a
/// padded group of one byte after it, or of one or two bytes instead of it
/// (the padding's unused bits zero).
pub const SECRET_PATTERN: &str = concat!(
    "^whsec_(?:[A-Za-z0-9+/]{4}){8,20}",
    "(?:[A-Za-z0-9+/]{4}(?:[A-Za-z0-9+/][AQgw]==)?",
    "|[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
);
/// Size of generated secrets.
const GENERATED_SECRET_BYTES: usize = 32;

/// An endpoint's signing secret. Its `Debug` output is redacted so that it
/// cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_SECRET_BYTES];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    /// Reads `whsec_<base64>`; the key must be 24-64 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("must start with {SECRET_PREFIX:?}"))?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| format!("must be {SECRET_PREFIX} followed by standard base64"))?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(format!(
                "must encode {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {}",
                key.len()
            ));
        }
        Ok(Self { key })
    }

    /// The `whsec_<base64>` text form. Only for storing the secret and for
    /// the API responses that are meant to reveal it.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length")
    }
}

/// The `v1,<base64>` signature of one message.
pub fn sign(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(SIGNATURE_LEN);
    sign_into(&mut out, secret, msg_id, timestamp, body);
    out
}

/// Length of one `v1,<base64>` signature.
const SIGNATURE_LEN: usize = 3 + 44;

/// Appends the `v1,<base64>` signature of one message to `out`, allocating
/// nothing else.
fn sign_into(out: &mut String, secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) {
    let mut mac = secret.mac();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    // The timestamp's digits go straight into the MAC: no String.
    let _ = write!(MacWriter(&mut mac), "{timestamp}");
    mac.update(b".");
    mac.update(body);
    out.push_str("v1,");
    BASE64.encode_string(mac.finalize().into_bytes(), out);
}

/// Feeds formatted text to a MAC.
struct MacWriter<'a>(&'a mut Hmac<Sha256>);

impl std::fmt::Write for MacWriter<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.0.update(text.as_bytes());
        Ok(())
    }
}

/// The `webhook-signature` header value: one `v1,` signature per secret,
/// space-separated (several while a secret is being rotated), built in one
/// allocation.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut out = String::with_capacity(SIGNATURE_LEN);
    for (n, secret) in secrets.into_iter().enumerate() {
        if n > 0 {
            out.push(' ');
        }
        sign_into(&mut out, secret, msg_id, timestamp, body);
    }
    out
}

/// Checks a `webhook-signature` header: true when any of its `v1,`
/// signatures matches, compared in constant time.
pub fn verify(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let mut mac = secret.mac();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    header.split(' ').any(|candidate| {
        candidate
            .strip_prefix("v1,")
            .and_then(|b64| BASE64.decode(b64).ok())
            .is_some_and(|sig| {
                use subtle::ConstantTimeEq;
                sig.ct_eq(expected.as_slice()).into()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_what_parse_accepts() {
        let pattern = regex::Regex::new(SECRET_PATTERN).unwrap();
        for bytes in 16..80 {
            let text = format!("{SECRET_PREFIX}{}", BASE64.encode(vec![0xa7; bytes]));
            assert_eq!(
                pattern.is_match(&text),
                Secret::parse(&text).is_ok(),
                "{bytes} bytes: {text}"
            );
            assert_eq!(
                pattern.is_match(&text),
                (MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes)
            );
        }
        // Padding whose unused bits are not zero, and no padding.
        for text in [
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(!pattern.is_match(text), "{text}");
            assert!(Secret::parse(text).is_err(), "{text}");
        }
    }

    /// The example from the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn verify_accepts_any_listed_signature_and_nothing_else() {
        let old = Secret::generate();
        let new = Secret::generate();
        let header = signature_header([&old, &new], "evt_1", 10, b"{}");
        assert!(verify(&old, "evt_1", 10, b"{}", &header));
        assert!(verify(&new, "evt_1", 10, b"{}", &header));
        assert!(!verify(&Secret::generate(), "evt_1", 10, b"{}", &header));
        assert!(!verify(&old, "evt_1", 11, b"{}", &header));
        assert!(!verify(&old, "evt_1", 10, b"{ }", &header));
    }

    #[test]
    fn secrets_round_trip_and_are_validated() {
        let secret = Secret::generate();
        assert_eq!(Secret::parse(&secret.expose()).unwrap(), secret);
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_!!!").is_err());
        assert!(
            Secret::parse("whsec_c2hvcnQ=")
                .unwrap_err()
                .contains("24 to 64 bytes")
        );
        assert_eq!(format!("{secret:?}"), "Secret(redacted)");
    }
}
