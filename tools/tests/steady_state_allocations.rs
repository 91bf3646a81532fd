//! No heap allocation per I/O in steady state: a real `peerless-tgt` counts the
//! allocations made on each reactor's thread (`framework_get_reactors`), and I/O of every
//! shape the NVMe/TCP data path has (in-capsule and R2T writes, reads sent in place from
//! pool buffers, 512 B to 128 KiB, with and without digests, one queue or several) must
//! leave that count where idling leaves it, but for the rare growth of a buffer to a new
//! high-water mark.

mod support;

use std::net::SocketAddr;
use std::time::Instant;

use peerless_target::tcp::pdu::Digests;
use peerless_testkit::{Target, WAIT};
use peerless_tools::initiator::{Completion, Controller, IoQueue, Options};
use serde_json::json;
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:allocations";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 131_072;
const QUEUE_DEPTH: usize = 32;
const WARM_UP_COMMANDS: usize = 1_000;
const MEASURED_COMMANDS: usize = 3_000;
/// See `allocates_per_io`.
const COMMANDS_PER_ALLOWED_GROWTH: u64 = 100;

#[derive(Clone, Copy, Debug)]
enum Shape {
    Read,
    Write,
    /// Reads and writes alternating, so both directions share the connection's buffers.
    Mixed,
}

/// The reactor thread's allocation count; the target under test always counts.
fn reactor_allocations(target: &Target) -> u64 {
    let reactors = target.call("framework_get_reactors", None);
    reactors["reactors"][0]["allocations"]
        .as_u64()
        .unwrap_or_else(|| panic!("peerless-tgt reports no allocation count: {reactors}"))
}

/// What reading the count costs on the reactor thread (the RPC's own messages), and what
/// the reactor allocates idle: the most that four back-to-back reads differ by.
fn idle_allocations(target: &Target) -> u64 {
    let mut last = reactor_allocations(target);
    let mut most = 0;
    for _ in 0..4 {
        let now = reactor_allocations(target);
        most = most.max(now - last);
        last = now;
    }
    most
}

/// Keeps every queue full of commands of `blocks` blocks until each completed `commands`,
/// all at once, spread over the namespace so that every command touches other buffers.
fn run(queues: &mut [IoQueue], shape: Shape, blocks: u32, commands: usize) {
    let bytes = blocks as usize * BLOCK as usize;
    let span = BLOCKS / u64::from(blocks);
    let mut submitted = vec![0usize; queues.len()];
    let mut completed = vec![0usize; queues.len()];
    let mut done: Vec<Completion> = Vec::with_capacity(QUEUE_DEPTH);
    let deadline = Instant::now() + WAIT;
    while completed.iter().any(|count| *count < commands) {
        assert!(Instant::now() < deadline, "{shape:?} {bytes} B: {completed:?} of {commands} completed in time");
        for (index, queue) in queues.iter_mut().enumerate() {
            while submitted[index] < commands && queue.free_slots() > 0 {
                let sequence = submitted[index] * stride(index);
                let slba = (sequence as u64 * 7919 % span) * u64::from(blocks);
                let write = match shape {
                    Shape::Read => false,
                    Shape::Write => true,
                    Shape::Mixed => submitted[index].is_multiple_of(2),
                };
                let cid = if write {
                    queue.submit_write(1, slba, blocks, vec![sequence as u8; bytes])
                } else {
                    queue.submit_read(1, slba, blocks, vec![0; bytes])
                };
                cid.unwrap_or_else(|err| panic!("{shape:?} {bytes} B: submit: {err}"));
                submitted[index] += 1;
            }
            done.clear();
            queue.poll(QUEUE_DEPTH, &mut done).unwrap_or_else(|err| panic!("{shape:?} {bytes} B: {err}"));
            for completion in &done {
                assert!(completion.is_ok(), "{shape:?} {bytes} B: {completion:?}");
            }
            completed[index] += done.len();
        }
    }
}

/// Each queue walks the namespace with its own stride, so queues touch other blocks.
fn stride(index: usize) -> usize {
    2 * index + 1
}

