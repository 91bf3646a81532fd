//! The computations of DH-HMAC-CHAP (NVMe Base 2.0, 8.13.5), every primitive from
//! OpenSSL: HMAC and SHA-2 for responses, DH modular exponentiation over the RFC 7919
//! groups, and its random generator for challenges and private values.

use openssl::bn::BigNum;
use openssl::dh::Dh;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use zeroize::Zeroizing;

use super::{AuthError, DhGroup, Digest};

/// HMAC over the concatenation of `parts`.
pub fn hmac(digest: Digest, key: &[u8], parts: &[&[u8]]) -> Result<Zeroizing<Vec<u8>>, AuthError> {
    let pkey = PKey::hmac(key)?;
    let mut signer = Signer::new(digest.md(), &pkey)?;
    for part in parts {
        signer.update(part)?;
    }
    let mac = Zeroizing::new(signer.sign_to_vec()?);
    debug_assert_eq!(mac.len(), digest.hash_len());
    Ok(mac)
}

/// Fills `out` from OpenSSL's generator.
pub fn random(out: &mut [u8]) -> Result<(), AuthError> {
    Ok(openssl::rand::rand_bytes(out)?)
}

/// Whose response is computed: the host's (to the controller's challenge) or the
/// controller's (to the host's, in bidirectional authentication).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Responder {
    Host,
    Controller,
}

/// The inputs of one response (NVMe Base 2.0, 8.13.5.2 and 8.13.5.3).
pub struct ResponseInput<'a> {
    pub digest: Digest,
    /// The responder's transformed key ([`super::secret::DhchapSecret::transformed`]).
    pub key: &'a [u8],
    pub challenge: &'a [u8],
    /// The DH shared secret g^xy mod p, when a group other than null was negotiated.
    pub dh_secret: Option<&'a [u8]>,
    pub seqnum: u32,
    pub transaction: u16,
    /// Secure channel concatenation: 0, none.
    pub scc: u8,
    pub hostnqn: &'a str,
    pub subnqn: &'a str,
}

