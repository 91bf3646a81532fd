//! A queue pair's NVMe/TCP side: command capsules as CapsuleCmd PDUs (data in the capsule
//! or solicited by R2T), and the PDUs that answer them received, validated and handled,
//! large C2HData read from the socket straight into its command's buffer.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};

use peerless_target::nvme::cmd::{Sqe, SqeBuilder};
use peerless_target::tcp::pdu::{self, pdu_type, DIGEST_BYTES};

use super::error::{Error, Result};
use super::inflight::{push_with_data, Direct, Fault, Handler, Slot};
use super::queue::{Completion, Xfer};
use super::transport::{Transport, TxBuf};

/// PDUs handled per receive round at most, bounding the time one queue holds its thread.
const MAX_PDUS_PER_POLL: usize = 1024;
/// Socket reads per `poll` at most.
const RECEIVE_ROUNDS: usize = 4;
/// C2HData at least this large, not yet fully received, is read from the socket straight
/// into its command's buffer instead of through the receive buffer (one copy fewer).
pub const DIRECT_MIN_BYTES: usize = 16 * 1024;

pub(crate) struct TcpLink {
    pub transport: Transport,
    /// A large C2HData PDU being read straight into its buffer.
    direct: Option<Direct>,
    /// How many C2HData PDUs took that path.
    pub direct_pdus: u64,
}

impl TcpLink {
    pub fn new(transport: Transport) -> TcpLink {
        TcpLink { transport, direct: None, direct_pdus: 0 }
    }

    /// Encodes the command with the NVMe/TCP SGL (in the capsule or transport data block)
    /// and queues its CapsuleCmd PDU.
    pub fn submit(&mut self, cmd: SqeBuilder, xfer: Xfer, cid: u16, data: &[u8], in_capsule: bool) -> Sqe {
        let len = data.len() as u32;
        let sqe = match xfer {
            _ if in_capsule => cmd.in_capsule(len),
            Xfer::None => cmd.transport_data(0),
            _ => cmd.transport_data(len),
        }
        .u16_at(2, cid)
        .build();
        let digests = self.transport.negotiated.digests;
        let data = if in_capsule { data } else { &[][..] };
        let header = pdu::capsule_cmd(&sqe.0, data.len(), digests);
        push_with_data(&mut self.transport.tx, header.as_slice(), data, digests);
        sqe
    }

    pub fn flush(&mut self) -> Result<()> {
        self.transport.tx.flush(&mut self.transport.stream)
    }

    /// Reads what the socket has and handles every complete PDU.
    pub fn receive(&mut self, slots: &mut [Slot], ready: &mut VecDeque<Completion>) -> Result<()> {
        for _ in 0..RECEIVE_ROUNDS {
            if self.direct.is_some() && !self.read_direct(slots, ready)? {
                return Ok(());
            }
            let filled = self.transport.rx.fill(&mut self.transport.stream);
            // Handle what is buffered even when the read failed: a TermReq just before the
            // close explains the close better than the close does.
            let read = self.handle_pdus(slots, ready).and(filled)?;
            // A short read drained the socket: another now would only cost a syscall.
            if self.direct.is_none() && (read == 0 || !self.transport.rx.more()) {
                return Ok(());
            }
        }
        Ok(())
    }

    fn handle_pdus(&mut self, slots: &mut [Slot], ready: &mut VecDeque<Completion>) -> Result<()> {
        let TcpLink { transport, direct, direct_pdus } = self;
        let Transport { rx, tx, negotiated, .. } = transport;
        let mut handler = Handler { slots, ready, tx, negotiated };
        for _ in 0..MAX_PDUS_PER_POLL {
            let Some(pdu) = rx.next(handler.tx)? else {
                // Nothing complete: a large C2HData under way continues straight into its buffer.
                if let Some(partial) = rx.take_partial_data(handler.tx, DIRECT_MIN_BYTES)? {
                    match handler.begin_direct(&partial) {
                        Ok(started) => {
                            *direct = Some(started);
                            *direct_pdus += 1;
                        }
                        Err(fault) => return Err(terminate(handler.tx, fault, partial.header)),
                    }
                }
                break;
            };
            if let Err(fault) = handler.handle(&pdu) {
                return Err(terminate(handler.tx, fault, &pdu.bytes[..pdu.layout.header_bytes]));
            }
        }
        Ok(())
    }

    /// Reads the rest of a large C2HData PDU into its command's buffer. Ok(false): more to come.
    fn read_direct(&mut self, slots: &mut [Slot], ready: &mut VecDeque<Completion>) -> Result<bool> {
        let TcpLink { transport, direct, .. } = self;
        let Some(state) = direct.as_mut() else { return Ok(true) };
        let buf = &mut slots[usize::from(state.cid)].buf;
        while state.at < state.end {
            let Some(read) = read_some(&mut transport.stream, &mut buf[state.at..state.end])? else { return Ok(false) };
            if let Some(crc) = state.crc.as_mut() {
                crc.update(&buf[state.at..state.at + read]);
            }
            state.at += read;
        }
        if state.crc.is_some() {
            while state.trailer_got < DIGEST_BYTES {
                let Some(read) = read_some(&mut transport.stream, &mut state.trailer[state.trailer_got..])? else {
                    return Ok(false);
                };
                state.trailer_got += read;
            }
        }
        let digest_ok = state.crc.is_none_or(|crc| crc.finish().to_le_bytes() == state.trailer);
        let (cid, len, flags) = (state.cid, state.len, state.flags);
        *direct = None;
        let mut handler = Handler { slots, ready, tx: &mut transport.tx, negotiated: &transport.negotiated };
        handler.finish_c2h(cid, len, digest_ok, flags).map_err(|fault| terminate(handler.tx, fault, &[]))?;
        Ok(true)
    }
}

/// Reads what the socket has into `buf`: None when nothing is there yet.
fn read_some(stream: &mut impl Read, buf: &mut [u8]) -> Result<Option<usize>> {
    match stream.read(buf) {
        Ok(0) => Err(Error::Closed),
        Ok(read) => Ok(Some(read)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(None),
        Err(e) => Err(Error::io("receive", &e)),
    }
}

/// Queues the H2CTermReq that tells the controller why we end the connection (NVMe/TCP
/// 1.0, 3.6.2.4), quoting the offending header.
fn terminate(tx: &mut TxBuf, fault: Fault, header: &[u8]) -> Error {
    tx.push(&pdu::term_req(pdu_type::H2C_TERM_REQ, fault.fatal, header));
    let (fes, fei) = (fault.fatal.fes, fault.fatal.fei);
    Error::Protocol(format!("{}: FES {fes:#x} FEI {fei:#x}", fault.message))
}
