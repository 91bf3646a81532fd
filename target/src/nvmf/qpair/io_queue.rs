//! Commands as they arrive, and the I/O queue's path: decode, take buffers (or wait for
//! them), fetch host data, run at the bdev, return data and completions.

use peerless_bdev::{BdevIo, DataBuf, IoType};
use peerless_core::mem::{self, ChunkReader, IoBufCache, MemKind, Sgl};
use peerless_core::reactor::ThreadCtx;

use super::{auth_queue, buffers_sgl, buffers_sgl_mut, Action, Fault, Qpair, ReqState};
use crate::nvme::{fctype, io as opc, status, Sqe, Status};
use crate::nvmf::buffers;
use crate::nvmf::io_cmd::{self, Direction, Placement, Plan, DSM_MAX_RANGES, DSM_RANGE_BYTES};
use crate::nvmf::transport::GroupCtx;

/// Commands that finished waiting for buffers, handled per poll: bounded like all work.
const BUFFER_WAITERS_PER_POLL: usize = 64;

impl Qpair {
    /// A command capsule arrived with `in_capsule` bytes of data.
    pub fn on_command(
        &mut self,
        ctx: &mut ThreadCtx,
        group: &mut GroupCtx<'_>,
        sqe: Sqe,
        in_capsule: &[u8],
    ) -> Result<(), Fault> {
        if self.closing {
            return Ok(());
        }
        let Some(index) = self.admit(&sqe)? else { return Ok(()) };
        match self.qid() {
            None => self.connect_command(ctx, group, index, in_capsule),
            Some(_) if auth_queue::is_auth_command(&sqe) => self.auth_command(ctx, group, index, in_capsule),
            Some(_) if self.auth_pending() => self.finish(group.buffers, index, status::AUTH_REQUIRED, 0),
            Some(0) => self.admin_command(ctx, group, index),
            Some(_) => self.io_command(ctx, group, index, in_capsule),
        }
        Ok(())
    }

    /// A command capsule the transport cannot take as it came (its SGL breaks the
    /// transport binding's rules, e.g. a bad RDMA descriptor list): admitted as any
    /// command, so SQHD and CID checks hold, and answered with `status`.
    pub fn refuse_command(&mut self, group: &mut GroupCtx<'_>, sqe: Sqe, status: Status) -> Result<(), Fault> {
        if self.closing {
            return Ok(());
        }
        let Some(index) = self.admit(&sqe)? else { return Ok(()) };
        self.finish(group.buffers, index, status, 0);
        Ok(())
    }

    /// Host data for the command in `slot` (NVMe/TCP H2CData; an RDMA READ completed).
    pub fn data_received(
        &mut self,
        ctx: &mut ThreadCtx,
        group: &mut GroupCtx<'_>,
        slot: u16,
        cid: u16,
        offset: usize,
        data: &[u8],
    ) -> Result<(), Fault> {
        let index = usize::from(slot);
        let request = self.awaiting_data(slot, cid, offset, data.len())?;
        if let Err(failed) = write_into(&mut request.buffers, request.transfer.bytes, offset, data) {
            // Later data for this command names a transfer that no longer exists.
            self.finish(group.buffers, index, failed, 0);
            return Ok(());
        }
        request.received += data.len();
        if request.received == request.transfer.bytes {
            self.data_complete(ctx, group, index);
        }
        Ok(())
    }

    /// Where `len` bytes of host data at `offset` for the command in `slot` go, for a
    /// transport that reads them from its socket straight into the command's buffer
    /// (NVMe/TCP H2CData), checked as [`Qpair::data_received`] checks them. The bytes
    /// count once [`Qpair::data_written`] says so, so the window is the same on every
    /// call until then. None when the data does not live in one host buffer (several
    /// pool buffers, P2P memory): the transport hands the bytes to `data_received`.
    pub fn h2c_window(&mut self, slot: u16, cid: u16, offset: usize, len: usize) -> Result<Option<&mut [u8]>, Fault> {
        let request = self.awaiting_data(slot, cid, offset, len)?;
        let transfer = request.transfer.bytes;
        let [buffer] = request.buffers.as_mut_slice() else { return Ok(None) };
        Ok(buffer
            .host_bytes_mut()
            .and_then(|bytes| bytes.get_mut(..transfer))
            .and_then(|bytes| bytes.get_mut(offset..offset + len)))
    }