/// The augmented challenge Ca = HMAC(H(g^xy mod p), C), or C itself without DH.
fn augmented_challenge(
    digest: Digest,
    challenge: &[u8],
    dh_secret: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, AuthError> {
    match dh_secret {
        None => Ok(Zeroizing::new(challenge.to_vec())),
        Some(secret) => {
            let hashed = Zeroizing::new(openssl::hash::hash(digest.md(), secret)?.to_vec());
            hmac(digest, &hashed, &[challenge])
        }
    }
}

/// R = HMAC(K, Ca || seqnum || T_ID || SC_C || role || NQN1 || 00h || NQN2): the host
/// says "HostHost" and puts its own NQN first, the controller says "Controller" and puts
/// the subsystem's first.
pub fn response(responder: Responder, input: &ResponseInput<'_>) -> Result<Zeroizing<Vec<u8>>, AuthError> {
    if input.challenge.len() != input.digest.hash_len() {
        return Err(AuthError::Crypto(format!(
            "challenge of {} bytes for {}",
            input.challenge.len(),
            input.digest.name()
        )));
    }
    let augmented = augmented_challenge(input.digest, input.challenge, input.dh_secret)?;
    let (role, first, second): (&[u8], &str, &str) = match responder {
        Responder::Host => (b"HostHost", input.hostnqn, input.subnqn),
        Responder::Controller => (b"Controller", input.subnqn, input.hostnqn),
    };
    hmac(
        input.digest,
        input.key,
        &[
            &augmented,
            &input.seqnum.to_le_bytes(),
            &input.transaction.to_le_bytes(),
            &[input.scc],
            role,
            first.as_bytes(),
            &[0],
            second.as_bytes(),
        ],
    )
}

/// Compares two responses in constant time.
pub fn responses_match(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// An ephemeral DH key pair in one of the RFC 7919 groups.
pub struct DhKey {
    group: DhGroup,
    dh: Dh<Private>,
}

impl DhKey {
    pub fn generate(group: DhGroup) -> Result<DhKey, AuthError> {
        let prime = group.prime_hex().ok_or(AuthError::BadPublicValue(group.name()))?;
        let params = Dh::from_pqg(BigNum::from_hex_str(prime)?, None, BigNum::from_u32(2)?)?;
        Ok(DhKey { group, dh: params.generate_key()? })
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// g^x mod p, big-endian, padded to the group's size (DHVLEN).
    pub fn public_value(&self) -> Result<Vec<u8>, AuthError> {
        Ok(self.dh.public_key().to_vec_padded(self.group.value_len() as i32)?)
    }

    /// g^xy mod p from the peer's public value, padded to the group's size. A value of
    /// the wrong length, or outside 2..p-2 (which would force a known secret), is refused.
    pub fn shared_secret(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        let bad = AuthError::BadPublicValue(self.group.name());
        if peer.len() != self.group.value_len() {
            return Err(bad);
        }
        let value = BigNum::from_slice(peer)?;
        let mut upper = self.dh.prime_p().to_owned()?;
        upper.sub_word(1)?;
        if value <= BigNum::from_u32(1)? || value >= upper {
            return Err(bad);
        }
        let secret = Zeroizing::new(self.dh.compute_key(&value).map_err(|_| bad)?);
        // OpenSSL drops leading zero bytes; the computations use the full width.
        let mut padded = Zeroizing::new(vec![0u8; self.group.value_len()]);
        let start = padded.len().checked_sub(secret.len()).ok_or(AuthError::BadPublicValue(self.group.name()))?;
        padded[start..].copy_from_slice(&secret);
        Ok(padded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a group prime is a safe prime (p and (p-1)/2 prime) with `rounds` of
    /// Miller-Rabin: for the tests of the embedded constants.
    fn is_safe_prime(group: DhGroup, rounds: i32) -> bool {
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        let p = BigNum::from_hex_str(group.prime_hex().unwrap()).unwrap();
        // (p - 1) / 2 of an odd p is p shifted right by one.
        let mut q = BigNum::new().unwrap();
        q.rshift1(&p).unwrap();
        p.is_prime(rounds, &mut ctx).unwrap() && q.is_prime(rounds, &mut ctx).unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn the_embedded_primes_are_the_rfc_7919_groups() {
        for group in DhGroup::ALL.into_iter().filter(|group| *group != DhGroup::Null) {
            let prime = group.prime_hex().unwrap();
            assert_eq!(prime.len(), group.value_len() * 2, "{}", group.name());
            // RFC 7919: the top and bottom 64 bits are all ones, then e's digits follow.
            assert!(prime.starts_with("FFFFFFFFFFFFFFFFADF85458A2BB4A9A"), "{}", group.name());
            assert!(prime.ends_with("FFFFFFFFFFFFFFFF"), "{}", group.name());
        }
        assert!(is_safe_prime(DhGroup::Ffdhe2048, 2));
        assert!(is_safe_prime(DhGroup::Ffdhe3072, 1));
    }

    #[test]
    fn both_sides_of_an_exchange_derive_the_same_secret() {
        for group in [DhGroup::Ffdhe2048, DhGroup::Ffdhe3072] {
            let (a, b) = (DhKey::generate(group).unwrap(), DhKey::generate(group).unwrap());
            let (pa, pb) = (a.public_value().unwrap(), b.public_value().unwrap());
            assert_eq!((pa.len(), pb.len()), (group.value_len(), group.value_len()));
            let (sa, sb) = (a.shared_secret(&pb).unwrap(), b.shared_secret(&pa).unwrap());
            assert_eq!(*sa, *sb);
            assert_eq!(sa.len(), group.value_len());
            assert_ne!(pa, pb);
        }
    }

    #[test]
    fn degenerate_or_misshapen_public_values_are_refused() {
        let key = DhKey::generate(DhGroup::Ffdhe2048).unwrap();
        let bad = Err(AuthError::BadPublicValue("ffdhe2048"));
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert_eq!(key.shared_secret(&one).map(|_| ()), bad);
        assert_eq!(key.shared_secret(&[0u8; 256]).map(|_| ()), bad);
        let mut p_minus_1 = BigNum::from_hex_str(DhGroup::Ffdhe2048.prime_hex().unwrap()).unwrap();
        p_minus_1.sub_word(1).unwrap();
        assert_eq!(key.shared_secret(&p_minus_1.to_vec_padded(256).unwrap()).map(|_| ()), bad);
        assert_eq!(key.shared_secret(&[0xff; 256]).map(|_| ()), bad, "above p");
        assert_eq!(key.shared_secret(&[2u8; 255]).map(|_| ()), bad, "short");
        assert_eq!(key.shared_secret(&[2u8; 384]).map(|_| ()), bad, "another group's size");
    }

    /// The responses match an independent computation of the formulas (Python's hmac and
    /// hashlib over the same inputs).
    #[test]
    fn responses_match_an_independent_computation() {
        let key: Vec<u8> = (0..32).collect();
        let challenge: Vec<u8> = (100..132).collect();
        let dh_secret = vec![7u8; 256];
        let compute = |responder, dh: Option<&[u8]>| {
            let (seqnum, transaction) = (0x01020304, 0xabcd);
            let input = ResponseInput {
                digest: Digest::Sha256,
                key: &key,
                challenge: &challenge,
                dh_secret: dh,
                seqnum,
                transaction,
                scc: 0,
                hostnqn: "nqn.host",
                subnqn: "nqn.sub",
            };
            response(responder, &input).unwrap()
        };
        let host = compute(Responder::Host, None);
        assert_eq!(hex(&host), HOST_NULL);
        let ctrl = compute(Responder::Controller, None);
        assert_eq!(hex(&ctrl), CTRL_NULL);
        assert_eq!(hex(&compute(Responder::Host, Some(&dh_secret))), HOST_DH);
        assert!(responses_match(&host, &host) && !responses_match(&host, &ctrl) && !responses_match(&host, &host[1..]));
    }

    const HOST_NULL: &str = "647f3085ebe5bcb76a862598c059d119c123ea831663df8b5ba55bd54e906394";
    const CTRL_NULL: &str = "5222b57a588f07ef22425bbd913a724af9a5695f020c9d8c76172fe6f3a3b9ef";
    const HOST_DH: &str = "94c4225669fc6448c5c5ba5e940b4ff4fe2387e546021df91c423bd63da006f6";
}
