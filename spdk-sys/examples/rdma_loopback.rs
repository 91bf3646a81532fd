//! RDMA over one machine's own device, through spdk-sys's safe layer: a listener takes an
//! RDMA CM connection from a second thread with NVMe/RDMA private data, the client SENDs
//! the address and key of a registered buffer (as a keyed SGL would), the server RDMA
//! WRITEs one half of it and RDMA READs the other, both sides check every byte, and the
//! server SENDs a response. Needs an RDMA device (soft-RoCE: `modprobe rdma_rxe; rdma link
//! add rxe0 type rxe netdev eth0`) and an address on its network interface.
//!
//! cargo run -p spdk-sys --features rdma --example rdma_loopback -- --addr 10.0.2.15

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spdk_sys::rdma::nvme::{CmAccept, CmReject, CmRequest, RejectStatus};
use spdk_sys::rdma::{
    self, Access, CmDevices, CmEvent, CmEventKind, CmId, Completion, ConnParam, Cq, DmaBuffer, EventChannel, Mr, Pd,
    QpConfig, RecvWr, RemoteKey, SendWr, Srq, WcOpcode,
};

const USAGE: &str = "\
Usage: rdma_loopback --addr IP [--port N] [--size BYTES] [--no-srq] [--reject | --bad-rkey]

Listens with RDMA CM on IP:N, connects to it from a second thread, exchanges a SEND each
way, and has the listening side RDMA WRITE and RDMA READ BYTES of the connecting side's
registered buffer, checking every byte. Prints each step; exits non-zero on any failure.

  --addr IP      an address of the RDMA device's network interface (required)
  --port N       the listening port (default 0: any free port)
  --size BYTES   bytes per RDMA WRITE and READ (default 65536, at most 1 GiB)
  --no-srq       the listening side's receives on the queue pair, not a shared receive queue
  --reject       the listening side refuses the connection instead (NVMe/RDMA status
                 \"no resources\" in the reject's private data), and the client checks that
  --bad-rkey     the listening side RDMA WRITEs with a wrong remote key: the write must
                 fail, the SEND behind it be flushed, and both sides see the disconnect
  -h, --help     this text";

const TIMEOUT: Duration = Duration::from_secs(10);
/// A message: remote address (8), rkey (4), length (4), little endian.
const MSG_LEN: u32 = 16;
/// Offsets in each side's buffer: receive area, send area, then the data.
const RECV_AT: usize = 0;
const SEND_AT: usize = 32;
const DATA_AT: usize = 64;
const QUEUE: u32 = 16;

struct Options {
    addr: IpAddr,
    port: u16,
    size: usize,
    srq: bool,
    reject: bool,
    bad_rkey: bool,
}

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut addr = None;
    let mut options =
        Options { addr: IpAddr::from([0, 0, 0, 0]), port: 0, size: 65536, srq: true, reject: false, bad_rkey: false };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => addr = Some(value("--addr")?.parse().map_err(|e| format!("--addr: {e}"))?),
            "--port" => options.port = value("--port")?.parse().map_err(|e| format!("--port: {e}"))?,
            "--size" => options.size = value("--size")?.parse().map_err(|e| format!("--size: {e}"))?,
            "--no-srq" => options.srq = false,
            "--reject" => options.reject = true,
            "--bad-rkey" => options.bad_rkey = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if options.reject && options.bad_rkey {
        return Err("--reject and --bad-rkey exclude each other".into());
    }
    options.addr = addr.ok_or("--addr is required (an address of the RDMA device's interface)")?;
    if options.size == 0 || options.size > 1 << 30 {
        return Err(format!("--size {} is not within 1 byte to 1 GiB", options.size));
    }
    Ok(Some(options))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("rdma_loopback: {err}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rdma_loopback: {err}");
            ExitCode::FAILURE
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

fn encode_msg(addr: u64, rkey: u32, len: u32) -> [u8; MSG_LEN as usize] {
    let mut out = [0u8; MSG_LEN as usize];
    out[..8].copy_from_slice(&addr.to_le_bytes());
    out[8..12].copy_from_slice(&rkey.to_le_bytes());
    out[12..].copy_from_slice(&len.to_le_bytes());
    out
}

fn decode_msg(bytes: &[u8]) -> (u64, u32, u32) {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    (u64_at(0), u32_at(8), u32_at(12))
}

fn expect_event(channel: &Arc<EventChannel>, want: CmEventKind, who: &str) -> Result<CmEvent, String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{who}: no {want:?} event within {TIMEOUT:?}"));
        }
        match channel.wait_event(left).map_err(|e| format!("{who}: {e}"))? {
            Some(event) if event.kind == want => return Ok(event),
            Some(event) => {
                return Err(format!("{who}: expected {want:?}, got {:?} (status {})", event.kind, event.status))
            }
            None => continue,
        }
    }
}

