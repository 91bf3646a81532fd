//! NVM subsystems as the target models them: identity (NQN, serial, model), who may
//! connect (hosts, listeners), namespaces over claimed bdevs, and controller IDs.
//! Control plane only: guarded by a mutex, read at connect time and by RPCs; the data
//! path sees namespaces through each poll group's own table (see `tcp::poll_group`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_bdev::Desc;

use super::ctrlr::Controller;

pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// NVMe Base 2.0, 4.5: an NQN is at most 223 bytes.
pub const NQN_MAX_BYTES: usize = 223;
const NQN_UUID_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";
pub const SERIAL_MAX_BYTES: usize = 20;
pub const MODEL_MAX_BYTES: usize = 40;
pub const DEFAULT_SERIAL: &str = "00000000000000000000";
pub const DEFAULT_MODEL: &str = "SPDK bdev Controller";
pub const DEFAULT_MAX_NAMESPACES: u32 = 32;
pub const MIN_CNTLID: u16 = 1;
/// 0xFFF0 and above are reserved (0xFFFF asks for a dynamic controller).
pub const MAX_CNTLID: u16 = 0xffef;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsystemKind {
    Nvme,
    Discovery,
}

impl SubsystemKind {
    pub fn is_nvme(self) -> bool {
        self == SubsystemKind::Nvme
    }
}

/// Checks an NQN against NVMe Base 2.0, 4.5: `nqn.yyyy-mm.<reverse domain>[:<anything>]`,
/// or the UUID form; at most 223 bytes.
pub fn validate_nqn(nqn: &str) -> Result<(), String> {
    if nqn.len() > NQN_MAX_BYTES {
        return Err(format!("NQN is {} bytes; the limit is {NQN_MAX_BYTES}", nqn.len()));
    }
    if nqn == DISCOVERY_NQN {
        return Ok(());
    }
    if let Some(uuid) = nqn.strip_prefix(NQN_UUID_PREFIX) {
        let ok = uuid.len() == 36
            && uuid
                .char_indices()
                .all(|(at, c)| if matches!(at, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() });
        return if ok { Ok(()) } else { Err(format!("'{uuid}' after {NQN_UUID_PREFIX} is not a UUID")) };
    }
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return Err(format!("'{nqn}' must start with 'nqn.' (e.g. nqn.2016-06.io.spdk:cnode1)"));
    };
    let bytes = rest.as_bytes();
    let date_ok = bytes.len() > 8
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[5..7].iter().all(u8::is_ascii_digit)
        && matches!(&rest[5..7], "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12")
        && bytes[7] == b'.';
    if !date_ok {
        return Err(format!("'{nqn}' needs a date 'yyyy-mm.' after 'nqn.'"));
    }
    let domain = rest[8..].split(':').next().unwrap_or_default();
    let labels_ok = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !labels_ok {
        return Err(format!("'{domain}' in '{nqn}' is not a reverse domain name"));
    }
    Ok(())
}

/// Serial and model numbers are printable ASCII of bounded length (NVMe Base 2.0, 5.17.2.1).
pub fn validate_ascii(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{field} '{value}' is {} bytes; the limit is {max}", value.len()));
    }
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(format!("{field} '{value}' must be printable ASCII"));
    }
    Ok(())
}

/// A listen address as RPCs name it and `nvmf_get_subsystems` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddress {
    pub addr: SocketAddr,
}

impl ListenAddress {
    pub fn to_json(&self) -> serde_json::Value {
        let adrfam = if self.addr.is_ipv6() { "IPv6" } else { "IPv4" };
        serde_json::json!({"trtype": "TCP", "adrfam": adrfam, "traddr": self.addr.ip().to_string(),
            "trsvcid": self.addr.port().to_string()})
    }
}

pub struct Namespace {
    pub nsid: u32,
    pub bdev_name: String,
    pub desc: Arc<Desc>,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub uuid: [u8; 16],
    /// "off", "auto" or a P2P provider name: where command data may be placed.
    pub p2pmem: String,
    /// The provider command data is placed in, when p2pmem is not "off".
    pub provider: Option<std::sync::Arc<dyn peerless_core::mem::P2pProvider>>,
}

pub struct SubsystemState {
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub listeners: Vec<ListenAddress>,
    pub namespaces: BTreeMap<u32, Arc<Namespace>>,
    pub max_namespaces: u32,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    next_cntlid: u16,
    pub controllers: BTreeMap<u16, Arc<Controller>>,
}

