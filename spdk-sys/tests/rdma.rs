//! rdma-core on whatever machine runs the tests: with no RDMA device (CI, a laptop) the
//! device lists are empty and opening or connecting fails with a clear error, never a
//! panic; with one (soft-RoCE in the QEMU guest) the same calls succeed.
#![cfg(feature = "rdma")]

use std::path::Path;

use spdk_sys::rdma::{self, Access, CmDevices, Completion, Context, Cq, DmaBuffer, EventChannel, Pd, RecvWr, Srq};

#[test]
fn device_lists_agree_and_a_missing_device_is_named() {
    let verbs = rdma::devices().expect("listing devices never fails for lack of them");
    let cm = CmDevices::open().expect("librdmacm's list never fails for lack of devices");
    assert_eq!(cm.len(), verbs.len(), "both libraries see the same devices: {verbs:?}");
    assert_eq!(cm.contexts().len(), verbs.len());
    if !Path::new("/sys/class/infiniband").exists() {
        assert!(verbs.is_empty(), "no /sys/class/infiniband, yet devices: {verbs:?}");
    }
    let err = Context::open("peerless-no-such-rdma-device").err().expect("no such device");
    assert_eq!(err.errno, libc::ENODEV);
    let text = err.to_string();
    assert!(text.contains("peerless-no-such-rdma-device") && text.contains("no such device"), "{text}");
    if verbs.is_empty() {
        assert!(text.contains("rdma_rxe"), "tells how to get a soft-RoCE device: {text}");
    }
    for info in &verbs {
        let context = Context::open(&info.name).expect("a listed device opens");
        assert_eq!(context.name(), info.name);
        let attr = context.query_device().expect("query_device");
        assert!(attr.max_qp_wr > 0 && attr.max_cqe > 0 && attr.phys_port_cnt >= 1, "{attr:?}");
        let port = context.query_port(1).expect("port 1");
        assert!(port.active_mtu >= 256, "{port:?}");
        objects_on_a_device(&context);
    }
}

#[test]
fn the_cm_event_channel_opens_exactly_when_the_kernel_offers_rdma_cm() {
    let node = Path::new("/dev/infiniband/rdma_cm");
    match EventChannel::new() {
        Ok(channel) => {
            assert!(node.exists(), "a channel without {}", node.display());
            assert!(channel.get_event().expect("non-blocking read").is_none(), "no event on a new channel");
            let id = channel.create_id(42).expect("an id on a new channel");
            assert_eq!(id.token(), 42);
        }
        Err(err) => {
            assert!(!node.exists(), "{} exists, yet: {err}", node.display());
            assert_eq!(err.errno, libc::ENODEV, "{err}");
            assert!(err.to_string().contains("rdma_cm"), "names what is missing: {err}");
        }
    }
}

/// With a device: a PD, a registered buffer (bounds of its entries), a CQ with its channel
/// (armed, nothing pending), an SRQ taking receives; dropped in any order the types allow.
fn objects_on_a_device(context: &Context) {
    let pd = Pd::new(context).expect("protection domain");
    eprintln!("{}: dma-buf registration {:?}", context.name(), pd.dmabuf_support());
    for len in [1usize, 4096, 1 << 20] {
        let buffer = DmaBuffer::new(len).expect("buffer");
        let mr = pd.register(buffer, Access::LOCAL_WRITE | Access::REMOTE_READ).expect("register");
        assert_eq!(mr.len(), len);
        assert_eq!(mr.sge(0, len as u32).expect("whole region").lkey, mr.lkey());
        assert!(mr.sge(1, len as u32).is_err() && mr.sge(len, 1).is_err(), "outside the region");
    }
    let cq = Cq::new(context, 64, true).expect("CQ with a channel");
    assert!(cq.capacity() >= 64 && cq.event_fd().is_some());
    cq.arm().expect("arm");
    let mut out = [Completion::default(); 4];
    assert_eq!(cq.poll(&mut out).expect("poll"), 0);
    assert_eq!(cq.drain_events().expect("drain"), 0);
    let polled_only = Cq::new(context, 8, false).expect("CQ without a channel");
    assert!(polled_only.arm().is_err() && polled_only.event_fd().is_none());
    let srq = Srq::new(&pd, 32, 1).expect("SRQ");
    let buffer = DmaBuffer::new(32 * 64).expect("buffer");
    let mr = pd.register(buffer, Access::LOCAL_WRITE).expect("register");
    let mut recvs: Vec<RecvWr> =
        (0..32).map(|i| RecvWr::new(i, &[mr.sge(i as usize * 64, 64).expect("entry")]).expect("wr")).collect();
    srq.post_recv(&mut recvs).expect("32 receives fit a 32-entry SRQ");
    while let Some(event) = context.get_async_event().expect("async events") {
        eprintln!("{}: async event {event:?}", context.name());
    }
    drop(pd);
    drop(srq);
    drop(mr);
}
