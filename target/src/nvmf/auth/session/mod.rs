//! The controller's side of one DH-HMAC-CHAP transaction on one queue (NVMe Base 2.0,
//! 8.13.5), with no I/O of its own: the queue hands it what Authentication Send carried
//! and asks it what Authentication Receive returns. States follow SPDK's (their names are
//! what `nvmf_subsystem_get_qpairs` shows).
//!
//! A failure anywhere makes the next Authentication Receive return AUTH_Failure1 with
//! the reason, after which the queue ends (8.13.5.9); the Send that carried the bad
//! message itself completes successfully, as the spec has it.

use peerless_core::keyring::KeyRef;
use zeroize::Zeroizing;

use super::crypto::{self, DhKey, Responder, ResponseInput};
use super::msg::{FailureKind, Message};
use super::secret::DhchapSecret;
use super::{reason, AuthConfig, DhGroup, Digest};

/// The keys configured for a host on a subsystem (`nvmf_subsystem_add_host`,
/// `nvmf_subsystem_set_keys`), by keyring reference: read when used.
#[derive(Clone, Debug, Default)]
pub struct HostKeys {
    pub dhchap_key: Option<KeyRef>,
    pub dhchap_ctrlr_key: Option<KeyRef>,
}

impl HostKeys {
    /// Whether hosts must authenticate: a host key is configured.
    pub fn required(&self) -> bool {
        self.dhchap_key.is_some()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Negotiate,
    Challenge,
    Reply,
    Success1,
    Success2,
    Failure1,
    Completed,
    Error,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Negotiate => "negotiate",
            State::Challenge => "challenge",
            State::Reply => "reply",
            State::Success1 => "success1",
            State::Success2 => "success2",
            State::Failure1 => "failure1",
            State::Completed => "completed",
            State::Error => "error",
        }
    }
}

/// Who is authenticating, and what the target allows.
pub struct Peer<'a> {
    pub hostnqn: &'a str,
    pub subnqn: &'a str,
    pub keys: &'a HostKeys,
    pub config: &'a AuthConfig,
    /// Too many recent failures from this host and address: refuse at once.
    pub throttled: bool,
}

/// What the queue does after an Authentication Send completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterSend {
    Continue,
    /// The host confirmed the controller's response (Success2): authenticated.
    Authenticated,
    /// The host refused the controller's response (AUTH_Failure2): the queue ends.
    HostRefused,
}

/// What the queue does once an Authentication Receive's message is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterReceive {
    Continue,
    Authenticated,
    /// AUTH_Failure1 went out: the queue ends. The text says why, for the log.
    Failed(String),
}

pub struct Session {
    state: State,
    tid: u16,
    digest: Option<Digest>,
    dhgroup: Option<DhGroup>,
    challenge: Zeroizing<Vec<u8>>,
    seqnum: u32,
    dh: Option<DhKey>,
    /// The controller's response to the host's challenge, sent in Success1.
    ctrlr_response: Option<Zeroizing<Vec<u8>>>,
    explanation: u8,
    why: String,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

/// Reads a key from the keyring, parses and transforms it for its owner `nqn`. The error
/// names the key, never its contents.
fn load_key(key: &KeyRef, nqn: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let secret = key.load().map_err(|err| err.to_string())?;
    let parsed = DhchapSecret::parse(secret.bytes()).map_err(|err| format!("key '{}': {err}", key.name()))?;
    parsed.transformed(nqn).map_err(|err| format!("key '{}': {err}", key.name()))
}

impl Session {
    pub fn new() -> Session {
        Session {
            state: State::Negotiate,
            tid: 0,
            digest: None,
            dhgroup: None,
            challenge: Zeroizing::new(Vec::new()),
            seqnum: 0,
            dh: None,
            ctrlr_response: None,
            explanation: 0,
            why: String::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn digest(&self) -> Option<Digest> {
        self.digest
    }

    pub fn dhgroup(&self) -> Option<DhGroup> {
        self.dhgroup
    }

    /// Whether a transaction is under way (commands other than authentication wait on
    /// a queue that was never authenticated).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Completed | State::Error)
    }

    fn fail(&mut self, explanation: u8, why: impl Into<String>) -> AfterSend {
        self.state = State::Failure1;
        self.explanation = explanation;
        self.why = why.into();
        self.dh = None;
        AfterSend::Continue
    }

    /// An Authentication Send carried `bytes`.
    pub fn on_send(&mut self, peer: &Peer<'_>, bytes: &[u8]) -> AfterSend {
        if self.state == State::Failure1 {
            return AfterSend::Continue;
        }
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            Err(malformed) => return self.fail(malformed.explanation, "a malformed authentication message"),
        };
        match (self.state, message) {
            (State::Negotiate, Message::Negotiate { tid, scc, dhchap, hash_ids, dhgroup_ids }) => {
                self.tid = tid;
                self.negotiate(peer, scc, dhchap, &hash_ids, &dhgroup_ids)
            }
            (State::Reply, Message::Reply { tid, response, challenge, seqnum, dh_value }) => {
                if tid != self.tid {
                    return self.fail(reason::INCORRECT_PAYLOAD, "a reply for another transaction");
                }
                self.reply(peer, &response, challenge.as_deref(), seqnum, &dh_value)
            }
            (State::Success2, Message::Success2 { tid }) if tid == self.tid => {
                self.finish();
                AfterSend::Authenticated
            }
            (State::Success2, Message::Failure { kind: FailureKind::Failure2, tid, .. }) if tid == self.tid => {
                self.state = State::Error;
                self.why = "the host refused the controller's response (AUTH_Failure2)".into();
                AfterSend::HostRefused
            }
            (state, message) => self.fail(
                reason::INCORRECT_PROTOCOL_MESSAGE,
                format!("an unexpected message in state {} (transaction {})", state.name(), message.tid()),
            ),
        }
    }

