//! Zero-copy sends over the in-memory socket, which numbers them as the kernel does and
//! releases them when the test says: a read's command completes at once (its CID is free
//! for the host) while its buffers stay lent until the notification for every send that
//! carried them; a broken connection waits for them; ENOBUFS copies instead.

use super::*;

/// Fills the first 64 blocks with a pattern and returns it.
fn fill(rig: &mut Rig, io: &mut Wire) -> Vec<u8> {
    let disk = pattern(64 * BLOCK, 5);
    for (at, chunk) in disk.chunks(8 * BLOCK).enumerate() {
        let write = SqeBuilder::new(io::WRITE, 1).rw(1, (at * 8) as u64, 8).in_capsule(chunk.len() as u32).build();
        assert_eq!(rig.command(io, write, chunk).status, Status::SUCCESS);
    }
    disk
}

/// Reads `blocks` from LBA 0 with command `cid` and checks the data.
fn read(rig: &mut Rig, io: &mut Wire, cid: u16, blocks: usize, disk: &[u8]) {
    let len = blocks * BLOCK;
    let command = SqeBuilder::new(io::READ, cid).rw(1, 0, blocks as u32).transport_data(len as u32).build();
    let capsule = io.capsule(&command, &[]);
    let c2h = rig.exchange(io, &capsule);
    assert_eq!(c2h[0], pdu_type::C2H_DATA);
    assert_eq!(DataHeader::parse(&c2h).cccid, cid);
    let start = usize::from(c2h[3]);
    assert_eq!(&c2h[start..start + len], &disk[..len], "{blocks} blocks");
}

fn zerocopy_controller(rig: &mut Rig, threshold: u32) -> (Wire, Wire, Vec<u8>) {
    let (admin, mut io) = rig.controller(NONE);
    let disk = fill(rig, &mut io);
    io.conn.enable_zerocopy_sends(threshold);
    (admin, io, disk)
}

#[test]
fn a_read_completes_at_once_and_its_buffers_wait_for_the_notification() {
    let mut rig = Rig::new();
    let (admin, mut io, disk) = zerocopy_controller(&mut rig, 0);
    read(&mut rig, &mut io, 9, 64, &disk);
    assert_eq!(io.conn.qpair().slots_in_use(), 0, "the command is complete");
    assert!(io.conn.out.lent_buffers() > 0, "its buffers are lent");
    assert!(io.conn.wants_poll(), "polled until the kernel lets go");
    // The host reuses the CID at once: no conflict.
    read(&mut rig, &mut io, 9, 8, &disk);
    let sends = io.peer.zerocopy_sends();
    assert_eq!(sends, 2);
    io.peer.notify(0, 0, true);
    rig.turn(&mut io);
    assert!(io.conn.out.lent_buffers() > 0, "the second read's buffer is still lent");
    io.peer.notify(1, 1, false);
    rig.turn(&mut io);
    assert_eq!(io.conn.out.lent_buffers(), 0);
    assert!(!io.conn.out.awaiting_notifications(), "the retired header buffers are back too");
    rig.hang_up((admin, io));
}

#[test]
fn a_later_notification_waits_for_an_earlier_send() {
    let mut rig = Rig::new();
    let (admin, mut io, disk) = zerocopy_controller(&mut rig, 0);
    for cid in 1..=3 {
        read(&mut rig, &mut io, cid, 16, &disk);
    }
    assert_eq!(io.peer.zerocopy_sends(), 3);
    io.peer.notify(1, 2, true);
    rig.turn(&mut io);
    assert!(io.conn.out.lent_buffers() > 0, "send 0 holds everything after it");
    io.peer.notify(0, 0, true);
    rig.turn(&mut io);
    assert_eq!(io.conn.out.lent_buffers(), 0);
    rig.hang_up((admin, io));
}

/// Through a small window each read goes in many partial zero-copy sends; the host
/// breaks the connection midway. The connection finishes only once every send that
/// carried data is released, and then nothing is left lent.
#[test]
fn a_broken_connection_waits_for_its_notifications() {
    let mut rig = Rig::new();
    let (admin, mut io, _) = zerocopy_controller(&mut rig, 0);
    io.peer.set_send_window(1000);
    let command = SqeBuilder::new(io::READ, 4).rw(1, 0, 64).transport_data(64 * BLOCK as u32).build();
    io.peer.deliver(&io.capsule(&command, &[]));
    let mut taken = Vec::new();
    for _ in 0..8 {
        rig.turn(&mut io);
        io.peer.take(500, &mut taken);
    }
    assert!(io.conn.has_pending_output(), "the data is still going out");
    let sends = io.peer.zerocopy_sends();
    assert!(sends > 1, "partial sends: {sends}");
    io.peer.reset();
    for _ in 0..8 {
        rig.turn(&mut io);
    }
    assert!(!io.conn.is_done(), "sends the kernel holds keep the connection");
    assert!(io.conn.out.lent_buffers() > 0);
    io.peer.notify(0, sends - 1, false);
    rig.drain(&mut io);
    assert_eq!(io.conn.out.lent_buffers(), 0);
    assert_eq!(io.conn.qpair().slots_in_use(), 0);
    let mut admin = admin;
    admin.peer.close();
    rig.drain(&mut admin);
}

#[test]
fn enobufs_and_a_threshold_above_the_payload_copy() {
    let mut rig = Rig::new();
    let (admin, mut io, disk) = zerocopy_controller(&mut rig, 0);
    let fallbacks = crate::tcp::zerocopy::stats().fallbacks;
    io.peer.refuse_zerocopy(1);
    read(&mut rig, &mut io, 5, 64, &disk);
    assert_eq!(io.peer.zerocopy_sends(), 0, "refused, so copied");
    assert_eq!(io.conn.out.lent_buffers(), 0);
    assert!(crate::tcp::zerocopy::stats().fallbacks > fallbacks);
    rig.hang_up((admin, io));

    let (admin, mut io, disk) = zerocopy_controller(&mut rig, 16 * BLOCK as u32);
    read(&mut rig, &mut io, 6, 8, &disk);
    assert_eq!(io.peer.zerocopy_sends(), 0, "below the threshold");
    read(&mut rig, &mut io, 7, 32, &disk);
    assert_eq!(io.peer.zerocopy_sends(), 1, "at or above it");
    io.peer.notify(0, 0, true);
    rig.turn(&mut io);
    assert_eq!(io.conn.out.lent_buffers(), 0);
    rig.hang_up((admin, io));
}
