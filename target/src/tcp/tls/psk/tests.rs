use super::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The configured PSK of libnvme's own PSK tests (test/psk.c).
const KEY32: [u8; 32] = [
    0x55, 0x12, 0xDB, 0xB6, 0x73, 0x7D, 0x01, 0x06, 0xF6, 0x59, 0x75, 0xB7, 0x73, 0xDF, 0xB0, 0x11, 0xFF, 0xC3, 0x44,
    0xBC, 0xF4, 0x42, 0xE2, 0xDD, 0x6D, 0x8B, 0xC4, 0x87, 0x0B, 0x5D, 0x5B, 0x03,
];
const HOST: &str = "nqn.psk-test-host";
const SUBSYS: &str = "nqn.psk-test-subsys";

fn key48() -> Vec<u8> {
    let mut key = KEY32.to_vec();
    key.extend_from_slice(&KEY32[16..]);
    key
}

#[test]
fn formats_as_libnvme_exports_the_same_keys() {
    // libnvme's nvme_export_tls_key_versioned vectors (CRC-32 and base64 included).
    assert_eq!(
        *ConfiguredPsk::format(None, &KEY32),
        "NVMeTLSkey-1:00:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:"
    );
    assert_eq!(
        *ConfiguredPsk::format(Some(PskHash::Sha256), &KEY32),
        "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:"
    );
    assert_eq!(
        *ConfiguredPsk::format(Some(PskHash::Sha384), &key48()),
        "NVMeTLSkey-1:02:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwP/w0S89ELi3W2LxIcLXVsDn8kXZQ==:"
    );
}

#[test]
fn accepts_keys_nvme_cli_generated_and_checked() {
    // `nvme gen-tls-key --hmac=1|2` (nvme-cli 2.3), each reported valid by `check-tls-key`.
    let sha256 = ConfiguredPsk::parse(b"NVMeTLSkey-1:01:LIHX2KkVyDsOzAxpkMiHg+SDAJmBRCyi6GYSQkpCnw7EUuLj:\n").unwrap();
    assert_eq!(sha256.cipher_hash(), PskHash::Sha256);
    let sha384 = ConfiguredPsk::parse(
        b"NVMeTLSkey-1:02:6t+6lQiYkOCgGoTr7lCPMJRN1a1zkiI5KYBDt9HbihFNJJQvohWETDMIaOW279x32hYJ/g==:",
    )
    .unwrap();
    assert_eq!(sha384.cipher_hash(), PskHash::Sha384);
}

#[test]
fn derives_the_retained_and_tls_psks_and_identity() {
    // Figures from an independent HKDF (Python's hmac module, RFC 5869 by the letter).
    let cases = [
        (
            "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:",
            "073311dec37e219ff3acd43f130130c5bdd443c066e1cc3424e49030234ff7d5",
            "NVMe0R01 nqn.psk-test-host nqn.psk-test-subsys",
            "05c6503551ad136e6ee32e6eeb3f6d500b69701d84ec71e328f65c7f51566f68",
        ),
        (
            "NVMeTLSkey-1:02:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwP/w0S89ELi3W2LxIcLXVsDn8kXZQ==:",
            "73973a1b51a9acdde29a0610ac6a3ef852cf45936cca6830a661d18f68502f1a4c7a8ecb37524e0b1f7087cb4d680ad9",
            "NVMe0R02 nqn.psk-test-host nqn.psk-test-subsys",
            "f42ba63824cdfe421914c582921f85b5b5b7e2d4df084caeedc9be20b212e8bb0fe8a23e9d59a1c8fc6449da4970a78d",
        ),
        (
            "NVMeTLSkey-1:00:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:",
            "5512dbb6737d0106f65975b773dfb011ffc344bcf442e2dd6d8bc4870b5d5b03",
            "NVMe0R01 nqn.psk-test-host nqn.psk-test-subsys",
            "ec85300ba827726bd3bc4fc07f3a34aec5fe7c8ccac05fefc2f021c74e0df9ef",
        ),
    ];
    for (text, retained, identity, tls) in cases {
        let psk = ConfiguredPsk::parse(text.as_bytes()).unwrap();
        assert_eq!(hex(&psk.retained(HOST).unwrap()), retained, "{text}");
        let derived = psk.identity(0, HOST, SUBSYS).unwrap();
        assert_eq!(derived.to_string(), identity);
        assert_eq!(Identity::parse(identity.as_bytes()).unwrap(), derived);
        assert_eq!(hex(&psk.tls_psk(&derived).unwrap()), tls, "{text}");
    }
}

