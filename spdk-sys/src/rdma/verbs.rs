//! Devices, protection domains, memory regions, completion queues and shared receive
//! queues.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::wr::{Completion, PostError, RecvWr, Sge};
use super::Error;
use crate::rdma_sys as sys;

/// One RDMA device the kernel offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The kernel's name (`rxe0`, `mlx5_0`).
    pub name: String,
    /// The node GUID, host order.
    pub guid: u64,
}

/// The raw list from `ibv_get_device_list`, freed on drop.
struct DeviceList {
    raw: *mut *mut sys::ibv_device,
    len: usize,
}

impl DeviceList {
    /// A kernel without RDMA verbs support (no `ib_uverbs`, no `/sys/class/infiniband`)
    /// answers ENOSYS: that is a machine with no devices, not a failure.
    fn get() -> Result<DeviceList, Error> {
        let mut len = 0;
        // SAFETY: `len` is a valid out-pointer; the list is freed in Drop.
        let raw = unsafe { sys::ibv_get_device_list(&mut len) };
        if raw.is_null() {
            let err = Error::last("ibv_get_device_list");
            return if err.errno == libc::ENOSYS { Ok(DeviceList { raw, len: 0 }) } else { Err(err) };
        }
        Ok(DeviceList { raw, len: usize::try_from(len).unwrap_or(0) })
    }

    fn iter(&self) -> impl Iterator<Item = *mut sys::ibv_device> + '_ {
        // SAFETY: the list holds `len` device pointers while it is not freed (self is alive).
        (0..self.len).map(move |i| unsafe { *self.raw.add(i) })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: the list came from ibv_get_device_list and is freed once.
            unsafe { sys::ibv_free_device_list(self.raw) };
        }
    }
}

fn device_name(device: *mut sys::ibv_device) -> String {
    // SAFETY: `device` is a live entry of a device list; the name is a NUL-terminated
    // array inside it, copied out before the list is freed.
    let name = unsafe { sys::ibv_get_device_name(device) };
    if name.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated, alive as long as the list.
    unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
}

/// The RDMA devices present; empty on a machine without RDMA (no device, or a kernel
/// without verbs support).
pub fn devices() -> Result<Vec<DeviceInfo>, Error> {
    let list = DeviceList::get()?;
    Ok(list
        .iter()
        .map(|device| DeviceInfo {
            name: device_name(device),
            // SAFETY: a live device of the list.
            guid: u64::from_be(unsafe { sys::ibv_get_device_guid(device) }),
        })
        .collect())
}

/// Who closes a context: one opened by name is closed with `ibv_close_device`; one that
/// librdmacm opened stays open while the [`CmDevices`] list is held.
enum ContextOwner {
    Opened,
    Cm(#[allow(dead_code)] Arc<CmDevices>),
}

struct ContextInner {
    raw: NonNull<sys::ibv_context>,
    owner: ContextOwner,
}

// SAFETY: libibverbs calls on a context are thread-safe; the pointer is only passed to them.
unsafe impl Send for ContextInner {}
// SAFETY: as above.
unsafe impl Sync for ContextInner {}

impl Drop for ContextInner {
    fn drop(&mut self) {
        if let ContextOwner::Opened = self.owner {
            // SAFETY: opened by ibv_open_device, closed once; every child (PD, CQ) holds a
            // clone of this Arc, so none outlives it.
            unsafe { sys::ibv_close_device(self.raw.as_ptr()) };
        }
    }
}

/// An open RDMA device (`ibv_context`). Cloning shares it.
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

/// The limits of a device that size queues (`ibv_query_device`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceAttr {
    pub max_qp: i32,
    pub max_qp_wr: i32,
    pub max_sge: i32,
    pub max_cq: i32,
    pub max_cqe: i32,
    pub max_mr_size: u64,
    pub max_srq: i32,
    pub max_srq_wr: i32,
    pub max_srq_sge: i32,
    /// RDMA READs this side may have outstanding as responder, per QP.
    pub max_qp_rd_atom: i32,
    /// RDMA READs this side may have outstanding as initiator, per QP.
    pub max_qp_init_rd_atom: i32,
    pub phys_port_cnt: u8,
}

