//! The floor an NVMe/TCP target is measured against: a loopback TCP server that moves the
//! bytes an NVMe/TCP target moves, in the same PDU sizes, with the best batching a server
//! can do and no NVMe logic (no queue state, no namespace, no bdev).
//!
//! Per I/O the wire carries what NVMe/TCP 1.0 carries with C2HData SUCCESS (3.6.2.8):
//! - read: a 72-byte command capsule out; a 24-byte C2HData header and the data back;
//! - write of at most the in-capsule size (4 KiB, SPDK's and Peerless's default): the
//!   capsule with its data out; a 24-byte CapsuleResp back;
//! - larger write: the capsule out, a 24-byte R2T back, a 24-byte H2CData header and the
//!   data out, a CapsuleResp back.
//!
//! With `-H` each header carries a 4-byte CRC32C header digest and with `-I` each payload
//! a data digest, computed and checked on both sides with the same CRC32C code the target
//! uses. The server is one thread on core 0: epoll (polled with a zero timeout, as SPDK's
//! posix sock group does), every ready socket read until it has nothing more, every
//! answer of a poll sent with one writev per socket, read data sent from one buffer that
//! is never copied. The client is one thread on core 1 driving `-P` connections with `-q`
//! I/Os in flight in total, also read-everything and writev-batched, busy polling.
//!
//! Prints JSON: {"iops":..,"latency_us":{"avg":..}}.
//!
//! Usage: tcp_floor -w <read|write|randread|randwrite|rw|randrw> -o BYTES -q DEPTH -t SECONDS
//!        [-P CONNECTIONS] [-M READ_PERCENT] [-H] [-I] [--cores SERVER,CLIENT]
#![forbid(unsafe_code)]

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use peerless_core::accel::crc32c_bytes;

const CAPSULE_HLEN: usize = 72;
const DATA_HLEN: usize = 24;
const RESP_HLEN: usize = 24;
const DIGEST: usize = 4;
/// Writes up to this size travel in the capsule (in_capsule_data_size, 4 KiB by default).
const IN_CAPSULE_BYTES: usize = 4096;
/// writev takes at most IOV_MAX (1024) segments.
const MAX_IOV: usize = 1024;

// PDU types of NVMe/TCP 1.0, Figure 21; only their framing is used here.
const CAPSULE_CMD: u8 = 0x04;
const CAPSULE_RESP: u8 = 0x05;
const H2C_DATA: u8 = 0x06;
const C2H_DATA: u8 = 0x07;
const R2T: u8 = 0x09;
// The command kinds the client puts in the opcode byte of its capsule.
const OP_WRITE: u8 = 0x01;
const OP_READ: u8 = 0x02;

#[derive(Clone, Copy)]
struct Wire {
    header_digest: bool,
    data_digest: bool,
}

