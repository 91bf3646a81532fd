//! The host's side of DH-HMAC-CHAP (NVMe Base 2.0, 8.13.5): after a Connect whose
//! response asks for authentication (AUTHREQ.ATR), the host negotiates, answers the
//! controller's challenge and, given a controller secret, checks the controller's answer
//! to its own challenge. Primitives and messages are the target's (`nvmf::auth`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::fctype;
use peerless_target::nvmf::auth::crypto::{self, DhKey, Responder, ResponseInput};
use peerless_target::nvmf::auth::msg::{self, FailureKind, Message, SECP, SPSP0, SPSP1};
use peerless_target::nvmf::auth::secret::DhchapSecret;
use peerless_target::nvmf::auth::{reason, DhGroup, Digest};
use zeroize::Zeroizing;

use super::error::{Error, Result};
use super::queue::{QueuePair, Xfer};

/// What a Receive asks for: room for any message (Linux's host asks for 4 KiB too).
const RECEIVE_BYTES: usize = 4096;

/// A host's DH-HMAC-CHAP secrets (`DHHC-1:...` text) and what it offers. Debug output
/// never shows the secrets.
#[derive(Clone)]
pub struct HostAuth {
    secret: Arc<Zeroizing<String>>,
    ctrlr_secret: Option<Arc<Zeroizing<String>>>,
    pub digests: Vec<Digest>,
    pub dhgroups: Vec<DhGroup>,
}

impl fmt::Debug for HostAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostAuth")
            .field("secret", &"<redacted>")
            .field("bidirectional", &self.ctrlr_secret.is_some())
            .field("digests", &self.digests)
            .field("dhgroups", &self.dhgroups)
            .finish()
    }
}

/// A secret given on a command line: the `DHHC-1:` text itself, or the path of a file
/// holding it (as SPDK's perf takes `--dhchap-key` as a key file through its keyring).
pub fn secret_argument(argument: &str) -> Result<String> {
    if argument.starts_with("DHHC-1:") {
        return Ok(argument.to_string());
    }
    let path = Path::new(argument);
    let text = std::fs::read_to_string(path).map_err(|err| Error::Invalid(format!("key file {argument}: {err}")))?;
    Ok(text.trim_end().to_string())
}

impl HostAuth {
    /// Checks the secrets' form now, so a typo fails before connecting.
    pub fn new(secret: &str, ctrlr_secret: Option<&str>) -> Result<HostAuth> {
        let check = |what: &str, text: &str| {
            DhchapSecret::parse(text.as_bytes()).map(drop).map_err(|err| Error::Invalid(format!("{what}: {err}")))
        };
        check("DH-HMAC-CHAP key", secret)?;
        if let Some(ctrlr) = ctrlr_secret {
            check("DH-HMAC-CHAP controller key", ctrlr)?;
        }
        Ok(HostAuth {
            secret: Arc::new(Zeroizing::new(secret.to_string())),
            ctrlr_secret: ctrlr_secret.map(|text| Arc::new(Zeroizing::new(text.to_string()))),
            digests: Digest::ALL.to_vec(),
            dhgroups: DhGroup::ALL.to_vec(),
        })
    }