pub struct Subsystem {
    /// A small index, stable for the subsystem's life, for poll groups' tables.
    pub id: u32,
    pub nqn: String,
    pub kind: SubsystemKind,
    pub state: Mutex<SubsystemState>,
}

impl Subsystem {
    pub fn new(id: u32, nqn: &str, kind: SubsystemKind) -> Subsystem {
        Subsystem {
            id,
            nqn: nqn.to_string(),
            kind,
            state: Mutex::new(SubsystemState {
                serial: DEFAULT_SERIAL.into(),
                model: DEFAULT_MODEL.into(),
                allow_any_host: kind == SubsystemKind::Discovery,
                hosts: Vec::new(),
                listeners: Vec::new(),
                namespaces: BTreeMap::new(),
                max_namespaces: if kind == SubsystemKind::Discovery { 0 } else { DEFAULT_MAX_NAMESPACES },
                min_cntlid: MIN_CNTLID,
                max_cntlid: MAX_CNTLID,
                next_cntlid: MIN_CNTLID,
                controllers: BTreeMap::new(),
            }),
        }
    }

    /// Whether `hostnqn` may connect (byte-for-byte comparison, as SPDK does).
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let state = self.state.lock();
        state.allow_any_host || state.hosts.iter().any(|host| host == hostnqn)
    }

    /// Whether a connection that arrived on `local` may reach this subsystem. The
    /// discovery subsystem answers on every listener.
    pub fn listener_allowed(&self, local: SocketAddr) -> bool {
        self.kind == SubsystemKind::Discovery
            || self.state.lock().listeners.iter().any(|listener| listener.addr == local)
    }

    /// The next free controller ID in [min_cntlid, max_cntlid], wrapping.
    pub fn allocate_cntlid(state: &mut SubsystemState) -> Option<u16> {
        let span = u32::from(state.max_cntlid - state.min_cntlid) + 1;
        // The range is set after creation (nvmf_create_subsystem's min_cntlid), so the
        // cursor may still sit outside it.
        if !(state.min_cntlid..=state.max_cntlid).contains(&state.next_cntlid) {
            state.next_cntlid = state.min_cntlid;
        }
        for _ in 0..span {
            let candidate = state.next_cntlid;
            state.next_cntlid = if candidate >= state.max_cntlid { state.min_cntlid } else { candidate + 1 };
            if !state.controllers.contains_key(&candidate) {
                return Some(candidate);
            }
        }
        None
    }

    /// The lowest NSID not in use, up to max_namespaces.
    pub fn free_nsid(state: &SubsystemState) -> Option<u32> {
        (1..=state.max_namespaces).find(|nsid| !state.namespaces.contains_key(nsid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nqns_per_spec() {
        for good in [
            "nqn.2016-06.io.spdk:cnode1",
            "nqn.2016-06.io.peerless:quickstart",
            DISCOVERY_NQN,
            "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "nqn.2021-12.com.example",
        ] {
            assert_eq!(validate_nqn(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("iqn.2016-06.io.spdk:x", "must start with 'nqn.'"),
            ("nqn.16-06.io.spdk:x", "date"),
            ("nqn.2016-13.io.spdk:x", "date"),
            ("nqn.2016-06.:x", "reverse domain"),
            ("nqn.2016-06.-bad.io:x", "reverse domain"),
            ("nqn.2014-08.org.nvmexpress:uuid:nope", "not a UUID"),
        ] {
            let err = validate_nqn(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!("nqn.2016-06.io.spdk:{}", "x".repeat(210));
        assert!(validate_nqn(&long).unwrap_err().contains("223"));
    }

    #[test]
    fn serials_models_and_cntlids() {
        assert!(validate_ascii("serial_number", "SPDK00000000000001", SERIAL_MAX_BYTES).is_ok());
        assert!(validate_ascii("serial_number", "123456789012345678901", SERIAL_MAX_BYTES).unwrap_err().contains("20"));
        assert!(validate_ascii("model_number", "caf\u{e9}", MODEL_MAX_BYTES).unwrap_err().contains("printable ASCII"));
        let subsystem = Subsystem::new(1, "nqn.2016-06.io.spdk:cnode1", SubsystemKind::Nvme);
        let mut state = subsystem.state.lock();
        state.min_cntlid = 5;
        state.max_cntlid = 6;
        assert_eq!(Subsystem::allocate_cntlid(&mut state), Some(5), "the first ID is the range's first");
        assert_eq!(Subsystem::allocate_cntlid(&mut state), Some(6));
        assert_eq!(Subsystem::allocate_cntlid(&mut state), Some(5), "IDs wrap when free");
    }
}
