//! RDMA CM: the event channel, connection ids (passive and active side) and the RC queue
//! pair an id carries.
//!
//! Each event is copied out (its type, status, private data and connection parameters)
//! and acknowledged before [`EventChannel::get_event`] returns, so no event is ever left
//! unacknowledged: `rdma_destroy_id` waits for that, and would block a reactor.
//! Events name the id they concern by the caller's token ([`CmId::token`]), so a
//! disconnect, a time-wait exit or a device removal ends just the queue it names.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use super::queues::{set_nonblocking, Cq, Srq};
use super::verbs::{CmDevices, Context, Pd};
use super::wr::{link_recv, link_send, post_result, PostError, RecvWr, SendWr};
use super::Error;
use crate::rdma_sys as sys;

/// An RDMA CM event channel: every id made on it reports here. Its descriptor is
/// non-blocking, for a reactor to watch.
pub struct EventChannel {
    raw: NonNull<sys::rdma_event_channel>,
}

// SAFETY: librdmacm's channel calls are thread-safe; the pointer is only passed to them.
unsafe impl Send for EventChannel {}
// SAFETY: as above.
unsafe impl Sync for EventChannel {}

impl EventChannel {
    /// Opens `/dev/infiniband/rdma_cm`. Without it (no RDMA in the kernel, or a container
    /// without the device node) this fails with ENODEV, named so.
    pub fn new() -> Result<Arc<EventChannel>, Error> {
        // SAFETY: no arguments; the channel is destroyed in Drop.
        let raw = unsafe { sys::rdma_create_event_channel() };
        let Some(raw) = NonNull::new(raw) else {
            let err = Error::last("rdma_create_event_channel");
            let hint = match err.errno {
                libc::ENODEV | libc::ENOENT => {
                    " (no /dev/infiniband/rdma_cm: this kernel has no RDMA CM, modprobe rdma_ucm, or no device)"
                }
                libc::EACCES | libc::EPERM => " (no permission on /dev/infiniband/rdma_cm)",
                _ => "",
            };
            return Err(Error::new(format!("{}{hint}", err.op), err.errno));
        };
        let channel = Arc::new(EventChannel { raw });
        set_nonblocking(channel.fd_raw())?;
        Ok(channel)
    }

    fn fd_raw(&self) -> i32 {
        // SAFETY: the channel is live; its fd is a plain field.
        unsafe { self.raw.as_ref() }.fd
    }