/// A port's state (`ibv_query_port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortAttr {
    /// `PORT_ACTIVE` and the like, as rdma-core spells them.
    pub state: String,
    pub active: bool,
    /// The active MTU in bytes.
    pub active_mtu: u32,
    /// 1 InfiniBand, 2 Ethernet (RoCE).
    pub link_layer: u8,
}

impl Context {
    /// Opens the device called `name`.
    pub fn open(name: &str) -> Result<Context, Error> {
        let list = DeviceList::get()?;
        let Some(device) = list.iter().find(|d| device_name(*d) == name) else {
            let found: Vec<String> = list.iter().map(device_name).collect();
            let found = if found.is_empty() {
                "this machine has none (no RDMA NIC, and no soft-RoCE: modprobe rdma_rxe; \
                 rdma link add rxe0 type rxe netdev IFACE)"
                    .to_string()
            } else {
                format!("present: {}", found.join(", "))
            };
            return Err(Error::new(format!("open RDMA device {name}: no such device; {found}"), libc::ENODEV));
        };
        // SAFETY: `device` is a live entry of `list`, which is freed only after the call.
        let raw = unsafe { sys::ibv_open_device(device) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last(format!("ibv_open_device {name}")))?;
        Ok(Context { inner: Arc::new(ContextInner { raw, owner: ContextOwner::Opened }) })
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_context {
        self.inner.raw.as_ptr()
    }

    /// The device's kernel name.
    pub fn name(&self) -> String {
        // SAFETY: a live context's `device` is valid for the context's life.
        device_name(unsafe { (*self.raw()).device })
    }

    /// The device's limits.
    pub fn query_device(&self) -> Result<DeviceAttr, Error> {
        let mut attr = sys::ibv_device_attr::default();
        // SAFETY: live context, valid out-pointer.
        let ret = unsafe { sys::ibv_query_device(self.raw(), &mut attr) };
        if ret != 0 {
            return Err(Error::from_ret("ibv_query_device", ret));
        }
        Ok(DeviceAttr {
            max_qp: attr.max_qp,
            max_qp_wr: attr.max_qp_wr,
            max_sge: attr.max_sge,
            max_cq: attr.max_cq,
            max_cqe: attr.max_cqe,
            max_mr_size: attr.max_mr_size,
            max_srq: attr.max_srq,
            max_srq_wr: attr.max_srq_wr,
            max_srq_sge: attr.max_srq_sge,
            max_qp_rd_atom: attr.max_qp_rd_atom,
            max_qp_init_rd_atom: attr.max_qp_init_rd_atom,
            phys_port_cnt: attr.phys_port_cnt,
        })
    }

    /// The state of port `port` (1-based).
    pub fn query_port(&self, port: u8) -> Result<PortAttr, Error> {
        let mut attr = sys::ibv_port_attr::default();
        // SAFETY: live context, valid out-pointer.
        let ret = unsafe { sys::peerless_ibv_query_port(self.raw(), port, &mut attr) };
        if ret != 0 {
            return Err(Error::from_ret(format!("ibv_query_port {port}"), ret));
        }
        // SAFETY: rdma-core returns a static string for any value.
        let state = unsafe { sys::ibv_port_state_str(attr.state) };
        let state = if state.is_null() { String::new() } else { static_cstr(state) };
        Ok(PortAttr {
            state,
            active: attr.state == sys::ibv_port_state::IBV_PORT_ACTIVE,
            active_mtu: 128u32 << attr.active_mtu.min(5),
            link_layer: attr.link_layer,
        })
    }
}

/// Copies a static C string rdma-core returned (a state or status name).
pub(crate) fn static_cstr(ptr: *const std::os::raw::c_char) -> String {
    // SAFETY: callers pass non-null pointers to rdma-core's static NUL-terminated names.
    unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
}

/// librdmacm's own open devices (`rdma_get_devices`). An RDMA CM id is bound to one of
/// them, and a protection domain for its queue pair must be made on that same context;
/// holding this list keeps them open (librdmacm closes a device when nothing holds it).
pub struct CmDevices {
    raw: *mut *mut sys::ibv_context,
    contexts: Vec<NonNull<sys::ibv_context>>,
}

// SAFETY: the list is read-only after creation; contexts are thread-safe.
unsafe impl Send for CmDevices {}
// SAFETY: as above.
unsafe impl Sync for CmDevices {}

impl CmDevices {
    /// librdmacm's device list; empty on a machine without RDMA.
    pub fn open() -> Result<Arc<CmDevices>, Error> {
        let mut len = 0;
        // SAFETY: valid out-pointer; the list is freed in Drop.
        let raw = unsafe { sys::rdma_get_devices(&mut len) };
        if raw.is_null() {
            let err = Error::last("rdma_get_devices");
            if matches!(err.errno, libc::ENODEV | libc::ENOSYS | libc::ENOENT) {
                return Ok(Arc::new(CmDevices { raw, contexts: Vec::new() }));
            }
            return Err(err);
        }
        let len = usize::try_from(len).unwrap_or(0);
        // SAFETY: the list holds `len` context pointers.
        let contexts = (0..len).filter_map(|i| NonNull::new(unsafe { *raw.add(i) })).collect();
        Ok(Arc::new(CmDevices { raw, contexts }))
    }

