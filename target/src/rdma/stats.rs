//! The RDMA transport's counters in `nvmf_get_stats`, with the names and meaning of
//! SPDK's RDMA poll group statistics: per poll group the data buffer waits, and per
//! device (one CQ of the group) what its poller saw and what was posted to it.
//!
//! Each counter is a plain integer owned by the poll group's thread: a device's own
//! (CQ polls, shared receive queue posts, what dropped queues counted) beside each live
//! queue's, summed only when `nvmf_get_stats` asks. Nothing in the data path is shared
//! between threads, so nothing is atomic.

use serde_json::{json, Value};

/// One device's counters in a poll group (SPDK's `spdk_nvmf_rdma_poller_stat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Calls that polled the CQ.
    pub polls: u64,
    /// Of those, calls that found nothing.
    pub idle_polls: u64,
    /// Work completions taken from the CQ (receives, sends, READs, WRITEs; flushed too).
    pub completions: u64,
    /// Command capsules received.
    pub requests: u64,
    /// Nanoseconds (the `tick_rate` of `nvmf_get_stats`) from each command's capsule
    /// arriving to the completion of the SEND that answered it, summed over commands.
    pub request_latency: u64,
    /// Capsules that waited for a free request. The engine holds a request for every
    /// command the host may have outstanding (NVMe-oF 1.1 §2.4.1), so none waits and this
    /// stays 0; it is kept so tools reading SPDK's field find it.
    pub pending_free_request: u64,
    /// Times an RDMA READ could not be posted: the host's IRD or the send queue was full.
    pub pending_rdma_read: u64,
    /// Times a read's RDMA WRITE could not be posted: the send queue was full.
    pub pending_rdma_write: u64,
    /// Times a response SEND could not be posted: no send queue room or response slot.
    pub pending_rdma_send: u64,
    /// Work requests posted to send queues (SENDs, READs, WRITEs), each chained one too.
    pub total_send_wrs: u64,
    /// `ibv_post_send` calls: one per chain, so `total_send_wrs / send_doorbell_updates`
    /// is the batching.
    pub send_doorbell_updates: u64,
    /// Receive work requests posted (to the shared receive queue or the queue pairs').
    pub total_recv_wrs: u64,
    /// `ibv_post_recv` / `ibv_post_srq_recv` calls.
    pub recv_doorbell_updates: u64,
}

impl DeviceStats {
    pub fn add(&mut self, other: &DeviceStats) {
        self.polls += other.polls;
        self.idle_polls += other.idle_polls;
        self.completions += other.completions;
        self.requests += other.requests;
        self.request_latency += other.request_latency;
        self.pending_free_request += other.pending_free_request;
        self.pending_rdma_read += other.pending_rdma_read;
        self.pending_rdma_write += other.pending_rdma_write;
        self.pending_rdma_send += other.pending_rdma_send;
        self.total_send_wrs += other.total_send_wrs;
        self.send_doorbell_updates += other.send_doorbell_updates;
        self.total_recv_wrs += other.total_recv_wrs;
        self.recv_doorbell_updates += other.recv_doorbell_updates;
    }

    /// One CQ poll that took `found` completions.
    pub fn polled(&mut self, found: usize) {
        self.polls += 1;
        self.completions += found as u64;
        if found == 0 {
            self.idle_polls += 1;
        }
    }

    /// One `ibv_post_send` of `wrs` chained work requests.
    pub fn posted_sends(&mut self, wrs: usize) {
        self.total_send_wrs += wrs as u64;
        self.send_doorbell_updates += 1;
    }

    /// One receive post of `wrs` chained work requests.
    pub fn posted_recvs(&mut self, wrs: usize) {
        self.total_recv_wrs += wrs as u64;
        self.recv_doorbell_updates += 1;
    }

