use super::*;

const NONE: Digests = Digests { header: false, data: false };
const BOTH: Digests = Digests { header: true, data: true };

fn check(bytes: &[u8], receiver: Receiver, digests: Digests, expected: Result<(usize, usize), Fatal>) {
    let layout = validate(CommonHeader::parse(bytes), receiver, digests, 8192);
    assert_eq!(layout.map(|l| (l.data_offset, l.data_len)), expected, "{:02x?}", &bytes[..8]);
}

#[test]
fn capsule_commands_with_and_without_data() {
    let sqe = [0u8; SQE_BYTES];
    check(capsule_cmd(&sqe, 0, NONE).as_slice(), Receiver::Controller, NONE, Ok((72, 0)));
    check(capsule_cmd(&sqe, 4096, NONE).as_slice(), Receiver::Controller, NONE, Ok((72, 4096)));
    check(capsule_cmd(&sqe, 512, BOTH).as_slice(), Receiver::Controller, BOTH, Ok((76, 512)));
    // Too much in-capsule data for the connection's limit.
    let big = capsule_cmd(&sqe, 9000, NONE);
    check(big.as_slice(), Receiver::Controller, NONE, Err(Fatal::new(fes::DATA_LIMIT_EXCEEDED, 4)));
}

#[test]
fn every_bad_field_names_its_offset() {
    let good = capsule_cmd(&[0u8; SQE_BYTES], 0, NONE);
    let mut bad_type = good.bytes;
    bad_type[0] = 0x0f;
    check(&bad_type, Receiver::Controller, NONE, Err(Fatal::field(0)));
    let mut bad_hlen = good.bytes;
    bad_hlen[2] = 71;
    check(&bad_hlen, Receiver::Controller, NONE, Err(Fatal::field(2)));
    let mut short = good.bytes;
    put32(&mut short, 4, 10);
    check(&short, Receiver::Controller, NONE, Err(Fatal::field(4)));
    // Digest flags that contradict the negotiation.
    check(good.as_slice(), Receiver::Controller, BOTH, Err(Fatal::field(1)));
    // A controller-to-host PDU arriving at the controller.
    let resp = capsule_resp(&[0u8; CQE_BYTES], NONE);
    check(resp.as_slice(), Receiver::Controller, NONE, Err(Fatal::field(0)));
    check(resp.as_slice(), Receiver::Host, NONE, Ok((24, 0)));
    // Data where the PDO says it is not.
    let mut bad_pdo = capsule_cmd(&[0u8; SQE_BYTES], 16, NONE).bytes;
    bad_pdo[3] = 80;
    check(&bad_pdo, Receiver::Controller, NONE, Err(Fatal::field(3)));
}

#[test]
fn ic_and_term_requests() {
    let req = IcReq { pfv: 0, hpda: 0, digests: Digests { header: true, data: false }, maxr2t: 0 };
    let bytes = req.encode();
    assert_eq!(IcReq::parse(&bytes), req);
    check(&bytes, Receiver::Controller, NONE, Ok((128, 0)));
    let resp = IcResp { pfv: 0, cpda: 0, digests: BOTH, maxh2cdata: 131072 };
    assert_eq!(IcResp::parse(&resp.encode()), resp);
    let term = term_req(pdu_type::C2H_TERM_REQ, Fatal::field(2), &[0xaa; 200]);
    assert_eq!(term.len(), TERM_HLEN + TERM_MAX_DATA, "a TermReq quotes at most 128 bytes");
    assert_eq!((le16(&term, 8), le32(&term, 10)), (fes::INVALID_HEADER_FIELD, 2));
    check(&term, Receiver::Host, NONE, Ok((24, 128)));
}

#[test]
fn header_digests_catch_corruption() {
    let encoded = capsule_resp(&[7u8; CQE_BYTES], BOTH);
    assert_eq!(encoded.len, CAPSULE_RESP_HLEN + DIGEST_BYTES);
    assert!(header_digest_ok(encoded.as_slice(), CAPSULE_RESP_HLEN));
    let mut corrupt = encoded.bytes;
    corrupt[10] ^= 1;
    assert!(!header_digest_ok(&corrupt[..encoded.len], CAPSULE_RESP_HLEN));
}

#[test]
fn data_pdus_and_r2t() {
    let header = DataHeader { cccid: 5, ttag: 9, offset: 4096, length: 8192 };
    let h2c = data_pdu(pdu_type::H2C_DATA, header, flags::LAST_PDU, BOTH);
    let layout = validate(CommonHeader::parse(h2c.as_slice()), Receiver::Controller, BOTH, 8192).unwrap();
    assert_eq!((layout.data_offset, layout.data_len, layout.total), (28, 8192, 28 + 8192 + 4));
    assert_eq!(DataHeader::parse(h2c.as_slice()), header);
    assert_ne!(h2c.bytes[1] & flags::LAST_PDU, 0);
    let r2t = r2t(header, NONE);
    check(r2t.as_slice(), Receiver::Host, NONE, Ok((24, 0)));
    // A data PDU without data is malformed.
    let empty = data_pdu(pdu_type::H2C_DATA, DataHeader { length: 0, ..header }, 0, NONE);
    check(empty.as_slice(), Receiver::Controller, NONE, Err(Fatal::field(4)));
}

proptest::proptest! {
    /// Any 8 bytes either validate into a consistent layout or fail; never panic.
    #[test]
    fn arbitrary_headers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 8), header in proptest::bool::ANY, data in proptest::bool::ANY) {
        let digests = Digests { header, data };
        for receiver in [Receiver::Controller, Receiver::Host] {
            if let Ok(layout) = validate(CommonHeader::parse(&bytes), receiver, digests, 65536) {
                proptest::prop_assert!(layout.data_offset + layout.data_len <= layout.total);
                proptest::prop_assert!(layout.header_bytes <= layout.total);
            }
        }
    }
}

#[test]
fn c2h_data_padded_to_the_hosts_alignment() {
    let header = DataHeader { cccid: 1, ttag: 0, offset: 0, length: 512 };
    let (encoded, pad) = c2h_data(header, flags::LAST_PDU, BOTH, 32);
    assert_eq!(pad, 4, "28 header bytes padded to 32");
    check(encoded.as_slice(), Receiver::Host, BOTH, Ok((32, 512)));
    assert!(header_digest_ok(encoded.as_slice(), DATA_HLEN), "the digest covers PDO and PLEN as padded");
    let (encoded, pad) = c2h_data(header, 0, NONE, 12);
    assert_eq!(pad, 0, "24 is already a multiple of 12 (HPDA 2)");
    check(encoded.as_slice(), Receiver::Host, NONE, Ok((24, 512)));
    // A host whose data is padded breaks the controller's CPDA 0.
    let mut padded = data_pdu(pdu_type::H2C_DATA, header, 0, NONE).bytes;
    padded[3] = 32;
    check(&padded, Receiver::Controller, NONE, Err(Fatal::field(3)));
}
