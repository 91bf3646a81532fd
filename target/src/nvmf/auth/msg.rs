//! The authentication messages carried by the Authentication Send and Receive commands
//! (NVMe Base 2.0, 6.3 and 6.4; formats in 8.13.5: AUTH_Negotiate, DH-HMAC-CHAP_Challenge,
//! _Reply, _Success1, _Success2, AUTH_Failure1 and AUTH_Failure2). All fields are
//! little-endian; every length is checked against the bytes that came.

use super::reason;

/// SECP of Authentication Send/Receive for NVMe in-band authentication (NVMe Base 2.0,
/// 6.3: E9h), with SPSP0 = SPSP1 = 01h.
pub const SECP: u8 = 0xe9;
pub const SPSP0: u8 = 0x01;
pub const SPSP1: u8 = 0x01;

const TYPE_COMMON: u8 = 0x00;
const TYPE_DHCHAP: u8 = 0x01;
const ID_NEGOTIATE: u8 = 0x00;
const ID_CHALLENGE: u8 = 0x01;
const ID_REPLY: u8 = 0x02;
const ID_SUCCESS1: u8 = 0x03;
const ID_SUCCESS2: u8 = 0x04;
const ID_FAILURE2: u8 = 0xf0;
const ID_FAILURE1: u8 = 0xf1;
/// Authentication protocol identifier of DH-HMAC-CHAP in a negotiate descriptor.
const AUTH_ID_DHCHAP: u8 = 0x01;
/// AUTH_Failure reason code: authentication failure (the only one defined).
const FAILURE_REASON: u8 = 0x01;

const NEGOTIATE_HEADER: usize = 8;
const DESCRIPTOR_BYTES: usize = 64;
const ID_LIST_MAX: usize = 30;
const DHCHAP_HEADER: usize = 16;
/// AUTH_Failure1/2: the shortest message, so the least an Authentication Receive asks for.
pub const FAILURE_BYTES: usize = 8;
/// The longest message either side sends: a reply with two SHA-512 values and an
/// ffdhe8192 value; a negotiate with a few descriptors is far shorter.
pub const MAX_MESSAGE_BYTES: usize = DHCHAP_HEADER + 2 * 64 + 1024;

/// Which failure message: the controller's (Failure1) or the host's (Failure2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Failure1,
    Failure2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// AUTH_Negotiate: the DH-HMAC-CHAP descriptor's hash and group IDs; `dhchap` false
    /// when the host offered no DH-HMAC-CHAP descriptor at all.
    Negotiate {
        tid: u16,
        scc: u8,
        dhchap: bool,
        hash_ids: Vec<u8>,
        dhgroup_ids: Vec<u8>,
    },
    Challenge {
        tid: u16,
        hash_id: u8,
        dhgroup_id: u8,
        seqnum: u32,
        challenge: Vec<u8>,
        dh_value: Vec<u8>,
    },
    /// `challenge`: the host's challenge to the controller when it asks for
    /// bidirectional authentication (CVALID), with `seqnum` its sequence number.
    Reply {
        tid: u16,
        response: Vec<u8>,
        challenge: Option<Vec<u8>>,
        seqnum: u32,
        dh_value: Vec<u8>,
    },
    /// `hl` is sent even without a response (Linux's host reads it either way).
    Success1 {
        tid: u16,
        hl: u8,
        response: Option<Vec<u8>>,
    },
    Success2 {
        tid: u16,
    },
    Failure {
        kind: FailureKind,
        tid: u16,
        explanation: u8,
    },
}

/// A message that cannot be taken: the AUTH_Failure explanation to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub explanation: u8,
}

const PAYLOAD: Malformed = Malformed { explanation: reason::INCORRECT_PAYLOAD };
const PROTOCOL: Malformed = Malformed { explanation: reason::INCORRECT_PROTOCOL_MESSAGE };

fn le16(bytes: &[u8], at: usize) -> u16 {
    crate::nvme::le16(bytes, at)
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    crate::nvme::le32(bytes, at)
}

