//! VCC Live's encrypted webhook bodies: base64 of AES-256-CTR ciphertext, the IV as hex in the
//! `iv` query parameter, the key configured as hex (`vcc.encryption_key`). Pure: bytes in, bytes out.

use aes::cipher::{KeyIvInit, StreamCipher};
use base64::Engine as _;

use super::PayloadError;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// A 32-byte AES-256 key read from hex.
#[derive(Clone)]
pub(crate) struct VccKey([u8; 32]);

impl std::fmt::Debug for VccKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VccKey(***)")
    }
}

impl VccKey {
    /// Reads the key from its hex form (64 hex digits).
    pub fn from_hex(hex_key: &str) -> Result<VccKey, String> {
        let bytes = hex::decode(hex_key.trim())
            .map_err(|_| "vcc.encryption_key must be hex (64 hex digits: a 32-byte key)".to_string())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "vcc.encryption_key must be 32 bytes (64 hex digits)".to_string())?;
        Ok(VccKey(key))
    }
}

fn refused(message: &str) -> PayloadError {
    PayloadError::InvalidJson(message.to_string())
}

/// Decrypts an encrypted delivery: `body` is base64 (standard alphabet, padding optional,
/// surrounding whitespace ignored) of AES-256-CTR ciphertext under `key` with the IV `iv_hex`
/// (16 bytes as 32 hex digits). A bad IV or body is refused like bad JSON; a wrong key yields bytes
/// that are not JSON, which the parser then refuses.
pub(crate) fn decrypt(key: &VccKey, iv_hex: &str, body: &[u8]) -> Result<Vec<u8>, PayloadError> {
    let iv: [u8; 16] = hex::decode(iv_hex.trim())
        .ok()
        .and_then(|iv| iv.try_into().ok())
        .ok_or_else(|| refused("the `iv` query parameter must be 16 bytes as 32 hex digits"))?;
    let text = std::str::from_utf8(body).map_err(|_| refused("an encrypted body must be base64 text"))?;
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut data = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(compact.trim_end_matches('='))
        .map_err(|_| refused("an encrypted body (with `iv`) must be base64"))?;
    let mut cipher = Aes256Ctr::new(&key.0.into(), &iv.into());
    cipher.apply_keystream(&mut data);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn decrypts_the_nist_sp800_38a_ctr_aes256_vector() {
        // NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt, first two blocks.
        let key = VccKey::from_hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4").unwrap();
        let ciphertext = hex::decode("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5").unwrap();
        let plain = decrypt(&key, "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff", b64(&ciphertext).as_bytes()).unwrap();
        assert_eq!(
            hex::encode(plain),
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
        );
    }

    #[test]
    fn bad_iv_bad_base64_and_bad_keys_are_refused() {
        let key = VccKey::from_hex(&"ab".repeat(32)).unwrap();
        for iv in ["", "zz", "00ff", &"00".repeat(17)] {
            assert!(decrypt(&key, iv, b"AAAA").is_err(), "iv {iv:?}");
        }
        assert!(decrypt(&key, &"00".repeat(16), b"not base64 !!").is_err());
        assert!(decrypt(&key, &"00".repeat(16), &[0xff, 0xfe]).is_err());
        assert!(VccKey::from_hex("abcd").is_err());
        assert!(VccKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{key:?}"), "VccKey(***)");
    }
}