    /// The transport wrote (and, with data digests, checked) the `len` bytes at `offset`
    /// of [`Qpair::h2c_window`]'s window: the command goes on once all its data is in.
    pub fn data_written(
        &mut self,
        ctx: &mut ThreadCtx,
        group: &mut GroupCtx<'_>,
        slot: u16,
        cid: u16,
        offset: usize,
        len: usize,
    ) -> Result<(), Fault> {
        let request = self.awaiting_data(slot, cid, offset, len)?;
        mem::stats::count_host_payload_received_in_place(len);
        request.received += len;
        if request.received == request.transfer.bytes {
            self.data_complete(ctx, group, usize::from(slot));
        }
        Ok(())
    }

    /// Whether the transport moves data in and out of `provider`'s memory, asked once
    /// per provider in a row.
    fn reaches(&mut self, provider: &std::sync::Arc<dyn mem::P2pProvider>) -> bool {
        let domain = provider.domain();
        match self.p2p_reached {
            Some((known, reached)) if known == domain => reached,
            _ => {
                let reached = self.config.p2p_reach.reaches(provider);
                self.p2p_reached = Some((domain, reached));
                reached
            }
        }
    }

    /// The command in `slot` when it waits for host data and `offset..offset + len` is
    /// the next part of it.
    fn awaiting_data(&mut self, slot: u16, cid: u16, offset: usize, len: usize) -> Result<&mut super::Request, Fault> {
        let request = self
            .requests
            .get_mut(usize::from(slot))
            .filter(|r| r.state == ReqState::AwaitingData)
            .ok_or(Fault::UnknownTransfer)?;
        if request.sqe.cid() != cid {
            return Err(Fault::WrongCommand);
        }
        if offset != request.received || offset + len > request.transfer.bytes {
            return Err(Fault::OutOfRange);
        }
        Ok(request)
    }