/// Waits for at least `count` completions on `cq`, whatever their status, arming its
/// channel between polls as a reactor in interrupt mode would.
fn poll_completions(cq: &Cq, count: usize, who: &str) -> Result<Vec<Completion>, String> {
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    let mut batch = [Completion::default(); 8];
    let mut armed = false;
    while out.len() < count {
        let n = cq.poll(&mut batch).map_err(|e| format!("{who}: {e}"))?;
        out.extend_from_slice(&batch[..n]);
        if n > 0 {
            armed = false;
            continue;
        }
        if Instant::now() > deadline {
            return Err(format!("{who}: {} of {count} completions within {TIMEOUT:?}", out.len()));
        }
        if armed {
            cq.wait_event(Duration::from_millis(100)).map_err(|e| format!("{who}: {e}"))?;
            armed = false;
        } else {
            // Poll once more after arming (the loop does): a completion that landed
            // before arming raises no event.
            cq.arm().map_err(|e| format!("{who}: {e}"))?;
            armed = true;
        }
    }
    Ok(out)
}

/// As [`poll_completions`], and any failed completion is an error naming its status.
fn completions(cq: &Cq, count: usize, who: &str) -> Result<Vec<Completion>, String> {
    let got = poll_completions(cq, count, who)?;
    if let Some(wc) = got.iter().find(|wc| !wc.is_success()) {
        return Err(format!("{who}: work request {} failed: {} ({wc:?})", wc.wr_id(), wc.status_str()));
    }
    Ok(got)
}

struct Side {
    pd: Arc<Pd>,
    cq: Arc<Cq>,
    buffer: Arc<DmaBuffer>,
    mr: Mr,
}

fn side(id: &CmId, devices: &Arc<CmDevices>, size: usize, access: Access, who: &str) -> Result<Side, String> {
    let context = id.context(devices).map_err(|e| format!("{who}: {e}"))?;
    let pd = Pd::new(&context).map_err(|e| format!("{who}: {e}"))?;
    let cq = Cq::new(&context, 4 * QUEUE, true).map_err(|e| format!("{who}: {e}"))?;
    let buffer = DmaBuffer::new(DATA_AT + 2 * size).map_err(|e| format!("{who}: {e}"))?;
    let mr = pd.register(buffer.clone(), access).map_err(|e| format!("{who}: {e}"))?;
    Ok(Side { pd, cq, buffer, mr })
}