    /// Every context in the list.
    pub fn contexts(self: &Arc<Self>) -> Vec<Context> {
        self.contexts
            .iter()
            .map(|raw| Context { inner: Arc::new(ContextInner { raw: *raw, owner: ContextOwner::Cm(self.clone()) }) })
            .collect()
    }

    /// The context whose pointer is `raw` (an RDMA CM id's `verbs`), if it is in the list.
    pub(crate) fn context_of(self: &Arc<Self>, raw: *mut sys::ibv_context) -> Option<Context> {
        let raw = self.contexts.iter().find(|c| c.as_ptr() == raw)?;
        Some(Context { inner: Arc::new(ContextInner { raw: *raw, owner: ContextOwner::Cm(self.clone()) }) })
    }

    /// How many devices librdmacm sees.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    /// Whether librdmacm sees no device.
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }
}

impl Drop for CmDevices {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: from rdma_get_devices, freed once; every Context made from it holds
            // an Arc of this list, so none is still in use.
            unsafe { sys::rdma_free_devices(self.raw) };
        }
    }
}

/// A protection domain. Memory regions, shared receive queues and queue pairs are made in
/// one and keep it alive.
pub struct Pd {
    raw: NonNull<sys::ibv_pd>,
    context: Context,
}

// SAFETY: verbs on a PD are thread-safe; the pointer is only passed to them.
unsafe impl Send for Pd {}
// SAFETY: as above.
unsafe impl Sync for Pd {}

