//! Work requests (SEND, SEND with invalidate, RDMA WRITE, RDMA READ, RECV) and
//! completions. Plain data: nothing here touches a device, so it is tested without one.

use std::fmt;

use super::verbs::static_cstr;
use crate::rdma_sys as sys;

/// Scatter-gather entries one work request carries at most. NVMe/RDMA commands name up
/// to 16 keyed SGL descriptors, so a WR per descriptor needs no more.
pub const MAX_SGE: usize = 16;

/// Local memory a work request reads or writes: inside a registered region, named by its
/// local key ([`super::Mr::sge`] builds a checked one). The NIC checks the key and
/// bounds, so a wrong entry fails the request with a protection error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sge {
    pub addr: u64,
    pub len: u32,
    pub lkey: u32,
}

/// A peer's memory for RDMA READ/WRITE: the address and remote key of a keyed SGL data
/// block descriptor (NVMe/RDMA 1.0 §3.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteKey {
    pub addr: u64,
    pub rkey: u32,
}

/// What a send-queue work request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// A capsule to the peer's receive queue.
    Send,
    /// A capsule that also invalidates the peer's `rkey` (RDMA_SEND_INVALIDATE, the
    /// controller honouring a host's Invalidate Key SGL sub type, NVMe/RDMA 1.0 §3.6).
    SendWithInvalidate { rkey: u32 },
    /// Data from local entries to the peer's memory.
    RdmaWrite(RemoteKey),
    /// Data from the peer's memory into local entries.
    RdmaRead(RemoteKey),
}

/// A work request refused before posting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WrError {
    /// More entries than [`MAX_SGE`].
    TooManySges { count: usize },
    /// The entries add up past 4 GiB, more than one request moves.
    TooLong,
}

impl fmt::Display for WrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WrError::TooManySges { count } => write!(f, "{count} scatter-gather entries, at most {MAX_SGE}"),
            WrError::TooLong => write!(f, "scatter-gather entries add up past 4 GiB"),
        }
    }
}

impl std::error::Error for WrError {}

fn copy_sges(sgl: &[Sge], into: &mut [sys::ibv_sge; MAX_SGE]) -> Result<i32, WrError> {
    if sgl.len() > MAX_SGE {
        return Err(WrError::TooManySges { count: sgl.len() });
    }
    let total: u64 = sgl.iter().map(|s| u64::from(s.len)).sum();
    if total > u64::from(u32::MAX) {
        return Err(WrError::TooLong);
    }
    for (raw, sge) in into.iter_mut().zip(sgl) {
        *raw = sys::ibv_sge { addr: sge.addr, length: sge.len, lkey: sge.lkey };
    }
    Ok(sgl.len() as i32)
}

/// A send-queue work request with its entries inline, so building and posting one
/// allocates nothing. Unsignaled by default: only signaled requests (and failed ones)
/// produce a completion.
#[derive(Clone, Copy)]
pub struct SendWr {
    raw: sys::ibv_send_wr,
    sges: [sys::ibv_sge; MAX_SGE],
}

impl SendWr {
    /// A request of `op` over `sgl`, completing with `wr_id`.
    pub fn new(wr_id: u64, op: SendOp, sgl: &[Sge]) -> Result<SendWr, WrError> {
        let mut wr = SendWr { raw: sys::ibv_send_wr::default(), sges: [sys::ibv_sge::default(); MAX_SGE] };
        wr.raw.num_sge = copy_sges(sgl, &mut wr.sges)?;
        wr.raw.wr_id = wr_id;
        let remote = |key: RemoteKey| sys::ibv_send_wr__bindgen_ty_2 {
            rdma: sys::ibv_send_wr__bindgen_ty_2__bindgen_ty_1 { remote_addr: key.addr, rkey: key.rkey },
        };
        match op {
            SendOp::Send => wr.raw.opcode = sys::ibv_wr_opcode::IBV_WR_SEND,
            SendOp::SendWithInvalidate { rkey } => {
                wr.raw.opcode = sys::ibv_wr_opcode::IBV_WR_SEND_WITH_INV;
                wr.raw.__bindgen_anon_1.invalidate_rkey = rkey;
            }
            SendOp::RdmaWrite(key) => {
                wr.raw.opcode = sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                wr.raw.wr = remote(key);
            }
            SendOp::RdmaRead(key) => {
                wr.raw.opcode = sys::ibv_wr_opcode::IBV_WR_RDMA_READ;
                wr.raw.wr = remote(key);
            }
        }
        Ok(wr)
    }

