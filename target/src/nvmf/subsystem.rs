//! NVM subsystems as the target models them: identity (NQN, serial, model), who may
//! connect (hosts, listeners), namespaces over claimed bdevs, and controller IDs.
//! Control plane only: guarded by a mutex, read at connect time and by RPCs; the data
//! path sees namespaces through each poll group's own table (see `poll_group`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::keyring::KeyRef;

use super::ana::{AnaState, ListenerAna, MAX_ANA_GROUPS};
use super::auth::session::HostKeys;
use super::ctrlr::Controller;
use super::error::NvmfError;
use super::io_cmd::CommandLimits;
use super::namespace::Namespace;

pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// NVMe Base 2.0, 4.5: an NQN is at most 223 bytes.
pub const NQN_MAX_BYTES: usize = 223;
const NQN_UUID_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";
pub const SERIAL_MAX_BYTES: usize = 20;
pub const MODEL_MAX_BYTES: usize = 40;
pub const DEFAULT_SERIAL: &str = "00000000000000000000";
pub const DEFAULT_MODEL: &str = "SPDK bdev Controller";
pub const DEFAULT_MAX_NAMESPACES: u32 = 32;
/// NSIDs run from 1 to FFFFFFFEh; FFFFFFFFh is the broadcast value (NVMe Base 2.0, 3.2.1).
pub const MAX_NSID: u32 = 0xffff_fffe;
pub const MIN_CNTLID: u16 = 1;
/// 0xFFF0 and above are reserved (0xFFFF asks for a dynamic controller).
pub const MAX_CNTLID: u16 = 0xffef;
/// An administrative label is 4 to 256 printable ASCII bytes: SPDK's bounds, set by the
/// extended discovery log entry attribute SPDK fills with it.
pub const ADMIN_LABEL_MIN_BYTES: usize = 4;
pub const ADMIN_LABEL_MAX_BYTES: usize = 256;

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

/// What an NVM subsystem is created with (`nvmf_create_subsystem`); `None` and 0 take
/// the defaults. [`SubsystemConfig::validate`] names the field it refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsystemConfig {
    pub nqn: String,
    pub serial: Option<String>,
    pub model: Option<String>,
    pub admin_label: Option<String>,
    /// 0 means [`DEFAULT_MAX_NAMESPACES`].
    pub max_namespaces: u32,
    pub allow_any_host: bool,
    /// Asymmetric Namespace Access reporting (NVMe Base 2.0, 8.1), fixed at creation.
    pub ana_reporting: bool,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    pub limits: CommandLimits,
}

impl SubsystemConfig {
    /// A subsystem named `nqn` with every default.
    pub fn new(nqn: &str) -> SubsystemConfig {
        SubsystemConfig {
            nqn: nqn.to_string(),
            serial: None,
            model: None,
            admin_label: None,
            max_namespaces: 0,
            allow_any_host: false,
            ana_reporting: false,
            min_cntlid: MIN_CNTLID,
            max_cntlid: MAX_CNTLID,
            limits: CommandLimits::default(),
        }
    }

    /// The NSID limit the subsystem will have.
    pub fn effective_max_namespaces(&self) -> u32 {
        if self.max_namespaces == 0 {
            DEFAULT_MAX_NAMESPACES
        } else {
            self.max_namespaces
        }
    }

    pub fn validate(&self) -> Result<(), NvmfError> {
        validate_nqn(&self.nqn).map_err(|why| NvmfError::Invalid(format!("Invalid NQN: {why}")))?;
        if self.nqn == DISCOVERY_NQN {
            return Err(NvmfError::Invalid(format!("nqn: {DISCOVERY_NQN} is the discovery subsystem's")));
        }
        if let Some(serial) = &self.serial {
            validate_ascii("serial_number", serial, SERIAL_MAX_BYTES).map_err(NvmfError::Invalid)?;
        }
        if let Some(model) = &self.model {
            validate_ascii("model_number", model, MODEL_MAX_BYTES).map_err(NvmfError::Invalid)?;
        }
        if let Some(label) = &self.admin_label {
            validate_ascii("admin_label", label, ADMIN_LABEL_MAX_BYTES).map_err(NvmfError::Invalid)?;
            if label.len() < ADMIN_LABEL_MIN_BYTES {
                return Err(NvmfError::Invalid(format!(
                    "admin_label '{label}' is {} bytes; it must be {ADMIN_LABEL_MIN_BYTES} to {ADMIN_LABEL_MAX_BYTES}",
                    label.len()
                )));
            }
        }
        if self.max_namespaces > MAX_NSID {
            return Err(NvmfError::Invalid(format!(
                "max_namespaces {} is more than the {MAX_NSID} NSIDs there are",
                self.max_namespaces
            )));
        }
        if self.ana_reporting && self.effective_max_namespaces() > MAX_ANA_GROUPS {
            return Err(NvmfError::Invalid(format!(
                "max_namespaces {} with ana_reporting: ANA groups number up to max_namespaces and each listener \
                 keeps a state per group, so at most {MAX_ANA_GROUPS}",
                self.max_namespaces
            )));
        }
        let (min, max) = (self.min_cntlid, self.max_cntlid);
        if min < MIN_CNTLID || max > MAX_CNTLID || min > max {
            return Err(NvmfError::Invalid(format!(
                "min_cntlid-max_cntlid {min}-{max} must lie within {MIN_CNTLID}-{MAX_CNTLID}"
            )));
        }
        Ok(())
    }
}

