//! One submission/completion queue pair in host DMA memory (NVMe Base 2.0 §3.3.1 and
//! §4.1): the admin queue or an I/O queue. The rings, and one PRP list page per command
//! slot, live in a single 2 MiB buffer, a hugepage where the system has them, so the
//! rings are physically contiguous as CAP.CQR asks. A command's slot index is its CID;
//! the owner hands out slots and never has more than `depth - 1` in flight, so the
//! submission ring cannot overflow (§4.1.2: a full queue keeps one entry empty).

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use peerless_core::mem::pci::Mmio;
use peerless_core::mem::{DmaBuf, HUGEPAGE_BYTES};

use super::spec::{doorbells, Cqe, Sqe, CQE_BYTES, SQE_BYTES};

pub const PAGE_BYTES: usize = 4096;

/// Where the queue's memory is, as the controller addresses it.
pub trait BusTranslate {
    /// The bus address of host memory at `addr`, or None if the controller cannot reach it.
    fn host_bus_address(&self, addr: usize) -> Option<u64>;
}

pub struct QueuePair {
    qid: u16,
    depth: u16,
    mem: DmaBuf,
    sq_bus: u64,
    cq_bus: u64,
    cq_offset: usize,
    /// Bus address of each slot's PRP list page.
    prp_list_bus: Vec<u64>,
    prp_offset: usize,
    sq_tail: u16,
    cq_head: u16,
    /// The phase tag a new completion carries (§4.6: it flips each pass of the ring).
    phase: bool,
    sq_doorbell: usize,
    cq_doorbell: usize,
    bar: Arc<Mmio>,
    /// The MSI-X vector the completion queue raises, or None when it raises none and is
    /// only polled.
    interrupt_vector: Option<u16>,
    /// The controller's queue generation when the pair was created on it.
    generation: u64,
}

impl QueuePair {
    /// The largest depth a queue pair's buffer holds: both rings and a list page a slot.
    pub fn max_depth() -> u16 {
        let per_slot = SQE_BYTES + CQE_BYTES + PAGE_BYTES;
        ((HUGEPAGE_BYTES - 2 * PAGE_BYTES) / per_slot).min(usize::from(u16::MAX)) as u16
    }

