//! Asynchronous events as the controller reports them (NVMe Base 2.0 §5.2): what an
//! Asynchronous Event Request's completion says, the Get Log Page command that reads
//! (and so clears) the log page it names (§5.16), and the Changed Namespace List
//! (log page 04h, §5.16.1.5). Pure encoding and decoding, unit-tested here.

use super::spec::{admin, Cqe, Sqe};

/// Log page identifiers (§5.16.1).
pub mod log_page {
    pub const ERROR_INFORMATION: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const CHANGED_NAMESPACES: u8 = 0x04;
}

/// Asynchronous Event Configuration (Set Features 0Bh, §5.27.1.7) bit 8: Namespace
/// Attribute Notices.
pub const CONFIG_NAMESPACE_NOTICES: u32 = 1 << 8;
/// Bits 4:0: SMART / Health Critical Warnings (available spare, temperature, reliability,
/// read only, volatile memory backup), each an event when its warning comes on.
pub const CONFIG_CRITICAL_WARNINGS: u32 = 0x1f;

/// The configuration to ask for: every critical warning, and namespace notices when the
/// controller has them (OAES bit 8).
pub fn event_config(namespace_notices: bool) -> u32 {
    CONFIG_CRITICAL_WARNINGS | if namespace_notices { CONFIG_NAMESPACE_NOTICES } else { 0 }
}

/// Most AERs the driver keeps outstanding, whatever AERL allows: events are rare, and
/// each one held is an admin queue slot.
pub const MAX_OUTSTANDING: u16 = 4;

/// Asynchronous Event Request's completion dword 0 (§5.2.1, Figure 146).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Asynchronous Event Type, bits 2:0.
    pub kind: EventKind,
    /// Asynchronous Event Information, bits 15:8.
    pub info: u8,
    /// The log page to read for details (which also clears the event), bits 23:16.
    pub log_page: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Error,
    SmartHealth,
    Notice,
    Immediate,
    OneShot,
    CommandSetSpecific,
    VendorSpecific,
    Reserved(u8),
}

/// Notice information 00h (§5.2.1, Figure 149).
const NOTICE_NAMESPACE_ATTRIBUTE_CHANGED: u8 = 0x00;

impl AsyncEvent {
    pub fn decode(result: u32) -> AsyncEvent {
        let kind = match (result & 0x7) as u8 {
            0 => EventKind::Error,
            1 => EventKind::SmartHealth,
            2 => EventKind::Notice,
            3 => EventKind::Immediate,
            4 => EventKind::OneShot,
            6 => EventKind::CommandSetSpecific,
            7 => EventKind::VendorSpecific,
            other => EventKind::Reserved(other),
        };
        AsyncEvent { kind, info: (result >> 8) as u8, log_page: (result >> 16) as u8 }
    }

    /// A Namespace Attribute Changed notice, whose list is log page 04h.
    pub fn is_namespace_change(&self) -> bool {
        self.kind == EventKind::Notice && self.info == NOTICE_NAMESPACE_ATTRIBUTE_CHANGED
    }

    /// How many bytes of its log page to read to clear the event: the Changed Namespace
    /// List whole, one entry of the Error Information log (the controller keeps the rest),
    /// SMART / Health whole, and otherwise one 512-byte block, which every log page
    /// the specification defines reaches.
    pub fn log_bytes(&self) -> usize {
        match self.log_page {
            log_page::CHANGED_NAMESPACES => CHANGED_LIST_BYTES,
            log_page::ERROR_INFORMATION => 64,
            log_page::SMART_HEALTH => 512,
            _ => 512,
        }
    }