    /// Where host data for the command in `slot` goes, for a transport that places it
    /// itself (an RDMA READ into the buffers): exactly the transfer's length, writable.
    pub fn fetch_buffers(&mut self, slot: u16) -> Result<Sgl<'_>, Status> {
        let request = self.requests.get_mut(usize::from(slot)).ok_or(Status::INTERNAL_ERROR)?;
        if request.state != ReqState::AwaitingData {
            return Err(Status::INTERNAL_ERROR);
        }
        buffers_sgl_mut(&mut request.buffers, request.transfer.bytes)
    }

    /// The transport placed all host data of the command in `slot` into
    /// [`Qpair::fetch_buffers`] (an RDMA READ completed), or could not (`placed` is the
    /// status the command ends with).
    pub fn data_placed(
        &mut self,
        ctx: &mut ThreadCtx,
        group: &mut GroupCtx<'_>,
        slot: u16,
        cid: u16,
        placed: Result<(), Status>,
    ) -> Result<(), Fault> {
        let index = usize::from(slot);
        let Some(request) = self.requests.get_mut(index).filter(|r| r.state == ReqState::AwaitingData) else {
            return Err(Fault::UnknownTransfer);
        };
        if request.sqe.cid() != cid {
            return Err(Fault::WrongCommand);
        }
        if let Err(failed) = placed {
            self.finish(group.buffers, index, failed, 0);
            return Ok(());
        }
        if self.closing {
            // Nothing runs on a closing queue; the command ends unanswered.
            self.finish(group.buffers, index, status::ABORTED_BY_REQUEST, 0);
            return Ok(());
        }
        request.received = request.transfer.bytes;
        self.data_complete(ctx, group, index);
        Ok(())
    }

    /// One timeslice: finished bdev I/O, commands whose buffers came, liveness.
    pub fn poll(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, now_ns: u64) -> bool {
        let busy = self.take_completions(ctx, group);
        if !self.closing {
            self.check_liveness(now_ns);
        }
        busy
    }

    /// Finished bdev I/O becomes actions, and the buffers it gave back go to commands
    /// waiting for them: for a transport that just handed commands to bdevs which may
    /// have completed them in their submit.
    pub fn take_completions(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) -> bool {
        let mut busy = self.reap_completions(group.buffers);
        busy |= self.serve_waiting(ctx, group);
        busy
    }

    fn io_command(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, index: usize, in_capsule: &[u8]) {
        let sqe = self.requests[index].sqe;
        if sqe.opcode() == opc::FABRICS {
            match sqe.fctype() {
                fctype::DISCONNECT => {
                    // Answer, then end the queue once the answer is out (NVMe-oF 1.1, 3.8).
                    self.finish(group.buffers, index, Status::SUCCESS, 0);
                    self.close("the host disconnected the queue");
                }
                fctype::CONNECT => self.finish(group.buffers, index, status::COMMAND_SEQUENCE_ERROR, 0),
                _ => self.finish(group.buffers, index, Status::INVALID_OPCODE, 0),
            }
            return;
        }
        let Some(queue) = self.queue.as_ref() else { return };
        // A disabled controller (CC.EN = 0 after a reset) runs no I/O (NVMe Base 2.0, 3.5.2).
        if !queue.controller.is_enabled() {
            return self.finish(group.buffers, index, status::COMMAND_SEQUENCE_ERROR, 0);
        }
        // Borrowed, not cloned: the subsystem's refcount is shared by every core serving it.
        let Some(entry) = group.tables.get(ctx, &queue.controller.subsystem, sqe.nsid()) else {
            return self.finish(group.buffers, index, Status::INVALID_NAMESPACE, 0);
        };
        // A path whose ANA state serves no I/O answers with a path status, which tells
        // the host to retry on another path (NVMe Base 2.0, 8.1.3).
        if let Some(refused) = queue.controller.ana_refusal(entry.ns.anagrpid) {
            return self.finish(group.buffers, index, refused, 0);
        }
        let planned = io_cmd::plan(
            &sqe,
            &entry.info,
            self.opts.max_io_size as usize,
            in_capsule.len(),
            self.opts.in_capsule_data_size as usize,
            self.config.sgl,
        );
        let plan = match planned {
            Ok(plan) => plan,
            Err(refused) => return self.finish(group.buffers, index, refused, 0),
        };
        let transfer = match plan {
            Plan::Block { transfer, .. } | Plan::Deallocate { transfer, .. } => transfer,
        };
        // The namespace's P2P provider first (the transport places data there, the bdev
        // DMAs from it); full, or out of the NIC's reach, is an expected state and falls
        // back to host memory. Taken while the entry is borrowed: the buffer holds the
        // provider, nothing else must.
        let p2p = match (&entry.ns.provider, plan) {
            (Some(provider), Plan::Block { .. }) if transfer.bytes > 0 => {
                Some(self.reaches(provider).then(|| mem::P2pBuf::alloc(provider, transfer.bytes).ok()).flatten())
            }
            _ => None,
        };
        let request = &mut self.requests[index];
        request.plan = Some(plan);
        request.transfer = transfer;
        request.data_len = transfer.bytes;
        if transfer.direction == Direction::None {
            return self.execute(ctx, group, index);
        }
        match p2p {
            Some(Some(buffer)) => self.requests[index].buffers.push(DataBuf::P2p(buffer)),
            Some(None) => self.stats.p2p_fallbacks += 1,
            None => {}
        }
        self.place(ctx, group, index, in_capsule);
    }

    /// Gives a command its buffers and moves its data, or queues it until buffers come.
    pub(super) fn place(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, index: usize, in_capsule: &[u8]) {
        let bytes = self.requests[index].transfer.bytes;
        // Waiters first: a newcomer must not overtake commands already queued.
        let placed = !self.requests[index].buffers.is_empty()
            || (self.waiting.is_empty()
                && buffers::take(self.pool, group.buffers, bytes, &mut self.requests[index].buffers));
        if placed {
            return self.start_transfer(ctx, group, index, in_capsule);
        }
        self.stats.buffer_waits += 1;
        if self.requests[index].transfer.placement == Placement::InCapsule {
            // The capsule's bytes live in the transport's receive buffer only until this
            // call returns: keep them in this queue's staging area meanwhile.
            let unit = self.in_capsule_limit();
            let slots = self.requests.len();
            if self.staging.is_empty() {
                self.staging = vec![0u8; unit * slots];
            }
            self.staging[index * unit..index * unit + in_capsule.len()].copy_from_slice(in_capsule);
            self.requests[index].staged = true;
        }
        self.requests[index].state = ReqState::AwaitingBuffer;
        self.waiting.push_back(index as u16);
    }

    /// Hands buffers to waiting commands, oldest first, while the pool has them.
    fn serve_waiting(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) -> bool {
        let mut served = 0;
        while served < BUFFER_WAITERS_PER_POLL {
            let Some(&slot) = self.waiting.front() else { break };
            let index = usize::from(slot);
            let bytes = self.requests[index].transfer.bytes;
            if !buffers::take(self.pool, group.buffers, bytes, &mut self.requests[index].buffers) {
                break;
            }
            self.waiting.pop_front();
            served += 1;
            if self.requests[index].staged {
                let unit = self.in_capsule_limit();
                let staged = std::mem::take(&mut self.staging);
                self.requests[index].staged = false;
                self.start_transfer(ctx, group, index, &staged[index * unit..index * unit + bytes]);
                self.staging = staged;
            } else {
                self.start_transfer(ctx, group, index, &[]);
            }
        }
        served > 0
    }

    /// The command has its buffers: copy in-capsule data, fetch host data, or run.
    fn start_transfer(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, index: usize, in_capsule: &[u8]) {
        let request = &mut self.requests[index];
        let transfer = request.transfer;
        match (transfer.direction, transfer.placement) {
            (Direction::FromHost, Placement::InCapsule) => {
                if let Err(failed) = write_into(&mut request.buffers, transfer.bytes, 0, in_capsule) {
                    return self.finish(group.buffers, index, failed, 0);
                }
                request.received = transfer.bytes;
                self.data_complete(ctx, group, index);
            }
            (Direction::FromHost, Placement::Transport) => {
                request.state = ReqState::AwaitingData;
                let cid = request.sqe.cid();
                self.actions.push_back(Action::FetchData { slot: index as u16, cid, len: transfer.bytes as u32 });
            }
            _ => self.execute(ctx, group, index),
        }
    }

    /// All host data is in: a Connect runs, anything else goes to the bdev.
    fn data_complete(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, index: usize) {
        let request = &self.requests[index];
        if self.queue.is_none() {
            let mut data = [0u8; crate::nvmf::connect::CONNECT_DATA_BYTES];
            let read = buffers_sgl(&request.buffers, request.transfer.bytes)
                .and_then(|sgl| ChunkReader::new(&sgl).read(&mut data).map_err(|_| Status::DATA_TRANSFER_ERROR));
            buffers::give_back(group.buffers, &mut self.requests[index].buffers);
            return match read {
                Ok(_) => self.run_connect(ctx, group, index, &data),
                Err(failed) => self.finish(group.buffers, index, failed, 0),
            };
        }
        if auth_queue::is_auth_send(&request.sqe) {
            let mut data = vec![0u8; request.transfer.bytes];
            let read = buffers_sgl(&request.buffers, request.transfer.bytes)
                .and_then(|sgl| ChunkReader::new(&sgl).read(&mut data).map_err(|_| Status::DATA_TRANSFER_ERROR));
            buffers::give_back(group.buffers, &mut self.requests[index].buffers);
            return match read {
                Ok(_) => self.run_auth_send(group, index, &data),
                Err(failed) => self.finish(group.buffers, index, failed, 0),
            };
        }
        let placed = self.requests[index].buffers.first().map_or(MemKind::Host, buffer_kind);
        self.stats.placed_bytes[placed.index()] += self.requests[index].transfer.bytes as u64;
        self.execute(ctx, group, index);
    }

    /// Runs a command whose data (if any) has arrived.
    fn execute(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>, index: usize) {
        self.requests[index].state = ReqState::Executing;
        let Some(plan) = self.requests[index].plan else {
            return self.finish(group.buffers, index, Status::INTERNAL_ERROR, 0);
        };
        let sqe = self.requests[index].sqe;
        let Some(queue) = self.queue.as_ref() else { return };
        let Some(entry) = group.tables.get(ctx, &queue.controller.subsystem, sqe.nsid()) else {
            return self.finish(group.buffers, index, Status::INVALID_NAMESPACE, 0);
        };
        let handle = entry.handle.clone();
        match plan {
            Plan::Block { io_type, slba, nlb, .. } => {
                let mut io = self.take_io(io_type, slba, nlb);
                std::mem::swap(&mut io.buffers, &mut self.requests[index].buffers);
                self.requests[index].outstanding = 1;
                handle.submit(ctx, io, &self.completions, index as u64);
                self.requests[index].channel = Some(handle);
            }
            Plan::Deallocate { ranges, deallocate, transfer } => {
                // NR is at most 256 entries of 16 bytes: the list fits on the stack.
                let mut list = [0u8; DSM_MAX_RANGES as usize * DSM_RANGE_BYTES];
                let read = buffers_sgl(&self.requests[index].buffers, transfer.bytes)
                    .and_then(|sgl| ChunkReader::new(&sgl).read(&mut list).map_err(|_| Status::DATA_TRANSFER_ERROR));
                buffers::give_back(group.buffers, &mut self.requests[index].buffers);
                if let Err(failed) = read {
                    return self.finish(group.buffers, index, failed, 0);
                }
                let mut submitted = 0;
                if deallocate {
                    for (slba, blocks) in io_cmd::dsm_ranges(&list, ranges).filter(|(_, blocks)| *blocks > 0) {
                        let io = self.take_io(IoType::Unmap, slba, blocks);
                        self.requests[index].outstanding += 1;
                        submitted += 1;
                        handle.submit(ctx, io, &self.completions, index as u64);
                    }
                }
                if submitted == 0 {
                    return self.finish(group.buffers, index, Status::SUCCESS, 0);
                }
                self.requests[index].channel = Some(handle);
            }
        }
    }

    fn take_io(&mut self, io_type: IoType, slba: u64, nlb: u64) -> Box<BdevIo> {
        match self.spare_ios.pop() {
            Some(mut io) => {
                io.reset(io_type, slba, nlb);
                io
            }
            None => BdevIo::new(io_type, slba, nlb),
        }
    }

    /// Finishes I/O the bdev layer completed; returns whether there was any.
    fn reap_completions(&mut self, cache: &mut IoBufCache<'static>) -> bool {
        let mut any = false;
        loop {
            let Some(mut io) = self.completions.borrow_mut().pop_front() else { break };
            any = true;
            let index = io.tag as usize;
            let status = io.status;
            let request = &mut self.requests[index];
            debug_assert_eq!(request.state, ReqState::Executing);
            if !status.is_success() && request.status.is_success() {
                request.status = status;
            }
            if !io.buffers.is_empty() {
                std::mem::swap(&mut request.buffers, &mut io.buffers);
            }
            request.outstanding = request.outstanding.saturating_sub(1);
            if request.outstanding == 0 {
                if let Some(queue) = self.queue.as_ref() {
                    if let Some(counters) = queue.counters.as_ref() {
                        counters.count(io.io_type, request.transfer.bytes, status.is_success());
                    }
                }
                let status = request.status;
                if io.io_type == IoType::Read && status.is_success() && !self.closing {
                    request.state = ReqState::SendingData;
                    let (cid, len) = (request.sqe.cid(), request.data_len as u32);
                    let placed = request.buffers.first().map_or(MemKind::Host, buffer_kind);
                    self.stats.placed_bytes[placed.index()] += u64::from(len);
                    let completes = self.config.data_completes;
                    request.data_completes = completes;
                    self.actions.push_back(Action::SendData { slot: index as u16, cid, len, completes });
                } else {
                    self.finish(cache, index, status, 0);
                }
            }
            self.spare_ios.push(io);
        }
        any
    }

    /// Aborts a command of this (I/O) queue that has not started (NVMe Base 2.0, 5.1):
    /// one still waiting for buffers. Returns whether it was aborted.
    pub fn abort_waiting(&mut self, cid: u16) -> bool {
        let Some(position) = self.waiting.iter().position(|slot| self.requests[usize::from(*slot)].sqe.cid() == cid)
        else {
            return false;
        };
        let Some(slot) = self.waiting.remove(position) else { return false };
        let index = usize::from(slot);
        debug_assert!(self.requests[index].buffers.iter().all(|buffer| matches!(buffer, DataBuf::P2p(_))));
        self.finish_unbuffered(index, status::ABORTED_BY_REQUEST, 0);
        true
    }
}

