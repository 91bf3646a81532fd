//! The controller's session driven through whole transactions with the host's side
//! computed here: successes, every refusal and its AUTH_Failure1 explanation.

use std::os::unix::fs::PermissionsExt;

use peerless_core::keyring::Keyring;

use super::*;

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000000a";
const SUB: &str = "nqn.2016-06.io.peerless:session";

struct Rig {
    keyring: Keyring,
    keys: HostKeys,
    host_secret: String,
    ctrlr_secret: String,
    config: AuthConfig,
    _dir: tempdir::Dir,
}

/// A scratch directory removed when the rig drops (key files must be 0600 and ours).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn rig(test: &str) -> Rig {
    let dir = std::env::temp_dir().join(format!("peerless-session-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keyring = Keyring::new();
    let host_secret = DhchapSecret::format(Some(Digest::Sha384), &[7u8; 48]);
    let ctrlr_secret = DhchapSecret::format(None, &[9u8; 32]);
    for (name, secret) in [("host", &host_secret), ("ctrlr", &ctrlr_secret)] {
        let path = dir.join(name);
        std::fs::write(&path, secret).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        keyring.add_file_key(name, &path).unwrap();
    }
    let keys = HostKeys {
        dhchap_key: Some(keyring.get("host").unwrap()),
        dhchap_ctrlr_key: Some(keyring.get("ctrlr").unwrap()),
    };
    Rig { keyring, keys, host_secret, ctrlr_secret, config: AuthConfig::default(), _dir: tempdir::Dir(dir) }
}

fn peer<'a>(rig: &'a Rig, throttled: bool) -> Peer<'a> {
    Peer { hostnqn: HOST, subnqn: SUB, keys: &rig.keys, config: &rig.config, throttled }
}

fn negotiate(tid: u16, hashes: &[Digest], groups: &[DhGroup]) -> Vec<u8> {
    Message::Negotiate {
        tid,
        scc: 0,
        dhchap: true,
        hash_ids: hashes.iter().map(|d| d.id()).collect(),
        dhgroup_ids: groups.iter().map(|g| g.id()).collect(),
    }
    .encode()
}

/// The host's reply to a challenge message, with its own challenge when `bidirectional`.
fn reply(rig: &Rig, challenge: &[u8], secret: &str, bidirectional: bool) -> (Vec<u8>, Option<Vec<u8>>) {
    let Ok(Message::Challenge { tid, hash_id, dhgroup_id, seqnum, challenge, dh_value }) = Message::decode(challenge)
    else {
        panic!("not a challenge");
    };
    let (digest, group) = (Digest::from_id(hash_id).unwrap(), DhGroup::from_id(dhgroup_id).unwrap());
    let (dh_secret, host_value) = match group {
        DhGroup::Null => (None, Vec::new()),
        group => {
            let key = DhKey::generate(group).unwrap();
            (Some(key.shared_secret(&dh_value).unwrap()), key.public_value().unwrap())
        }
    };
    let key = DhchapSecret::parse(secret.as_bytes()).unwrap().transformed(HOST).unwrap();
    let input = ResponseInput {
        digest,
        key: &key,
        challenge: &challenge,
        dh_secret: dh_secret.as_deref().map(|s| &s[..]),
        seqnum,
        transaction: tid,
        scc: 0,
        hostnqn: HOST,
        subnqn: SUB,
    };
    let response = crypto::response(Responder::Host, &input).unwrap().to_vec();
    let own = bidirectional.then(|| vec![0x5a; digest.hash_len()]);
    let expected = own.as_ref().map(|own| {
        let ckey = DhchapSecret::parse(rig.ctrlr_secret.as_bytes()).unwrap().transformed(SUB).unwrap();
        let input = ResponseInput { key: &ckey, challenge: own, seqnum: 42, ..input };
        crypto::response(Responder::Controller, &input).unwrap().to_vec()
    });
    let message = Message::Reply {
        tid,
        response,
        challenge: own,
        seqnum: if bidirectional { 42 } else { 0 },
        dh_value: host_value,
    };
    (message.encode(), expected)
}

fn failure(received: (Vec<u8>, AfterReceive)) -> u8 {
    let (bytes, after) = received;
    assert!(matches!(after, AfterReceive::Failed(_)), "{after:?}");
    match Message::decode(&bytes) {
        Ok(Message::Failure { kind: FailureKind::Failure1, explanation, .. }) => explanation,
        other => panic!("expected AUTH_Failure1, got {other:?}"),
    }
}

#[test]
fn one_way_and_bidirectional_transactions_succeed() {
    let rig = rig("success");
    for (group, bidirectional) in [(DhGroup::Null, false), (DhGroup::Ffdhe2048, true), (DhGroup::Null, true)] {
        let mut session = Session::new();
        assert_eq!(
            session.on_send(&peer(&rig, false), &negotiate(3, &[Digest::Sha256], &[group])),
            AfterSend::Continue
        );
        assert_eq!((session.digest(), session.dhgroup()), (Some(Digest::Sha256), Some(group)));
        let (challenge, after) = session.on_receive(1000);
        assert_eq!(after, AfterReceive::Continue);
        assert_eq!(session.state(), State::Reply);
        let (reply, expected) = reply(&rig, &challenge, &rig.host_secret, bidirectional);
        assert_eq!(session.on_send(&peer(&rig, false), &reply), AfterSend::Continue);
        let (success1, after) = session.on_receive(1001);
        let Ok(Message::Success1 { tid: 3, hl: 32, response }) = Message::decode(&success1) else { panic!() };
        assert_eq!(response, expected, "the controller's answer to the host's challenge");
        if bidirectional {
            assert_eq!(after, AfterReceive::Continue);
            let done = session.on_send(&peer(&rig, false), &Message::Success2 { tid: 3 }.encode());
            assert_eq!(done, AfterSend::Authenticated);
        } else {
            assert_eq!(after, AfterReceive::Authenticated);
        }
        assert_eq!(session.state(), State::Completed);
        assert!(session.is_finished());
    }
}

