//! Work request identifiers: what a completion on the shared CQ is for. The queue pair
//! comes from the completion itself (its QP number); the identifier says which kind of
//! request and which buffer, slot or command.

/// The kind of a work request (the top two bits of its identifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrKind {
    /// A receive buffer: the tag is its index (in the SRQ's or the queue pair's region).
    Recv,
    /// A response capsule: the tag is its response slot.
    Send,
    /// Host data in: the tag is the engine's slot (low 16 bits) and the CID (high 16).
    Read,
    /// Host data out, chained before a response SEND and unsignaled: the tag is that
    /// response's slot (it completes on its own only when it failed or was flushed).
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrId {
    pub kind: WrKind,
    pub tag: u32,
}

impl WrId {
    pub fn encode(self) -> u64 {
        let kind: u64 = match self.kind {
            WrKind::Recv => 0,
            WrKind::Send => 1,
            WrKind::Read => 2,
            WrKind::Write => 3,
        };
        kind << 62 | u64::from(self.tag)
    }

    pub fn decode(raw: u64) -> WrId {
        let kind = match raw >> 62 {
            0 => WrKind::Recv,
            1 => WrKind::Send,
            2 => WrKind::Read,
            _ => WrKind::Write,
        };
        WrId { kind, tag: raw as u32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_round_trip() {
        for kind in [WrKind::Recv, WrKind::Send, WrKind::Read, WrKind::Write] {
            for tag in [0, 1, 0xffff, 0x1234_5678, u32::MAX] {
                let id = WrId { kind, tag };
                assert_eq!(WrId::decode(id.encode()), id);
            }
        }
    }
}
