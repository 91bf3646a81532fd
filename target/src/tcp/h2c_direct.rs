//! H2CData read from the socket straight into the command's buffer.
//!
//! A large H2CData PDU does not fit one socket read, so through the receive buffer its
//! data would be read there, moved to the buffer's front while the rest arrives, and
//! copied into the command's buffer: up to three passes over every byte. Once its
//! header is in and checked, the connection asks the engine for the window the data
//! belongs to and reads the socket into it; what had already arrived behind the header
//! is copied once. The data digest, when negotiated, is computed over the window before
//! the engine counts the bytes (NVMe/TCP 1.0, 3.6.2.1). Data the engine cannot take in
//! one host buffer (several pool buffers, P2P memory) keeps the buffered path.

use std::io::ErrorKind;

use peerless_core::reactor::ThreadCtx;

use super::conn::{fault_to_fatal, Conn, Phase};
use super::pdu::{self, fes, pdu_type, CommonHeader, DataHeader, Fatal, Layout};
use super::socket::Socket;
use crate::nvmf::transport::GroupCtx;

/// Below this an H2CData's data goes through the receive buffer: moving a few KiB costs
/// less than the engine round trip per PDU.
pub(super) const DIRECT_H2C_MIN_BYTES: usize = 8192;

/// What a read at a PDU boundary takes while R2Ts await their data: an H2CData header
/// and a little of its data, or a few capsules.
pub(super) const H2C_HEADER_READ_BYTES: usize = 4096;

/// An H2CData header and its digest (NVMe/TCP 1.0, 3.6.2.7: HLEN 24).
const QUOTED_HEADER_BYTES: usize = 28;

/// An H2CData PDU whose data is being read into its command's buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct DirectH2c {
    ttag: u16,
    cccid: u16,
    /// DATAO: where this PDU's data starts in the command's transfer.
    offset: usize,
    len: usize,
    got: usize,
    data_digest: bool,
    /// The PDU's header (with its digest), for a termination that quotes it.
    header: [u8; QUOTED_HEADER_BYTES],
    header_len: usize,
}

/// Why reading stopped for good.
pub(super) enum Stop {
    Closed(String),
    Fatal(Fatal, Vec<u8>),
}

impl<S: Socket> Conn<S> {
    /// Starts reading the H2CData PDU at `start` of the receive buffer straight into its
    /// command's buffer, if it is worth it and the engine has one host buffer for it.
    /// Ok(true): the PDU's header and what data had arrived are consumed.
    pub(super) fn start_direct_h2c(
        &mut self,
        header: CommonHeader,
        layout: &Layout,
        start: usize,
    ) -> Result<bool, (Fatal, Vec<u8>)> {
        let available = self.recv_end - start;
        if header.pdu_type != pdu_type::H2C_DATA
            || self.phase != Phase::Ready
            || layout.data_len < DIRECT_H2C_MIN_BYTES
            || available >= layout.total
            || available < layout.data_offset
        {
            return Ok(false);
        }
        let head = &self.recv[start..start + layout.header_bytes];
        let data_header = DataHeader::parse(head);
        // Kept for a termination that quotes it; copied, not allocated, per PDU.
        let mut header_copy = [0u8; QUOTED_HEADER_BYTES];
        let header_len = head.len().min(QUOTED_HEADER_BYTES);
        header_copy[..header_len].copy_from_slice(&head[..header_len]);
        let offset = data_header.offset as usize;
        let window = self
            .qpair
            .h2c_window(data_header.ttag, data_header.cccid, offset, layout.data_len)
            .map_err(|fault| (fault_to_fatal(fault), header_copy[..header_len].to_vec()))?;
        let Some(window) = window else { return Ok(false) };
        let arrived = (available - layout.data_offset).min(layout.data_len);
        let from = start + layout.data_offset;
        window[..arrived].copy_from_slice(&self.recv[from..from + arrived]);
        self.recv_start = from + arrived;
        self.direct = Some(DirectH2c {
            ttag: data_header.ttag,
            cccid: data_header.cccid,
            offset,
            len: layout.data_len,
            got: arrived,
            data_digest: layout.data_digest,
            header: header_copy,
            header_len,
        });
        Ok(true)
    }

    /// Whether data of a direct H2CData is still to come from the socket.
    pub(super) fn direct_h2c_reading(&self) -> bool {
        self.direct.is_some_and(|direct| direct.got < direct.len)
    }

    /// Reads the socket into the window until it is full or the socket is empty.
    /// Ok(true) when bytes came.
    pub(super) fn read_direct_h2c(&mut self) -> Result<bool, Stop> {
        let Some(mut direct) = self.direct else { return Ok(false) };
        let mut progress = false;
        while direct.got < direct.len {
            let window = match self.qpair.h2c_window(direct.ttag, direct.cccid, direct.offset, direct.len) {
                Ok(Some(window)) => window,
                // The command went away under its data (the queue is ending).
                Ok(None) => return Err(Stop::Closed("a command's buffer changed under its H2CData".into())),
                Err(fault) => {
                    return Err(Stop::Fatal(fault_to_fatal(fault), direct.header[..direct.header_len].to_vec()))
                }
            };
            match self.stream.read(&mut window[direct.got..]) {
                Ok(0) => return Err(Stop::Closed("the host closed the connection".into())),
                Ok(read) => {
                    direct.got += read;
                    progress = true;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock || err.kind() == ErrorKind::Interrupted => break,
                Err(err) => return Err(Stop::Closed(format!("read failed: {err}"))),
            }
        }
        self.direct = Some(direct);
        Ok(progress)
    }

    /// Ends a direct H2CData once its data is all in: checks its data digest (the next
    /// four bytes of the receive buffer) and has the engine count the data. Ok(false)
    /// while data or digest are still to come.
    pub(super) fn finish_direct_h2c(
        &mut self,
        ctx: &mut ThreadCtx,
        group: &mut GroupCtx<'_>,
    ) -> Result<bool, (Fatal, Vec<u8>)> {
        let Some(direct) = self.direct.filter(|direct| direct.got == direct.len) else { return Ok(false) };
        let quoted = || direct.header[..direct.header_len].to_vec();
        if direct.data_digest {
            if self.recv_end - self.recv_start < pdu::DIGEST_BYTES {
                return Ok(false);
            }
            let window = match self.qpair.h2c_window(direct.ttag, direct.cccid, direct.offset, direct.len) {
                Ok(Some(window)) => window,
                Ok(None) => return Err((Fatal::new(fes::PDU_SEQUENCE_ERROR, 0), quoted())),
                Err(fault) => return Err((fault_to_fatal(fault), quoted())),
            };
            let expected = &self.recv[self.recv_start..self.recv_start + pdu::DIGEST_BYTES];
            if pdu::digest(window) != expected {
                // SPDK's target ends the connection on a data digest error as well.
                return Err((Fatal::new(fes::HEADER_DIGEST_ERROR, 0), quoted()));
            }
            self.recv_start += pdu::DIGEST_BYTES;
        }
        self.direct = None;
        self.h2c_bytes_awaited = self.h2c_bytes_awaited.saturating_sub(direct.len as u64);
        self.qpair
            .data_written(ctx, group, direct.ttag, direct.cccid, direct.offset, direct.len)
            .map_err(|fault| (fault_to_fatal(fault), quoted()))?;
        Ok(true)
    }
}
