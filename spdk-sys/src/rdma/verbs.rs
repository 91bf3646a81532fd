//! Devices (opened by name, or librdmacm's), their limits and ports, and protection
//! domains.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::Arc;

use super::memory::Access;
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

impl Context {
    /// The descriptor that is readable when the device has an asynchronous event.
    pub fn async_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd stays open as long as the context.
        unsafe { BorrowedFd::borrow_raw((*self.raw()).async_fd) }
    }

    /// The next asynchronous event (a queue pair gone to the error state, an SRQ's last
    /// receive consumed, a port change, a fatal device error), copied and acknowledged;
    /// None when none is waiting (never blocks, whatever the descriptor's mode).
    pub fn get_async_event(&self) -> Result<Option<AsyncEvent>, Error> {
        let mut pollfd = libc::pollfd { fd: self.async_fd_raw(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
        if ready < 0 {
            return Err(Error::last("poll on a device's async event descriptor"));
        }
        if ready == 0 {
            return Ok(None);
        }
        let mut raw = sys::ibv_async_event::default();
        // SAFETY: live context, valid out-pointer; the descriptor is readable, so this
        // does not block.
        if unsafe { sys::ibv_get_async_event(self.raw(), &mut raw) } != 0 {
            return Err(Error::last("ibv_get_async_event"));
        }
        let kind = AsyncEventKind::from_raw(raw.event_type);
        // SAFETY: the member read is the one the event type names; a QP named by an
        // unacknowledged event is alive (destroying it waits for the acknowledgement).
        let element = unsafe {
            match kind.element() {
                Element::Qp if !raw.element.qp.is_null() => AsyncElement::Qp((*raw.element.qp).qp_num),
                Element::Port => AsyncElement::Port(u8::try_from(raw.element.port_num).unwrap_or(0)),
                Element::Cq => AsyncElement::Cq,
                Element::Srq => AsyncElement::Srq,
                _ => AsyncElement::Device,
            }
        };
        // SAFETY: acknowledged once, after everything needed was copied out.
        unsafe { sys::ibv_ack_async_event(&mut raw) };
        Ok(Some(AsyncEvent { kind, element }))
    }

    fn async_fd_raw(&self) -> i32 {
        // SAFETY: live context; a plain field.
        unsafe { (*self.raw()).async_fd }
    }
}

/// A device's asynchronous event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    pub kind: AsyncEventKind,
    pub element: AsyncElement,
}

/// What an asynchronous event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncElement {
    /// The queue pair with this number: the transport ends that queue only.
    Qp(u32),
    Cq,
    Srq,
    Port(u8),
    Device,
}

enum Element {
    Qp,
    Cq,
    Srq,
    Port,
    Device,
}

/// The kind of an asynchronous event (`IBV_EVENT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncEventKind {
    CqError,
    QpFatal,
    QpRequestError,
    QpAccessError,
    CommEstablished,
    SqDrained,
    PathMigrated,
    PathMigrationError,
    DeviceFatal,
    PortActive,
    PortError,
    LidChange,
    PkeyChange,
    SmChange,
    SrqError,
    SrqLimitReached,
    /// A queue pair on an SRQ will take no more receives: now it may be destroyed
    /// without losing one (InfiniBand's rule for QPs on an SRQ).
    QpLastWqeReached,
    ClientReregister,
    GidChange,
    Other(u32),
}