    /// The channel's descriptor: readable when an event is waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd stays open as long as the channel.
        unsafe { BorrowedFd::borrow_raw(self.fd_raw()) }
    }

    /// A new RC (`RDMA_PS_TCP`) id whose events carry `token`.
    pub fn create_id(self: &Arc<Self>, token: u64) -> Result<CmId, Error> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: live channel, valid out-pointer; the context is an opaque number
        // librdmacm hands back in events, never dereferenced.
        let ret = unsafe {
            sys::rdma_create_id(
                self.raw.as_ptr(),
                &mut raw,
                token as usize as *mut _,
                sys::rdma_port_space::RDMA_PS_TCP,
            )
        };
        if ret != 0 {
            return Err(Error::last("rdma_create_id"));
        }
        let raw = NonNull::new(raw).ok_or_else(|| Error::new("rdma_create_id returned no id", libc::EIO))?;
        Ok(CmId { qp: None, raw, channel: self.clone() })
    }

    /// The next event, or None when none is waiting (the channel never blocks).
    pub fn get_event(self: &Arc<Self>) -> Result<Option<CmEvent>, Error> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: live channel, valid out-pointer.
        if unsafe { sys::rdma_get_cm_event(self.raw.as_ptr(), &mut raw) } != 0 {
            let err = Error::last("rdma_get_cm_event");
            return if err.errno == libc::EAGAIN { Ok(None) } else { Err(err) };
        }
        // SAFETY: a returned event is valid until acknowledged below; everything needed
        // is copied out first.
        let event = unsafe { &*raw };
        let kind = CmEventKind::from_raw(event.event);
        // SAFETY: RC ids report connection parameters in `conn`.
        let conn = unsafe { event.param.conn };
        let mut private_data = PrivateData::default();
        if !conn.private_data.is_null() && conn.private_data_len > 0 {
            let len = usize::from(conn.private_data_len);
            // SAFETY: librdmacm points at `len` bytes inside the event.
            let bytes = unsafe { std::slice::from_raw_parts(conn.private_data.cast::<u8>(), len) };
            private_data.bytes[..len].copy_from_slice(bytes);
            private_data.len = conn.private_data_len;
        }
        // SAFETY: every event names a live id; `context` is the token given at creation.
        let token = unsafe { (*event.id).context } as usize as u64;
        // A connect request's id is new and now the caller's to destroy.
        let new_id = NonNull::new(event.id).filter(|_| kind == CmEventKind::ConnectRequest).map(|raw| CmId {
            qp: None,
            raw,
            channel: self.clone(),
        });
        let out = CmEvent {
            kind,
            status: event.status,
            token,
            new_id,
            private_data,
            responder_resources: conn.responder_resources,
            initiator_depth: conn.initiator_depth,
            retry_count: conn.retry_count,
            rnr_retry_count: conn.rnr_retry_count,
            srq: conn.srq != 0,
            qp_num: conn.qp_num,
        };
        // SAFETY: acknowledged once; nothing refers to the event after this.
        unsafe { sys::rdma_ack_cm_event(raw) };
        Ok(Some(out))
    }

    /// Waits up to `timeout` for the next event (for tools and tests; a reactor watches
    /// [`EventChannel::fd`] instead).
    pub fn wait_event(self: &Arc<Self>, timeout: Duration) -> Result<Option<CmEvent>, Error> {
        if let Some(event) = self.get_event()? {
            return Ok(Some(event));
        }
        let mut pollfd = libc::pollfd { fd: self.fd_raw(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pollfd, 1, ms) } < 0 {
            return Err(Error::last("poll on the RDMA CM channel"));
        }
        self.get_event()
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every id made on the channel holds an Arc to it, so all are destroyed.
        unsafe { sys::rdma_destroy_event_channel(self.raw.as_ptr()) };
    }
}

/// The kind of an RDMA CM event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmEventKind {
    AddrResolved,
    AddrError,
    RouteResolved,
    RouteError,
    ConnectRequest,
    ConnectResponse,
    ConnectError,
    Unreachable,
    Rejected,
    Established,
    Disconnected,
    DeviceRemoval,
    AddrChange,
    TimewaitExit,
    Other(u32),
}

impl CmEventKind {
    fn from_raw(raw: sys::rdma_cm_event_type) -> CmEventKind {
        use sys::rdma_cm_event_type as t;
        match raw {
            t::RDMA_CM_EVENT_ADDR_RESOLVED => CmEventKind::AddrResolved,
            t::RDMA_CM_EVENT_ADDR_ERROR => CmEventKind::AddrError,
            t::RDMA_CM_EVENT_ROUTE_RESOLVED => CmEventKind::RouteResolved,
            t::RDMA_CM_EVENT_ROUTE_ERROR => CmEventKind::RouteError,
            t::RDMA_CM_EVENT_CONNECT_REQUEST => CmEventKind::ConnectRequest,
            t::RDMA_CM_EVENT_CONNECT_RESPONSE => CmEventKind::ConnectResponse,
            t::RDMA_CM_EVENT_CONNECT_ERROR => CmEventKind::ConnectError,
            t::RDMA_CM_EVENT_UNREACHABLE => CmEventKind::Unreachable,
            t::RDMA_CM_EVENT_REJECTED => CmEventKind::Rejected,
            t::RDMA_CM_EVENT_ESTABLISHED => CmEventKind::Established,
            t::RDMA_CM_EVENT_DISCONNECTED => CmEventKind::Disconnected,
            t::RDMA_CM_EVENT_DEVICE_REMOVAL => CmEventKind::DeviceRemoval,
            t::RDMA_CM_EVENT_ADDR_CHANGE => CmEventKind::AddrChange,
            t::RDMA_CM_EVENT_TIMEWAIT_EXIT => CmEventKind::TimewaitExit,
            other => CmEventKind::Other(other.0),
        }
    }