/// A listener of a subsystem: its address as RPCs name it and `nvmf_get_subsystems`
/// prints it, and its ANA states (no groups when the subsystem does not report ANA).
#[derive(Clone, Debug)]
pub struct ListenAddress {
    pub addr: SocketAddr,
    pub ana: Arc<ListenerAna>,
    /// Hosts reach it over TLS 1.3 only (`secure_channel`, NVMe/TCP 1.0, 3.6.1).
    pub secure: bool,
    /// Its transport, as SPDK prints it ("TCP", "RDMA").
    pub trtype: &'static str,
}

impl ListenAddress {
    /// A listener at `addr` with `groups` ANA groups, each in state `initial`.
    pub fn new(addr: SocketAddr, groups: u32, initial: AnaState) -> ListenAddress {
        ListenAddress { addr, ana: Arc::new(ListenerAna::new(groups, initial)), secure: false, trtype: "TCP" }
    }

    pub fn to_json(&self) -> serde_json::Value {
        transport_address_json(self.trtype, self.addr)
    }

    /// Whether this is the listener of transport `trtype` at `addr`. A listener is its
    /// whole transport ID, as SPDK compares them (trtype, adrfam, traddr, trsvcid): one
    /// address and port may carry a TCP listener and an RDMA one, each its own.
    pub fn is(&self, trtype: &str, addr: SocketAddr) -> bool {
        self.addr == addr && self.trtype.eq_ignore_ascii_case(trtype)
    }
}

/// An address of transport `trtype` as SPDK's RPCs print a transport ID.
pub fn transport_address_json(trtype: &str, addr: SocketAddr) -> serde_json::Value {
    let adrfam = if addr.is_ipv6() { "IPv6" } else { "IPv4" };
    serde_json::json!({"trtype": trtype, "adrfam": adrfam, "traddr": addr.ip().to_string(),
        "trsvcid": addr.port().to_string()})
}

pub struct SubsystemState {
    pub serial: String,
    pub model: String,
    /// Shown by `nvmf_get_subsystems` and saved with the configuration.
    pub admin_label: Option<String>,
    /// Set at creation and fixed for the subsystem's life (poll groups cache them).
    pub limits: CommandLimits,
    pub allow_any_host: bool,
    pub ana_reporting: bool,
    pub hosts: Vec<String>,
    /// DH-HMAC-CHAP keys of listed hosts that have them (NVMe Base 2.0, 8.13).
    pub host_keys: BTreeMap<String, HostKeys>,
    /// TLS pre-shared keys of listed hosts that have one (`nvmf_subsystem_add_host psk`).
    pub host_psks: BTreeMap<String, KeyRef>,
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
                admin_label: None,
                limits: CommandLimits::default(),
                allow_any_host: kind == SubsystemKind::Discovery,
                ana_reporting: false,
                hosts: Vec::new(),
                host_keys: BTreeMap::new(),
                host_psks: BTreeMap::new(),
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

    /// The DH-HMAC-CHAP keys configured for `hostnqn` (none when it has none).
    pub fn host_keys(&self, hostnqn: &str) -> HostKeys {
        self.state.lock().host_keys.get(hostnqn).cloned().unwrap_or_default()
    }

    /// The TLS pre-shared key configured for `hostnqn`, if any.
    pub fn host_psk(&self, hostnqn: &str) -> Option<KeyRef> {
        self.state.lock().host_psks.get(hostnqn).cloned()
    }