#[test]
fn another_host_or_subsystem_gets_another_tls_psk() {
    let psk = ConfiguredPsk::parse(ConfiguredPsk::format(Some(PskHash::Sha256), &KEY32).as_bytes()).unwrap();
    for version in [0, 1] {
        let tls_psk = |host, sub| psk.tls_psk(&psk.identity(version, host, sub).unwrap()).unwrap();
        let ours = tls_psk(HOST, SUBSYS);
        assert_ne!(*ours, *tls_psk("nqn.other-host", SUBSYS));
        assert_ne!(*ours, *tls_psk(HOST, "nqn.other-subsys"));
    }
    let v0 = psk.tls_psk(&psk.identity(0, HOST, SUBSYS).unwrap()).unwrap();
    let v1 = psk.tls_psk(&psk.identity(1, HOST, SUBSYS).unwrap()).unwrap();
    assert_ne!(*v0, *v1, "the two identity versions derive different TLS PSKs");
    assert_eq!(psk.identity(2, HOST, SUBSYS).unwrap_err(), PskError::IdentityVersion(2));
}

#[test]
fn version_one_identities_carry_libnvme_s_digests() {
    // libnvme's nvme_generate_tls_key_identity vectors (test/psk.c, version 1).
    let cases = [
        (Some(PskHash::Sha256), KEY32.to_vec(), "NVMe1R01 nqn.psk-test-host nqn.psk-test-subsys iSbjiStwJ/1TrTvDlt2fjFmzvsytOJelidNnA+X5lEU="),
        (
            Some(PskHash::Sha384),
            key48(),
            "NVMe1R02 nqn.psk-test-host nqn.psk-test-subsys QhW2+Rp6RzHlNtCslyRxMnwJ11tKKhz8JCAQpQ+XUD8f9td1VeH5h53yz2wKJG1a",
        ),
    ];
    for (hash, key, expected) in cases {
        let psk = ConfiguredPsk::parse(ConfiguredPsk::format(hash, &key).as_bytes()).unwrap();
        let identity = psk.identity(1, HOST, SUBSYS).unwrap();
        assert_eq!(identity.to_string(), expected);
        assert_eq!(identity.version(), 1);
        assert_eq!(Identity::parse(expected.as_bytes()).unwrap(), identity);
    }
}

#[test]
fn a_version_one_tls_psk_hashes_the_digest_not_the_whole_identity() {
    // Figures from an independent HKDF-Expand-Label (Python's hmac module), context
    // "01 <digest>" over the retained PSK of the SHA-256 case above.
    let psk = ConfiguredPsk::parse(ConfiguredPsk::format(Some(PskHash::Sha256), &KEY32).as_bytes()).unwrap();
    let identity = psk.identity(1, HOST, SUBSYS).unwrap();
    assert_eq!(hex(&psk.tls_psk(&identity).unwrap()), V1_TLS_PSK_SHA256);
}