    /// Whether the event ends the connection of the id it names (the queue goes, the
    /// listener and every other queue stay).
    pub fn ends_connection(self) -> bool {
        matches!(
            self,
            CmEventKind::Disconnected
                | CmEventKind::DeviceRemoval
                | CmEventKind::TimewaitExit
                | CmEventKind::ConnectError
                | CmEventKind::Unreachable
                | CmEventKind::Rejected
                | CmEventKind::AddrError
                | CmEventKind::RouteError
        )
    }
}

/// Private data of a connect, accept or reject, copied out of the event (at most 255
/// bytes, the CM's limit).
#[derive(Clone, Copy)]
pub struct PrivateData {
    len: u8,
    bytes: [u8; 255],
}

impl Default for PrivateData {
    fn default() -> Self {
        PrivateData { len: 0, bytes: [0; 255] }
    }
}

impl PrivateData {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for PrivateData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateData({:02x?})", self.as_slice())
    }
}

/// One RDMA CM event, already acknowledged.
#[derive(Debug)]
pub struct CmEvent {
    pub kind: CmEventKind,
    /// The event's status: 0, a negative errno, or for `Rejected` the CM's reject reason.
    pub status: i32,
    /// The token of the id the event concerns; for `ConnectRequest` the listener's
    /// (the new id inherits it until [`CmId::set_token`]).
    pub token: u64,
    /// `ConnectRequest` only: the new connection's id, now the caller's. Dropping it
    /// without [`CmId::accept`] refuses the connection.
    pub new_id: Option<CmId>,
    /// What the peer sent with a connect, accept or reject.
    pub private_data: PrivateData,
    /// Connect request/established, from this side's view (the CM swaps the peer's
    /// values): RDMA READs the peer may have outstanding against this side (its
    /// initiator depth), which this side's responder resources must cover.
    pub responder_resources: u8,
    /// From this side's view: RDMA READs this side may have outstanding against the peer
    /// (the peer's responder resources). A target caps its reads per queue pair at this.
    pub initiator_depth: u8,
    pub retry_count: u8,
    pub rnr_retry_count: u8,
    pub srq: bool,
    pub qp_num: u32,
}

/// Connection parameters for connect and accept (`rdma_conn_param`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnParam<'a> {
    /// NVMe/RDMA request or accept record ([`super::nvme`]).
    pub private_data: &'a [u8],
    /// RDMA READs this side accepts as responder (the target: 0, it never is read from).
    pub responder_resources: u8,
    /// RDMA READs this side issues at once (the target: up to the device's
    /// `max_qp_init_rd_atom` and the host's responder resources).
    pub initiator_depth: u8,
    /// Transport retries (active side; 7 is the most).
    pub retry_count: u8,
    /// Receiver-not-ready retries; NVMe/RDMA 1.0 §3.1 asks the host for 7 (infinite).
    pub rnr_retry_count: u8,
}

impl ConnParam<'_> {
    fn raw(&self) -> Result<sys::rdma_conn_param, Error> {
        let len = u8::try_from(self.private_data.len())
            .map_err(|_| Error::new("RDMA CM private data longer than 255 bytes", libc::EINVAL))?;
        Ok(sys::rdma_conn_param {
            private_data: if len == 0 { std::ptr::null() } else { self.private_data.as_ptr().cast() },
            private_data_len: len,
            responder_resources: self.responder_resources,
            initiator_depth: self.initiator_depth,
            flow_control: 1,
            retry_count: self.retry_count.min(7),
            rnr_retry_count: self.rnr_retry_count.min(7),
            srq: 0,
            qp_num: 0,
        })
    }
}

