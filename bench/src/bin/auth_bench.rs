//! What one DH-HMAC-CHAP transaction costs the target's reactor, per DH group: the
//! controller's computations of a bidirectional transaction (a challenge with a fresh DH
//! key pair, then the shared secret and two SHA-512 responses for the reply), run on this
//! thread as a poll group runs them. The host's side is computed outside the timed part.
//! Groups are visited in the order null ... ffdhe8192 ... null, alternately, `ROUNDS`
//! times; figures are medians in microseconds, ratios are over the null group.
//!
//! Usage: auth_bench [ITERATIONS per visit (20)] [ROUNDS (3)]
#![forbid(unsafe_code)]

use std::time::Instant;

use peerless_target::nvmf::auth::crypto::{self, DhKey, Responder, ResponseInput};
use peerless_target::nvmf::auth::{DhGroup, Digest};

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000be";
const SUBNQN: &str = "nqn.2016-06.io.peerless:bench";

/// The controller's work for one transaction in `group`; returns microseconds.
fn transaction_us(group: DhGroup, host: Option<&DhKey>) -> f64 {
    let digest = Digest::Sha512;
    let key = [7u8; 64];
    let start = Instant::now();
    let mut challenge = [0u8; 64];
    crypto::random(&mut challenge).expect("random");
    let (dh_secret, _public) = match (group, host) {
        (DhGroup::Null, _) => (None, Vec::new()),
        (group, Some(host)) => {
            let ours = DhKey::generate(group).expect("key pair");
            let public = ours.public_value().expect("public value");
            let peer = host.public_value().expect("host value");
            (Some(ours.shared_secret(&peer).expect("shared secret")), public)
        }
        (_, None) => unreachable!("a DH group needs the host's key pair"),
    };
    let input = ResponseInput {
        digest,
        key: &key,
        challenge: &challenge,
        dh_secret: dh_secret.as_deref().map(|s| &s[..]),
        seqnum: 1,
        transaction: 1,
        scc: 0,
        hostnqn: HOSTNQN,
        subnqn: SUBNQN,
    };
    let expected = crypto::response(Responder::Host, &input).expect("host response");
    let answer = crypto::response(Responder::Controller, &input).expect("controller response");
    assert!(crypto::responses_match(&expected, &expected) && !answer.is_empty());
    start.elapsed().as_secs_f64() * 1e6
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iterations: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let groups = [
        DhGroup::Null,
        DhGroup::Ffdhe2048,
        DhGroup::Ffdhe3072,
        DhGroup::Ffdhe4096,
        DhGroup::Ffdhe6144,
        DhGroup::Ffdhe8192,
    ];
    let hosts: Vec<Option<DhKey>> =
        groups.iter().map(|g| (*g != DhGroup::Null).then(|| DhKey::generate(*g).expect("host key"))).collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); groups.len()];
    for round in 0..rounds {
        // A B ... B A: forwards on even rounds, backwards on odd ones.
        let order: Vec<usize> =
            if round % 2 == 0 { (0..groups.len()).collect() } else { (0..groups.len()).rev().collect() };
        for index in order {
            for _ in 0..iterations {
                samples[index].push(transaction_us(groups[index], hosts[index].as_ref()));
            }
        }
    }
    let null_us = median(&mut samples[0].clone());
    println!(
        "DH-HMAC-CHAP, controller side of one bidirectional SHA-512 transaction ({iterations} x {rounds} per group)"
    );
    println!("{:<10} {:>12} {:>10}", "group", "median_us", "x_null");
    for (index, group) in groups.iter().enumerate() {
        let us = median(&mut samples[index]);
        println!("{:<10} {:>12.1} {:>10.1}", group.name(), us, us / null_us);
    }
}