/// Allocations on the reactor while `MEASURED_COMMANDS` commands of one shape run on
/// each queue, once the connections have warmed up, less what reading the count and
/// idling cost: the fewer of two rounds, since growth to a high-water mark happens in
/// the first more than the second, while a cost per command shows in both.
fn allocations_per_workload(target: &Target, queues: &mut [IoQueue], shape: Shape, blocks: u32) -> u64 {
    run(queues, shape, blocks, WARM_UP_COMMANDS);
    let mut fewest = u64::MAX;
    for _ in 0..2 {
        let idle = idle_allocations(target);
        let before = reactor_allocations(target);
        run(queues, shape, blocks, MEASURED_COMMANDS);
        let after = reactor_allocations(target);
        fewest = fewest.min((after - before).saturating_sub(idle));
    }
    fewest
}

/// A vector or queue reaching a new high-water mark reallocates once, and then no more;
/// anything that allocates per command, per PDU or per write to the socket allocates at
/// least once per 16 commands in these workloads. The bound lies between the two.
fn allocates_per_io(allocations: u64, commands: usize) -> bool {
    allocations * COMMANDS_PER_ALLOWED_GROWTH > commands as u64
}

fn serve(target: &Target) -> SocketAddr {
    target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"in_capsule_data_size": 8192, "max_io_size": 131_072}))
}

fn connect(addr: SocketAddr, digests: Digests) -> Controller {
    // A long keep-alive: the admin queue sits unpolled while the I/O queues run.
    Controller::connect(addr, NQN, HOSTNQN, &Options { digests, kato_ms: 600_000, ..Options::default() })
        .expect("connect")
}

#[test]
fn io_of_every_shape_and_size_allocates_nothing_per_command_on_the_reactor() {
    let target = tgt().start("steady-allocations", &["--poll-mode"]);
    let addr = serve(&target);
    let mut failures = Vec::new();
    for digests in [Digests::default(), Digests { header: true, data: true }] {
        let mut controller = connect(addr, digests);
        let mut queues = [controller.io_queue(QUEUE_DEPTH as u16).expect("I/O queue")];
        // 512 B and 4 KiB writes travel in the capsule, 64 and 128 KiB by R2T/H2CData;
        // reads of every size leave from the pool buffers they were read into.
        for (shape, blocks) in [
            (Shape::Read, 1),
            (Shape::Read, 8),
            (Shape::Read, 256),
            (Shape::Write, 1),
            (Shape::Write, 8),
            (Shape::Write, 128),
            (Shape::Write, 256),
            (Shape::Mixed, 8),
            (Shape::Mixed, 256),
        ] {
            let allocations = allocations_per_workload(&target, &mut queues, shape, blocks);
            println!(
                "{digests:?} {shape:?} {} B: {allocations} allocations in {MEASURED_COMMANDS} commands",
                blocks * BLOCK
            );
            if allocates_per_io(allocations, MEASURED_COMMANDS) {
                failures.push(format!("{digests:?} {shape:?} {} B: {allocations}", blocks * BLOCK));
            }
        }
    }
    assert!(failures.is_empty(), "reactor allocations during steady-state I/O: {failures:?}");
}

#[test]
fn several_connections_at_once_allocate_nothing_per_command_on_the_reactor() {
    let target = tgt().start("steady-allocations-many", &["--poll-mode"]);
    let addr = serve(&target);
    let mut controllers: Vec<Controller> = (0..4).map(|_| connect(addr, Digests::default())).collect();
    let mut queues: Vec<IoQueue> =
        controllers.iter_mut().map(|controller| controller.io_queue(QUEUE_DEPTH as u16).expect("I/O queue")).collect();
    for (shape, blocks) in [(Shape::Mixed, 8), (Shape::Read, 256)] {
        let allocations = allocations_per_workload(&target, &mut queues, shape, blocks);
        let commands = MEASURED_COMMANDS * queues.len();
        println!("4 connections {shape:?} {} B: {allocations} allocations in {commands} commands", blocks * BLOCK);
        assert!(
            !allocates_per_io(allocations, commands),
            "4 connections, {shape:?} {} B: {allocations}",
            blocks * BLOCK
        );
    }
}