impl Pd {
    /// Allocates a protection domain on `context`.
    pub fn new(context: &Context) -> Result<Arc<Pd>, Error> {
        // SAFETY: live context.
        let raw = unsafe { sys::ibv_alloc_pd(context.raw()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last("ibv_alloc_pd"))?;
        Ok(Arc::new(Pd { raw, context: context.clone() }))
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_pd {
        self.raw.as_ptr()
    }

    /// The device the domain belongs to.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Registers `memory` once; the region keeps it alive until the region is dropped.
    pub fn register(self: &Arc<Self>, memory: Arc<dyn RegistrableMemory>, access: Access) -> Result<Mr, Error> {
        let (addr, len) = memory.region();
        if len == 0 {
            return Err(Error::new("ibv_reg_mr: empty region", libc::EINVAL));
        }
        let access = i32::try_from(access.0).map_err(|_| Error::new("ibv_reg_mr: access flags", libc::EINVAL))?;
        // SAFETY: live PD; `memory` promises `addr..addr+len` stays mapped while it lives,
        // and the returned Mr holds it.
        let raw = unsafe { sys::peerless_ibv_reg_mr(self.raw(), addr.as_ptr().cast(), len, access) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last(format!("ibv_reg_mr of {len} bytes")))?;
        Ok(Mr { raw, _memory: MrMemory::Host(memory), _pd: self.clone() })
    }

    /// Registers `len` bytes at `offset` of a dma-buf (device memory exported by its
    /// driver), seen by the NIC at `iova`. The region holds the descriptor.
    pub fn register_dmabuf(
        self: &Arc<Self>,
        dmabuf: OwnedFd,
        offset: u64,
        len: usize,
        iova: u64,
        access: Access,
    ) -> Result<Mr, Error> {
        let access =
            i32::try_from(access.0).map_err(|_| Error::new("ibv_reg_dmabuf_mr: access flags", libc::EINVAL))?;
        // SAFETY: live PD; the CPU never touches dma-buf memory through this region, and
        // the descriptor (which keeps the buffer alive) lives in the returned Mr.
        let raw = unsafe { sys::ibv_reg_dmabuf_mr(self.raw(), offset, len, iova, dmabuf.as_raw_fd(), access) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last(format!("ibv_reg_dmabuf_mr of {len} bytes")))?;
        Ok(Mr { raw, _memory: MrMemory::Dmabuf(dmabuf), _pd: self.clone() })
    }

    /// Whether this device's provider registers dma-bufs. Asks with an invalid
    /// descriptor: a provider without support answers EOPNOTSUPP before looking at it.
    pub fn dmabuf_support(&self) -> DmabufSupport {
        let access = Access::LOCAL_WRITE.0 as i32;
        // SAFETY: live PD; descriptor -1 names no memory, so nothing can be registered.
        let raw = unsafe { sys::ibv_reg_dmabuf_mr(self.raw(), 0, 4096, 0, -1, access) };
        if let Some(mr) = NonNull::new(raw) {
            // SAFETY: an unexpected success is deregistered at once.
            unsafe { sys::ibv_dereg_mr(mr.as_ptr()) };
            return DmabufSupport::Supported;
        }
        match Error::last("ibv_reg_dmabuf_mr").errno {
            libc::EOPNOTSUPP | libc::ENOSYS => DmabufSupport::NotSupported,
            _ => DmabufSupport::Supported,
        }
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: every MR, SRQ and QP of this PD holds an Arc to it, so none is left.
        unsafe { sys::ibv_dealloc_pd(self.raw.as_ptr()) };
    }
}

/// Whether a device registers dma-bufs (`ibv_reg_dmabuf_mr`), for NIC access to device
/// memory (a CMB) without a host bounce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmabufSupport {
    Supported,
    NotSupported,
}

/// Memory that may be registered: it stays mapped at one address for the object's whole
/// life, which is as long as any region registered over it.
///
/// # Safety
///
/// `region()` returns the same address and length every time, the memory stays mapped
/// and owned by this object until it is dropped, and the owner never makes Rust
/// references over it that assume no other writer: a NIC may write it at any time while
/// a region is registered.
pub unsafe trait RegistrableMemory: Send + Sync {
    /// Start and length in bytes.
    fn region(&self) -> (NonNull<u8>, usize);
}

enum MrMemory {
    Host(#[allow(dead_code)] Arc<dyn RegistrableMemory>),
    Dmabuf(#[allow(dead_code)] OwnedFd),
}

/// Access rights of a memory region (`IBV_ACCESS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(pub u32);

impl Access {
    /// The NIC may write it for this side's receives and RDMA READs.
    pub const LOCAL_WRITE: Access = Access(sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    /// The peer may RDMA WRITE into it.
    pub const REMOTE_WRITE: Access = Access(sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);
    /// The peer may RDMA READ from it.
    pub const REMOTE_READ: Access = Access(sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);
    /// PCIe relaxed ordering, where the device allows it (ignored otherwise).
    pub const RELAXED_ORDERING: Access = Access(sys::ibv_access_flags::IBV_ACCESS_RELAXED_ORDERING.0);

    /// Whether every right in `other` is in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// A registered memory region. Its keys are valid while it lives; dropping it
/// deregisters (after which the NIC no longer touches the memory) and then releases the
/// memory it held.
pub struct Mr {
    raw: NonNull<sys::ibv_mr>,
    // Field order is drop order: the region is deregistered in Drop, then the memory
    // and the PD are released.
    _memory: MrMemory,
    _pd: Arc<Pd>,
}

// SAFETY: an MR is read-only after registration; deregistration is thread-safe.
unsafe impl Send for Mr {}
// SAFETY: as above.
unsafe impl Sync for Mr {}

impl Mr {
    fn fields(&self) -> &sys::ibv_mr {
        // SAFETY: a live MR is not changed by the library after registration.
        unsafe { self.raw.as_ref() }
    }

    /// The local key, for scatter-gather entries.
    pub fn lkey(&self) -> u32 {
        self.fields().lkey
    }

    /// The remote key a peer names in RDMA READ/WRITE.
    pub fn rkey(&self) -> u32 {
        self.fields().rkey
    }

    /// Start of the region as the NIC sees it.
    pub fn addr(&self) -> u64 {
        self.fields().addr as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.fields().length
    }

    /// Whether the region is empty (never, registration refuses that).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A scatter-gather entry over `len` bytes at `offset`, refused outside the region.
    pub fn sge(&self, offset: usize, len: u32) -> Result<Sge, Error> {
        let inside = matches!(offset.checked_add(len as usize), Some(end) if end <= self.len());
        if !inside {
            return Err(Error::new(
                format!("{len} bytes at offset {offset} lie outside a region of {} bytes", self.len()),
                libc::ERANGE,
            ));
        }
        Ok(Sge { addr: self.addr() + offset as u64, len, lkey: self.lkey() })
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered in Pd::register*, deregistered once, before its memory goes.
        unsafe { sys::ibv_dereg_mr(self.raw.as_ptr()) };
    }
}

/// Page-aligned, zeroed host memory to register, which the CPU reads and writes only by
/// copies (the NIC may write it at any time). For tests, examples and small control
/// buffers; the transport's data buffers are the iobuf pools.
pub struct DmaBuffer {
    ptr: NonNull<u8>,
    len: usize,
    cpu: Mutex<()>,
}

// SAFETY: the bytes are reached only through raw-pointer copies, serialised by `cpu`.
unsafe impl Send for DmaBuffer {}
// SAFETY: as above.
unsafe impl Sync for DmaBuffer {}

const PAGE: usize = 4096;

impl DmaBuffer {
    /// `len` zeroed bytes (at least one), 4 KiB aligned.
    pub fn new(len: usize) -> Result<Arc<DmaBuffer>, Error> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), PAGE)
            .map_err(|_| Error::new(format!("a buffer of {len} bytes"), libc::EINVAL))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::new(format!("allocate {len} bytes"), libc::ENOMEM))?;
        Ok(Arc::new(DmaBuffer { ptr, len: len.max(1), cpu: Mutex::new(()) }))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::new(format!("{len} bytes at {offset} of a {}-byte buffer", self.len), libc::ERANGE)),
        }
    }

    /// Copies `data` in at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        self.check(offset, data.len())?;
        let _cpu = self.cpu.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: in bounds (checked); no Rust reference to the buffer exists, and CPU
        // copies are serialised by the lock.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len()) };
        Ok(())
    }

    /// Copies `out.len()` bytes out from `offset`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), Error> {
        self.check(offset, out.len())?;
        let _cpu = self.cpu.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: as in write.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }
}

