//! What a connection does with commands: Connect, admin commands, I/O through the bdev
//! layer, host data by in-capsule copy or R2T/H2CData, completions and events.

use peerless_bdev::{BdevIo, DataBuf, IoType};
use peerless_core::mem::{self, Sgl};
use peerless_core::reactor::ThreadCtx;

use super::conn::{Conn, Phase, Queue, SlotState, ADMIN_IN_CAPSULE_BYTES};
use super::pdu::{self, fes, Fatal};
use super::poll_group::NsTables;
use crate::nvme::cmd::SGL_TRANSPORT_DATA_BLOCK;
use crate::nvme::{admin as opc, fctype, status, Sqe, Status};
use crate::nvmf::admin::{self, Outcome};
use crate::nvmf::connect::{self, ConnInfo, CONNECT_DATA_BYTES};
use crate::nvmf::ctrlr::{AdminState, AEC_DISCOVERY_LOG_CHANGE, AEC_NAMESPACE_ATTRIBUTE, NOTICE_DISCOVERY_CHANGED};
use crate::nvmf::io_cmd::{self, Direction, Placement, Plan, Transfer};

/// Host buffers grow in these steps, so a slot's buffer settles at its queue's largest
/// I/O after a few commands and is then reused for every command.
const BUFFER_GRANULE_BYTES: usize = 4096;

/// Copies host data into `buffer` at `offset`, through the gate for device memory.
fn write_into(buffer: &mut DataBuf, offset: usize, data: &[u8]) -> Result<(), Status> {
    let src = Sgl::from_host(data).map_err(|_| Status::INTERNAL_ERROR)?;
    let copied = match buffer {
        DataBuf::Heap(bytes) => {
            let target = bytes.get_mut(offset..offset + data.len()).ok_or(Status::DATA_TRANSFER_ERROR)?;
            target.copy_from_slice(data);
            return Ok(());
        }
        DataBuf::P2p(buf) => buf.sgl_mut().sub_mut(offset, data.len()).and_then(|mut dst| mem::copy(&mut dst, &src)),
        DataBuf::Pool(buf) => buf.sgl_mut().sub_mut(offset, data.len()).and_then(|mut dst| mem::copy(&mut dst, &src)),
        DataBuf::Dma(buf) => {
            buf.seg_ref_mut(offset, data.len()).and_then(Sgl::from_ref).and_then(|mut dst| mem::copy(&mut dst, &src))
        }
    };
    copied.map(|_| ()).map_err(|_| Status::DATA_TRANSFER_ERROR)
}

impl Conn {
    fn slot_for(&mut self, sqe: &Sqe) -> Result<Option<usize>, Fatal> {
        let cid = sqe.cid();
        if self.slots.iter().any(|slot| slot.state != SlotState::Free && slot.sqe.cid() == cid) {
            self.send_response(cid, status::COMMAND_ID_CONFLICT, 0);
            return Ok(None);
        }
        let in_use = self.slots.len() - self.free_slots.len();
        let limit = self.queue.as_ref().map_or(1, |queue| usize::from(queue.entries));
        // A host may not have more commands outstanding than its queue has entries.
        let Some(index) = self.free_slots.pop().filter(|_| in_use < limit) else {
            return Err(Fatal::new(fes::PDU_SEQUENCE_ERROR, 0));
        };
        let slot = &mut self.slots[usize::from(index)];
        debug_assert_eq!(slot.state, SlotState::Free);
        slot.sqe = *sqe;
        slot.received = 0;
        slot.outstanding = 0;
        slot.status = Status::SUCCESS;
        slot.plan = None;
        Ok(Some(usize::from(index)))
    }

    fn free_slot(&mut self, index: usize) {
        // A command that ends without running hands its P2P buffer back here.
        self.slots[index].p2p = None;
        self.slots[index].channel = None;
        self.slots[index].state = SlotState::Free;
        self.free_slots.push(index as u16);
    }

    fn respond_and_free(&mut self, index: usize, status: Status, result: u64) {
        let cid = self.slots[index].sqe.cid();
        self.free_slot(index);
        if self.phase != Phase::Closing {
            self.send_response(cid, status, result);
        }
    }

