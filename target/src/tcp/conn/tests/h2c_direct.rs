//! H2CData read straight into the command's buffer: whatever way the bytes are cut by
//! the network, with and without digests, the data lands whole, and a bad digest or a
//! transfer the engine does not know ends the connection as the buffered path does.

use super::*;

/// A write of `data` at LBA 0 whose data goes as H2CData PDUs of `pdu_bytes`, each
/// delivered in pieces of `piece` bytes; returns the completion's status.
fn write_in_pieces(rig: &mut Rig, io: &mut Wire, data: &[u8], pdu_bytes: usize, piece: usize) -> Status {
    let blocks = (data.len() / BLOCK) as u32;
    let write = SqeBuilder::new(io::WRITE, 21).rw(1, 0, blocks).transport_data(data.len() as u32).build();
    let capsule = io.capsule(&write, &[]);
    let r2t = rig.exchange(io, &capsule);
    assert_eq!(r2t[0], pdu_type::R2T);
    let ttag = DataHeader::parse(&r2t).ttag;
    let mut stream = Vec::new();
    for (index, chunk) in data.chunks(pdu_bytes).enumerate() {
        let last = (index + 1) * pdu_bytes >= data.len();
        stream.extend(io.h2c(21, ttag, index * pdu_bytes, chunk, last));
    }
    let mut went_direct = false;
    for part in stream.chunks(piece) {
        io.peer.deliver(part);
        rig.turn(io);
        went_direct |= io.conn.direct.is_some();
    }
    // While an R2T awaits its data a read at a PDU boundary takes a header's worth, so
    // even a PDU that arrived whole goes direct; small ones stay buffered.
    let large = pdu_bytes >= crate::tcp::h2c_direct::DIRECT_H2C_MIN_BYTES;
    assert_eq!(went_direct, large, "direct reads for PDUs of {pdu_bytes} cut into {piece}");
    let done = rig.expect(io);
    assert_eq!(done[0], pdu_type::CAPSULE_RESP, "{:02x?}", &done[..done.len().min(24)]);
    let cqe = Cqe::decode(&done[pdu::COMMON_HEADER_BYTES..]);
    assert_eq!(cqe.cid, 21);
    assert_eq!(io.conn.h2c_bytes_awaited, 0, "every byte an R2T asked for came");
    cqe.status
}

fn read_back(rig: &mut Rig, io: &mut Wire, len: usize) -> Vec<u8> {
    let blocks = (len / BLOCK) as u32;
    let read = SqeBuilder::new(io::READ, 22).rw(1, 0, blocks).transport_data(len as u32).build();
    let capsule = io.capsule(&read, &[]);
    let mut back = Vec::new();
    io.peer.deliver(&capsule);
    while back.len() < len {
        let c2h = rig.expect(io);
        assert_eq!(c2h[0], pdu_type::C2H_DATA);
        let header = DataHeader::parse(&c2h);
        let start = usize::from(c2h[3]);
        back.extend_from_slice(&c2h[start..start + header.length as usize]);
    }
    back
}

#[test]
fn data_cut_anywhere_lands_whole_in_the_commands_buffer() {
    let mut rig = Rig::new();
    for digests in [NONE, BOTH] {
        let (admin, mut io) = rig.controller(digests);
        for (len, pdu_bytes, piece) in [
            (64 * 1024, 64 * 1024, 1000),
            (64 * 1024, 64 * 1024, 4093),
            (64 * 1024, 16 * 1024, 7),
            (128 * 1024, 32 * 1024, 9000),
            (16 * 1024, 16 * 1024, 16 * 1024 - 3),
            // Whole at once, and PDUs too small to be worth it.
            (32 * 1024, 32 * 1024, 1 << 20),
            (32 * 1024, 4096, 1 << 20),
            (32 * 1024, 4096, 333),
        ] {
            let data = pattern(len, (len / 1024 + piece) as u8);
            let status = write_in_pieces(&mut rig, &mut io, &data, pdu_bytes, piece);
            assert_eq!(status, Status::SUCCESS, "{len} B in PDUs of {pdu_bytes}, pieces of {piece}");
            assert!(read_back(&mut rig, &mut io, len) == data, "{len} B, pieces of {piece}, {digests:?}");
        }
        rig.hang_up((admin, io));
    }
}

#[test]
fn a_bad_data_digest_read_directly_ends_the_connection() {
    let mut rig = Rig::new();
    let (mut admin, mut io) = rig.controller(BOTH);
    let data = pattern(32 * 1024, 3);
    let write = SqeBuilder::new(io::WRITE, 5).rw(1, 0, 64).transport_data(data.len() as u32).build();
    let capsule = io.capsule(&write, &[]);
    let ttag = DataHeader::parse(&rig.exchange(&mut io, &capsule)).ttag;
    let mut pdu = io.h2c(5, ttag, 0, &data, true);
    let last = pdu.len() - 1;
    pdu[last] ^= 0x10;
    for part in pdu.chunks(5000) {
        io.peer.deliver(part);
        rig.turn(&mut io);
    }
    assert_eq!(term(&rig.expect(&mut io)), (fes::HEADER_DIGEST_ERROR, 0));
    rig.drain(&mut io);
    assert!(io.peer.is_shut_down());
    admin.peer.close();
    rig.drain(&mut admin);
}

#[test]
fn direct_data_for_an_unknown_transfer_ends_the_connection() {
    let data = pattern(32 * 1024, 4);
    // The wrong tag, then the right tag at the wrong offset: each is fatal once its header
    // is in, before its data has arrived.
    for (wrong_tag, offset, expected) in
        [(true, 0, Fatal::field(10)), (false, 4096, Fatal::new(fes::DATA_OUT_OF_RANGE, 12))]
    {
        let mut rig = Rig::new();
        let (mut admin, mut io) = rig.controller(NONE);
        let write = SqeBuilder::new(io::WRITE, 6).rw(1, 0, 64).transport_data(data.len() as u32).build();
        let capsule = io.capsule(&write, &[]);
        let ttag = DataHeader::parse(&rig.exchange(&mut io, &capsule)).ttag;
        let ttag = if wrong_tag { ttag ^ 0x55 } else { ttag };
        let pdu = io.h2c(6, ttag, offset, &data[offset..], true);
        io.peer.deliver(&pdu[..2000]);
        assert_eq!(term(&rig.expect(&mut io)), (expected.fes, expected.fei), "wrong tag {wrong_tag}, offset {offset}");
        assert!(io.conn.direct.is_none());
        rig.drain(&mut io);
        assert!(io.peer.is_shut_down());
        admin.peer.close();
        rig.drain(&mut admin);
    }
}