    /// Whether this subsystem's listener of `trtype` at `local` takes TLS connections only.
    pub fn listener_secure(&self, trtype: &str, local: SocketAddr) -> bool {
        self.state.lock().listeners.iter().any(|listener| listener.is(trtype, local) && listener.secure)
    }

    /// Whether a connection that arrived over `trtype` on `local` may reach this
    /// subsystem: one of its listeners is that transport at that address. The discovery
    /// subsystem answers on every listener.
    pub fn listener_allowed(&self, trtype: &str, local: SocketAddr) -> bool {
        self.kind == SubsystemKind::Discovery
            || self.state.lock().listeners.iter().any(|listener| listener.is(trtype, local))
    }

    /// ANA groups each listener keeps states for: ANAGRPMAX, which is max_namespaces as
    /// SPDK reports it, or none without ANA reporting.
    pub fn ana_groups(state: &SubsystemState) -> u32 {
        if state.ana_reporting {
            state.max_namespaces
        } else {
            0
        }
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

    /// Applies a validated configuration to a new subsystem.
    pub fn configure(&self, config: &SubsystemConfig) {
        debug_assert!(self.kind.is_nvme() && config.nqn == self.nqn);
        let mut state = self.state.lock();
        debug_assert!(state.namespaces.is_empty() && state.controllers.is_empty(), "configured once, when created");
        if let Some(serial) = &config.serial {
            state.serial = serial.clone();
        }
        if let Some(model) = &config.model {
            state.model = model.clone();
        }
        state.admin_label = config.admin_label.clone();
        if config.max_namespaces > 0 {
            state.max_namespaces = config.max_namespaces;
        }
        state.allow_any_host = config.allow_any_host;
        state.ana_reporting = config.ana_reporting;
        state.min_cntlid = config.min_cntlid;
        state.max_cntlid = config.max_cntlid;
        state.next_cntlid = config.min_cntlid;
        state.limits = config.limits;
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

    #[test]
    fn configurations_are_checked_field_by_field() {
        let good = SubsystemConfig {
            serial: Some("SN1".into()),
            admin_label: Some("rack-7".into()),
            min_cntlid: 5,
            max_cntlid: 9,
            limits: CommandLimits { dmrsl: 8, wzsl: 3 },
            ..SubsystemConfig::new("nqn.2016-06.io.spdk:cnode1")
        };
        assert_eq!(good.validate(), Ok(()));
        let subsystem = Subsystem::new(1, &good.nqn, SubsystemKind::Nvme);
        subsystem.configure(&good);
        let state = subsystem.state.lock();
        assert_eq!((state.serial.as_str(), state.model.as_str()), ("SN1", DEFAULT_MODEL));
        assert_eq!((state.admin_label.as_deref(), state.max_namespaces), (Some("rack-7"), DEFAULT_MAX_NAMESPACES));
        assert_eq!((state.min_cntlid, state.max_cntlid, state.next_cntlid), (5, 9, 5));
        assert_eq!(state.limits, CommandLimits { dmrsl: 8, wzsl: 3 });
        drop(state);
        let refused = |config: SubsystemConfig, why: &str| {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(why), "{config:?}: {err}");
        };
        refused(SubsystemConfig::new("cnode1"), "Invalid NQN");
        refused(SubsystemConfig::new(DISCOVERY_NQN), "discovery");
        refused(SubsystemConfig { admin_label: Some("abc".into()), ..good.clone() }, "admin_label 'abc' is 3 bytes");
        refused(SubsystemConfig { admin_label: Some("x".repeat(257)), ..good.clone() }, "admin_label");
        refused(SubsystemConfig { admin_label: Some("tab\there".into()), ..good.clone() }, "printable ASCII");
        refused(SubsystemConfig { model: Some("M".repeat(41)), ..good.clone() }, "model_number");
        refused(SubsystemConfig { max_namespaces: u32::MAX, ..good.clone() }, "max_namespaces");
        refused(SubsystemConfig { min_cntlid: 10, ..good.clone() }, "min_cntlid-max_cntlid 10-9");
        refused(SubsystemConfig { max_cntlid: 0xfff0, ..good.clone() }, "must lie within 1-65519");
        let ana = SubsystemConfig { ana_reporting: true, max_namespaces: MAX_ANA_GROUPS, ..good.clone() };
        assert_eq!(ana.validate(), Ok(()));
        refused(SubsystemConfig { max_namespaces: MAX_ANA_GROUPS + 1, ..ana }, "at most 1024");
        assert_eq!(SubsystemConfig { max_namespaces: MAX_ANA_GROUPS + 1, ..good }.validate(), Ok(()), "only with ANA");
    }
}