    pub fn describe(&self) -> String {
        let what = match (self.kind, self.info) {
            (EventKind::Error, _) => "error",
            (EventKind::SmartHealth, 0) => "SMART: NVM subsystem reliability",
            (EventKind::SmartHealth, 1) => "SMART: temperature threshold",
            (EventKind::SmartHealth, 2) => "SMART: spare below threshold",
            (EventKind::SmartHealth, _) => "SMART / health",
            (EventKind::Notice, NOTICE_NAMESPACE_ATTRIBUTE_CHANGED) => "notice: namespace attribute changed",
            (EventKind::Notice, 1) => "notice: firmware activation starting",
            (EventKind::Notice, 2) => "notice: telemetry log changed",
            (EventKind::Notice, 3) => "notice: asymmetric namespace access change",
            (EventKind::Notice, _) => "notice",
            (EventKind::Immediate, _) => "immediate",
            (EventKind::OneShot, _) => "one-shot",
            (EventKind::CommandSetSpecific, _) => "I/O command set specific",
            (EventKind::VendorSpecific, _) => "vendor specific",
            (EventKind::Reserved(_), _) => "reserved type",
        };
        format!("{what} (type {:?}, information {:#04x}, log page {:#04x})", self.kind, self.info, self.log_page)
    }
}

/// Whether a failed AER's completion means it is simply gone (the controller was reset
/// or its queue deleted, §4.6.1.2.1: Command Abort Requested 07h, Aborted due to SQ
/// Deletion 08h) rather than refused: either way it is not posted again from here.
pub fn aer_aborted(cqe: &Cqe) -> bool {
    cqe.sct == 0 && matches!(cqe.sc, 0x07 | 0x08)
}

/// An Asynchronous Event Request (§5.2): no data, no dwords, completed only by an event.
pub fn aer_command(cid: u16) -> Sqe {
    Sqe { cid, ..Sqe::new(admin::ASYNC_EVENT_REQUEST) }
}

/// Get Log Page (§5.16) of `bytes` bytes (a multiple of 4, up to one page) into `prp1`.
/// Retain Asynchronous Event is left clear so reading the page clears its event.
pub fn get_log_page_command(log_page: u8, bytes: usize, prp1: u64) -> Sqe {
    let dwords = (bytes / 4).max(1) as u32 - 1;
    let mut sqe = Sqe::new(admin::GET_LOG_PAGE);
    // Logs that are not namespace-specific take NSID FFFFFFFFh or 0; all of ours are.
    sqe.nsid = u32::MAX;
    sqe.prp1 = prp1;
    sqe.cdw10 = (dwords & 0xffff) << 16 | u32::from(log_page);
    sqe.cdw11 = dwords >> 16;
    sqe
}

/// The Changed Namespace List is 1024 NSIDs.
pub const CHANGED_LIST_BYTES: usize = 4096;

/// What log page 04h says changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangedNamespaces {
    /// These NSIDs, ascending as the controller lists them.
    Some(Vec<u32>),
    /// More than 1024 changed: the first entry is FFFFFFFFh and every namespace is to
    /// be looked at again (§5.16.1.5).
    All,
}