    /// A device's entry of `devices`, keys in SPDK's order.
    pub fn to_json(&self, name: &str) -> Value {
        json!({"name": name, "polls": self.polls, "idle_polls": self.idle_polls, "completions": self.completions,
            "requests": self.requests, "request_latency": self.request_latency,
            "pending_free_request": self.pending_free_request, "pending_rdma_read": self.pending_rdma_read,
            "pending_rdma_write": self.pending_rdma_write, "pending_rdma_send": self.pending_rdma_send,
            "total_send_wrs": self.total_send_wrs, "send_doorbell_updates": self.send_doorbell_updates,
            "total_recv_wrs": self.total_recv_wrs, "recv_doorbell_updates": self.recv_doorbell_updates})
    }
}

/// The RDMA part of a poll group's `transports` entry (after its `trtype`).
pub fn group_json(pending_data_buffer: u64, devices: &[(String, DeviceStats)]) -> Value {
    let devices: Vec<Value> = devices.iter().map(|(name, stats)| stats.to_json(name)).collect();
    json!({"pending_data_buffer": pending_data_buffer, "devices": devices})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPDK v24.01's `nvmf_rdma_poll_group_dump_stat` fields of a device, in its order.
    const SPDK_DEVICE_FIELDS: [&str; 14] = [
        "name",
        "polls",
        "idle_polls",
        "completions",
        "requests",
        "request_latency",
        "pending_free_request",
        "pending_rdma_read",
        "pending_rdma_write",
        "pending_rdma_send",
        "total_send_wrs",
        "send_doorbell_updates",
        "total_recv_wrs",
        "recv_doorbell_updates",
    ];

    #[test]
    fn a_device_shows_spdks_fields_and_nothing_else() {
        let shown = DeviceStats::default().to_json("rxe0");
        let keys: Vec<&str> = shown.as_object().expect("an object").keys().map(String::as_str).collect();
        let mut expected = SPDK_DEVICE_FIELDS.to_vec();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(sorted, expected);
        assert_eq!(shown["name"], "rxe0");
    }

    #[test]
    fn polls_count_idle_ones_and_completions() {
        let mut stats = DeviceStats::default();
        for found in [0, 3, 64, 0, 1] {
            stats.polled(found);
        }
        assert_eq!((stats.polls, stats.idle_polls, stats.completions), (5, 2, 68));
    }

    #[test]
    fn posts_count_work_requests_and_doorbells() {
        let mut stats = DeviceStats::default();
        stats.posted_sends(1);
        stats.posted_sends(3);
        stats.posted_recvs(64);
        stats.posted_recvs(1);
        assert_eq!((stats.total_send_wrs, stats.send_doorbell_updates), (4, 2));
        assert_eq!((stats.total_recv_wrs, stats.recv_doorbell_updates), (65, 2));
    }

    #[test]
    fn sums_add_every_field() {
        let mut one = DeviceStats::default();
        one.polled(2);
        one.requests = 2;
        one.request_latency = 1_000;
        one.pending_rdma_read = 1;
        one.pending_rdma_write = 2;
        one.pending_rdma_send = 3;
        one.posted_sends(2);
        one.posted_recvs(2);
        let mut total = one;
        total.add(&one);
        let doubled = total.to_json("d");
        let single = one.to_json("d");
        for field in &SPDK_DEVICE_FIELDS[1..] {
            assert_eq!(doubled[field].as_u64(), single[field].as_u64().map(|v| 2 * v), "{field}");
        }
    }

    #[test]
    fn a_group_lists_its_devices() {
        let stats = DeviceStats { requests: 7, ..DeviceStats::default() };
        let shown = group_json(5, &[("rxe0".into(), stats), ("mlx5_0".into(), DeviceStats::default())]);
        assert_eq!(shown["pending_data_buffer"], 5);
        assert_eq!(shown["devices"].as_array().map(Vec::len), Some(2));
        assert_eq!(shown["devices"][0]["requests"], 7);
        assert_eq!(shown["devices"][1]["name"], "mlx5_0");
    }
}
