//! The simulated network: one link per connection, each a pair of byte streams. It keeps
//! TCP's promise (bytes arrive in order, or the connection breaks) and nothing more:
//! what one side writes arrives in segments of arbitrary size after arbitrary delays,
//! the target's socket has a small send buffer that fills, and links can be reset, or
//! (where digests cover every byte) have a bit flipped.

use std::collections::VecDeque;

use peerless_target::tcp::pdu::IC_BYTES;
use peerless_target::tcp::socket::MemPeer;

use super::rng::Rng;

#[derive(Clone, Copy, Debug)]
pub struct NetFaults {
    pub min_latency_ns: u64,
    pub max_latency_ns: u64,
    /// Now and then a segment is held much longer (a retransmission).
    pub spike_per_million: u32,
    pub spike_latency_ns: u64,
    pub max_segment_bytes: u64,
    /// Bytes the network takes from the target's send buffer per link per step, at most.
    pub max_drain_bytes: u64,
    /// The target socket's send buffer, at most (each link draws its own).
    pub max_send_window_bytes: u64,
    pub corrupt_per_million: u32,
}

enum Segment {
    Data {
        at_ns: u64,
        bytes: Vec<u8>,
    },
    /// The sender closed its end (FIN).
    Fin {
        at_ns: u64,
    },
}

impl Segment {
    fn at_ns(&self) -> u64 {
        match self {
            Segment::Data { at_ns, .. } | Segment::Fin { at_ns } => *at_ns,
        }
    }
}

/// One direction of a link.
#[derive(Default)]
struct Stream {
    queue: VecDeque<Segment>,
    /// When the last segment queued arrives: later ones never overtake it.
    last_at_ns: u64,
    /// Bytes sent so far, to know where the handshake ends.
    offset: u64,
    fin_sent: bool,
}

impl Stream {
    fn arrival(&mut self, rng: &mut Rng, faults: &NetFaults, now_ns: u64) -> u64 {
        let latency = if rng.chance(faults.spike_per_million) {
            faults.spike_latency_ns
        } else {
            rng.range(faults.min_latency_ns, faults.max_latency_ns)
        };
        self.last_at_ns = self.last_at_ns.max(now_ns + latency);
        self.last_at_ns
    }

    /// Queues `bytes` in random segments; returns whether a bit was flipped in them.
    fn send(&mut self, rng: &mut Rng, faults: &NetFaults, now_ns: u64, mut bytes: &[u8], corrupt: bool) -> bool {
        let mut flipped = false;
        while !bytes.is_empty() {
            let size = (rng.range(1, faults.max_segment_bytes) as usize).min(bytes.len());
            let mut segment = bytes[..size].to_vec();
            // Past the handshake (ICReq/ICResp carry no digest) every byte is covered by
            // a header or data digest, so a flipped bit must be caught, never believed.
            if corrupt && !flipped && self.offset >= IC_BYTES as u64 && rng.chance(faults.corrupt_per_million) {
                let at = rng.below(size as u64) as usize;
                segment[at] ^= 1 << rng.below(8);
                flipped = true;
            }
            self.offset += size as u64;
            let at_ns = self.arrival(rng, faults, now_ns);
            self.queue.push_back(Segment::Data { at_ns, bytes: segment });
            bytes = &bytes[size..];
        }
        flipped
    }