// SAFETY: the allocation lives, unmoved, until Drop; only copies touch it.
unsafe impl RegistrableMemory for DmaBuffer {
    fn region(&self) -> (NonNull<u8>, usize) {
        (self.ptr, self.len)
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, PAGE).expect("layout was valid at allocation");
        // SAFETY: allocated in new with this layout; any Mr over it held an Arc, so none is left.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// A completion queue, with its own completion channel when made for interrupt mode.
/// Events are read and acknowledged together ([`Cq::drain_events`]), so none is left
/// unacknowledged when it is destroyed.
pub struct Cq {
    raw: NonNull<sys::ibv_cq>,
    channel: Option<NonNull<sys::ibv_comp_channel>>,
    capacity: u32,
    context: Context,
}

// SAFETY: verbs on a CQ (poll, arm, events) are thread-safe in libibverbs.
unsafe impl Send for Cq {}
// SAFETY: as above.
unsafe impl Sync for Cq {}

impl Cq {
    /// A CQ of at least `entries` entries; with `interrupts`, a completion channel whose
    /// descriptor ([`Cq::event_fd`]) is readable after [`Cq::arm`] once a completion arrives.
    pub fn new(context: &Context, entries: u32, interrupts: bool) -> Result<Arc<Cq>, Error> {
        let entries =
            i32::try_from(entries).map_err(|_| Error::new("ibv_create_cq: too many entries", libc::EINVAL))?;
        let channel = if interrupts {
            // SAFETY: live context.
            let channel = unsafe { sys::ibv_create_comp_channel(context.raw()) };
            let channel = NonNull::new(channel).ok_or_else(|| Error::last("ibv_create_comp_channel"))?;
            // SAFETY: the channel's fd is open while the channel lives.
            let fd = unsafe { channel.as_ref() }.fd;
            if let Err(err) = set_nonblocking(fd) {
                // SAFETY: just created, no CQ on it.
                unsafe { sys::ibv_destroy_comp_channel(channel.as_ptr()) };
                return Err(err);
            }
            Some(channel)
        } else {
            None
        };
        let channel_ptr = channel.map_or(std::ptr::null_mut(), |c| c.as_ptr());
        // SAFETY: live context; the channel (if any) is live and outlives the CQ (Drop order).
        let raw = unsafe { sys::ibv_create_cq(context.raw(), entries, std::ptr::null_mut(), channel_ptr, 0) };
        let Some(raw) = NonNull::new(raw) else {
            let err = Error::last(format!("ibv_create_cq of {entries} entries"));
            if let Some(channel) = channel {
                // SAFETY: no CQ was made on it.
                unsafe { sys::ibv_destroy_comp_channel(channel.as_ptr()) };
            }
            return Err(err);
        };
        // SAFETY: live CQ; `cqe` is the size the provider granted.
        let capacity = unsafe { raw.as_ref() }.cqe.max(0) as u32;
        Ok(Arc::new(Cq { raw, channel, capacity, context: context.clone() }))
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_cq {
        self.raw.as_ptr()
    }

    pub(crate) fn context_raw(&self) -> *mut sys::ibv_context {
        self.context.raw()
    }

    /// Entries the provider granted (at least the number asked for).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Takes up to `out.len()` completions; returns how many were written.
    pub fn poll(&self, out: &mut [Completion]) -> Result<usize, Error> {
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: live CQ; `Completion` is a transparent ibv_wc and `out` holds `max` of them.
        let n = unsafe { sys::peerless_ibv_poll_cq(self.raw(), max, out.as_mut_ptr().cast()) };
        if n < 0 {
            return Err(Error::new("ibv_poll_cq", if n == -1 { libc::EIO } else { n }));
        }
        Ok(n as usize)
    }

    /// Asks for one event on the channel at the next completion. Poll the CQ once more
    /// after arming: a completion that arrived in between raises no event.
    pub fn arm(&self) -> Result<(), Error> {
        if self.channel.is_none() {
            return Err(Error::new("ibv_req_notify_cq: this CQ has no completion channel", libc::EINVAL));
        }
        // SAFETY: live CQ.
        let ret = unsafe { sys::peerless_ibv_req_notify_cq(self.raw(), 0) };
        if ret != 0 {
            return Err(Error::from_ret("ibv_req_notify_cq", ret));
        }
        Ok(())
    }

    /// The completion channel's descriptor (non-blocking), for epoll; None without one.
    pub fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: the channel and its fd live as long as self.
        self.channel.map(|c| unsafe { BorrowedFd::borrow_raw(c.as_ref().fd) })
    }