#[test]
fn the_strongest_common_hash_and_group_are_chosen() {
    let rig = rig("choice");
    let mut session = Session::new();
    session.on_send(
        &peer(&rig, false),
        &negotiate(1, &Digest::ALL, &[DhGroup::Null, DhGroup::Ffdhe3072, DhGroup::Ffdhe2048]),
    );
    assert_eq!((session.digest(), session.dhgroup()), (Some(Digest::Sha512), Some(DhGroup::Ffdhe3072)));
}

#[test]
fn refusals_name_their_reason_in_failure1() {
    let rig = rig("refusals");
    let check = |messages: &[Vec<u8>], throttled: bool, config: Option<AuthConfig>, expected: u8| {
        let mut session = Session::new();
        let config = config.unwrap_or_default();
        let peer = Peer { config: &config, ..peer(&rig, throttled) };
        for message in messages {
            assert_eq!(session.on_send(&peer, message), AfterSend::Continue);
        }
        assert_eq!(failure(session.on_receive(1)), expected);
        assert_eq!(session.state(), State::Error);
    };
    let sha256 = negotiate(1, &[Digest::Sha256], &[DhGroup::Null]);
    check(std::slice::from_ref(&sha256), true, None, reason::FAILED);
    let mut scc = sha256.clone();
    scc[6] = 1;
    check(&[scc], false, None, reason::SCC_MISMATCH);
    let mut other_protocol = sha256.clone();
    other_protocol[8] = 2;
    check(&[other_protocol], false, None, reason::PROTOCOL_UNUSABLE);
    let narrow = AuthConfig { digests: vec![Digest::Sha512], dhgroups: DhGroup::ALL.to_vec() };
    check(std::slice::from_ref(&sha256), false, Some(narrow), reason::HASH_UNUSABLE);
    let narrow = AuthConfig { digests: Digest::ALL.to_vec(), dhgroups: vec![DhGroup::Ffdhe4096] };
    check(std::slice::from_ref(&sha256), false, Some(narrow), reason::DHGROUP_UNUSABLE);
    check(&[Message::Success2 { tid: 1 }.encode()], false, None, reason::INCORRECT_PROTOCOL_MESSAGE);
    check(&[vec![0u8; 3]], false, None, reason::INCORRECT_PAYLOAD);

    // A reply of another transaction, a wrong key, a reply before any challenge.
    let mut session = Session::new();
    session.on_send(&peer(&rig, false), &sha256);
    let (challenge, _) = session.on_receive(5);
    let (mut wrong_tid, _) = reply(&rig, &challenge, &rig.host_secret, false);
    wrong_tid[4] ^= 1;
    session.on_send(&peer(&rig, false), &wrong_tid);
    assert_eq!(failure(session.on_receive(6)), reason::INCORRECT_PAYLOAD);

    let mut session = Session::new();
    session.on_send(&peer(&rig, false), &sha256);
    let (challenge, _) = session.on_receive(7);
    let other = DhchapSecret::format(Some(Digest::Sha384), &[8u8; 48]);
    session.on_send(&peer(&rig, false), &reply(&rig, &challenge, &other, false).0);
    assert_eq!(failure(session.on_receive(8)), reason::FAILED);
    assert!(session.why.is_empty(), "the reason went out with the failure");
}

#[test]
fn a_removed_key_or_a_missing_controller_key_fails_the_transaction() {
    let mut rig = rig("keys");
    let sha256 = negotiate(1, &[Digest::Sha256], &[DhGroup::Null]);
    rig.keys.dhchap_ctrlr_key = None;
    let mut session = Session::new();
    session.on_send(&peer(&rig, false), &sha256);
    let (challenge, _) = session.on_receive(1);
    session.on_send(&peer(&rig, false), &reply(&rig, &challenge, &rig.host_secret, true).0);
    assert_eq!(failure(session.on_receive(2)), reason::FAILED, "asked to authenticate without a controller key");

    rig.keyring.remove("host").unwrap();
    let mut session = Session::new();
    session.on_send(&peer(&rig, false), &sha256);
    let (challenge, _) = session.on_receive(3);
    session.on_send(&peer(&rig, false), &reply(&rig, &challenge, &rig.host_secret, false).0);
    let (bytes, after) = session.on_receive(4);
    assert!(
        matches!(&after, AfterReceive::Failed(why) if why.contains("'host'") && why.contains("removed")),
        "{after:?}"
    );
    assert_eq!(failure((bytes, after)), reason::FAILED);
}

#[test]
fn the_host_refusing_the_controller_ends_the_transaction() {
    let rig = rig("failure2");
    let mut session = Session::new();
    session.on_send(&peer(&rig, false), &negotiate(4, &[Digest::Sha256], &[DhGroup::Null]));
    let (challenge, _) = session.on_receive(1);
    session.on_send(&peer(&rig, false), &reply(&rig, &challenge, &rig.host_secret, true).0);
    session.on_receive(2);
    let refusal = Message::Failure { kind: FailureKind::Failure2, tid: 4, explanation: reason::FAILED }.encode();
    assert_eq!(session.on_send(&peer(&rig, false), &refusal), AfterSend::HostRefused);
    assert_eq!(session.state(), State::Error);
}
