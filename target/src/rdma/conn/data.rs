//! A queue's data movement to and from the host memory its commands' keyed descriptors
//! name: the RDMA WRITEs that carry a read's data, held until the command completes so
//! they go out in one chain with its SEND, and the RDMA READs that fetch a write's data,
//! at most as many at once as the read depth the host granted.

use peerless_bdev::DataBuf;
use peerless_core::reactor::ThreadCtx;

use super::Conn;
use crate::nvme::Status;
use crate::nvmf::buffers;
use crate::nvmf::transport::GroupCtx;
use crate::rdma::sgl::{self, bounce_sges, copy_into, sges_of, WriteSeg};
use crate::rdma::wr::read_chain;

/// A read's data waiting for its completion, to go out in one chain with it. Kept for
/// the next read once sent, lists and all, so holding one allocates nothing.
#[derive(Default)]
pub(super) struct HeldWrite {
    pub(super) writes: Vec<WriteSeg>,
    /// The memory the WRITEs read (the command's buffers, or pool buffers it was copied
    /// into): the queue's from the moment the engine hears the data was sent until the
    /// SEND behind the WRITEs completes.
    pub(super) buffers: Vec<DataBuf>,
}

impl Conn {
    /// Readies the RDMA WRITE of a read's data to the host; it is posted with the
    /// command's completion. The engine's buffers become the queue's.
    pub(super) fn hold_write(&mut self, group: &mut GroupCtx<'_>, slot: u16, cid: u16, len: u32) -> Result<(), Status> {
        let keyed = self.keyed.get(&cid).ok_or(Status::DATA_TRANSFER_ERROR)?;
        if keyed.len < len {
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        let mut held = self.spare_held.pop().unwrap_or_default();
        let data = self.qpair.data(slot)?;
        if !sges_of(&self.device, &data, &mut self.scratch_sges) {
            // Memory the device was not given (an admin command's reply): copied into
            // pool buffers, which it was.
            if !buffers::take(self.qpair.pool(), group.buffers, len as usize, &mut held.buffers) {
                self.spare_held.push(held);
                return Err(Status::DATA_TRANSFER_ERROR);
            }
            let copied = copy_into(&mut held.buffers, &data, len as usize);
            match copied.ok().and_then(|()| bounce_sges(&self.device, &held.buffers, len as usize)) {
                Some(sges) => self.scratch_sges = sges,
                None => {
                    self.recycle_held(group, held);
                    return Err(Status::DATA_TRANSFER_ERROR);
                }
            }
        }
        if !sgl::split(&self.scratch_sges, keyed.parts(), len, &mut held.writes) {
            self.recycle_held(group, held);
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        if let Err(status) = self.qpair.move_data_buffers(slot, &mut held.buffers) {
            self.recycle_held(group, held);
            return Err(status);
        }
        if let Some(replaced) = self.held.insert(cid, held) {
            self.recycle_held(group, replaced);
        }
        Ok(())
    }

    /// Gives a held write's buffers back to the pool and keeps its lists for the next.
    pub(super) fn recycle_held(&mut self, group: &mut GroupCtx<'_>, mut held: HeldWrite) {
        buffers::give_back(group.buffers, &mut held.buffers);
        held.writes.clear();
        self.spare_held.push(held);
    }

    /// Frees a read's data that will not be sent (its queue is going).
    pub(super) fn release_held(&mut self, group: &mut GroupCtx<'_>, cid: u16) {
        if let Some(held) = self.held.remove(&cid) {
            self.recycle_held(group, held);
        }
    }

    /// Posts the RDMA READs waiting, up to the read depth.
    pub(super) fn start_reads(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) {
        while let Some(&(slot, cid, len)) = self.pending_reads.front() {
            // A READ per descriptor. The NIC itself holds READs beyond the host's IRD, so a
            // command of more descriptors than that still goes, alone.
            let reads = self.keyed.get(&cid).map_or(1, |keyed| keyed.parts().len() as u32);
            let ird_room = self.reads_in_flight == 0 || self.reads_in_flight + reads <= u32::from(self.read_depth);
            if !ird_room || self.sends_in_flight + reads > self.send_capacity {
                break;
            }
            self.pending_reads.pop_front();
            match self.read_data(slot, cid, len) {
                Ok(posted) => {
                    self.reads_in_flight += posted;
                    self.sends_in_flight += posted;
                    if !self.batch_wrs {
                        self.flush_sends(ctx, group);
                    }
                }
                Err(failed) => {
                    if let Err(fault) = self.qpair.data_placed(ctx, group, slot, cid, Err(failed)) {
                        self.fail(&format!("{fault:?}"));
                    }
                }
            }
        }
        if !self.pending_reads.is_empty() && !self.disconnected {
            self.stats.pending_rdma_read += 1;
        }
    }

    /// Queues the RDMA READs of a command's host data, one per descriptor, only the last
    /// signaled (a queue pair's requests complete in order); returns how many.
    pub(super) fn read_data(&mut self, slot: u16, cid: u16, len: u32) -> Result<u32, Status> {
        let keyed = self.keyed.get(&cid).ok_or(Status::DATA_TRANSFER_ERROR)?;
        if keyed.len < len {
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        let into = self.qpair.fetch_buffers(slot)?;
        // The engine places host data in pool buffers, which every device was given.
        if !sges_of(&self.device, &into, &mut self.scratch_sges) {
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        let reads = &mut self.scratch_reads;
        if !sgl::split(&self.scratch_sges, keyed.parts(), len, reads) || reads.is_empty() {
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        let start = self.batch.len();
        if read_chain(slot, cid, reads, &mut self.batch).is_err() {
            self.batch.truncate(start);
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        if reads.len() > 1 {
            self.read_parts.insert(slot, reads.len() as u32 - 1);
        }
        Ok(reads.len() as u32)
    }
}
