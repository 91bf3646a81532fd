//! The DH-HMAC-CHAP secret representation (NVMe Base 2.0, 8.13.5.8):
//! `DHHC-1:xx:<base64 of key || CRC-32 of key, little-endian>:`, where `xx` names the hash
//! that transforms the key before use (00: none, 01-03: SHA-256/384/512) and the key is
//! 32, 48 or 64 bytes. The transformed key is HMAC(hash, key, NQN || "NVMe-over-Fabrics"),
//! with the NQN of whoever the key belongs to (the host's for a host key, the subsystem's
//! for a controller key).

use zeroize::Zeroizing;

use super::{crypto, AuthError, Digest};

const PREFIX: &str = "DHHC-1:";
const KEY_LENGTHS: [usize; 3] = [32, 48, 64];
const CRC_BYTES: usize = 4;
/// The text after the secret's NQN in the key transformation (NVMe Base 2.0, 8.13.5.8).
const TRANSFORM_LABEL: &[u8] = b"NVMe-over-Fabrics";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("it does not start with '{PREFIX}'")]
    Prefix,
    #[error("its transformation hash is not 00, 01, 02 or 03")]
    Hash,
    #[error("it does not end with ':'")]
    Terminator,
    #[error("its key is not valid base64")]
    Base64,
    #[error("its key holds {0} bytes; a key holds 32, 48 or 64 bytes and a CRC-32")]
    Length(usize),
    #[error("its CRC-32 does not match the key")]
    Crc,
}

/// A parsed secret; the key bytes are wiped when it drops and never printed.
pub struct DhchapSecret {
    transform: Option<Digest>,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for DhchapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DhchapSecret(transform {:?}, <{} bytes, redacted>)", self.transform, self.key.len())
    }
}

impl DhchapSecret {
    pub fn parse(text: &[u8]) -> Result<DhchapSecret, SecretError> {
        let text = std::str::from_utf8(text).map_err(|_| SecretError::Prefix)?;
        let rest = text.strip_prefix(PREFIX).ok_or(SecretError::Prefix)?;
        let (hash, rest) = rest.split_once(':').ok_or(SecretError::Hash)?;
        let transform = match hash {
            "00" => None,
            other => Some(
                u8::from_str_radix(other, 16)
                    .ok()
                    .filter(|_| other.len() == 2)
                    .and_then(Digest::from_id)
                    .ok_or(SecretError::Hash)?,
            ),
        };
        let encoded = rest.strip_suffix(':').ok_or(SecretError::Terminator)?;
        if encoded.contains(':') || encoded.bytes().any(|byte| byte.is_ascii_whitespace()) {
            return Err(SecretError::Base64);
        }
        let decoded = Zeroizing::new(openssl::base64::decode_block(encoded).map_err(|_| SecretError::Base64)?);
        let key_len = decoded.len().checked_sub(CRC_BYTES).ok_or(SecretError::Length(decoded.len()))?;
        if !KEY_LENGTHS.contains(&key_len) {
            return Err(SecretError::Length(key_len));
        }
        let (key, crc) = decoded.split_at(key_len);
        if crc32fast::hash(key).to_le_bytes() != crc {
            return Err(SecretError::Crc);
        }
        Ok(DhchapSecret { transform, key: Zeroizing::new(key.to_vec()) })
    }

    /// The representation of `key` with transformation `transform` (what nvme-cli's
    /// `gen-dhchap-key` prints).
    pub fn format(transform: Option<Digest>, key: &[u8]) -> String {
        let mut bytes = Zeroizing::new(key.to_vec());
        bytes.extend_from_slice(&crc32fast::hash(key).to_le_bytes());
        let id = transform.map_or(0, Digest::id);
        format!("{PREFIX}{id:02x}:{}:", openssl::base64::encode_block(&bytes))
    }