    fn negotiate(&mut self, peer: &Peer<'_>, scc: u8, dhchap: bool, hash_ids: &[u8], group_ids: &[u8]) -> AfterSend {
        if peer.throttled {
            return self.fail(reason::FAILED, "too many failed attempts from this host and address");
        }
        if scc != 0 {
            // Secure channel concatenation needs TLS, which this target does not run.
            return self.fail(reason::SCC_MISMATCH, "secure channel concatenation asked for");
        }
        if !dhchap {
            return self.fail(reason::PROTOCOL_UNUSABLE, "no DH-HMAC-CHAP descriptor offered");
        }
        let Some(digest) =
            peer.config.digests.iter().copied().filter(|d| hash_ids.contains(&d.id())).max_by_key(|d| d.hash_len())
        else {
            return self.fail(reason::HASH_UNUSABLE, "no hash function both sides allow");
        };
        let Some(group) =
            DhGroup::ALL.into_iter().find(|g| peer.config.dhgroups.contains(g) && group_ids.contains(&g.id()))
        else {
            return self.fail(reason::DHGROUP_UNUSABLE, "no DH group both sides allow");
        };
        self.digest = Some(digest);
        self.dhgroup = Some(group);
        self.state = State::Challenge;
        AfterSend::Continue
    }

    fn reply(
        &mut self,
        peer: &Peer<'_>,
        response: &[u8],
        host_challenge: Option<&[u8]>,
        host_seqnum: u32,
        dh_value: &[u8],
    ) -> AfterSend {
        let (Some(digest), Some(group)) = (self.digest, self.dhgroup) else {
            return self.fail(reason::INCORRECT_PROTOCOL_MESSAGE, "a reply before negotiation");
        };
        if response.len() != digest.hash_len() {
            return self.fail(reason::INCORRECT_PAYLOAD, "a response of the wrong length");
        }
        let dh_secret = match (&self.dh, group) {
            (None, DhGroup::Null) if dh_value.is_empty() => None,
            (Some(dh), _) => match dh.shared_secret(dh_value) {
                Ok(secret) => Some(secret),
                Err(err) => return self.fail(reason::FAILED, err.to_string()),
            },
            _ => return self.fail(reason::INCORRECT_PAYLOAD, "a DH value where none was asked for"),
        };
        let Some(host_key) = peer.keys.dhchap_key.as_ref() else {
            return self.fail(reason::FAILED, "no DH-HMAC-CHAP key is configured for the host");
        };
        let key = match load_key(host_key, peer.hostnqn) {
            Ok(key) => key,
            Err(why) => return self.fail(reason::FAILED, why),
        };
        let input = ResponseInput {
            digest,
            key: &key,
            challenge: &self.challenge,
            dh_secret: dh_secret.as_deref().map(|secret| &secret[..]),
            seqnum: self.seqnum,
            transaction: self.tid,
            scc: 0,
            hostnqn: peer.hostnqn,
            subnqn: peer.subnqn,
        };
        let expected = match crypto::response(Responder::Host, &input) {
            Ok(expected) => expected,
            Err(err) => return self.fail(reason::FAILED, err.to_string()),
        };
        if !crypto::responses_match(&expected, response) {
            return self.fail(reason::FAILED, "the host's response does not match its key");
        }
        if let Some(challenge) = host_challenge {
            if challenge.len() != digest.hash_len() {
                return self.fail(reason::INCORRECT_PAYLOAD, "a challenge of the wrong length");
            }
            let Some(ctrlr_key) = peer.keys.dhchap_ctrlr_key.as_ref() else {
                return self.fail(
                    reason::FAILED,
                    "the host asked the controller to authenticate, and no controller key is configured",
                );
            };
            let key = match load_key(ctrlr_key, peer.subnqn) {
                Ok(key) => key,
                Err(why) => return self.fail(reason::FAILED, why),
            };
            let input = ResponseInput { key: &key, challenge, seqnum: host_seqnum, ..input };
            match crypto::response(Responder::Controller, &input) {
                Ok(answer) => self.ctrlr_response = Some(answer),
                Err(err) => return self.fail(reason::FAILED, err.to_string()),
            }
        }
        self.dh = None;
        self.state = State::Success1;
        AfterSend::Continue
    }