/// The queue pair an id carries: its CQs, PD and SRQ stay alive until it is destroyed.
pub struct QpConfig {
    pub send_cq: Arc<Cq>,
    pub recv_cq: Arc<Cq>,
    /// Receives come from this shared queue instead of the queue pair's own.
    pub srq: Option<Arc<Srq>>,
    pub max_send_wr: u32,
    /// Ignored with an SRQ.
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
}

struct QueuePair {
    qp_num: u32,
    _pd: Arc<Pd>,
    _send_cq: Arc<Cq>,
    _recv_cq: Arc<Cq>,
    _srq: Option<Arc<Srq>>,
}

/// An RDMA CM id: a listener, or one connection with its RC queue pair. Dropping it
/// destroys the queue pair first, then the id; its CQs, PD and SRQ are released after.
pub struct CmId {
    // Field order is drop order after Drop::drop: the queue pair's parents, then the
    // channel (which must outlive the id).
    qp: Option<QueuePair>,
    raw: NonNull<sys::rdma_cm_id>,
    channel: Arc<EventChannel>,
}

// SAFETY: librdmacm and libibverbs calls on an id and its QP are thread-safe; the only
// fields changed after creation (the token, the queue pair) change through &mut self.
unsafe impl Send for CmId {}
// SAFETY: as above.
unsafe impl Sync for CmId {}

/// The IP address a sockaddr holds, None for another family.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // and aligned enough for.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

impl CmId {
    fn raw(&self) -> *mut sys::rdma_cm_id {
        self.raw.as_ptr()
    }

    fn check(&self, op: &'static str, ret: i32) -> Result<(), Error> {
        if ret != 0 {
            return Err(Error::last(op));
        }
        Ok(())
    }

    /// The number this id's events carry.
    pub fn token(&self) -> u64 {
        // SAFETY: live id; `context` is the token, never dereferenced.
        unsafe { (*self.raw()).context as usize as u64 }
    }

    /// Gives this id's events a new token (a connection taken from a listener).
    pub fn set_token(&mut self, token: u64) {
        // SAFETY: live id owned by self; librdmacm only hands `context` back.
        unsafe { (*self.raw()).context = token as usize as *mut _ };
    }

    /// Binds to a local address (port 0: any free port, see [`CmId::local_port`]).
    pub fn bind(&self, addr: SocketAddr) -> Result<(), Error> {
        let (mut storage, _) = sockaddr(&addr);
        // SAFETY: live id; `storage` holds a sockaddr of the right family for the call.
        let ret = unsafe { sys::rdma_bind_addr(self.raw(), (&mut storage as *mut libc::sockaddr_storage).cast()) };
        self.check("rdma_bind_addr", ret).map_err(|e| Error::new(format!("rdma_bind_addr {addr}"), e.errno))
    }

    /// Listens for connect requests (events on the channel).
    pub fn listen(&self, backlog: i32) -> Result<(), Error> {
        // SAFETY: live, bound id.
        self.check("rdma_listen", unsafe { sys::rdma_listen(self.raw(), backlog) })
    }

    /// The peer's IP address and port (a connection's id, once the connect request or
    /// address resolution filled its route); None before, or for a non-IP address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: live id; the route's destination is a union of socket addresses the CM
        // fills (zeroed until then), copied bytewise up to the smaller of the two sizes.
        unsafe {
            let dst = std::ptr::addr_of!((*self.raw()).route.addr.__bindgen_anon_2);
            let len = std::mem::size_of::<libc::sockaddr_storage>().min(std::mem::size_of_val(&*dst));
            std::ptr::copy_nonoverlapping(
                dst.cast::<u8>(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            );
        }
        socket_addr(&storage)
    }

    /// The local port, host order.
    pub fn local_port(&self) -> u16 {
        // SAFETY: live id.
        u16::from_be(unsafe { sys::rdma_get_src_port(self.raw()) })
    }