    /// A SEND of `sgl`.
    pub fn send(wr_id: u64, sgl: &[Sge]) -> Result<SendWr, WrError> {
        SendWr::new(wr_id, SendOp::Send, sgl)
    }

    /// A SEND of `sgl` that invalidates the peer's `rkey`.
    pub fn send_with_invalidate(wr_id: u64, sgl: &[Sge], rkey: u32) -> Result<SendWr, WrError> {
        SendWr::new(wr_id, SendOp::SendWithInvalidate { rkey }, sgl)
    }

    /// An RDMA WRITE of `sgl` to `remote`.
    pub fn rdma_write(wr_id: u64, sgl: &[Sge], remote: RemoteKey) -> Result<SendWr, WrError> {
        SendWr::new(wr_id, SendOp::RdmaWrite(remote), sgl)
    }

    /// An RDMA READ of `remote` into `sgl`.
    pub fn rdma_read(wr_id: u64, sgl: &[Sge], remote: RemoteKey) -> Result<SendWr, WrError> {
        SendWr::new(wr_id, SendOp::RdmaRead(remote), sgl)
    }

    fn flag(mut self, flag: sys::ibv_send_flags, on: bool) -> SendWr {
        if on {
            self.raw.send_flags |= flag.0;
        } else {
            self.raw.send_flags &= !flag.0;
        }
        self
    }

    /// Whether the request produces a completion when it succeeds.
    pub fn signaled(self, on: bool) -> SendWr {
        self.flag(sys::ibv_send_flags::IBV_SEND_SIGNALED, on)
    }

    /// Whether the request waits for earlier RDMA READs on the queue pair to finish
    /// (a response SEND after the READs that fetched its command's data).
    pub fn fenced(self, on: bool) -> SendWr {
        self.flag(sys::ibv_send_flags::IBV_SEND_FENCE, on)
    }

    /// Whether the peer's solicited-only CQ notification fires for this SEND.
    pub fn solicited(self, on: bool) -> SendWr {
        self.flag(sys::ibv_send_flags::IBV_SEND_SOLICITED, on)
    }

    pub fn wr_id(&self) -> u64 {
        self.raw.wr_id
    }

    /// The operation, as built.
    pub fn op(&self) -> SendOp {
        // SAFETY: the union members read are the ones `new` wrote for this opcode (both
        // are plain integers, so any bits are valid).
        unsafe {
            match self.raw.opcode {
                sys::ibv_wr_opcode::IBV_WR_SEND_WITH_INV => {
                    SendOp::SendWithInvalidate { rkey: self.raw.__bindgen_anon_1.invalidate_rkey }
                }
                sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE => {
                    SendOp::RdmaWrite(RemoteKey { addr: self.raw.wr.rdma.remote_addr, rkey: self.raw.wr.rdma.rkey })
                }
                sys::ibv_wr_opcode::IBV_WR_RDMA_READ => {
                    SendOp::RdmaRead(RemoteKey { addr: self.raw.wr.rdma.remote_addr, rkey: self.raw.wr.rdma.rkey })
                }
                _ => SendOp::Send,
            }
        }
    }

    pub fn is_signaled(&self) -> bool {
        self.raw.send_flags & sys::ibv_send_flags::IBV_SEND_SIGNALED.0 != 0
    }