pub fn parse_changed_namespaces(data: &[u8]) -> ChangedNamespaces {
    let mut nsids = data
        .chunks_exact(4)
        .take(CHANGED_LIST_BYTES / 4)
        .map(|chunk| u32::from_le_bytes(chunk.try_into().unwrap_or_default()));
    let first = nsids.next();
    if first == Some(u32::MAX) {
        return ChangedNamespaces::All;
    }
    ChangedNamespaces::Some(first.into_iter().chain(nsids).take_while(|nsid| *nsid != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_completions_decode_type_information_and_log_page() {
        // QEMU's Namespace Attribute Changed: notice (2), information 0, log page 04h.
        let notice = AsyncEvent::decode(0x04 << 16 | 2);
        assert_eq!(notice, AsyncEvent { kind: EventKind::Notice, info: 0, log_page: 4 });
        assert!(notice.is_namespace_change());
        assert_eq!(notice.log_bytes(), 4096);
        let temperature = AsyncEvent::decode(0x02 << 16 | 0x01 << 8 | 1);
        assert_eq!((temperature.kind, temperature.info, temperature.log_page), (EventKind::SmartHealth, 1, 2));
        assert!(!temperature.is_namespace_change());
        assert_eq!(temperature.log_bytes(), 512);
        assert!(temperature.describe().contains("temperature"), "{}", temperature.describe());
        let error = AsyncEvent::decode(0x01 << 16 | 0x05 << 8);
        assert_eq!((error.kind, error.log_page, error.log_bytes()), (EventKind::Error, 1, 64));
        // A firmware notice is a notice but not a namespace change; the high byte is reserved.
        let firmware = AsyncEvent::decode(0xff03_0102);
        assert_eq!((firmware.kind, firmware.info, firmware.log_page), (EventKind::Notice, 1, 3));
        assert!(!firmware.is_namespace_change());
        assert_eq!(AsyncEvent::decode(5).kind, EventKind::Reserved(5));
        assert_eq!(AsyncEvent::decode(7).kind, EventKind::VendorSpecific);
    }

    #[test]
    fn the_configuration_asks_for_warnings_and_namespace_notices_when_offered() {
        assert_eq!(event_config(true), 0x11f);
        assert_eq!(event_config(false), 0x1f);
    }

    #[test]
    fn aborted_aers_are_told_from_refused_ones() {
        let cqe = |sct, sc| Cqe { sct, sc, ..Cqe::decode([0; 4]) };
        assert!(aer_aborted(&cqe(0, 0x07)) && aer_aborted(&cqe(0, 0x08)));
        // Asynchronous Event Request Limit Exceeded is command specific (SCT 1, SC 05h).
        assert!(!aer_aborted(&cqe(1, 0x05)));
        assert!(!aer_aborted(&cqe(1, 0x08)));
    }

    #[test]
    fn get_log_page_counts_dwords_zero_based_and_clears_the_event() {
        let sqe = get_log_page_command(log_page::CHANGED_NAMESPACES, 4096, 0x1000);
        assert_eq!((sqe.opcode, sqe.prp1, sqe.nsid), (admin::GET_LOG_PAGE, 0x1000, u32::MAX));
        assert_eq!(sqe.cdw10, 1023 << 16 | 0x04, "NUMDL 1023, RAE clear, LID 04h");
        assert_eq!(sqe.cdw10 >> 15 & 1, 0);
        assert_eq!(sqe.cdw11, 0);
        assert_eq!(get_log_page_command(log_page::ERROR_INFORMATION, 64, 0).cdw10, 15 << 16 | 1);
        // NUMDU takes the bits above 16 of a count only a huge log would need.
        let huge = get_log_page_command(0x80, 4 << 17, 0);
        assert_eq!((huge.cdw10 >> 16, huge.cdw11), (0xffff, 1));
        assert_eq!(aer_command(3), Sqe { cid: 3, ..Sqe::new(0x0c) });
    }

    fn list(nsids: &[u32]) -> Vec<u8> {
        let mut data = vec![0u8; CHANGED_LIST_BYTES];
        for (index, nsid) in nsids.iter().enumerate() {
            data[index * 4..index * 4 + 4].copy_from_slice(&nsid.to_le_bytes());
        }
        data
    }

    #[test]
    fn changed_namespace_list_ends_at_zero_and_overflow_means_all() {
        assert_eq!(parse_changed_namespaces(&list(&[2])), ChangedNamespaces::Some(vec![2]));
        assert_eq!(parse_changed_namespaces(&list(&[1, 7, 9, 0, 4])), ChangedNamespaces::Some(vec![1, 7, 9]));
        assert_eq!(parse_changed_namespaces(&list(&[])), ChangedNamespaces::Some(vec![]));
        assert_eq!(parse_changed_namespaces(&list(&[u32::MAX])), ChangedNamespaces::All);
        assert_eq!(parse_changed_namespaces(&list(&[u32::MAX, 3])), ChangedNamespaces::All);
        // A full list of 1024 has no terminating zero; whatever follows is not read.
        let full: Vec<u32> = (1..=1024).collect();
        let mut data = list(&full);
        data.extend_from_slice(&5u32.to_le_bytes());
        assert_eq!(parse_changed_namespaces(&data), ChangedNamespaces::Some(full));
        assert_eq!(parse_changed_namespaces(&[]), ChangedNamespaces::Some(vec![]));
        assert_eq!(parse_changed_namespaces(&[1, 0]), ChangedNamespaces::Some(vec![]), "a torn entry is not an NSID");
    }
}