    pub fn transform(&self) -> Option<Digest> {
        self.transform
    }

    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    /// The key as the response computation uses it, for the owner named `nqn`.
    pub fn transformed(&self, nqn: &str) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        match self.transform {
            None => Ok(Zeroizing::new(self.key.to_vec())),
            Some(digest) => crypto::hmac(digest, &self.key, &[nqn.as_bytes(), TRANSFORM_LABEL]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// A 32-byte key 00 01 .. 1f.
    fn counting_key(len: usize) -> Vec<u8> {
        (0..len as u8).collect()
    }

    #[test]
    fn parses_what_it_formats_for_every_hash_and_length() {
        for transform in [None, Some(Digest::Sha256), Some(Digest::Sha384), Some(Digest::Sha512)] {
            for len in KEY_LENGTHS {
                let text = DhchapSecret::format(transform, &counting_key(len));
                let secret = DhchapSecret::parse(text.as_bytes()).unwrap();
                assert_eq!((secret.transform(), secret.key_len()), (transform, len), "{text}");
                assert_eq!(*secret.key, counting_key(len));
            }
        }
    }

    #[test]
    fn the_representation_matches_an_independent_encoder() {
        // Python: base64.b64encode(key + zlib.crc32(key).to_bytes(4, "little")), key = bytes(range(32)).
        assert_eq!(
            DhchapSecret::format(Some(Digest::Sha256), &counting_key(32)),
            "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:"
        );
    }

    #[test]
    fn refuses_malformed_secrets_by_what_is_wrong() {
        let good = DhchapSecret::format(None, &counting_key(32));
        let body = good.trim_start_matches("DHHC-1:00:").trim_end_matches(':').to_string();
        let check = |text: &str, expected: SecretError| {
            assert_eq!(DhchapSecret::parse(text.as_bytes()).unwrap_err(), expected, "{text}");
        };
        check("DHHC-2:00:abcd:", SecretError::Prefix);
        check("", SecretError::Prefix);
        check(&format!("DHHC-1:04:{body}:"), SecretError::Hash);
        check(&format!("DHHC-1:1:{body}:"), SecretError::Hash);
        check(&format!("DHHC-1:zz:{body}:"), SecretError::Hash);
        check(&format!("DHHC-1:00:{body}"), SecretError::Terminator);
        check("DHHC-1:00:not base64!:", SecretError::Base64);
        check(&format!("DHHC-1:00:{body} :"), SecretError::Base64);
        // 31 key bytes and a CRC.
        let short = DhchapSecret::format(None, &counting_key(31));
        check(&short, SecretError::Length(31));
        check("DHHC-1:00:AAE=:", SecretError::Length(2));
        // One bit of the CRC flipped.
        let mut bytes = counting_key(32);
        bytes.extend_from_slice(&(crc32fast::hash(&counting_key(32)) ^ 1).to_le_bytes());
        check(&format!("DHHC-1:00:{}:", openssl::base64::encode_block(&bytes)), SecretError::Crc);
        check(&String::from_utf8_lossy(&[0xff, 0xfe]), SecretError::Prefix);
    }

    #[test]
    fn the_key_transformation_matches_an_independent_hmac() {
        // Python: hmac.new(bytes(range(32)), NQN + b"NVMe-over-Fabrics", hashlib.sha256).hexdigest()
        const NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
        let secret = DhchapSecret::parse(DhchapSecret::format(Some(Digest::Sha256), &counting_key(32)).as_bytes());
        let transformed = secret.unwrap().transformed(NQN).unwrap();
        assert_eq!(hex(&transformed), TRANSFORM_SHA256);
        let secret = DhchapSecret::parse(DhchapSecret::format(Some(Digest::Sha512), &counting_key(64)).as_bytes());
        assert_eq!(hex(&secret.unwrap().transformed(NQN).unwrap()), TRANSFORM_SHA512);
        let plain = DhchapSecret::parse(DhchapSecret::format(None, &counting_key(48)).as_bytes()).unwrap();
        assert_eq!(*plain.transformed(NQN).unwrap(), counting_key(48), "00: the key as it is");
    }

    /// nvme-cli 2.3 (libnvme 1.3) prints the transformed key: `nvme gen-dhchap-key
    /// --secret=<00 01 02 ..> --key-length=L --hmac=H --nqn=NQN`; with --hmac=0 the key itself.
    #[test]
    fn the_representation_and_transformation_match_nvme_cli() {
        const NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
        assert_eq!(
            DhchapSecret::format(None, &counting_key(32)),
            "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:"
        );
        let printed = [
            (Digest::Sha256, 32, "DHHC-1:01:bHuByyp0b3RFSx1xQPMVO1HKmUWfzveoahfydpW4fNgSLMVm:"),
            (Digest::Sha384, 48, "DHHC-1:02:yRbznXvUOKyUzpjxLyIgLGvEOxsb9/CBo2/XbRG0sXMHJv918yV2tXSc+gbRp7T1eXmwtA==:"),
            (
                Digest::Sha512,
                64,
                "DHHC-1:03:XaedOIjF3axQewl4QMTIr4xwmePzL78hYgnSQQP1S88iKE5wNLtXmomXR19QrsC/88ytGEVjd56B9IxAUHG5cMGgMCQ=:",
            ),
        ];
        for (digest, len, nvme_cli) in printed {
            let ours = DhchapSecret::parse(DhchapSecret::format(Some(digest), &counting_key(len)).as_bytes()).unwrap();
            let theirs = DhchapSecret::parse(nvme_cli.as_bytes()).unwrap();
            assert_eq!(theirs.transform(), Some(digest));
            assert_eq!(*ours.transformed(NQN).unwrap(), *theirs.key, "{}", digest.name());
        }
    }

    const TRANSFORM_SHA256: &str = "6c7b81cb2a746f74454b1d7140f3153b51ca99459fcef7a86a17f27695b87cd8";
    const TRANSFORM_SHA512: &str = concat!(
        "5da79d3888c5ddac507b097840c4c8af8c7099e3f32fbf216209d24103f54bcf",
        "22284e7034bb579a8997475f50aec0bff3ccad184563779e81f48c405071b970"
    );

    #[test]
    fn debug_output_hides_the_key() {
        let secret = DhchapSecret::parse(DhchapSecret::format(None, &[0xab; 32]).as_bytes()).unwrap();
        let shown = format!("{secret:?}");
        assert!(shown.contains("redacted") && !shown.contains("ab, ") && !shown.contains("171"), "{shown}");
    }
}