impl Wire {
    fn header(&self, hlen: usize) -> usize {
        hlen + if self.header_digest { DIGEST } else { 0 }
    }
    fn data(&self, len: usize) -> usize {
        len + if self.data_digest && len > 0 { DIGEST } else { 0 }
    }
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Appends a PDU header of `hlen` bytes (its common header filled in, the rest zero) and
/// its header digest when on; `plen` counts the data that follows.
fn put_header(out: &mut Vec<u8>, wire: Wire, pdu_type: u8, hlen: usize, data_len: usize, fields: &[(usize, u32)]) {
    let start = out.len();
    let header_bytes = wire.header(hlen);
    let plen = header_bytes + wire.data(data_len);
    out.resize(start + hlen, 0);
    let head = &mut out[start..];
    head[0] = pdu_type;
    head[2] = hlen as u8;
    head[3] = if data_len > 0 { header_bytes as u8 } else { 0 };
    head[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
    for &(at, value) in fields {
        head[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }
    if wire.header_digest {
        let digest = crc32c_bytes(&out[start..start + hlen], 0);
        out.extend_from_slice(&digest.to_le_bytes());
    }
}

/// Output queued for one socket: headers in an arena, payloads borrowed from the data
/// buffer, sent with as few writev calls as the socket allows.
#[derive(Default)]
struct Outbox {
    arena: Vec<u8>,
    /// (start, end) in the arena, or (usize::MAX, len) for the first `len` bytes of the
    /// shared data buffer.
    segments: Vec<(usize, usize)>,
    next: usize,
    /// Bytes of `segments[next]` already written.
    partial: usize,
}

const DATA_SEGMENT: usize = usize::MAX;

impl Outbox {
    fn mark(&mut self, start: usize) {
        let end = self.arena.len();
        match self.segments.last_mut() {
            Some((seg_start, seg_end)) if *seg_start != DATA_SEGMENT && *seg_end == start => *seg_end = end,
            _ => self.segments.push((start, end)),
        }
    }

    fn data(&mut self, len: usize) {
        self.segments.push((DATA_SEGMENT, len));
    }

    fn is_empty(&self) -> bool {
        self.next == self.segments.len()
    }

    /// Writes what the socket takes; false when the peer is gone.
    fn flush(&mut self, stream: &mut TcpStream, payload: &[u8]) -> bool {
        while !self.is_empty() {
            let mut iov = Vec::with_capacity(MAX_IOV.min(self.segments.len() - self.next));
            for (index, &(start, end)) in self.segments[self.next..].iter().take(MAX_IOV).enumerate() {
                let bytes = if start == DATA_SEGMENT { &payload[..end] } else { &self.arena[start..end] };
                iov.push(IoSlice::new(if index == 0 { &bytes[self.partial..] } else { bytes }));
            }
            let mut written = match stream.write_vectored(&iov) {
                Ok(0) => return false,
                Ok(written) => written,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return true,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            for slice in &iov {
                if written >= slice.len() {
                    written -= slice.len();
                    self.next += 1;
                    self.partial = 0;
                } else {
                    self.partial += written;
                    break;
                }
            }
        }
        self.arena.clear();
        self.segments.clear();
        self.next = 0;
        self.partial = 0;
        true
    }
}

/// Received bytes: everything the socket has, parsed PDU by PDU.
struct Inbox {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Inbox {
    fn new(bytes: usize) -> Inbox {
        Inbox { buf: vec![0; bytes], start: 0, end: 0 }
    }

    /// Reads until the socket has nothing more (or the buffer is full); false at EOF or
    /// on an error.
    fn fill(&mut self, stream: &mut TcpStream) -> bool {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < self.buf.len() {
            match stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return false,
                Ok(read) => self.end += read,
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// The next whole PDU, if one is in.
    fn next_pdu(&mut self) -> Option<(usize, usize)> {
        let available = self.end - self.start;
        if available < 8 {
            return None;
        }
        let plen = le32(&self.buf, self.start + 4) as usize;
        assert!(plen >= 8 && plen <= self.buf.len(), "a PDU of {plen} bytes");
        if available < plen {
            return None;
        }
        let at = self.start;
        self.start += plen;
        Some((at, plen))
    }
}

fn check_header(wire: Wire, pdu: &[u8]) {
    if wire.header_digest {
        let hlen = usize::from(pdu[2]);
        assert_eq!(crc32c_bytes(&pdu[..hlen], 0), le32(pdu, hlen), "header digest");
    }
}

/// The data a PDU carries, its data digest checked.
fn check_data(wire: Wire, pdu: &[u8]) -> usize {
    let pdo = usize::from(pdu[3]);
    if pdo == 0 {
        return 0;
    }
    let end = pdu.len() - if wire.data_digest { DIGEST } else { 0 };
    if wire.data_digest {
        assert_eq!(crc32c_bytes(&pdu[pdo..end], 0), le32(pdu, end), "data digest");
    }
    end - pdo
}

fn server(listener: TcpListener, connections: usize, wire: Wire, max_io: usize, stop: Arc<AtomicBool>) {
    let mut streams = Vec::new();
    for _ in 0..connections {
        let (stream, _) = listener.accept().expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_nonblocking(true).expect("nonblocking");
        streams.push(stream);
    }
    let epoll = Epoll::new(EpollCreateFlags::empty()).expect("epoll");
    for (index, stream) in streams.iter().enumerate() {
        epoll.add(stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, index as u64)).expect("epoll add");
    }
    // What a null namespace returns: one buffer, sent as it is.
    let payload = vec![0u8; max_io];
    let mut inboxes: Vec<Inbox> = (0..connections).map(|_| Inbox::new(2 * max_io + 64 * 1024)).collect();
    let mut outboxes: Vec<Outbox> = (0..connections).map(|_| Outbox::default()).collect();
    let mut events = vec![EpollEvent::empty(); connections];
    while !stop.load(Ordering::Relaxed) {
        let ready = epoll.wait(&mut events, EpollTimeout::ZERO).expect("epoll_wait");
        for event in &events[..ready] {
            let index = event.data() as usize;
            let (stream, inbox, outbox) = (&mut streams[index], &mut inboxes[index], &mut outboxes[index]);
            if !inbox.fill(stream) {
                return;
            }
            while let Some((at, plen)) = inbox.next_pdu() {
                let pdu = &inbox.buf[at..at + plen];
                check_header(wire, pdu);
                let data_len = check_data(wire, pdu);
                let start = outbox.arena.len();
                match pdu[0] {
                    CAPSULE_CMD if pdu[8] == OP_READ => {
                        let len = le32(pdu, 12) as usize;
                        put_header(
                            &mut outbox.arena,
                            wire,
                            C2H_DATA,
                            DATA_HLEN,
                            len,
                            &[(8, le32(pdu, 16)), (16, len as u32)],
                        );
                        outbox.mark(start);
                        // The data digest is computed for every send, as over fresh data.
                        outbox.data(len);
                        if wire.data_digest {
                            let at = outbox.arena.len();
                            outbox.arena.extend_from_slice(&crc32c_bytes(&payload[..len], 0).to_le_bytes());
                            outbox.mark(at);
                        }
                    }
                    CAPSULE_CMD if data_len == 0 && le32(pdu, 12) > 0 => {
                        put_header(&mut outbox.arena, wire, R2T, DATA_HLEN, 0, &[(8, le32(pdu, 16))]);
                        outbox.mark(start);
                    }
                    CAPSULE_CMD | H2C_DATA => {
                        // A capsule carries its command id at byte 16, H2CData at byte 8.
                        let cid = if pdu[0] == H2C_DATA { le32(pdu, 8) } else { le32(pdu, 16) };
                        put_header(&mut outbox.arena, wire, CAPSULE_RESP, RESP_HLEN, 0, &[(8, cid)]);
                        outbox.mark(start);
                    }
                    other => panic!("unexpected PDU type {other:#x}"),
                }
            }
        }
        for (stream, outbox) in streams.iter_mut().zip(outboxes.iter_mut()) {
            if !outbox.is_empty() && !outbox.flush(stream, &payload) {
                return;
            }
        }
    }
}

struct Job {
    io_bytes: usize,
    depth: usize,
    connections: usize,
    read_percent: u32,
    seconds: u64,
}

/// One client connection: its I/Os in flight by command id and their start times.
struct ClientConn {
    stream: TcpStream,
    inbox: Inbox,
    outbox: Outbox,
    started: Vec<Option<Instant>>,
    free: Vec<u32>,
}

fn client(addr: std::net::SocketAddr, job: &Job, wire: Wire) -> (u64, f64) {
    let per_conn = job.depth / job.connections;
    let payload = vec![0x5au8; job.io_bytes];
    let mut conns: Vec<ClientConn> = (0..job.connections)
        .map(|_| {
            let stream = TcpStream::connect(addr).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            stream.set_nonblocking(true).expect("nonblocking");
            ClientConn {
                stream,
                inbox: Inbox::new(2 * job.io_bytes + 64 * 1024),
                outbox: Outbox::default(),
                started: vec![None; per_conn],
                free: (0..per_conn as u32).rev().collect(),
            }
        })
        .collect();
    let mut random = 0x9e37_79b9_7f4a_7c15u64;
    let mut completed = 0u64;
    let mut latency_ns = 0u128;
    let start = Instant::now();
    let end = start + Duration::from_secs(job.seconds);
    let mut submitting = true;
    loop {
        let now = Instant::now();
        if submitting && now >= end {
            submitting = false;
        }
        let mut in_flight = 0;
        for conn in conns.iter_mut() {
            if !conn.inbox.fill(&mut conn.stream) {
                panic!("the floor server went away");
            }
            while let Some((at, plen)) = conn.inbox.next_pdu() {
                let pdu = &conn.inbox.buf[at..at + plen];
                check_header(wire, pdu);
                check_data(wire, pdu);
                let cid = le32(pdu, 8) as usize & 0xffff;
                match pdu[0] {
                    R2T => {
                        let out_start = conn.outbox.arena.len();
                        let len = job.io_bytes;
                        put_header(&mut conn.outbox.arena, wire, H2C_DATA, DATA_HLEN, len, &[(8, cid as u32)]);
                        conn.outbox.mark(out_start);
                        conn.outbox.data(len);
                        if wire.data_digest {
                            let at = conn.outbox.arena.len();
                            conn.outbox.arena.extend_from_slice(&crc32c_bytes(&payload, 0).to_le_bytes());
                            conn.outbox.mark(at);
                        }
                    }
                    C2H_DATA | CAPSULE_RESP => {
                        let started = conn.started[cid].take().expect("a completion for an I/O in flight");
                        latency_ns += now.duration_since(started).as_nanos();
                        completed += 1;
                        conn.free.push(cid as u32);
                    }
                    other => panic!("unexpected PDU type {other:#x}"),
                }
            }
            while let Some(cid) = if submitting { conn.free.pop() } else { None } {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                let read = (random % 100) < u64::from(job.read_percent);
                let len = job.io_bytes;
                let out_start = conn.outbox.arena.len();
                let in_capsule = !read && len <= IN_CAPSULE_BYTES;
                let opcode = if read { OP_READ } else { OP_WRITE };
                let data_len = if in_capsule { len } else { 0 };
                put_header(
                    &mut conn.outbox.arena,
                    wire,
                    CAPSULE_CMD,
                    CAPSULE_HLEN,
                    data_len,
                    &[(8, u32::from(opcode)), (12, len as u32), (16, cid)],
                );
                conn.outbox.mark(out_start);
                if in_capsule {
                    conn.outbox.data(len);
                    if wire.data_digest {
                        let at = conn.outbox.arena.len();
                        conn.outbox.arena.extend_from_slice(&crc32c_bytes(&payload, 0).to_le_bytes());
                        conn.outbox.mark(at);
                    }
                }
                conn.started[cid as usize] = Some(now);
            }
            if !conn.outbox.is_empty() && !conn.outbox.flush(&mut conn.stream, &payload) {
                panic!("the floor server went away");
            }
            in_flight += per_conn - conn.free.len();
        }
        if !submitting && in_flight == 0 {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let iops = completed as f64 / elapsed;
    let avg_us = if completed == 0 { 0.0 } else { latency_ns as f64 / completed as f64 / 1000.0 };
    (iops as u64, avg_us)
}

fn pin(core: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(core).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: tcp_floor -w <read|write|randread|randwrite|rw|randrw> -o BYTES -q DEPTH -t SECONDS \
         [-P CONNECTIONS] [-M READ_PERCENT] [-H] [-I] [--cores SERVER,CLIENT]"
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut job = Job { io_bytes: 4096, depth: 1, connections: 1, read_percent: 100, seconds: 3 };
    let mut wire = Wire { header_digest: false, data_digest: false };
    let mut mixed = 50;
    let mut pattern = String::from("read");
    let mut cores = (0usize, 1usize);
    let mut at = 0;
    while at < args.len() {
        let value = || args.get(at + 1).cloned().unwrap_or_else(|| usage());
        let number = |v: String| v.parse::<u64>().unwrap_or_else(|_| usage());
        match args[at].as_str() {
            "-w" => pattern = value(),
            "-o" => job.io_bytes = number(value()) as usize,
            "-q" => job.depth = number(value()) as usize,
            "-P" => job.connections = number(value()) as usize,
            "-t" => job.seconds = number(value()),
            "-M" => mixed = number(value()) as u32,
            "--cores" => {
                let v = value();
                let (s, c) = v.split_once(',').unwrap_or_else(|| usage());
                cores = (number(s.into()) as usize, number(c.into()) as usize);
            }
            "-H" => {
                wire.header_digest = true;
                at += 1;
                continue;
            }
            "-I" => {
                wire.data_digest = true;
                at += 1;
                continue;
            }
            _ => usage(),
        }
        at += 2;
    }
    job.read_percent = match pattern.as_str() {
        "read" | "randread" => 100,
        "write" | "randwrite" => 0,
        "rw" | "randrw" => mixed.min(100),
        _ => usage(),
    };
    if job.io_bytes == 0 || job.connections == 0 || job.depth < job.connections || job.depth / job.connections > 0xffff
    {
        usage();
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    let (connections, max_io, server_core) = (job.connections, job.io_bytes, cores.0);
    let server = std::thread::spawn(move || {
        pin(server_core);
        server(listener, connections, wire, max_io, server_stop);
    });
    pin(cores.1);
    let (iops, avg_us) = client(addr, &job, wire);
    stop.store(true, Ordering::Relaxed);
    server.join().expect("the floor server panicked");
    println!("{{\"iops\":{iops},\"latency_us\":{{\"avg\":{avg_us:.2}}}}}");
}