    fn fin(&mut self, rng: &mut Rng, faults: &NetFaults, now_ns: u64) {
        if !self.fin_sent {
            self.fin_sent = true;
            let at_ns = self.arrival(rng, faults, now_ns);
            self.queue.push_back(Segment::Fin { at_ns });
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Open,
    /// Reset by the network: both ends have lost it.
    Reset,
}

pub struct Link {
    /// The target's end of the connection.
    pub peer: MemPeer,
    pub state: LinkState,
    rng: Rng,
    to_target: Stream,
    to_host: Stream,
    /// Bytes that reached the host and it has not consumed.
    pub host_rx: Vec<u8>,
    /// The target closed its end and everything it sent has arrived.
    pub host_saw_fin: bool,
    /// Whether every byte after the handshake is under a digest: only then may bits flip.
    pub corruptible: bool,
    /// A bit was flipped on the way to the target / to the host.
    pub corrupted_to_target: bool,
    pub corrupted_to_host: bool,
    /// The host sent a malformed PDU on purpose: it expects to be terminated.
    pub host_mangled: bool,
    pub bytes_to_target: u64,
    pub bytes_to_host: u64,
}

impl Link {
    pub fn new(peer: MemPeer, mut rng: Rng, faults: &NetFaults) -> Link {
        let window = rng.range(1024, faults.max_send_window_bytes);
        peer.set_send_window(window as usize);
        Link {
            peer,
            state: LinkState::Open,
            rng,
            to_target: Stream::default(),
            to_host: Stream::default(),
            host_rx: Vec::new(),
            host_saw_fin: false,
            corruptible: false,
            corrupted_to_target: false,
            corrupted_to_host: false,
            host_mangled: false,
            bytes_to_target: 0,
            bytes_to_host: 0,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == LinkState::Open
    }

    /// The host sends `bytes`.
    pub fn send(&mut self, faults: &NetFaults, now_ns: u64, bytes: &[u8]) {
        if self.state != LinkState::Open || self.to_target.fin_sent {
            return;
        }
        self.bytes_to_target += bytes.len() as u64;
        let corrupt = self.corruptible && !self.corrupted_to_target;
        if self.to_target.send(&mut self.rng, faults, now_ns, bytes, corrupt) {
            self.corrupted_to_target = true;
        }
    }

    /// The host closes its end (FIN after what it sent).
    pub fn host_close(&mut self, faults: &NetFaults, now_ns: u64) {
        if self.state == LinkState::Open {
            self.to_target.fin(&mut self.rng, faults, now_ns);
        }
    }

    /// The network breaks the link: both ends lose what was in flight.
    pub fn reset(&mut self) {
        if self.state == LinkState::Open {
            self.state = LinkState::Reset;
            self.peer.reset();
            self.to_target.queue.clear();
            self.to_host.queue.clear();
        }
    }

    /// Moves what is due at `now_ns` both ways, and takes what the target wrote.
    pub fn tick(&mut self, faults: &NetFaults, now_ns: u64) -> bool {
        if self.state != LinkState::Open {
            return false;
        }
        let mut moved = false;
        while self.to_target.queue.front().is_some_and(|segment| segment.at_ns() <= now_ns) {
            match self.to_target.queue.pop_front() {
                Some(Segment::Data { bytes, .. }) => self.peer.deliver(&bytes),
                Some(Segment::Fin { .. }) => self.peer.close(),
                None => {}
            }
            moved = true;
        }
        // The target's output leaves its send buffer at the network's pace.
        if self.peer.pending() > 0 {
            let budget = self.rng.range(1, faults.max_drain_bytes) as usize;
            let mut taken = Vec::new();
            self.peer.take(budget, &mut taken);
            self.bytes_to_host += taken.len() as u64;
            let corrupt = self.corruptible && !self.corrupted_to_host;
            if self.to_host.send(&mut self.rng, faults, now_ns, &taken, corrupt) {
                self.corrupted_to_host = true;
            }
            moved = true;
        }
        if self.peer.is_shut_down() && self.peer.pending() == 0 {
            self.to_host.fin(&mut self.rng, faults, now_ns);
        }
        while self.to_host.queue.front().is_some_and(|segment| segment.at_ns() <= now_ns) {
            match self.to_host.queue.pop_front() {
                Some(Segment::Data { bytes, .. }) => self.host_rx.extend_from_slice(&bytes),
                Some(Segment::Fin { .. }) => self.host_saw_fin = true,
                None => {}
            }
            moved = true;
        }
        moved
    }

    /// Whether anything is still travelling on this link.
    pub fn in_flight(&self) -> bool {
        self.is_open()
            && (!self.to_target.queue.is_empty() || !self.to_host.queue.is_empty() || self.peer.pending() > 0)
    }
}