    /// Reads and acknowledges every pending channel event; returns how many there were.
    pub fn drain_events(&self) -> Result<u32, Error> {
        let Some(channel) = self.channel else { return Ok(0) };
        let mut count = 0u32;
        loop {
            let mut cq = std::ptr::null_mut();
            let mut cq_context = std::ptr::null_mut();
            // SAFETY: live channel (non-blocking), valid out-pointers.
            let ret = unsafe { sys::ibv_get_cq_event(channel.as_ptr(), &mut cq, &mut cq_context) };
            if ret != 0 {
                let err = Error::last("ibv_get_cq_event");
                if err.errno == libc::EAGAIN {
                    break;
                }
                self.ack(count);
                return Err(err);
            }
            // The channel serves this CQ only, so `cq` is self.
            count += 1;
        }
        self.ack(count);
        Ok(count)
    }

    /// Waits up to `timeout` for the channel to fire, then reads and acknowledges its
    /// events; returns how many there were (0: timed out, or no channel). For tools and
    /// tests: a reactor watches [`Cq::event_fd`] instead.
    pub fn wait_event(&self, timeout: std::time::Duration) -> Result<u32, Error> {
        let Some(fd) = self.event_fd() else { return Ok(0) };
        let mut pollfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pollfd, 1, ms) } < 0 {
            return Err(Error::last("poll on a completion channel"));
        }
        self.drain_events()
    }

    fn ack(&self, count: u32) {
        if count > 0 {
            // SAFETY: live CQ; `count` events were read from its channel.
            unsafe { sys::ibv_ack_cq_events(self.raw(), count) };
        }
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: every QP using this CQ holds an Arc to it, so all are destroyed; every
        // event read was acknowledged in drain_events. The channel goes after its CQ.
        unsafe {
            sys::ibv_destroy_cq(self.raw.as_ptr());
            if let Some(channel) = self.channel {
                sys::ibv_destroy_comp_channel(channel.as_ptr());
            }
        }
    }
}