    fn finish(&mut self) {
        self.state = State::Completed;
        self.dh = None;
        self.challenge = Zeroizing::new(Vec::new());
        self.ctrlr_response = None;
    }

    fn failure1(&mut self, explanation: u8, why: String) -> (Vec<u8>, AfterReceive) {
        self.state = State::Error;
        self.dh = None;
        let message = Message::Failure { kind: FailureKind::Failure1, tid: self.tid, explanation };
        (message.encode(), AfterReceive::Failed(why))
    }

    /// Fails the transaction now: the AUTH_Failure1 to send.
    pub fn fail_now(&mut self, explanation: u8, why: &str) -> (Vec<u8>, AfterReceive) {
        self.failure1(explanation, why.to_string())
    }

    /// An Authentication Receive asks for the controller's next message; `seqnum` numbers
    /// a challenge (unique per challenge the target issues).
    pub fn on_receive(&mut self, seqnum: u32) -> (Vec<u8>, AfterReceive) {
        match self.state {
            State::Challenge => match self.challenge(seqnum) {
                Ok(message) => {
                    self.state = State::Reply;
                    (message, AfterReceive::Continue)
                }
                Err(why) => self.failure1(reason::FAILED, why),
            },
            State::Success1 => {
                let hl = self.digest.map_or(0, Digest::hash_len) as u8;
                let response = self.ctrlr_response.take().map(|r| r.to_vec());
                let bidirectional = response.is_some();
                let message = Message::Success1 { tid: self.tid, hl, response }.encode();
                if bidirectional {
                    self.state = State::Success2;
                    (message, AfterReceive::Continue)
                } else {
                    self.finish();
                    (message, AfterReceive::Authenticated)
                }
            }
            State::Failure1 => {
                let why = std::mem::take(&mut self.why);
                self.failure1(self.explanation, why)
            }
            state => self.failure1(
                reason::INCORRECT_PROTOCOL_MESSAGE,
                format!("an authentication receive in state {}", state.name()),
            ),
        }
    }

    fn challenge(&mut self, seqnum: u32) -> Result<Vec<u8>, String> {
        let (Some(digest), Some(group)) = (self.digest, self.dhgroup) else {
            return Err("a challenge before negotiation".into());
        };
        let mut challenge = Zeroizing::new(vec![0u8; digest.hash_len()]);
        crypto::random(&mut challenge).map_err(|err| err.to_string())?;
        let dh_value = if group == DhGroup::Null {
            Vec::new()
        } else {
            let dh = DhKey::generate(group).map_err(|err| err.to_string())?;
            let value = dh.public_value().map_err(|err| err.to_string())?;
            self.dh = Some(dh);
            value
        };
        self.challenge = challenge;
        self.seqnum = seqnum;
        let message = Message::Challenge {
            tid: self.tid,
            hash_id: digest.id(),
            dhgroup_id: group.id(),
            seqnum,
            challenge: self.challenge.to_vec(),
            dh_value,
        };
        Ok(message.encode())
    }
}

#[cfg(test)]
mod tests;