    pub(super) fn on_command(
        &mut self,
        ctx: &mut ThreadCtx,
        tables: &mut NsTables,
        sqe: Sqe,
        data: &[u8],
    ) -> Result<(), Fatal> {
        let Some(index) = self.slot_for(&sqe)? else { return Ok(()) };
        let transfer = match self.queue.as_ref().map(|queue| queue.qid) {
            None => {
                if sqe.opcode() != opc::FABRICS || sqe.fctype() != fctype::CONNECT {
                    self.respond_and_free(index, status::COMMAND_SEQUENCE_ERROR, 0);
                    return Ok(());
                }
                io_cmd::check_sgl(&sqe, Direction::FromHost, CONNECT_DATA_BYTES, data.len(), ADMIN_IN_CAPSULE_BYTES)
            }
            Some(0) => {
                self.run_admin(index, &sqe);
                return Ok(());
            }
            Some(_) => match self.plan_io(ctx, tables, index, &sqe, data.len()) {
                Ok(Some(transfer)) => Ok(transfer),
                // Answered already (a Disconnect).
                Ok(None) => return Ok(()),
                Err(status) => Err(status),
            },
        };
        let transfer = match transfer {
            Ok(transfer) => transfer,
            Err(status) => {
                self.respond_and_free(index, status, 0);
                return Ok(());
            }
        };
        self.slots[index].transfer = transfer;
        if transfer.direction != Direction::None {
            self.ensure_buffer(index, transfer.bytes);
        }
        match (transfer.direction, transfer.placement) {
            (Direction::FromHost, Placement::InCapsule) => {
                if let Err(status) =
                    self.data_buffer(index).map_or(Err(Status::INTERNAL_ERROR), |buf| write_into(buf, 0, data))
                {
                    self.respond_and_free(index, status, 0);
                    return Ok(());
                }
                self.execute(ctx, tables, index);
            }
            (Direction::FromHost, Placement::Transport) => {
                self.slots[index].state = SlotState::AwaitingData;
                self.send_r2t(sqe.cid(), index as u16, transfer.bytes);
            }
            _ => self.execute(ctx, tables, index),
        }
        Ok(())
    }

    /// Takes this command's buffer from its namespace's P2P provider (DESIGN.md: the
    /// transport places data there with the CPU's I/O accessors, the bdev DMAs from it).
    /// A full provider is an expected state: the command falls back to host memory.
    fn place_in_provider(&mut self, index: usize, provider: &std::sync::Arc<dyn mem::P2pProvider>, bytes: usize) {
        match mem::P2pBuf::alloc(provider, bytes) {
            Ok(buffer) => self.slots[index].p2p = Some(DataBuf::P2p(buffer)),
            Err(_) => self.stats.p2p_fallbacks += 1,
        }
    }

    /// Where this command's data goes: its P2P buffer if it got one, else host memory.
    fn data_buffer(&mut self, index: usize) -> Option<&mut DataBuf> {
        let slot = &mut self.slots[index];
        match slot.p2p.as_mut() {
            Some(buffer) => Some(buffer),
            None => slot.buffer.as_mut(),
        }
    }

    fn ensure_buffer(&mut self, index: usize, bytes: usize) {
        if self.slots[index].p2p.is_some() {
            return;
        }
        let slot = &mut self.slots[index];
        if slot.buffer.as_ref().is_some_and(|buffer| buffer.len() >= bytes) {
            return;
        }
        slot.buffer = Some(DataBuf::heap(bytes.div_ceil(BUFFER_GRANULE_BYTES) * BUFFER_GRANULE_BYTES));
    }

    /// Decodes an I/O queue command; Ok(None) when it was answered on the spot.
    fn plan_io(
        &mut self,
        ctx: &mut ThreadCtx,
        tables: &mut NsTables,
        index: usize,
        sqe: &Sqe,
        in_capsule: usize,
    ) -> Result<Option<Transfer>, Status> {
        let Some(queue) = self.queue.as_ref() else { return Err(status::COMMAND_SEQUENCE_ERROR) };
        if sqe.opcode() == opc::FABRICS {
            return match sqe.fctype() {
                fctype::DISCONNECT => {
                    // Answer, then end the queue once the answer is out.
                    self.respond_and_free(index, Status::SUCCESS, 0);
                    self.close("the host disconnected the queue");
                    Ok(None)
                }
                fctype::CONNECT => Err(status::COMMAND_SEQUENCE_ERROR),
                _ => Err(Status::INVALID_FIELD),
            };
        }
        // Borrowed, not cloned: the subsystem's refcount is shared by every core serving it.
        let Some(entry) = tables.get(ctx, &queue.controller.subsystem, sqe.nsid()) else {
            return Err(Status::INVALID_NAMESPACE);
        };
        let plan = io_cmd::plan(
            sqe,
            &entry.info,
            self.options.max_io_size as usize,
            in_capsule,
            self.options.in_capsule_data_size as usize,
        )?;
        self.slots[index].plan = Some(plan);
        let transfer = match plan {
            Plan::Block { transfer, .. } | Plan::Deallocate { transfer, .. } => transfer,
        };
        if let (Some(provider), Plan::Block { .. }) = (&entry.ns.provider, plan) {
            if transfer.bytes > 0 {
                self.place_in_provider(index, provider, transfer.bytes);
            }
        }
        Ok(Some(transfer))
    }