    pub fn is_fenced(&self) -> bool {
        self.raw.send_flags & sys::ibv_send_flags::IBV_SEND_FENCE.0 != 0
    }

    /// The entries, as built.
    pub fn sges(&self) -> impl Iterator<Item = Sge> + '_ {
        self.sges[..self.raw.num_sge as usize].iter().map(|s| Sge { addr: s.addr, len: s.length, lkey: s.lkey })
    }

    /// Bytes the request moves.
    pub fn byte_len(&self) -> u32 {
        self.sges().map(|s| s.len).sum()
    }
}

impl fmt::Debug for SendWr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendWr")
            .field("wr_id", &self.wr_id())
            .field("op", &self.op())
            .field("signaled", &self.is_signaled())
            .field("sges", &self.sges().collect::<Vec<_>>())
            .finish()
    }
}

/// A receive work request (for a queue pair's receive queue or a shared one).
#[derive(Clone, Copy)]
pub struct RecvWr {
    raw: sys::ibv_recv_wr,
    sges: [sys::ibv_sge; MAX_SGE],
}

impl RecvWr {
    /// A receive into `sgl`, completing with `wr_id`.
    pub fn new(wr_id: u64, sgl: &[Sge]) -> Result<RecvWr, WrError> {
        let mut wr = RecvWr { raw: sys::ibv_recv_wr::default(), sges: [sys::ibv_sge::default(); MAX_SGE] };
        wr.raw.num_sge = copy_sges(sgl, &mut wr.sges)?;
        wr.raw.wr_id = wr_id;
        Ok(wr)
    }

    pub fn wr_id(&self) -> u64 {
        self.raw.wr_id
    }

    pub fn sges(&self) -> impl Iterator<Item = Sge> + '_ {
        self.sges[..self.raw.num_sge as usize].iter().map(|s| Sge { addr: s.addr, len: s.length, lkey: s.lkey })
    }
}

impl fmt::Debug for RecvWr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvWr").field("wr_id", &self.wr_id()).field("sges", &self.sges().collect::<Vec<_>>()).finish()
    }
}

/// Links `wrs` into the list the provider walks; the pointers are valid while `wrs` is
/// borrowed. Returns the head, None for an empty slice.
pub(crate) fn link_send(wrs: &mut [SendWr]) -> Option<*mut sys::ibv_send_wr> {
    let mut next: *mut sys::ibv_send_wr = std::ptr::null_mut();
    for wr in wrs.iter_mut().rev() {
        wr.raw.sg_list = wr.sges.as_mut_ptr();
        wr.raw.next = next;
        next = &mut wr.raw;
    }
    (!next.is_null()).then_some(next)
}

/// As [`link_send`], for receives.
pub(crate) fn link_recv(wrs: &mut [RecvWr]) -> Option<*mut sys::ibv_recv_wr> {
    let mut next: *mut sys::ibv_recv_wr = std::ptr::null_mut();
    for wr in wrs.iter_mut().rev() {
        wr.raw.sg_list = wr.sges.as_mut_ptr();
        wr.raw.next = next;
        next = &mut wr.raw;
    }
    (!next.is_null()).then_some(next)
}

/// Work requests of a post that the provider refused, and why. Those before `index`
/// were posted and will complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostError {
    pub op: &'static str,
    /// The first request not posted.
    pub index: usize,
    /// ENOMEM: the queue is full; EINVAL: a request the queue pair cannot take (too many
    /// entries, a queue pair not yet or no longer connected).
    pub errno: i32,
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: request {} refused: {}", self.op, self.index, std::io::Error::from_raw_os_error(self.errno))
    }
}

impl std::error::Error for PostError {}