    /// Active side: resolves `dst` (and binds to `src`, if given) to a device; ends with
    /// an `AddrResolved` or `AddrError` event.
    pub fn resolve_addr(&self, src: Option<SocketAddr>, dst: SocketAddr, timeout: Duration) -> Result<(), Error> {
        let mut src = src.map(|a| sockaddr(&a).0);
        let (mut dst_raw, _) = sockaddr(&dst);
        let src_ptr = src.as_mut().map_or(std::ptr::null_mut(), |s| (s as *mut libc::sockaddr_storage).cast());
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: live id; the sockaddrs live across the call (librdmacm copies them).
        let ret = unsafe {
            sys::rdma_resolve_addr(self.raw(), src_ptr, (&mut dst_raw as *mut libc::sockaddr_storage).cast(), ms)
        };
        self.check("rdma_resolve_addr", ret).map_err(|e| Error::new(format!("rdma_resolve_addr {dst}"), e.errno))
    }

    /// Active side, after `AddrResolved`: ends with `RouteResolved` or `RouteError`.
    pub fn resolve_route(&self, timeout: Duration) -> Result<(), Error> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: live id.
        self.check("rdma_resolve_route", unsafe { sys::rdma_resolve_route(self.raw(), ms) })
    }

    /// The device this id is bound to (after a connect request, or address resolution),
    /// found in `devices`.
    pub fn context(&self, devices: &Arc<CmDevices>) -> Result<Context, Error> {
        // SAFETY: live id; `verbs` is null until the id is bound to a device.
        let verbs = unsafe { (*self.raw()).verbs };
        if verbs.is_null() {
            return Err(Error::new("RDMA CM id is not bound to a device yet", libc::EINVAL));
        }
        devices.context_of(verbs).ok_or_else(|| {
            Error::new("RDMA CM id's device is not in the device list (added after it was read)", libc::ENODEV)
        })
    }

    /// Creates the id's RC queue pair in `pd`, which must be on the id's own device.
    pub fn create_qp(&mut self, pd: &Arc<Pd>, config: QpConfig) -> Result<(), Error> {
        if self.qp.is_some() {
            return Err(Error::new("rdma_create_qp: the id has a queue pair already", libc::EEXIST));
        }
        // SAFETY: live id.
        let verbs = unsafe { (*self.raw()).verbs };
        let same = |cq: &Cq| cq.context_raw() == verbs;
        if verbs != pd.context().raw() || !same(&config.send_cq) || !same(&config.recv_cq) {
            return Err(Error::new(
                "rdma_create_qp: the PD and CQs must be on the RDMA CM id's device (CmId::context)",
                libc::EINVAL,
            ));
        }
        if config.srq.as_ref().is_some_and(|srq| !Arc::ptr_eq(srq.pd(), pd)) {
            return Err(Error::new("rdma_create_qp: the SRQ is in another protection domain", libc::EINVAL));
        }
        let mut attr = sys::ibv_qp_init_attr {
            send_cq: config.send_cq.raw(),
            recv_cq: config.recv_cq.raw(),
            srq: config.srq.as_ref().map_or(std::ptr::null_mut(), |s| s.raw()),
            qp_type: sys::ibv_qp_type::IBV_QPT_RC,
            ..Default::default()
        };
        attr.cap.max_send_wr = config.max_send_wr;
        attr.cap.max_recv_wr = if config.srq.is_some() { 0 } else { config.max_recv_wr };
        attr.cap.max_send_sge = config.max_send_sge;
        attr.cap.max_recv_sge = config.max_recv_sge;
        // SAFETY: live id, PD and CQs on its device (checked); QueuePair keeps them alive
        // until rdma_destroy_qp in Drop.
        let ret = unsafe { sys::rdma_create_qp(self.raw(), pd.raw(), &mut attr) };
        if ret != 0 {
            return Err(Error::last(format!(
                "rdma_create_qp ({} send, {} receive requests)",
                config.max_send_wr, config.max_recv_wr
            )));
        }
        // SAFETY: rdma_create_qp succeeded, so `qp` is set and live.
        let qp_num = unsafe { (*(*self.raw()).qp).qp_num };
        self.qp = Some(QueuePair {
            qp_num,
            _pd: pd.clone(),
            _send_cq: config.send_cq,
            _recv_cq: config.recv_cq,
            _srq: config.srq,
        });
        Ok(())
    }

    /// The queue pair's number, which completions on a shared CQ carry.
    pub fn qp_num(&self) -> Option<u32> {
        self.qp.as_ref().map(|qp| qp.qp_num)
    }

    /// Passive side: accepts a connect request (the queue pair made first).
    pub fn accept(&self, param: &ConnParam<'_>) -> Result<(), Error> {
        let mut raw = param.raw()?;
        // SAFETY: live id; `raw` and its private data live across the call.
        self.check("rdma_accept", unsafe { sys::rdma_accept(self.raw(), &mut raw) })
    }

    /// Passive side: refuses a connect request with `private_data` (an NVMe/RDMA reject
    /// record). Drop the id afterwards.
    pub fn reject(&self, private_data: &[u8]) -> Result<(), Error> {
        let len = u8::try_from(private_data.len())
            .map_err(|_| Error::new("RDMA CM private data longer than 255 bytes", libc::EINVAL))?;
        // SAFETY: live id; the bytes live across the call.
        let ret = unsafe { sys::rdma_reject(self.raw(), private_data.as_ptr().cast(), len) };
        self.check("rdma_reject", ret)
    }

    /// Active side, after `RouteResolved` and [`CmId::create_qp`]: ends with
    /// `Established` (the accept's private data in the event) or `Rejected`.
    pub fn connect(&self, param: &ConnParam<'_>) -> Result<(), Error> {
        let mut raw = param.raw()?;
        // SAFETY: live id; `raw` and its private data live across the call.
        self.check("rdma_connect", unsafe { sys::rdma_connect(self.raw(), &mut raw) })
    }

    /// Starts tearing the connection down: the queue pair goes to the error state, so
    /// outstanding requests complete as flushed, and both sides get `Disconnected`.
    pub fn disconnect(&self) -> Result<(), Error> {
        // SAFETY: live id.
        self.check("rdma_disconnect", unsafe { sys::rdma_disconnect(self.raw()) })
    }

    fn qp_raw(&self, op: &'static str) -> Result<*mut sys::ibv_qp, PostError> {
        if self.qp.is_none() {
            return Err(PostError { op, index: 0, errno: libc::ENOTCONN });
        }
        // SAFETY: live id with a queue pair (checked).
        Ok(unsafe { (*self.raw()).qp })
    }

    /// Posts `wrs` to the send queue in order; on failure, those before
    /// `PostError::index` were posted.
    pub fn post_send(&self, wrs: &mut [SendWr]) -> Result<(), PostError> {
        let qp = self.qp_raw("ibv_post_send")?;
        let Some(first) = link_send(wrs) else { return Ok(()) };
        let mut bad = std::ptr::null_mut();
        // SAFETY: live QP; `wrs` is linked and stays in place for the call (the provider
        // copies the requests). Memory is named by keys the NIC checks.
        let ret = unsafe { sys::peerless_ibv_post_send(qp, first, &mut bad) };
        post_result("ibv_post_send", ret, wrs, bad)
    }

    /// Posts receives to the queue pair's own receive queue (not with an SRQ).
    pub fn post_recv(&self, wrs: &mut [RecvWr]) -> Result<(), PostError> {
        let qp = self.qp_raw("ibv_post_recv")?;
        let Some(first) = link_recv(wrs) else { return Ok(()) };
        let mut bad = std::ptr::null_mut();
        // SAFETY: as in post_send.
        let ret = unsafe { sys::peerless_ibv_post_recv(qp, first, &mut bad) };
        post_result("ibv_post_recv", ret, wrs, bad)
    }

    /// The event channel the id reports to.
    pub fn channel(&self) -> &Arc<EventChannel> {
        &self.channel
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the queue pair (if any) goes before its id, and its CQs, PD and SRQ
        // are released after (fields drop after this); every event of the id was
        // acknowledged in get_event, so rdma_destroy_id does not wait.
        unsafe {
            if self.qp.is_some() {
                sys::rdma_destroy_qp(self.raw());
            }
            sys::rdma_destroy_id(self.raw());
        }
    }
}

