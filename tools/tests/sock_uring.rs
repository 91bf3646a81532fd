//! A listener with `sock_impl` "uring": its connections' readiness comes from io_uring
//! multishot polls instead of the poll group's epoll. Against a real `peerless-tgt` in
//! each reactor mode: data of every size and digest round-trips, hosts that go quiet
//! are woken for, several hosts run at once beside a posix listener's, and a socket the
//! target closes really closes (the kernel holds a watched socket's file until its
//! watch is removed).

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use peerless_target::tcp::pdu::Digests;
use peerless_testkit::{Target, WAIT};
use peerless_tools::initiator::{Controller, IoQueue, Options};
use serde_json::json;
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:uring";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 65_536;

fn serve(target: &Target, transport: serde_json::Value) -> SocketAddr {
    target.create_tcp_transport(transport);
    target.create_subsystem(NQN);
    target.add_malloc_namespace(NQN, "Malloc0", BLOCKS, BLOCK);
    target.listen_with(NQN, json!({"sock_impl": "uring"}))
}

fn connect(addr: SocketAddr, digests: Digests) -> Controller {
    Controller::connect(addr, NQN, HOSTNQN, &Options { digests, ..Options::default() }).expect("connect")
}

fn pattern(slba: u64, blocks: u32, seed: u8) -> Vec<u8> {
    (0..blocks as usize * BLOCK as usize)
        .map(|index| (slba as u8).wrapping_add(index as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn round_trip(queue: &mut IoQueue, slba: u64, blocks: u32, seed: u8) {
    let data = pattern(slba, blocks, seed);
    queue.write(1, slba, blocks, &data).unwrap_or_else(|err| panic!("write {blocks} blocks at {slba}: {err}"));
    let mut back = vec![0u8; data.len()];
    queue.read(1, slba, blocks, &mut back).unwrap_or_else(|err| panic!("read {blocks} blocks at {slba}: {err}"));
    assert!(back == data, "{blocks} blocks at {slba} came back different");
}

fn sizes_and_digests_round_trip(target: &Target) {
    let addr = serve(target, json!({"in_capsule_data_size": 8192}));
    for (index, digests) in [Digests::default(), Digests { header: true, data: true }].into_iter().enumerate() {
        let mut controller = connect(addr, digests);
        let mut queue = controller.io_queue(32).expect("I/O queue");
        // 512 B and 4 KiB in the capsule, 64 and 128 KiB by R2T; reads of each size.
        for (step, blocks) in [1u32, 8, 128, 256].into_iter().enumerate() {
            round_trip(&mut queue, step as u64 * 512, blocks, index as u8);
        }
        // Quiet for longer than adaptive mode's poll window and several sweeps: the
        // reactor sleeps, and only the ring's eventfd can wake it for the next command.
        std::thread::sleep(Duration::from_millis(300));
        round_trip(&mut queue, 4096, 8, 0x77);
    }
}

#[test]
fn data_round_trips_in_interrupt_mode() {
    sizes_and_digests_round_trip(&tgt().start("uring-interrupt", &[]));
}

#[test]
fn data_round_trips_in_poll_mode() {
    sizes_and_digests_round_trip(&tgt().launch("uring-poll").poll_mode().start());
}

#[test]
fn data_round_trips_in_adaptive_mode() {
    sizes_and_digests_round_trip(&tgt().launch("uring-adaptive").adaptive_mode().start());
}

/// Hosts on a uring listener and on a posix listener of the same subsystem, all with
/// commands in flight at once: each gets its own data back.
#[test]
fn uring_and_posix_hosts_run_side_by_side() {
    let target = tgt().start("uring-mixed", &[]);
    let uring = serve(&target, json!({}));
    let posix = target.listen(NQN);
    let threads: Vec<_> = (0..6u8)
        .map(|host| {
            let addr = if host % 2 == 0 { uring } else { posix };
            std::thread::spawn(move || {
                let mut controller = connect(addr, Digests::default());
                let mut queue = controller.io_queue(16).expect("I/O queue");
                let base = u64::from(host) * 8192;
                let mut cids = Vec::new();
                for index in 0..64u64 {
                    cids.push(queue.submit_write(1, base + index * 8, 8, pattern(base + index * 8, 8, host)));
                    if queue.free_slots() == 0 {
                        let mut done = Vec::new();
                        let deadline = Instant::now() + WAIT;
                        while done.is_empty() && Instant::now() < deadline {
                            queue.poll(16, &mut done).expect("poll");
                        }
                        assert!(done.iter().all(|completion| completion.is_ok()), "{done:?}");
                    }
                }
                let mut back = vec![0u8; 8 * BLOCK as usize];
                for index in (0..64u64).step_by(7) {
                    queue.read(1, base + index * 8, 8, &mut back).expect("read");
                    assert_eq!(back, pattern(base + index * 8, 8, host), "host {host} block {index}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a host failed");
    }
}

/// Polls the target's io_uring has pending, from the kernel's account of the ring
/// (`/proc/PID/fdinfo`: one `op=6` line per pending poll).
fn pending_polls(pid: u32) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the target's fds");
    fds.filter_map(Result::ok)
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| link.to_string_lossy().contains("io_uring")))
        .filter_map(|fd| {
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy())).ok()
        })
        .map(|info| info.lines().filter(|line| line.trim_start().starts_with("op=6")).count())
        .sum()
}

fn wait_for_pending_polls(pid: u32, expected: usize) {
    let deadline = Instant::now() + WAIT;
    while pending_polls(pid) != expected {
        assert!(Instant::now() < deadline, "{} io_uring polls pending, expected {expected}", pending_polls(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection the target ends (here: no ICReq before the deadline) is closed on the
/// wire, the host reading end of stream, and its io_uring watch is gone: the kernel
/// holds a watched socket's file, so a watch left behind would leak the socket.
#[test]
fn a_socket_the_target_ends_is_closed_and_unwatched() {
    let target = tgt().start("uring-close", &[]);
    let addr = serve(&target, json!({"icreq_timeout_ms": 200}));
    let mut silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    for stream in &mut silent {
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut buf = [0u8; 8];
        let read = stream.read(&mut buf);
        assert!(matches!(read, Ok(0)) || read.is_err(), "a silent host got {read:?}");
        assert!(
            !matches!(&read, Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "the target never closed a connection it ended: {read:?}"
        );
    }
    wait_for_pending_polls(target.pid(), 0);
    // The listener serves on after its ended connections: admin and I/O queue watched.
    let mut controller = connect(addr, Digests::default());
    let mut queue = controller.io_queue(8).expect("I/O queue");
    round_trip(&mut queue, 0, 8, 1);
    assert_eq!(pending_polls(target.pid()), 2, "one watch per connection");
    drop(queue);
    drop(controller);
    wait_for_pending_polls(target.pid(), 0);
}

/// One address has one way of watching its sockets: a second subsystem asking another
/// gets a clear refusal, and an unknown name is refused by name.
#[test]
fn sock_impl_is_checked() {
    let target = tgt().start("uring-refusals", &[]);
    let addr = serve(&target, json!({}));
    target.create_subsystem("nqn.2016-06.io.peerless:other");
    let listen_address =
        json!({"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": addr.port().to_string()});
    let (code, message) = target.call_err(
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": "nqn.2016-06.io.peerless:other", "listen_address": listen_address, "sock_impl": "posix"})),
    );
    assert!(code != 0 && message.contains("uring") && message.contains("already listens"), "{code} {message}");
    target.call(
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": "nqn.2016-06.io.peerless:other", "listen_address": listen_address, "sock_impl": "uring"})),
    );
    let (code, message) = target.call_err(
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4999"}, "sock_impl": "epoll"})),
    );
    assert_eq!(code, -32602, "{message}");
    assert!(message.contains("sock_impl") && message.contains("'epoll'"), "{message}");
}