/// Which request `bad` points at (the provider sets it to one of the linked `wrs`).
pub(crate) fn post_result<T: HasRaw>(op: &'static str, ret: i32, wrs: &[T], bad: *mut T::Raw) -> Result<(), PostError> {
    if ret == 0 {
        return Ok(());
    }
    let index = wrs.iter().position(|wr| std::ptr::eq(wr.raw_ptr(), bad)).unwrap_or(0);
    // The verbs API returns the errno; a provider that returns -1 set errno instead.
    let errno = match ret {
        -1 => std::io::Error::last_os_error().raw_os_error().filter(|e| *e != 0).unwrap_or(libc::EIO),
        ret => ret.saturating_abs(),
    };
    Err(PostError { op, index, errno })
}

pub(crate) trait HasRaw {
    type Raw;
    fn raw_ptr(&self) -> *const Self::Raw;
}

impl HasRaw for SendWr {
    type Raw = sys::ibv_send_wr;
    fn raw_ptr(&self) -> *const sys::ibv_send_wr {
        &self.raw
    }
}

impl HasRaw for RecvWr {
    type Raw = sys::ibv_recv_wr;
    fn raw_ptr(&self) -> *const sys::ibv_recv_wr {
        &self.raw
    }
}

/// A work completion's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcStatus {
    Success,
    LocalLength,
    LocalQpOperation,
    LocalProtection,
    /// The queue pair went to the error state with this request outstanding: the request
    /// did not run. Expected while a queue pair is torn down; ends that queue only.
    Flushed,
    LocalAccess,
    RemoteInvalidRequest,
    RemoteAccess,
    RemoteOperation,
    RetryExceeded,
    RnrRetryExceeded,
    RemoteAbort,
    Fatal,
    ResponseTimeout,
    General,
    /// A status this build does not name.
    Other(u32),
}

impl WcStatus {
    fn from_raw(status: sys::ibv_wc_status) -> WcStatus {
        use sys::ibv_wc_status as s;
        match status {
            s::IBV_WC_SUCCESS => WcStatus::Success,
            s::IBV_WC_LOC_LEN_ERR => WcStatus::LocalLength,
            s::IBV_WC_LOC_QP_OP_ERR => WcStatus::LocalQpOperation,
            s::IBV_WC_LOC_PROT_ERR => WcStatus::LocalProtection,
            s::IBV_WC_WR_FLUSH_ERR => WcStatus::Flushed,
            s::IBV_WC_LOC_ACCESS_ERR => WcStatus::LocalAccess,
            s::IBV_WC_REM_INV_REQ_ERR => WcStatus::RemoteInvalidRequest,
            s::IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccess,
            s::IBV_WC_REM_OP_ERR => WcStatus::RemoteOperation,
            s::IBV_WC_RETRY_EXC_ERR => WcStatus::RetryExceeded,
            s::IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExceeded,
            s::IBV_WC_REM_ABORT_ERR => WcStatus::RemoteAbort,
            s::IBV_WC_FATAL_ERR => WcStatus::Fatal,
            s::IBV_WC_RESP_TIMEOUT_ERR => WcStatus::ResponseTimeout,
            s::IBV_WC_GENERAL_ERR => WcStatus::General,
            other => WcStatus::Other(other.0),
        }
    }
}

/// What a successful completion was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcOpcode {
    Send,
    RdmaWrite,
    RdmaRead,
    LocalInvalidate,
    Recv,
    RecvRdmaWithImm,
    Other(u32),
}

/// One work completion, as the CQ wrote it (a transparent `ibv_wc`, so polling writes
/// straight into a slice of these).
#[repr(transparent)]
#[derive(Clone, Copy, Default)]
pub struct Completion(sys::ibv_wc);