impl AsyncEventKind {
    fn from_raw(raw: sys::ibv_event_type) -> AsyncEventKind {
        use sys::ibv_event_type as e;
        match raw {
            e::IBV_EVENT_CQ_ERR => AsyncEventKind::CqError,
            e::IBV_EVENT_QP_FATAL => AsyncEventKind::QpFatal,
            e::IBV_EVENT_QP_REQ_ERR => AsyncEventKind::QpRequestError,
            e::IBV_EVENT_QP_ACCESS_ERR => AsyncEventKind::QpAccessError,
            e::IBV_EVENT_COMM_EST => AsyncEventKind::CommEstablished,
            e::IBV_EVENT_SQ_DRAINED => AsyncEventKind::SqDrained,
            e::IBV_EVENT_PATH_MIG => AsyncEventKind::PathMigrated,
            e::IBV_EVENT_PATH_MIG_ERR => AsyncEventKind::PathMigrationError,
            e::IBV_EVENT_DEVICE_FATAL => AsyncEventKind::DeviceFatal,
            e::IBV_EVENT_PORT_ACTIVE => AsyncEventKind::PortActive,
            e::IBV_EVENT_PORT_ERR => AsyncEventKind::PortError,
            e::IBV_EVENT_LID_CHANGE => AsyncEventKind::LidChange,
            e::IBV_EVENT_PKEY_CHANGE => AsyncEventKind::PkeyChange,
            e::IBV_EVENT_SM_CHANGE => AsyncEventKind::SmChange,
            e::IBV_EVENT_SRQ_ERR => AsyncEventKind::SrqError,
            e::IBV_EVENT_SRQ_LIMIT_REACHED => AsyncEventKind::SrqLimitReached,
            e::IBV_EVENT_QP_LAST_WQE_REACHED => AsyncEventKind::QpLastWqeReached,
            e::IBV_EVENT_CLIENT_REREGISTER => AsyncEventKind::ClientReregister,
            e::IBV_EVENT_GID_CHANGE => AsyncEventKind::GidChange,
            other => AsyncEventKind::Other(other.0),
        }
    }

    /// Which member of the event's union names the object (verbs.h, `ibv_async_event`).
    fn element(self) -> Element {
        use AsyncEventKind as k;
        match self {
            k::QpFatal
            | k::QpRequestError
            | k::QpAccessError
            | k::CommEstablished
            | k::SqDrained
            | k::PathMigrated
            | k::PathMigrationError
            | k::QpLastWqeReached => Element::Qp,
            k::CqError => Element::Cq,
            k::SrqError | k::SrqLimitReached => Element::Srq,
            k::PortActive
            | k::PortError
            | k::LidChange
            | k::PkeyChange
            | k::SmChange
            | k::ClientReregister
            | k::GidChange => Element::Port,
            k::DeviceFatal | k::Other(_) => Element::Device,
        }
    }

    /// Whether the event puts its queue pair in the error state (end that queue).
    pub fn ends_queue_pair(self) -> bool {
        matches!(self, AsyncEventKind::QpFatal | AsyncEventKind::QpRequestError | AsyncEventKind::QpAccessError)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_event_kinds_map_to_the_union_member_they_name() {
        use sys::ibv_event_type as e;
        let qp = [
            e::IBV_EVENT_QP_FATAL,
            e::IBV_EVENT_QP_REQ_ERR,
            e::IBV_EVENT_QP_ACCESS_ERR,
            e::IBV_EVENT_QP_LAST_WQE_REACHED,
        ];
        for raw in qp {
            assert!(matches!(AsyncEventKind::from_raw(raw).element(), Element::Qp), "{raw:?}");
        }
        assert!(matches!(AsyncEventKind::from_raw(e::IBV_EVENT_PORT_ERR).element(), Element::Port));
        assert!(matches!(AsyncEventKind::from_raw(e::IBV_EVENT_SRQ_LIMIT_REACHED).element(), Element::Srq));
        assert!(matches!(AsyncEventKind::from_raw(e::IBV_EVENT_CQ_ERR).element(), Element::Cq));
        assert_eq!(AsyncEventKind::from_raw(e::IBV_EVENT_DEVICE_FATAL), AsyncEventKind::DeviceFatal);
        assert_eq!(AsyncEventKind::from_raw(sys::ibv_event_type(77)), AsyncEventKind::Other(77));
        assert!(matches!(AsyncEventKind::Other(77).element(), Element::Device), "an unknown event names no object");
        assert!(AsyncEventKind::QpFatal.ends_queue_pair() && AsyncEventKind::QpAccessError.ends_queue_pair());
        assert!(!AsyncEventKind::QpLastWqeReached.ends_queue_pair() && !AsyncEventKind::PortError.ends_queue_pair());
    }
}