#[test]
fn refuses_malformed_keys_by_reason() {
    let good = ConfiguredPsk::format(Some(PskHash::Sha256), &KEY32).to_string();
    let mut flipped = good.clone().into_bytes();
    // A different base64 digit inside the key: the CRC no longer matches.
    flipped[20] = if flipped[20] == b'A' { b'B' } else { b'A' };
    let cases: Vec<(Vec<u8>, PskError)> = vec![
        (b"DHHC-1:01:abcd:".to_vec(), PskError::Prefix),
        (b"NVMeTLSkey-1:03:abcd:".to_vec(), PskError::Hash),
        (b"NVMeTLSkey-1:1:abcd:".to_vec(), PskError::Hash),
        (good.trim_end_matches(':').as_bytes().to_vec(), PskError::Terminator),
        (b"NVMeTLSkey-1:01:not base64!:".to_vec(), PskError::Base64),
        (b"NVMeTLSkey-1:01:a b:".to_vec(), PskError::Base64),
        (ConfiguredPsk::format(Some(PskHash::Sha384), &KEY32).as_bytes().to_vec(), PskError::Length(32)),
        (ConfiguredPsk::format(Some(PskHash::Sha256), &key48()).as_bytes().to_vec(), PskError::Length(48)),
        (ConfiguredPsk::format(None, &KEY32[..16]).as_bytes().to_vec(), PskError::Length(16)),
        (b"NVMeTLSkey-1:01:AAA=:".to_vec(), PskError::Length(2)),
        (flipped, PskError::Crc),
        (vec![0xff, 0xfe], PskError::Prefix),
    ];
    for (text, expected) in cases {
        assert_eq!(ConfiguredPsk::parse(&text).unwrap_err(), expected, "{}", String::from_utf8_lossy(&text));
    }
}

#[test]
fn debug_output_never_shows_the_key() {
    let psk = ConfiguredPsk::parse(ConfiguredPsk::format(Some(PskHash::Sha256), &KEY32).as_bytes()).unwrap();
    let shown = format!("{psk:?}");
    assert!(!shown.contains("55") && shown.contains("redacted"), "{shown}");
}

#[test]
fn reads_identities_and_refuses_others() {
    let parsed = Identity::parse(b"NVMe0R01 nqn.h nqn.s").unwrap();
    assert_eq!(
        parsed,
        Identity { cipher: PskHash::Sha256, hostnqn: "nqn.h".into(), subnqn: "nqn.s".into(), digest: None }
    );
    assert_eq!(Identity::parse(b"NVMe0R02 nqn.h nqn.s").unwrap().cipher, PskHash::Sha384);
    let v1 = Identity::parse(b"NVMe1R01 nqn.h nqn.s iSbjiStwJ/1TrTvDlt2fjFmzvsytOJelidNnA+X5lEU=").unwrap();
    assert_eq!(v1.digest.as_deref(), Some("iSbjiStwJ/1TrTvDlt2fjFmzvsytOJelidNnA+X5lEU="));
    for bad in [
        &b"NVMe0G01 nqn.h nqn.s"[..],
        b"NVMe1G01 nqn.h nqn.s iSbjiStwJ/1TrTvDlt2fjFmzvsytOJelidNnA+X5lEU=",
        b"NVMe2R01 nqn.h nqn.s",
        // Version 1 without its digest, with a digest of the other hash, or not base64.
        b"NVMe1R01 nqn.h nqn.s",
        b"NVMe1R02 nqn.h nqn.s iSbjiStwJ/1TrTvDlt2fjFmzvsytOJelidNnA+X5lEU=",
        b"NVMe1R01 nqn.h nqn.s not-base64!",
        b"NVMe0R01 nqn.h nqn.s iSbjiStwJ/1TrTvDlt2fjFmzvsytOJelidNnA+X5lEU=",
        b"NVMe0R03 nqn.h nqn.s",
        b"NVMe0R01 nqn.h",
        b"NVMe0R01  nqn.s",
        b"NVMe0R01 nqn.h nqn.s extra",
        b"\xff\xfe",
        b"",
    ] {
        assert_eq!(Identity::parse(bad), None, "{}", String::from_utf8_lossy(bad));
    }
}

const V1_TLS_PSK_SHA256: &str = "8fc3c0badfd4c0c66fa3ca33aadd0314f85536cc9bc47338b60f3e6e563786ca";