    /// Runs one transaction on `queue` with transaction ID `tid`. Returns the messages
    /// the host sent (tests replay them).
    pub fn authenticate(&self, queue: &mut QueuePair, hostnqn: &str, subnqn: &str, tid: u16) -> Result<Vec<Vec<u8>>> {
        let mut sent = Vec::new();
        let negotiate = Message::Negotiate {
            tid,
            scc: 0,
            dhchap: true,
            hash_ids: self.digests.iter().map(|digest| digest.id()).collect(),
            dhgroup_ids: self.dhgroups.iter().map(|group| group.id()).collect(),
        };
        sent.push(send(queue, &negotiate)?);
        let Message::Challenge { tid: got_tid, hash_id, dhgroup_id, seqnum, challenge, dh_value } = receive(queue)?
        else {
            return Err(Error::Protocol("expected a DH-HMAC-CHAP challenge".into()));
        };
        let digest = Digest::from_id(hash_id).filter(|digest| self.digests.contains(digest));
        let group = DhGroup::from_id(dhgroup_id).filter(|group| self.dhgroups.contains(group));
        let (Some(digest), Some(group)) = (digest, group) else {
            return Err(Error::Protocol(format!("challenge with hash {hash_id} and group {dhgroup_id}, not offered")));
        };
        if got_tid != tid || challenge.len() != digest.hash_len() || dh_value.len() != group.value_len() {
            return Err(Error::Protocol("a malformed DH-HMAC-CHAP challenge".into()));
        }
        let crypto_err = |err: peerless_target::nvmf::auth::AuthError| Error::Protocol(err.to_string());
        let (dh_secret, host_value) = match group {
            DhGroup::Null => (None, Vec::new()),
            group => {
                let key = DhKey::generate(group).map_err(crypto_err)?;
                (Some(key.shared_secret(&dh_value).map_err(crypto_err)?), key.public_value().map_err(crypto_err)?)
            }
        };
        let host_key = transformed(&self.secret, hostnqn)?;
        let input = ResponseInput {
            digest,
            key: &host_key,
            challenge: &challenge,
            dh_secret: dh_secret.as_deref().map(|secret| &secret[..]),
            seqnum,
            transaction: tid,
            scc: 0,
            hostnqn,
            subnqn,
        };
        let response = crypto::response(Responder::Host, &input).map_err(crypto_err)?;
        // Bidirectional: the host's own challenge and a non-zero sequence number.
        let own = match &self.ctrlr_secret {
            Some(_) => {
                let mut challenge = vec![0u8; digest.hash_len()];
                crypto::random(&mut challenge).map_err(crypto_err)?;
                let mut seq = [0u8; 4];
                crypto::random(&mut seq).map_err(crypto_err)?;
                Some((challenge, u32::from_le_bytes(seq).max(1)))
            }
            None => None,
        };
        let reply = Message::Reply {
            tid,
            response: response.to_vec(),
            challenge: own.as_ref().map(|(challenge, _)| challenge.clone()),
            seqnum: own.as_ref().map_or(0, |(_, seqnum)| *seqnum),
            dh_value: host_value,
        };
        sent.push(send(queue, &reply)?);
        let Message::Success1 { tid: got_tid, response: ctrlr_response, .. } = receive(queue)? else {
            return Err(Error::Protocol("expected DH-HMAC-CHAP success1".into()));
        };
        if got_tid != tid {
            return Err(Error::Protocol("success1 for another transaction".into()));
        }
        let (Some((own_challenge, own_seqnum)), Some(ctrlr_secret)) = (own, &self.ctrlr_secret) else {
            return Ok(sent);
        };
        let ctrlr_key = transformed(ctrlr_secret, subnqn)?;
        let input = ResponseInput { key: &ctrlr_key, challenge: &own_challenge, seqnum: own_seqnum, ..input };
        let expected = crypto::response(Responder::Controller, &input).map_err(crypto_err)?;
        if !ctrlr_response.is_some_and(|answer| crypto::responses_match(&expected, &answer)) {
            let failure = Message::Failure { kind: FailureKind::Failure2, tid, explanation: reason::FAILED };
            sent.push(send(queue, &failure)?);
            return Err(Error::Authentication("the controller's response does not match its key".into()));
        }
        sent.push(send(queue, &Message::Success2 { tid })?);
        Ok(sent)
    }
}

fn transformed(secret: &str, nqn: &str) -> Result<Zeroizing<Vec<u8>>> {
    let parsed = DhchapSecret::parse(secret.as_bytes()).map_err(|err| Error::Invalid(err.to_string()))?;
    parsed.transformed(nqn).map_err(|err| Error::Protocol(err.to_string()))
}

/// Authentication Send (NVMe Base 2.0, 6.3) of raw message bytes.
pub fn send_bytes(queue: &mut QueuePair, bytes: Vec<u8>) -> Result<()> {
    let len = bytes.len() as u32;
    let cmd = SqeBuilder::fabrics(fctype::AUTH_SEND, 0).byte(41, SPSP0).byte(42, SPSP1).byte(43, SECP).u32_at(44, len);
    queue.command(cmd, Xfer::ToController, bytes).map(drop)
}

fn send(queue: &mut QueuePair, message: &Message) -> Result<Vec<u8>> {
    let bytes = message.encode();
    send_bytes(queue, bytes.clone())?;
    Ok(bytes)
}

/// Authentication Receive (NVMe Base 2.0, 6.4): the controller's next message, decoded.
/// AUTH_Failure1 becomes `Error::Authentication` with its explanation.
pub fn receive(queue: &mut QueuePair) -> Result<Message> {
    let cmd = SqeBuilder::fabrics(fctype::AUTH_RECV, 0)
        .byte(41, SPSP0)
        .byte(42, SPSP1)
        .byte(43, SECP)
        .u32_at(44, RECEIVE_BYTES as u32);
    let completion = queue.command(cmd, Xfer::FromController, vec![0u8; RECEIVE_BYTES])?;
    let len = msg::message_len(&completion.buf).filter(|len| *len <= completion.buf.len());
    let Some(len) = len else { return Err(Error::Protocol("an authentication message of unknown form".into())) };
    match Message::decode(&completion.buf[..len]) {
        Ok(Message::Failure { kind: FailureKind::Failure1, explanation, .. }) => {
            Err(Error::Authentication(format!("the controller refused: AUTH_Failure1, explanation {explanation:#04x}")))
        }
        Ok(message) => Ok(message),
        Err(malformed) => {
            Err(Error::Protocol(format!("a malformed authentication message ({:#04x})", malformed.explanation)))
        }
    }
}