fn header(kind: u8, id: u8, tid: u16, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    out[0] = kind;
    out[1] = id;
    out[4..6].copy_from_slice(&tid.to_le_bytes());
    out
}

impl Message {
    pub fn tid(&self) -> u16 {
        match self {
            Message::Negotiate { tid, .. }
            | Message::Challenge { tid, .. }
            | Message::Reply { tid, .. }
            | Message::Success1 { tid, .. }
            | Message::Success2 { tid }
            | Message::Failure { tid, .. } => *tid,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Negotiate { tid, scc, dhchap, hash_ids, dhgroup_ids } => {
                let mut out = header(TYPE_COMMON, ID_NEGOTIATE, *tid, NEGOTIATE_HEADER + DESCRIPTOR_BYTES);
                out[6] = *scc;
                out[7] = 1;
                let descriptor = &mut out[NEGOTIATE_HEADER..];
                let (hashes, groups) =
                    (&hash_ids[..hash_ids.len().min(ID_LIST_MAX)], &dhgroup_ids[..dhgroup_ids.len().min(ID_LIST_MAX)]);
                // Without DH-HMAC-CHAP the one descriptor names no protocol this target knows.
                descriptor[0] = if *dhchap { AUTH_ID_DHCHAP } else { 0 };
                descriptor[2] = hashes.len() as u8;
                descriptor[3] = groups.len() as u8;
                descriptor[4..4 + hashes.len()].copy_from_slice(hashes);
                descriptor[4 + ID_LIST_MAX..4 + ID_LIST_MAX + groups.len()].copy_from_slice(groups);
                out
            }
            Message::Challenge { tid, hash_id, dhgroup_id, seqnum, challenge, dh_value } => {
                let mut out = header(TYPE_DHCHAP, ID_CHALLENGE, *tid, DHCHAP_HEADER);
                out[6] = challenge.len() as u8;
                out[8] = *hash_id;
                out[9] = *dhgroup_id;
                out[10..12].copy_from_slice(&(dh_value.len() as u16).to_le_bytes());
                out[12..16].copy_from_slice(&seqnum.to_le_bytes());
                out.extend_from_slice(challenge);
                out.extend_from_slice(dh_value);
                out
            }
            Message::Reply { tid, response, challenge, seqnum, dh_value } => {
                let mut out = header(TYPE_DHCHAP, ID_REPLY, *tid, DHCHAP_HEADER);
                out[6] = response.len() as u8;
                out[8] = u8::from(challenge.is_some());
                out[10..12].copy_from_slice(&(dh_value.len() as u16).to_le_bytes());
                out[12..16].copy_from_slice(&seqnum.to_le_bytes());
                out.extend_from_slice(response);
                match challenge {
                    Some(challenge) => out.extend_from_slice(challenge),
                    None => out.resize(out.len() + response.len(), 0),
                }
                out.extend_from_slice(dh_value);
                out
            }
            Message::Success1 { tid, hl, response } => {
                let mut out = header(TYPE_DHCHAP, ID_SUCCESS1, *tid, DHCHAP_HEADER);
                out[6] = *hl;
                if let Some(response) = response {
                    out[8] = 1;
                    out.extend_from_slice(response);
                }
                out
            }
            Message::Success2 { tid } => header(TYPE_DHCHAP, ID_SUCCESS2, *tid, DHCHAP_HEADER),
            Message::Failure { kind, tid, explanation } => {
                let id = if *kind == FailureKind::Failure1 { ID_FAILURE1 } else { ID_FAILURE2 };
                let mut out = header(TYPE_COMMON, id, *tid, FAILURE_BYTES);
                out[6] = FAILURE_REASON;
                out[7] = *explanation;
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, Malformed> {
        if bytes.len() < FAILURE_BYTES {
            return Err(PAYLOAD);
        }
        let tid = le16(bytes, 4);
        match (bytes[0], bytes[1]) {
            (TYPE_COMMON, ID_NEGOTIATE) => decode_negotiate(bytes, tid),
            (TYPE_COMMON, ID_FAILURE1 | ID_FAILURE2) => {
                if bytes.len() != FAILURE_BYTES {
                    return Err(PAYLOAD);
                }
                let kind = if bytes[1] == ID_FAILURE1 { FailureKind::Failure1 } else { FailureKind::Failure2 };
                Ok(Message::Failure { kind, tid, explanation: bytes[7] })
            }
            (TYPE_DHCHAP, id @ (ID_CHALLENGE | ID_REPLY | ID_SUCCESS1 | ID_SUCCESS2)) => {
                if bytes.len() < DHCHAP_HEADER {
                    return Err(PAYLOAD);
                }
                let hl = usize::from(bytes[6]);
                let body = &bytes[DHCHAP_HEADER..];
                match id {
                    ID_CHALLENGE => {
                        let dhvlen = usize::from(le16(bytes, 10));
                        if body.len() != hl + dhvlen {
                            return Err(PAYLOAD);
                        }
                        Ok(Message::Challenge {
                            tid,
                            hash_id: bytes[8],
                            dhgroup_id: bytes[9],
                            seqnum: le32(bytes, 12),
                            challenge: body[..hl].to_vec(),
                            dh_value: body[hl..].to_vec(),
                        })
                    }
                    ID_REPLY => {
                        let dhvlen = usize::from(le16(bytes, 10));
                        let cvalid = bytes[8];
                        if body.len() != 2 * hl + dhvlen || cvalid > 1 {
                            return Err(PAYLOAD);
                        }
                        let seqnum = le32(bytes, 12);
                        // A host that asks the controller to authenticate must number it (8.13.5.3).
                        if cvalid == 1 && seqnum == 0 {
                            return Err(PAYLOAD);
                        }
                        Ok(Message::Reply {
                            tid,
                            response: body[..hl].to_vec(),
                            challenge: (cvalid == 1).then(|| body[hl..2 * hl].to_vec()),
                            seqnum,
                            dh_value: body[2 * hl..].to_vec(),
                        })
                    }
                    ID_SUCCESS1 => {
                        let rvalid = bytes[8];
                        if rvalid > 1 || body.len() < usize::from(rvalid) * hl {
                            return Err(PAYLOAD);
                        }
                        let response = (rvalid == 1).then(|| body[..hl].to_vec());
                        Ok(Message::Success1 { tid, hl: bytes[6], response })
                    }
                    _ => {
                        if !body.is_empty() {
                            return Err(PAYLOAD);
                        }
                        Ok(Message::Success2 { tid })
                    }
                }
            }
            _ => Err(PROTOCOL),
        }
    }
}

/// The length of the message at the start of `bytes`, from its own header: a host reads
/// a Receive's data, which may be longer than the message, through this.
pub fn message_len(bytes: &[u8]) -> Option<usize> {
    let (kind, id) = (*bytes.first()?, *bytes.get(1)?);
    let hl = usize::from(*bytes.get(6)?);
    let dhvlen = usize::from(crate::nvme::le16(bytes, 10));
    match (kind, id) {
        (TYPE_COMMON, ID_FAILURE1 | ID_FAILURE2) => Some(FAILURE_BYTES),
        (TYPE_COMMON, ID_NEGOTIATE) => Some(NEGOTIATE_HEADER + usize::from(*bytes.get(7)?) * DESCRIPTOR_BYTES),
        (TYPE_DHCHAP, ID_CHALLENGE) if bytes.len() >= DHCHAP_HEADER => Some(DHCHAP_HEADER + hl + dhvlen),
        (TYPE_DHCHAP, ID_REPLY) if bytes.len() >= DHCHAP_HEADER => Some(DHCHAP_HEADER + 2 * hl + dhvlen),
        (TYPE_DHCHAP, ID_SUCCESS1) if bytes.len() >= DHCHAP_HEADER => {
            Some(DHCHAP_HEADER + usize::from(bytes[8] == 1) * hl)
        }
        (TYPE_DHCHAP, ID_SUCCESS2) => Some(DHCHAP_HEADER),
        _ => None,
    }
}

fn decode_negotiate(bytes: &[u8], tid: u16) -> Result<Message, Malformed> {
    let napd = usize::from(bytes[7]);
    if napd == 0 || bytes.len() != NEGOTIATE_HEADER + napd * DESCRIPTOR_BYTES {
        return Err(PAYLOAD);
    }
    let descriptor = bytes[NEGOTIATE_HEADER..].chunks_exact(DESCRIPTOR_BYTES).find(|d| d[0] == AUTH_ID_DHCHAP);
    let Some(descriptor) = descriptor else {
        return Ok(Message::Negotiate { tid, scc: bytes[6], dhchap: false, hash_ids: vec![], dhgroup_ids: vec![] });
    };
    let (halen, dhlen) = (usize::from(descriptor[2]), usize::from(descriptor[3]));
    if halen > ID_LIST_MAX || dhlen > ID_LIST_MAX {
        return Err(PAYLOAD);
    }
    Ok(Message::Negotiate {
        tid,
        scc: bytes[6],
        dhchap: true,
        hash_ids: descriptor[4..4 + halen].to_vec(),
        dhgroup_ids: descriptor[4 + ID_LIST_MAX..4 + ID_LIST_MAX + dhlen].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: Message) {
        let bytes = message.encode();
        assert!(bytes.len() <= MAX_MESSAGE_BYTES);
        assert_eq!(Message::decode(&bytes), Ok(message));
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Message::Negotiate {
            tid: 7,
            scc: 0,
            dhchap: true,
            hash_ids: vec![1, 2, 3],
            dhgroup_ids: vec![0, 1, 5],
        });
        round_trip(Message::Challenge {
            tid: 7,
            hash_id: 1,
            dhgroup_id: 1,
            seqnum: 99,
            challenge: vec![3; 32],
            dh_value: vec![4; 256],
        });
        round_trip(Message::Reply {
            tid: 7,
            response: vec![5; 48],
            challenge: Some(vec![6; 48]),
            seqnum: 1,
            dh_value: vec![],
        });
        round_trip(Message::Reply {
            tid: 7,
            response: vec![5; 64],
            challenge: None,
            seqnum: 0,
            dh_value: vec![9; 1024],
        });
        round_trip(Message::Success1 { tid: 7, hl: 32, response: None });
        round_trip(Message::Success1 { tid: 7, hl: 32, response: Some(vec![1; 32]) });
        round_trip(Message::Success2 { tid: 7 });
        round_trip(Message::Negotiate { tid: 7, scc: 0, dhchap: false, hash_ids: vec![], dhgroup_ids: vec![] });
        round_trip(Message::Failure { kind: FailureKind::Failure1, tid: 7, explanation: reason::FAILED });
        round_trip(Message::Failure { kind: FailureKind::Failure2, tid: 7, explanation: reason::FAILED });
    }

    #[test]
    fn a_message_is_found_at_the_start_of_a_longer_buffer() {
        let challenge = Message::Challenge {
            tid: 2,
            hash_id: 3,
            dhgroup_id: 2,
            seqnum: 1,
            challenge: vec![1; 64],
            dh_value: vec![2; 384],
        };
        for message in [
            challenge,
            Message::Success1 { tid: 2, hl: 48, response: Some(vec![1; 48]) },
            Message::Success1 { tid: 2, hl: 48, response: None },
            Message::Failure { kind: FailureKind::Failure1, tid: 2, explanation: 1 },
        ] {
            let mut bytes = message.encode();
            let len = bytes.len();
            bytes.resize(4096, 0);
            assert_eq!(message_len(&bytes), Some(len));
            assert_eq!(Message::decode(&bytes[..len]), Ok(message));
        }
        assert_eq!(message_len(&[1, 1, 0]), None, "too short to say");
        assert_eq!(message_len(&[7, 7, 0, 0, 0, 0, 0, 0]), None, "unknown");
    }

    #[test]
    fn the_wire_layout_is_the_specs() {
        let bytes =
            Message::Negotiate { tid: 0x1234, scc: 0, dhchap: true, hash_ids: vec![1], dhgroup_ids: vec![0, 2] }
                .encode();
        assert_eq!(bytes.len(), 72);
        assert_eq!(&bytes[..8], &[0x00, 0x00, 0, 0, 0x34, 0x12, 0, 1]);
        assert_eq!(&bytes[8..13], &[0x01, 0, 1, 2, 1]);
        assert_eq!(&bytes[8 + 34..8 + 36], &[0, 2], "group IDs start 30 bytes after the hash IDs");
        let bytes = Message::Failure { kind: FailureKind::Failure1, tid: 3, explanation: 6 }.encode();
        assert_eq!(bytes, [0x00, 0xf1, 0, 0, 3, 0, 0x01, 0x06]);
        let bytes =
            Message::Reply { tid: 1, response: vec![0xaa; 32], challenge: None, seqnum: 5, dh_value: vec![0xbb; 256] }
                .encode();
        assert_eq!(
            (bytes[0], bytes[1], bytes[6], bytes[8], crate::nvme::le16(&bytes, 10), bytes.len()),
            (1, 2, 32, 0, 256, 16 + 64 + 256)
        );
    }

    #[test]
    fn malformed_lengths_and_fields_are_refused() {
        let payload = Err(PAYLOAD);
        assert_eq!(Message::decode(&[]), payload);
        assert_eq!(Message::decode(&[0; 7]), payload);
        assert_eq!(Message::decode(&[0x05, 0x00, 0, 0, 0, 0, 0, 0]), Err(PROTOCOL), "unknown type");
        assert_eq!(
            Message::decode(&[0x01, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(PROTOCOL),
            "unknown id"
        );
        let negotiate =
            Message::Negotiate { tid: 1, scc: 0, dhchap: true, hash_ids: vec![1], dhgroup_ids: vec![0] }.encode();
        assert_eq!(Message::decode(&negotiate[..71]), payload, "short of its descriptor");
        let mut two = negotiate.clone();
        two[7] = 2;
        assert_eq!(Message::decode(&two), payload, "NAPD promises a descriptor that is not there");
        let mut none = negotiate.clone();
        none[7] = 0;
        assert_eq!(Message::decode(&none[..8]), payload, "no descriptor");
        let mut long_list = negotiate.clone();
        long_list[10] = 31;
        assert_eq!(Message::decode(&long_list), payload, "HALEN past its list");
        let mut other_protocol = negotiate;
        other_protocol[8] = 0x02;
        assert!(matches!(Message::decode(&other_protocol), Ok(Message::Negotiate { dhchap: false, .. })));

        let reply = Message::Reply {
            tid: 1,
            response: vec![1; 32],
            challenge: Some(vec![2; 32]),
            seqnum: 4,
            dh_value: vec![3; 256],
        }
        .encode();
        for cut in [15, 16, 16 + 32, reply.len() - 1] {
            assert_eq!(Message::decode(&reply[..cut]), payload, "reply cut at {cut}");
        }
        let mut longer = reply.clone();
        longer.push(0);
        assert_eq!(Message::decode(&longer), payload, "a byte past DHVLEN");
        let mut cvalid = reply.clone();
        cvalid[8] = 2;
        assert_eq!(Message::decode(&cvalid), payload, "CVALID neither 0 nor 1");
        let mut unnumbered = reply.clone();
        unnumbered[12..16].fill(0);
        assert_eq!(Message::decode(&unnumbered), payload, "bidirectional without a sequence number");
        let mut huge_hl = reply;
        huge_hl[6] = 255;
        assert_eq!(Message::decode(&huge_hl), payload);
        let success2 = Message::Success2 { tid: 1 }.encode();
        assert_eq!(Message::decode(&[&success2[..], &[0]].concat()), payload);
        let failure = Message::Failure { kind: FailureKind::Failure2, tid: 1, explanation: 1 }.encode();
        assert_eq!(Message::decode(&[&failure[..], &[0]].concat()), payload);
        let success1 = Message::Success1 { tid: 1, hl: 32, response: Some(vec![1; 32]) }.encode();
        assert_eq!(Message::decode(&success1[..40]), payload, "RVALID without its response");
    }
}