pub(crate) fn set_nonblocking(fd: i32) -> Result<(), Error> {
    // SAFETY: fcntl on a descriptor the caller owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(Error::last("fcntl O_NONBLOCK"));
    }
    Ok(())
}

/// A shared receive queue: one pool of posted receives for every queue pair of a poll
/// group, so receive buffers scale with the group, not with its connections.
pub struct Srq {
    raw: NonNull<sys::ibv_srq>,
    max_wr: u32,
    pd: Arc<Pd>,
}

// SAFETY: posting to and destroying an SRQ are thread-safe verbs.
unsafe impl Send for Srq {}
// SAFETY: as above.
unsafe impl Sync for Srq {}

impl Srq {
    /// An SRQ of `max_wr` receives of up to `max_sge` entries each.
    pub fn new(pd: &Arc<Pd>, max_wr: u32, max_sge: u32) -> Result<Arc<Srq>, Error> {
        let mut attr = sys::ibv_srq_init_attr::default();
        attr.attr.max_wr = max_wr;
        attr.attr.max_sge = max_sge;
        // SAFETY: live PD, valid attributes.
        let raw = unsafe { sys::ibv_create_srq(pd.raw(), &mut attr) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last(format!("ibv_create_srq of {max_wr} entries")))?;
        Ok(Arc::new(Srq { raw, max_wr: attr.attr.max_wr, pd: pd.clone() }))
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_srq {
        self.raw.as_ptr()
    }

    /// Receives the provider granted.
    pub fn max_wr(&self) -> u32 {
        self.max_wr
    }

    /// The domain it was made in.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// Posts `wrs` in order; on failure, those before `PostError::index` were posted.
    pub fn post_recv(&self, wrs: &mut [RecvWr]) -> Result<(), PostError> {
        let Some(first) = super::wr::link_recv(wrs) else { return Ok(()) };
        let mut bad = std::ptr::null_mut();
        // SAFETY: live SRQ; `wrs` is linked and its entries' SGE arrays stay in place for
        // the call (the provider copies them).
        let ret = unsafe { sys::peerless_ibv_post_srq_recv(self.raw(), first, &mut bad) };
        super::wr::post_result("ibv_post_srq_recv", ret, wrs, bad)
    }
}

impl Drop for Srq {
    fn drop(&mut self) {
        // SAFETY: every QP attached to it holds an Arc, so all are destroyed.
        unsafe { sys::ibv_destroy_srq(self.raw.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_flags_combine_and_contain() {
        let all = Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE;
        assert!(all.contains(Access::REMOTE_READ));
        assert!(!Access::LOCAL_WRITE.contains(Access::REMOTE_WRITE));
        assert_eq!(all.0, 0b111, "IBV_ACCESS_LOCAL_WRITE | REMOTE_WRITE | REMOTE_READ");
    }

    #[test]
    fn dma_buffer_copies_in_bounds_and_refuses_outside() {
        for len in [1usize, 4095, 4096, 65536 + 7] {
            let buf = DmaBuffer::new(len).expect("allocate");
            let (ptr, region_len) = buf.region();
            assert_eq!(ptr.as_ptr() as usize % PAGE, 0);
            assert_eq!(region_len, len);
            let mut out = vec![0xffu8; len];
            buf.read(0, &mut out).expect("read");
            assert!(out.iter().all(|b| *b == 0), "zeroed");
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            buf.write(0, &data).expect("write");
            buf.read(0, &mut out).expect("read");
            assert_eq!(out, data);
            assert_eq!(buf.write(len, &[1]).unwrap_err().errno, libc::ERANGE);
            assert_eq!(buf.read(usize::MAX, &mut [0]).unwrap_err().errno, libc::ERANGE);
            buf.write(len - 1, &[9]).expect("last byte");
        }
    }
}