fn buffer_kind(buffer: &DataBuf) -> MemKind {
    match buffer {
        DataBuf::P2p(buf) => buf.tag().kind(),
        _ => MemKind::Host,
    }
}

/// Copies host data into a command's buffers at `offset`, through the gate for device
/// memory.
fn write_into(buffers: &mut [DataBuf], len: usize, offset: usize, data: &[u8]) -> Result<(), Status> {
    // One host buffer (nearly every command): its bytes, without building and checking a
    // tagged list per command.
    if let [buffer] = buffers {
        let end = offset.checked_add(data.len()).filter(|end| *end <= len).ok_or(Status::DATA_TRANSFER_ERROR)?;
        if let Some(dst) = buffer.host_bytes_mut().and_then(|bytes| bytes.get_mut(offset..end)) {
            dst.copy_from_slice(data);
            mem::stats::count_host_copy(data.len());
            return Ok(());
        }
    }
    let src = Sgl::from_host(data).map_err(|_| Status::INTERNAL_ERROR)?;
    let mut whole = buffers_sgl_mut(buffers, len)?;
    let copied = whole.sub_mut(offset, data.len()).and_then(|mut dst| mem::copy(&mut dst, &src));
    match copied {
        Ok(copied) if copied == data.len() => Ok(()),
        _ => Err(Status::DATA_TRANSFER_ERROR),
    }
}