impl std::fmt::Debug for CmId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmId").field("token", &self.token()).field("qp_num", &self.qp_num()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs_convert_back_to_socket_addresses() {
        for addr in ["192.0.2.7:4420", "[2001:db8::5]:4421", "0.0.0.0:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(socket_addr(&sockaddr(&addr).0), Some(addr));
        }
        // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
        let unspecified: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(socket_addr(&unspecified), None);
    }

    #[test]
    fn socket_addresses_convert_to_network_order_sockaddrs() {
        let (storage, len) = sockaddr(&"192.0.2.7:4420".parse().unwrap());
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in>());
        // SAFETY: written as a sockaddr_in above.
        let sin: libc::sockaddr_in = unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
        assert_eq!(sin.sin_family as i32, libc::AF_INET);
        assert_eq!(u16::from_be(sin.sin_port), 4420);
        assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [192, 0, 2, 7]);

        let (storage, len) = sockaddr(&"[fe80::1%3]:4421".parse().unwrap());
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in6>());
        // SAFETY: written as a sockaddr_in6 above.
        let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
        assert_eq!(sin6.sin6_family as i32, libc::AF_INET6);
        assert_eq!(u16::from_be(sin6.sin6_port), 4421);
        assert_eq!(sin6.sin6_scope_id, 3);
        assert_eq!(sin6.sin6_addr.s6_addr[0..2], [0xfe, 0x80]);
        assert_eq!(sin6.sin6_addr.s6_addr[15], 1);
    }

    #[test]
    fn event_kinds_map_and_the_ending_ones_are_named() {
        use sys::rdma_cm_event_type as t;
        assert_eq!(CmEventKind::from_raw(t::RDMA_CM_EVENT_CONNECT_REQUEST), CmEventKind::ConnectRequest);
        assert_eq!(CmEventKind::from_raw(t::RDMA_CM_EVENT_TIMEWAIT_EXIT), CmEventKind::TimewaitExit);
        assert_eq!(CmEventKind::from_raw(sys::rdma_cm_event_type(99)), CmEventKind::Other(99));
        for kind in
            [CmEventKind::Disconnected, CmEventKind::DeviceRemoval, CmEventKind::TimewaitExit, CmEventKind::Rejected]
        {
            assert!(kind.ends_connection(), "{kind:?}");
        }
        for kind in [CmEventKind::ConnectRequest, CmEventKind::Established, CmEventKind::AddrResolved] {
            assert!(!kind.ends_connection(), "{kind:?}");
        }
    }

    #[test]
    fn connection_parameters_carry_private_data_and_refuse_too_much() {
        let record = super::super::nvme::CmAccept { crqsize: 64 }.encode();
        let param = ConnParam { private_data: &record, initiator_depth: 16, rnr_retry_count: 9, ..Default::default() };
        let raw = param.raw().expect("32 bytes fit");
        assert_eq!(raw.private_data_len, 32);
        assert_eq!(raw.private_data, record.as_ptr().cast());
        assert_eq!((raw.initiator_depth, raw.rnr_retry_count), (16, 7), "retry counts are 3-bit");
        assert!(ConnParam::default().raw().expect("no data").private_data.is_null());
        let long = [0u8; 256];
        assert_eq!(ConnParam { private_data: &long, ..Default::default() }.raw().unwrap_err().errno, libc::EINVAL);
    }
}