impl Completion {
    /// A completion from its raw form (tests, and transports' own state machines).
    pub fn from_raw(raw: sys::ibv_wc) -> Completion {
        Completion(raw)
    }

    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }

    pub fn status(&self) -> WcStatus {
        WcStatus::from_raw(self.0.status)
    }

    pub fn is_success(&self) -> bool {
        self.0.status == sys::ibv_wc_status::IBV_WC_SUCCESS
    }

    /// A request flushed by a queue pair in error, not a failure of its own.
    pub fn is_flush(&self) -> bool {
        self.0.status == sys::ibv_wc_status::IBV_WC_WR_FLUSH_ERR
    }

    /// rdma-core's name for the status.
    pub fn status_str(&self) -> String {
        // SAFETY: ibv_wc_status_str returns a static string for any value.
        let name = unsafe { sys::ibv_wc_status_str(self.0.status) };
        if name.is_null() {
            format!("status {}", self.0.status.0)
        } else {
            static_cstr(name)
        }
    }

    /// The operation; None for a failed completion, whose opcode the verbs API leaves
    /// undefined (the wr_id tells what it was).
    pub fn opcode(&self) -> Option<WcOpcode> {
        if !self.is_success() {
            return None;
        }
        use sys::ibv_wc_opcode as o;
        Some(match self.0.opcode {
            o::IBV_WC_SEND => WcOpcode::Send,
            o::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
            o::IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
            o::IBV_WC_LOCAL_INV => WcOpcode::LocalInvalidate,
            o::IBV_WC_RECV => WcOpcode::Recv,
            o::IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvRdmaWithImm,
            other => WcOpcode::Other(other.0),
        })
    }

    /// Bytes received (receives) or moved (RDMA READ); not set for sends and writes.
    pub fn byte_len(&self) -> u32 {
        self.0.byte_len
    }

    /// The local queue pair the completion belongs to, which tells a shared CQ's
    /// completions (and a shared receive queue's receives) apart.
    pub fn qp_num(&self) -> u32 {
        self.0.qp_num
    }

    /// The provider's own error detail.
    pub fn vendor_err(&self) -> u32 {
        self.0.vendor_err
    }

    /// The key a received SEND with invalidate invalidated.
    pub fn invalidated_rkey(&self) -> Option<u32> {
        let with_inv = self.0.wc_flags & sys::ibv_wc_flags::IBV_WC_WITH_INV.0 != 0;
        // SAFETY: both union members are plain u32s, so any bits read are valid; with
        // IBV_WC_WITH_INV the member holds the invalidated key.
        let rkey = unsafe { self.0.__bindgen_anon_1.invalidated_rkey };
        (self.is_success() && with_inv).then_some(rkey)
    }

    /// Immediate data, host order.
    pub fn imm_data(&self) -> Option<u32> {
        let with_imm = self.0.wc_flags & sys::ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0;
        // SAFETY: both union members are plain u32s; with IBV_WC_WITH_IMM it holds the
        // immediate, network order.
        let imm = u32::from_be(unsafe { self.0.__bindgen_anon_1.imm_data });
        (self.is_success() && with_imm).then_some(imm)
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("wr_id", &self.wr_id())
            .field("status", &self.status())
            .field("opcode", &self.opcode())
            .field("byte_len", &self.byte_len())
            .field("qp_num", &self.qp_num())
            .field("invalidated_rkey", &self.invalidated_rkey())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sge(i: u64) -> Sge {
        Sge { addr: 0x1000 * i, len: 512 * i as u32, lkey: 7 }
    }

    #[test]
    fn builders_set_opcode_keys_and_entries() {
        let sgl: Vec<Sge> = (1..=3).map(sge).collect();
        let remote = RemoteKey { addr: 0xdead_0000, rkey: 0x1234 };
        let cases = [
            (SendWr::send(1, &sgl).unwrap(), sys::ibv_wr_opcode::IBV_WR_SEND, SendOp::Send),
            (
                SendWr::send_with_invalidate(2, &sgl, 0x55).unwrap(),
                sys::ibv_wr_opcode::IBV_WR_SEND_WITH_INV,
                SendOp::SendWithInvalidate { rkey: 0x55 },
            ),
            (
                SendWr::rdma_write(3, &sgl, remote).unwrap(),
                sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                SendOp::RdmaWrite(remote),
            ),
            (
                SendWr::rdma_read(4, &sgl, remote).unwrap(),
                sys::ibv_wr_opcode::IBV_WR_RDMA_READ,
                SendOp::RdmaRead(remote),
            ),
        ];
        for (i, (wr, opcode, op)) in cases.into_iter().enumerate() {
            assert_eq!(wr.wr_id(), i as u64 + 1);
            assert_eq!(wr.raw.opcode, opcode);
            assert_eq!(wr.op(), op);
            assert_eq!(wr.raw.num_sge, 3);
            assert_eq!(wr.sges().collect::<Vec<_>>(), sgl);
            assert_eq!(wr.byte_len(), 512 + 1024 + 1536);
            assert!(!wr.is_signaled(), "unsignaled unless asked");
            let wr = wr.signaled(true).fenced(true);
            assert!(wr.is_signaled() && wr.is_fenced());
            assert!(!wr.signaled(false).is_signaled());
        }
    }

    #[test]
    fn entry_counts_from_none_to_the_limit_and_past_it() {
        for count in [0, 1, MAX_SGE - 1, MAX_SGE] {
            let sgl: Vec<Sge> = (1..=count as u64).map(sge).collect();
            assert_eq!(SendWr::send(9, &sgl).unwrap().sges().count(), count);
            assert_eq!(RecvWr::new(9, &sgl).unwrap().sges().collect::<Vec<_>>(), sgl);
        }
        let too_many: Vec<Sge> = (1..=MAX_SGE as u64 + 1).map(sge).collect();
        assert_eq!(SendWr::send(1, &too_many).unwrap_err(), WrError::TooManySges { count: MAX_SGE + 1 });
        assert_eq!(RecvWr::new(1, &too_many).unwrap_err(), WrError::TooManySges { count: MAX_SGE + 1 });
        let huge = [Sge { addr: 0, len: u32::MAX, lkey: 1 }, Sge { addr: 0, len: 1, lkey: 1 }];
        assert_eq!(SendWr::rdma_write(1, &huge, RemoteKey::default()).unwrap_err(), WrError::TooLong);
    }

    #[test]
    fn linking_chains_requests_in_order_and_points_at_their_own_entries() {
        let mut wrs: Vec<SendWr> = (0..4).map(|i| SendWr::send(i, &[sge(i + 1)]).unwrap()).collect();
        let head = link_send(&mut wrs).expect("non-empty");
        let mut seen = Vec::new();
        let mut cur = head;
        while !cur.is_null() {
            // SAFETY: the list was linked over `wrs`, which is alive and unmoved.
            let raw = unsafe { &*cur };
            // SAFETY: sg_list points at the request's own inline array of num_sge entries.
            let first = unsafe { *raw.sg_list };
            seen.push((raw.wr_id, first.addr));
            cur = raw.next;
        }
        assert_eq!(seen, vec![(0, 0x1000), (1, 0x2000), (2, 0x3000), (3, 0x4000)]);
        assert!(link_send(&mut []).is_none());

        let mut recvs: Vec<RecvWr> = (0..3).map(|i| RecvWr::new(i, &[sge(1)]).unwrap()).collect();
        let head = link_recv(&mut recvs).expect("non-empty");
        // SAFETY: as above.
        assert_eq!(unsafe { (*(*head).next).wr_id }, 1);
        let bad = &mut recvs[2].raw as *mut sys::ibv_recv_wr;
        let err = post_result("ibv_post_recv", libc::ENOMEM, &recvs, bad).unwrap_err();
        assert_eq!((err.index, err.errno), (2, libc::ENOMEM));
        assert!(err.to_string().contains("request 2 refused"), "{err}");
        assert_eq!(post_result("ibv_post_recv", 0, &recvs, std::ptr::null_mut()), Ok(()));
    }

    fn wc(status: sys::ibv_wc_status, opcode: sys::ibv_wc_opcode, flags: sys::ibv_wc_flags) -> sys::ibv_wc {
        sys::ibv_wc {
            wr_id: 77,
            status,
            opcode,
            byte_len: 4096,
            qp_num: 0x11,
            wc_flags: flags.0,
            __bindgen_anon_1: sys::ibv_wc__bindgen_ty_1 { invalidated_rkey: 0xabcd },
            ..Default::default()
        }
    }

    #[test]
    fn completions_decode_status_opcode_length_and_invalidated_key() {
        use sys::ibv_wc_flags as f;
        use sys::ibv_wc_opcode as o;
        use sys::ibv_wc_status as s;
        let recv_inv = Completion::from_raw(wc(s::IBV_WC_SUCCESS, o::IBV_WC_RECV, f::IBV_WC_WITH_INV));
        assert!(recv_inv.is_success());
        assert_eq!(recv_inv.status(), WcStatus::Success);
        assert_eq!(recv_inv.opcode(), Some(WcOpcode::Recv));
        assert_eq!((recv_inv.wr_id(), recv_inv.byte_len(), recv_inv.qp_num()), (77, 4096, 0x11));
        assert_eq!(recv_inv.invalidated_rkey(), Some(0xabcd));
        assert_eq!(recv_inv.imm_data(), None);

        let plain = Completion::from_raw(wc(s::IBV_WC_SUCCESS, o::IBV_WC_RDMA_READ, sys::ibv_wc_flags(0)));
        assert_eq!(plain.opcode(), Some(WcOpcode::RdmaRead));
        assert_eq!(plain.invalidated_rkey(), None);

        for (op, want) in [
            (o::IBV_WC_SEND, WcOpcode::Send),
            (o::IBV_WC_RDMA_WRITE, WcOpcode::RdmaWrite),
            (o::IBV_WC_LOCAL_INV, WcOpcode::LocalInvalidate),
            (o::IBV_WC_RECV_RDMA_WITH_IMM, WcOpcode::RecvRdmaWithImm),
            (sys::ibv_wc_opcode(200), WcOpcode::Other(200)),
        ] {
            assert_eq!(Completion::from_raw(wc(s::IBV_WC_SUCCESS, op, sys::ibv_wc_flags(0))).opcode(), Some(want));
        }

        let flushed = Completion::from_raw(wc(s::IBV_WC_WR_FLUSH_ERR, o::IBV_WC_RECV, f::IBV_WC_WITH_INV));
        assert!(flushed.is_flush() && !flushed.is_success());
        assert_eq!(flushed.status(), WcStatus::Flushed);
        assert_eq!(flushed.opcode(), None, "a failed completion's opcode is undefined");
        assert_eq!(flushed.invalidated_rkey(), None);
        assert_eq!(flushed.status_str(), "Work Request Flushed Error");

        for (raw, want) in [
            (s::IBV_WC_REM_ACCESS_ERR, WcStatus::RemoteAccess),
            (s::IBV_WC_RETRY_EXC_ERR, WcStatus::RetryExceeded),
            (s::IBV_WC_LOC_PROT_ERR, WcStatus::LocalProtection),
            (sys::ibv_wc_status(999), WcStatus::Other(999)),
        ] {
            let c = Completion::from_raw(wc(raw, o::IBV_WC_SEND, sys::ibv_wc_flags(0)));
            assert_eq!(c.status(), want);
            assert!(!c.is_flush());
            assert!(!c.status_str().is_empty());
        }
    }

    #[test]
    fn immediate_data_is_host_order() {
        let mut raw =
            wc(sys::ibv_wc_status::IBV_WC_SUCCESS, sys::ibv_wc_opcode::IBV_WC_RECV, sys::ibv_wc_flags::IBV_WC_WITH_IMM);
        raw.__bindgen_anon_1.imm_data = 0x0102_0304u32.to_be();
        assert_eq!(Completion::from_raw(raw).imm_data(), Some(0x0102_0304));
    }
}