    pub(super) fn on_h2c_data(
        &mut self,
        ctx: &mut ThreadCtx,
        tables: &mut NsTables,
        header: pdu::DataHeader,
        _flags: u8,
        data: &[u8],
    ) -> Result<(), Fatal> {
        let index = usize::from(header.ttag);
        let Some(slot) = self.slots.get_mut(index).filter(|slot| slot.state == SlotState::AwaitingData) else {
            return Err(Fatal::field(10));
        };
        if slot.sqe.cid() != header.cccid {
            return Err(Fatal::field(8));
        }
        if header.length as usize != data.len() {
            return Err(Fatal::field(16));
        }
        let offset = header.offset as usize;
        if offset != slot.received || offset + data.len() > slot.transfer.bytes {
            return Err(Fatal::new(fes::DATA_OUT_OF_RANGE, 12));
        }
        let written =
            self.data_buffer(index).map_or(Err(Status::INTERNAL_ERROR), |buffer| write_into(buffer, offset, data));
        if let Err(status) = written {
            self.respond_and_free(index, status, 0);
            return Ok(());
        }
        let slot = &mut self.slots[index];
        slot.received += data.len();
        if slot.received == slot.transfer.bytes {
            self.execute(ctx, tables, index);
        }
        Ok(())
    }

    /// Runs a command whose data (if any) has arrived.
    fn execute(&mut self, ctx: &mut ThreadCtx, tables: &mut NsTables, index: usize) {
        self.slots[index].state = SlotState::Executing;
        if self.queue.is_none() {
            self.run_connect(ctx, index);
            return;
        }
        let Some(plan) = self.slots[index].plan else {
            self.respond_and_free(index, Status::INTERNAL_ERROR, 0);
            return;
        };
        let sqe = self.slots[index].sqe;
        let Some(queue) = self.queue.as_ref() else { return };
        let Some(entry) = tables.get(ctx, &queue.controller.subsystem, sqe.nsid()) else {
            self.respond_and_free(index, Status::INVALID_NAMESPACE, 0);
            return;
        };
        let handle = entry.handle.clone();
        match plan {
            Plan::Block { io_type, slba, nlb, transfer } => {
                let mut io = self.take_io(io_type, slba, nlb);
                if transfer.direction != Direction::None {
                    let slot = &mut self.slots[index];
                    if let Some(buffer) = slot.p2p.take().or_else(|| slot.buffer.take()) {
                        if transfer.direction == Direction::FromHost {
                            self.stats.placed(Some(&buffer), transfer.bytes);
                        }
                        io.buffers.push(buffer);
                    }
                }
                self.slots[index].outstanding = 1;
                handle.submit(ctx, io, &self.completions, index as u64);
                self.slots[index].channel = Some(handle);
            }
            Plan::Deallocate { ranges, deallocate, .. } => {
                let mut pending = Vec::new();
                if deallocate {
                    if let Some(DataBuf::Heap(bytes)) = self.slots[index].buffer.as_ref() {
                        pending.extend(io_cmd::dsm_ranges(bytes, ranges).filter(|(_, blocks)| *blocks > 0));
                    }
                }
                if pending.is_empty() {
                    self.respond_and_free(index, Status::SUCCESS, 0);
                    return;
                }
                self.slots[index].outstanding = pending.len() as u32;
                for (slba, blocks) in pending {
                    let io = self.take_io(IoType::Unmap, slba, blocks);
                    handle.submit(ctx, io, &self.completions, index as u64);
                }
                self.slots[index].channel = Some(handle);
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
    pub(super) fn reap_completions(&mut self, _ctx: &mut ThreadCtx) -> bool {
        let mut any = false;
        loop {
            let Some(mut io) = self.completions.borrow_mut().pop_front() else { break };
            any = true;
            let index = io.tag as usize;
            let status = io.status;
            let slot = &mut self.slots[index];
            if !status.is_success() && slot.status.is_success() {
                slot.status = status;
            }
            slot.outstanding = slot.outstanding.saturating_sub(1);
            let last = slot.outstanding == 0;
            if last && io.io_type == IoType::Read && status.is_success() && self.phase != Phase::Closing {
                let cid = slot.sqe.cid();
                let len = slot.transfer.bytes;
                self.stats.placed(io.buffers.first(), len);
                let success = self.options.c2h_success;
                let sent = io
                    .sgl()
                    .map_err(|_| Status::DATA_TRANSFER_ERROR)
                    .and_then(|sgl| self.send_c2h(cid, &sgl, len, success));
                match sent {
                    Ok(()) if success => {
                        self.stats.completed_io += 1;
                        self.free_slot(index);
                    }
                    Ok(()) => self.respond_and_free(index, Status::SUCCESS, 0),
                    Err(status) => self.respond_and_free(index, status, 0),
                }
            } else if last {
                let status = self.slots[index].status;
                self.respond_and_free(index, status, 0);
            }
            match io.buffers.pop() {
                // A P2P buffer goes back to its provider as it drops.
                Some(DataBuf::P2p(_)) | None => {}
                Some(buffer) => self.slots[index].buffer = Some(buffer),
            }
            self.spare_ios.push(io);
        }
        any
    }

    fn run_connect(&mut self, ctx: &mut ThreadCtx, index: usize) {
        let sqe = self.slots[index].sqe;
        let info = ConnInfo { conn_id: self.id, thread: ctx.handle(), peer: self.peer, local: self.local };
        let mut data = [0u8; CONNECT_DATA_BYTES];
        if let Some(DataBuf::Heap(bytes)) = self.slots[index].buffer.as_ref() {
            data.copy_from_slice(&bytes[..CONNECT_DATA_BYTES]);
        }
        match connect::connect(&self.target, &self.options, &info, &sqe, &data) {
            Ok(connected) => {
                let admin = (connected.qid == 0).then(|| {
                    // CAP.MQES describes I/O queues: the transport's max_queue_depth, not
                    // the admin queue this Connect sized.
                    AdminState::new(
                        connected.controller.clone(),
                        self.options.max_queue_depth,
                        self.options.max_io_qpairs_per_ctrlr,
                    )
                });
                let cntlid = connected.controller.cntlid;
                peerless_core::log_info!(
                    "{} connected queue {} of controller {} of {} from {}",
                    connected.controller.hostnqn,
                    connected.qid,
                    cntlid,
                    connected.controller.subsystem.nqn,
                    self.peer
                );
                self.queue = Some(Queue {
                    controller: connected.controller,
                    qid: connected.qid,
                    entries: connected.queue_entries,
                    admin,
                    sqhd: 0,
                });
                self.respond_and_free(index, Status::SUCCESS, u64::from(cntlid));
            }
            Err(refusal) => self.respond_and_free(index, refusal.status, u64::from(refusal.dw0)),
        }
    }

    fn run_admin(&mut self, index: usize, sqe: &Sqe) {
        let target = self.target.clone();
        let options = self.options.clone();
        let Some(admin) = self.queue.as_mut().and_then(|queue| queue.admin.as_mut()) else {
            self.respond_and_free(index, status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        };
        let outcome = admin::execute(admin, &target, &options, sqe);
        match outcome {
            Outcome::Held => {
                self.slots[index].state = SlotState::Held;
                self.complete_events();
            }
            Outcome::Done { status, result, data: None } => self.respond_and_free(index, status, result),
            Outcome::Done { status, result, data: Some(data) } => {
                if sqe.sgl_type() != SGL_TRANSPORT_DATA_BLOCK || sqe.psdt() == 0 {
                    self.respond_and_free(index, status::SGL_DESCRIPTOR_TYPE_INVALID, 0);
                    return;
                }
                let len = data.len().min(sqe.sgl_length() as usize);
                // A zero-length buffer asks for no data: a C2HData carrying none is
                // malformed on the wire (found by the wire fuzzer).
                if len == 0 {
                    self.respond_and_free(index, status, result);
                    return;
                }
                let sent = Sgl::from_host(&data)
                    .map_err(|_| Status::INTERNAL_ERROR)
                    .and_then(|sgl| self.send_c2h(sqe.cid(), &sgl, len, false));
                match sent {
                    Ok(()) => self.respond_and_free(index, status, result),
                    Err(status) => self.respond_and_free(index, status, 0),
                }
            }
        }
    }

    /// An asynchronous event for this (admin) connection's controller.
    pub fn deliver_event(&mut self, cntlid: u16, dw0: u32, changed_nsid: Option<u32>) {
        let Some(admin) = self.queue.as_mut().and_then(|queue| queue.admin.as_mut()) else { return };
        if admin.controller.cntlid != cntlid {
            return;
        }
        let discovery_notice = (dw0 >> 8) & 0xff == u32::from(NOTICE_DISCOVERY_CHANGED);
        let enabled = if discovery_notice { AEC_DISCOVERY_LOG_CHANGE } else { AEC_NAMESPACE_ATTRIBUTE };
        if let Some(nsid) = changed_nsid {
            if !admin.changed_namespaces.contains(&nsid) {
                admin.changed_namespaces.push(nsid);
            }
        }
        if admin.async_event_config & enabled == 0 {
            return;
        }
        admin.post_event(dw0);
        self.complete_events();
    }

    fn complete_events(&mut self) {
        while let Some((cid, dw0)) =
            self.queue.as_mut().and_then(|queue| queue.admin.as_mut()).and_then(AdminState::next_event_completion)
        {
            let held = self.slots.iter().position(|slot| slot.state == SlotState::Held && slot.sqe.cid() == cid);
            if let Some(index) = held {
                self.respond_and_free(index, Status::SUCCESS, u64::from(dw0));
            }
        }
    }
}