    pub fn new(
        qid: u16,
        depth: u16,
        stride: usize,
        bar: Arc<Mmio>,
        bus: &dyn BusTranslate,
    ) -> Result<QueuePair, String> {
        if depth < 2 || depth > Self::max_depth() {
            return Err(format!("queue depth {depth} is outside 2..={}", Self::max_depth()));
        }
        let (sq_doorbell, cq_doorbell) = doorbells(qid, stride);
        if cq_doorbell + 4 > bar.len() {
            return Err(format!("queue {qid}'s doorbell at {cq_doorbell:#x} is beyond BAR0 ({} bytes)", bar.len()));
        }
        let entries = usize::from(depth);
        let cq_offset = (entries * SQE_BYTES).next_multiple_of(PAGE_BYTES);
        let prp_offset = cq_offset + (entries * CQE_BYTES).next_multiple_of(PAGE_BYTES);
        let mem = DmaBuf::alloc_plain(HUGEPAGE_BYTES).map_err(|err| format!("queue memory: {err}"))?;
        let contiguous = |offset: usize, len: usize| -> Result<u64, String> {
            let base = bus.host_bus_address(mem.addr() + offset).ok_or("queue memory has no bus address")?;
            for page in (PAGE_BYTES..len).step_by(PAGE_BYTES) {
                if bus.host_bus_address(mem.addr() + offset + page) != Some(base + page as u64) {
                    return Err(format!(
                        "queue memory is not physically contiguous (queue {qid}, depth {depth}): \
                         reserve 2 MiB hugepages (sysctl vm.nr_hugepages) for the uio route"
                    ));
                }
            }
            Ok(base)
        };
        let sq_bus = contiguous(0, entries * SQE_BYTES)?;
        let cq_bus = contiguous(cq_offset, entries * CQE_BYTES)?;
        let prp_list_bus = (0..entries)
            .map(|slot| {
                bus.host_bus_address(mem.addr() + prp_offset + slot * PAGE_BYTES)
                    .ok_or_else(|| "PRP list memory has no bus address".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(QueuePair {
            qid,
            depth,
            mem,
            sq_bus,
            cq_bus,
            cq_offset,
            prp_list_bus,
            prp_offset,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            sq_doorbell,
            cq_doorbell,
            bar,
            interrupt_vector: None,
            generation: 0,
        })
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn depth(&self) -> u16 {
        self.depth
    }

    pub fn sq_bus(&self) -> u64 {
        self.sq_bus
    }

    pub fn cq_bus(&self) -> u64 {
        self.cq_bus
    }

    pub fn interrupt_vector(&self) -> Option<u16> {
        self.interrupt_vector
    }

    /// Takes effect when the controller next creates the queue.
    pub fn set_interrupt_vector(&mut self, vector: Option<u16>) {
        self.interrupt_vector = vector;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    pub fn prp_list_bus(&self, slot: u16) -> u64 {
        self.prp_list_bus[usize::from(slot)]
    }

    /// Writes a slot's PRP list entries into its page.
    pub fn write_prp_list(&mut self, slot: u16, entries: &[u64]) {
        debug_assert!(entries.len() * 8 <= PAGE_BYTES);
        let mut offset = self.prp_offset + usize::from(slot) * PAGE_BYTES;
        for entry in entries {
            self.mem.write_bytes(offset, &entry.to_le_bytes());
            offset += 8;
        }
    }

    /// Places a command and rings the doorbell.
    pub fn submit(&mut self, sqe: &Sqe) {
        self.push(sqe);
        self.ring();
    }

    /// Places a command without ringing: several go in with one doorbell write.
    pub fn push(&mut self, sqe: &Sqe) {
        debug_assert!(sqe.cid < self.depth);
        self.mem.write_bytes(usize::from(self.sq_tail) * SQE_BYTES, &sqe.encode());
        self.sq_tail = (self.sq_tail + 1) % self.depth;
    }

    /// Tells the controller about the commands pushed since the last ring.
    pub fn ring(&mut self) {
        // The entries must be in memory before the controller reads the tail (§4.1.1).
        fence(Ordering::Release);
        self.bar.write32(self.sq_doorbell, u32::from(self.sq_tail));
    }

    /// Takes up to `max` new completions, then updates the head doorbell once.
    pub fn poll(&mut self, max: usize, mut on_completion: impl FnMut(Cqe)) -> usize {
        let mut taken = 0;
        while taken < max {
            let offset = self.cq_offset + usize::from(self.cq_head) * CQE_BYTES;
            let dw3 = self.mem.read_volatile_u32(offset + 12);
            if (dw3 >> 16 & 1 == 1) != self.phase {
                break;
            }
            // The phase tag is written last; the rest of the entry is read after it.
            fence(Ordering::Acquire);
            let dwords = [
                self.mem.read_volatile_u32(offset),
                self.mem.read_volatile_u32(offset + 4),
                self.mem.read_volatile_u32(offset + 8),
                dw3,
            ];
            self.cq_head += 1;
            if self.cq_head == self.depth {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            taken += 1;
            on_completion(Cqe::decode(dwords));
        }
        if taken > 0 {
            self.bar.write32(self.cq_doorbell, u32::from(self.cq_head));
        }
        taken
    }

    /// Makes the pair as new for a controller that was reset, which forgot every queue
    /// (NVMe Base 2.0 §3.7.2): the same memory is created again, so the completion ring's
    /// stale phase tags must go and both indices start at 0.
    pub fn reset(&mut self) {
        let cq_bytes = usize::from(self.depth) * CQE_BYTES;
        self.mem.write_bytes(self.cq_offset, &vec![0u8; cq_bytes]);
        self.sq_tail = 0;
        self.cq_head = 0;
        self.phase = true;
    }

    /// Whether the controller reports a fatal status (CSTS.CFS, §3.1.3.6), not all ones.
    pub fn controller_failed(&self) -> bool {
        let status = self.bar.read32(super::spec::reg::CSTS);
        status != u32::MAX && status & super::spec::csts::CFS != 0
    }

    /// Whether the controller has gone (a surprise removal reads all ones, §3.1.3).
    pub fn controller_gone(&self) -> bool {
        self.bar.read32(super::spec::reg::CSTS) == u32::MAX
    }
}