fn run(options: &Options) -> Result<(), String> {
    let found = rdma::devices().map_err(|e| e.to_string())?;
    if found.is_empty() {
        return Err("no RDMA device on this machine (soft-RoCE: modprobe rdma_rxe; \
                    rdma link add rxe0 type rxe netdev IFACE)"
            .into());
    }
    let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
    println!("devices: {}", names.join(", "));
    let devices = CmDevices::open().map_err(|e| e.to_string())?;
    let channel = EventChannel::new().map_err(|e| e.to_string())?;
    let listener = channel.create_id(0).map_err(|e| e.to_string())?;
    listener.bind(SocketAddr::new(options.addr, options.port)).map_err(|e| e.to_string())?;
    listener.listen(8).map_err(|e| e.to_string())?;
    let target = SocketAddr::new(options.addr, listener.local_port());
    println!("server: listening on {target}");

    let size = options.size;
    let client_devices = devices.clone();
    let mode = if options.reject {
        Mode::Rejected
    } else if options.bad_rkey {
        Mode::BadRkey
    } else {
        Mode::Transfer
    };
    let client = std::thread::spawn(move || client(target, &client_devices, size, mode));
    let served = serve(&channel, &devices, options);
    let connected = client.join().map_err(|_| "client thread panicked".to_string())?;
    served?;
    connected?;
    match mode {
        Mode::Rejected => println!("ok: RDMA CM connect refused with NVMe/RDMA reject private data, as asked"),
        Mode::BadRkey => println!("ok: a wrong remote key failed its RDMA WRITE, flushed the queue, ended the connection"),
        Mode::Transfer => println!(
            "ok: RDMA CM connect with NVMe/RDMA private data, SEND both ways, RDMA WRITE and RDMA READ of {size} bytes verified"
        ),
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Transfer,
    Rejected,
    BadRkey,
}

fn serve(channel: &Arc<EventChannel>, devices: &Arc<CmDevices>, options: &Options) -> Result<(), String> {
    let who = "server";
    let request = expect_event(channel, CmEventKind::ConnectRequest, who)?;
    let mut id = request.new_id.ok_or("connect request without an id")?;
    id.set_token(2);
    let cm = match CmRequest::decode(request.private_data.as_slice()) {
        Ok(cm) if cm.qid == 0 && cm.cntlid == 0 => cm,
        Ok(_) => return reject(&id, RejectStatus::InvalidCntlid),
        Err(status) => return reject(&id, status),
    };
    if options.reject {
        id.reject(&CmReject { status: RejectStatus::NoResources }.encode()).map_err(|e| format!("{who}: {e}"))?;
        println!("server: rejected the connection: {}", RejectStatus::NoResources);
        return Ok(());
    }
    println!(
        "server: connect request: qid {} hrqsize {} hsqsize {} cntlid {}; host allows {} RDMA READs",
        cm.qid, cm.hrqsize, cm.hsqsize, cm.cntlid, request.initiator_depth
    );
    let server = side(&id, devices, options.size, Access::LOCAL_WRITE, who)?;
    let attr = server.pd.context().query_device().map_err(|e| e.to_string())?;
    let srq = if options.srq { Some(Srq::new(&server.pd, QUEUE, 1).map_err(|e| format!("{who}: {e}"))?) } else { None };
    let config = QpConfig {
        send_cq: server.cq.clone(),
        recv_cq: server.cq.clone(),
        srq: srq.clone(),
        max_send_wr: QUEUE,
        max_recv_wr: QUEUE,
        max_send_sge: 1,
        max_recv_sge: 1,
    };
    id.create_qp(&server.pd, config).map_err(|e| format!("{who}: {e}"))?;
    let mut recv =
        [RecvWr::new(100, &[server.mr.sge(RECV_AT, MSG_LEN).map_err(|e| e.to_string())?])
            .map_err(|e| e.to_string())?];
    match &srq {
        Some(srq) => srq.post_recv(&mut recv).map_err(|e| e.to_string())?,
        None => id.post_recv(&mut recv).map_err(|e| e.to_string())?,
    }
    let reads = request.initiator_depth.min(attr.max_qp_init_rd_atom.clamp(0, 255) as u8);
    if reads == 0 {
        return reject(&id, RejectStatus::InvalidIrd);
    }
    let accept = CmAccept { crqsize: QUEUE as u16 }.encode();
    let param = ConnParam { private_data: &accept, initiator_depth: reads, ..Default::default() };
    id.accept(&param).map_err(|e| format!("{who}: {e}"))?;
    expect_event(channel, CmEventKind::Established, who)?;
    println!(
        "server: established on {}, queue pair {:#x}, receives from {}",
        server.pd.context().name(),
        id.qp_num().unwrap_or(0),
        if srq.is_some() { "a shared receive queue" } else { "the queue pair" }
    );

    println!("server: dma-buf registration on this device: {:?}", server.pd.dmabuf_support());
    let got = completions(&server.cq, 1, who)?;
    let wc = got[0];
    if wc.opcode() != Some(WcOpcode::Recv) || wc.byte_len() != MSG_LEN || Some(wc.qp_num()) != id.qp_num() {
        return Err(format!("server: unexpected receive {wc:?}"));
    }
    let mut msg = [0u8; MSG_LEN as usize];
    server.buffer.read(RECV_AT, &mut msg).map_err(|e| e.to_string())?;
    let (addr, rkey, len) = decode_msg(&msg);
    println!(
        "server: SEND received ({} bytes): client buffer at {addr:#x}, rkey {rkey:#x}, {len} bytes",
        wc.byte_len()
    );
    let size = options.size;
    if len as usize != 2 * size {
        return Err(format!("server: client offers {len} bytes, expected {}", 2 * size));
    }
    if options.bad_rkey {
        return write_with_a_wrong_key(channel, &id, &server, RemoteKey { addr, rkey: rkey ^ 0xff00 });
    }

    let written = pattern(size, 0xa5);
    server.buffer.write(DATA_AT, &written).map_err(|e| e.to_string())?;
    let sge_write = server.mr.sge(DATA_AT, size as u32).map_err(|e| e.to_string())?;
    let sge_read = server.mr.sge(DATA_AT + size, size as u32).map_err(|e| e.to_string())?;
    let mut wrs = [
        SendWr::rdma_write(1, &[sge_write], RemoteKey { addr, rkey }).map_err(|e| e.to_string())?.signaled(true),
        SendWr::rdma_read(2, &[sge_read], RemoteKey { addr: addr + size as u64, rkey })
            .map_err(|e| e.to_string())?
            .signaled(true),
    ];
    id.post_send(&mut wrs).map_err(|e| e.to_string())?;
    let done = completions(&server.cq, 2, who)?;
    for wc in &done {
        let what = if wc.opcode() == Some(WcOpcode::RdmaWrite) { "RDMA WRITE" } else { "RDMA READ" };
        println!("server: {what} of {size} bytes completed (wr_id {})", wc.wr_id());
    }
    let mut read_back = vec![0u8; size];
    server.buffer.read(DATA_AT + size, &mut read_back).map_err(|e| e.to_string())?;
    if read_back != pattern(size, 0x3c) {
        let at = read_back.iter().zip(pattern(size, 0x3c)).position(|(a, b)| *a != b).unwrap_or(0);
        return Err(format!("server: RDMA READ data differs from the client's at byte {at}"));
    }
    println!("server: RDMA READ data matches the client's {size} bytes");

    server.buffer.write(SEND_AT, &encode_msg(0, 0, 0)).map_err(|e| e.to_string())?;
    let sge = server.mr.sge(SEND_AT, MSG_LEN).map_err(|e| e.to_string())?;
    let mut response = [SendWr::send(3, &[sge]).map_err(|e| e.to_string())?.signaled(true)];
    id.post_send(&mut response).map_err(|e| e.to_string())?;
    completions(&server.cq, 1, who)?;
    println!("server: response SEND completed");
    expect_event(channel, CmEventKind::Disconnected, who)?;
    println!("server: client disconnected");
    Ok(())
}

/// A keyed SGL with a key the host never issued: the NIC fails the RDMA WRITE (remote
/// access error), the queue pair goes to the error state, and the SEND queued behind it
/// completes as flushed; the connection, and only it, is then torn down.
fn write_with_a_wrong_key(
    channel: &Arc<EventChannel>,
    id: &CmId,
    server: &Side,
    remote: RemoteKey,
) -> Result<(), String> {
    let who = "server";
    let data = server.mr.sge(DATA_AT, 4096.min(server.mr.len() - DATA_AT) as u32).map_err(|e| e.to_string())?;
    let response = server.mr.sge(SEND_AT, MSG_LEN).map_err(|e| e.to_string())?;
    let mut wrs = [
        SendWr::rdma_write(7, &[data], remote).map_err(|e| e.to_string())?.signaled(true),
        SendWr::send(8, &[response]).map_err(|e| e.to_string())?.signaled(true),
    ];
    id.post_send(&mut wrs).map_err(|e| e.to_string())?;
    let got = poll_completions(&server.cq, 2, who)?;
    let write = got.iter().find(|wc| wc.wr_id() == 7).ok_or("server: no completion for the RDMA WRITE")?;
    if write.is_success() || write.is_flush() {
        return Err(format!("server: RDMA WRITE with rkey {:#x} did not fail: {write:?}", remote.rkey));
    }
    println!(
        "server: RDMA WRITE with wrong rkey {:#x} failed: {} ({:?})",
        remote.rkey,
        write.status_str(),
        write.status()
    );
    let send = got.iter().find(|wc| wc.wr_id() == 8).ok_or("server: no completion for the SEND")?;
    if !send.is_flush() || send.opcode().is_some() {
        return Err(format!("server: the SEND behind the failed write was not flushed: {send:?}"));
    }
    println!("server: the SEND behind it was flushed ({})", send.status_str());
    id.disconnect().map_err(|e| format!("{who}: {e}"))?;
    expect_event(channel, CmEventKind::Disconnected, who)?;
    println!("server: disconnected");
    print_async_events(&server.pd, who)
}

/// Prints the device's asynchronous events (a queue pair's error shows here too).
fn print_async_events(pd: &Pd, who: &str) -> Result<(), String> {
    while let Some(event) = pd.context().get_async_event().map_err(|e| format!("{who}: {e}"))? {
        println!("{who}: async event {:?} on {:?}", event.kind, event.element);
    }
    Ok(())
}

fn reject(id: &CmId, status: RejectStatus) -> Result<(), String> {
    id.reject(&CmReject { status }.encode()).map_err(|e| e.to_string())?;
    Err(format!("server: rejected the connection: {status}"))
}

fn client(target: SocketAddr, devices: &Arc<CmDevices>, size: usize, mode: Mode) -> Result<(), String> {
    let who = "client";
    let channel = EventChannel::new().map_err(|e| format!("{who}: {e}"))?;
    let mut id = channel.create_id(1).map_err(|e| format!("{who}: {e}"))?;
    id.resolve_addr(None, target, TIMEOUT).map_err(|e| format!("{who}: {e}"))?;
    expect_event(&channel, CmEventKind::AddrResolved, who)?;
    id.resolve_route(TIMEOUT).map_err(|e| format!("{who}: {e}"))?;
    expect_event(&channel, CmEventKind::RouteResolved, who)?;
    let access = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
    let host = side(&id, devices, size, access, who)?;
    host.buffer.write(DATA_AT + size, &pattern(size, 0x3c)).map_err(|e| e.to_string())?;
    let config = QpConfig {
        send_cq: host.cq.clone(),
        recv_cq: host.cq.clone(),
        srq: None,
        max_send_wr: QUEUE,
        max_recv_wr: QUEUE,
        max_send_sge: 1,
        max_recv_sge: 1,
    };
    id.create_qp(&host.pd, config).map_err(|e| format!("{who}: {e}"))?;
    let mut recv =
        [RecvWr::new(200, &[host.mr.sge(RECV_AT, MSG_LEN).map_err(|e| e.to_string())?]).map_err(|e| e.to_string())?];
    id.post_recv(&mut recv).map_err(|e| e.to_string())?;

    let attr = host.pd.context().query_device().map_err(|e| e.to_string())?;
    let request = CmRequest { qid: 0, hrqsize: QUEUE as u16, hsqsize: QUEUE as u16 - 1, cntlid: 0 }.encode();
    let param = ConnParam {
        private_data: &request,
        responder_resources: attr.max_qp_rd_atom.clamp(1, 255) as u8,
        initiator_depth: 0,
        retry_count: 7,
        rnr_retry_count: 7,
    };
    id.connect(&param).map_err(|e| format!("{who}: {e}"))?;
    if mode == Mode::Rejected {
        let event = expect_event(&channel, CmEventKind::Rejected, who)?;
        let record = CmReject::decode(event.private_data.as_slice())
            .ok_or_else(|| format!("client: reject without an NVMe/RDMA record: {:?}", event.private_data))?;
        if record.status != RejectStatus::NoResources {
            return Err(format!("client: rejected with {}, expected no resources", record.status));
        }
        println!("client: rejected (CM status {}): {}", event.status, record.status);
        return Ok(());
    }
    let established = expect_event(&channel, CmEventKind::Established, who)?;
    let accept = CmAccept::decode(established.private_data.as_slice())
        .map_err(|status| format!("client: accept private data: {status}"))?;
    println!("client: established; controller receive queue size {}", accept.crqsize);

    let msg = encode_msg(host.mr.addr() + DATA_AT as u64, host.mr.rkey(), 2 * size as u32);
    host.buffer.write(SEND_AT, &msg).map_err(|e| e.to_string())?;
    let sge = host.mr.sge(SEND_AT, MSG_LEN).map_err(|e| e.to_string())?;
    let mut send = [SendWr::send(10, &[sge]).map_err(|e| e.to_string())?.signaled(true)];
    id.post_send(&mut send).map_err(|e| e.to_string())?;
    if mode == Mode::BadRkey {
        let sent = poll_completions(&host.cq, 1, who)?;
        if !sent.iter().any(|wc| wc.wr_id() == 10 && wc.is_success()) {
            return Err(format!("client: SEND did not complete: {sent:?}"));
        }
        expect_event(&channel, CmEventKind::Disconnected, who)?;
        let mut got: Vec<Completion> = sent.into_iter().filter(|wc| wc.wr_id() != 10).collect();
        if got.is_empty() {
            got = poll_completions(&host.cq, 1, who)?;
        }
        let recv = got.iter().find(|wc| wc.wr_id() == 200).ok_or("client: the posted receive never completed")?;
        if !recv.is_flush() {
            return Err(format!("client: the posted receive should have been flushed: {recv:?}"));
        }
        println!("client: the server disconnected; the posted receive was flushed");
        return print_async_events(&host.pd, who);
    }
    let got = completions(&host.cq, 2, who)?;
    if !got.iter().any(|wc| wc.opcode() == Some(WcOpcode::Recv) && wc.byte_len() == MSG_LEN) {
        return Err(format!("client: no response among {got:?}"));
    }
    println!("client: SEND completed and response received");
    let mut landed = vec![0u8; size];
    host.buffer.read(DATA_AT, &mut landed).map_err(|e| e.to_string())?;
    if landed != pattern(size, 0xa5) {
        let at = landed.iter().zip(pattern(size, 0xa5)).position(|(a, b)| *a != b).unwrap_or(0);
        return Err(format!("client: RDMA WRITE data differs at byte {at}"));
    }
    println!("client: the server's RDMA WRITE placed {size} bytes, all match");
    id.disconnect().map_err(|e| format!("{who}: {e}"))?;
    expect_event(&channel, CmEventKind::Disconnected, who)?;
    println!("client: disconnected");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse_and_refuse_what_they_cannot_use() {
        let options = parse(&args(&["--addr", "10.0.2.15", "--port", "4420", "--size", "4096", "--no-srq"]))
            .expect("valid")
            .expect("not help");
        assert_eq!(
            (options.addr, options.port, options.size, options.srq),
            ("10.0.2.15".parse().unwrap(), 4420, 4096, false)
        );
        assert!(parse(&args(&["--help"])).expect("help").is_none());
        assert!(parse(&args(&["--addr", "::1", "--reject"])).expect("valid").expect("not help").reject);
        assert!(parse(&args(&["--addr", "::1", "--bad-rkey"])).expect("valid").expect("not help").bad_rkey);
        assert!(parse(&args(&["--addr", "::1", "--bad-rkey", "--reject"])).is_err());
        for bad in
            [&["--port", "1"][..], &["--addr", "x"], &["--addr", "::1", "--size", "0"], &["--addr", "::1", "--bogus"]]
        {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_round_trip() {
        assert_eq!(decode_msg(&encode_msg(0x1122_3344_5566_7788, 0xabcd, 8192)), (0x1122_3344_5566_7788, 0xabcd, 8192));
        assert_ne!(pattern(300, 0xa5), pattern(300, 0x3c));
    }
}
