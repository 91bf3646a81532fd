//! Reaching a PCI function from user space: through VFIO (an IOMMU container; bus
//! addresses from an IOVA table) or uio_pci_generic (no IOMMU; bus address = physical
//! address, so DMA memory must stay put: hugepages). Which one follows the driver the
//! function is bound to; any other driver, or none, is refused with what to do.
//!
//! Both need root: VFIO to open `/dev/vfio/N` and pin DMA memory (RLIMIT_MEMLOCK), uio to
//! map `resourceN` and to read physical addresses from `/proc/self/pagemap`
//! (CAP_SYS_ADMIN).

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use peerless_core::mem::pci::{
    watch_host_memory, HostMemListener, HostMemWatch, IovaTable, Mmio, PhysTable, VfioContainer, VfioDevice,
};

use super::queue::BusTranslate;

/// PCI configuration space: the command register and its enable bits (PCI 3.0 §6.2.2).
const CONFIG_COMMAND: u64 = 0x04;
const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;
const CONFIG_BAR0: u64 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Vfio,
    Uio,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Vfio => "vfio",
            Route::Uio => "uio",
        }
    }
}

enum Access {
    // The hold on the container drops first (fields drop in order), while the device is
    // still open and its group still in the container.
    Vfio { _user: VfioUser, device: VfioDevice, iovas: Arc<IovaTable> },
    Uio { config: File, phys: Arc<PhysTable> },
}

/// An opened PCI function with BAR0 mapped.
pub struct PciFunction {
    bdf: String,
    route: Route,
    bar0: Arc<Mmio>,
    access: Access,
}

/// The canonical `DDDD:BB:DD.F` form of a PCI address, or why it is not one. The short
/// `BB:DD.F` form takes domain 0, as SPDK's does.
pub fn canonical_bdf(text: &str) -> Result<String, String> {
    let full = if text.matches(':').count() == 1 { format!("0000:{text}") } else { text.to_string() };
    let bad = || format!("traddr {text:?} is not a PCI address like 0000:00:04.0");
    let (domain, rest) = full.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (device, function) = rest.split_once('.').ok_or_else(bad)?;
    let hex = |field: &str, digits: usize, max: u32| {
        (field.len() <= digits && !field.is_empty() && field.bytes().all(|byte| byte.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(field, 16).ok())
            .flatten()
            .filter(|value| *value <= max)
            .ok_or_else(bad)
    };
    let (domain, bus, device, function) =
        (hex(domain, 4, 0xffff)?, hex(bus, 2, 0xff)?, hex(device, 2, 0x1f)?, hex(function, 1, 7)?);
    Ok(format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}"))
}

fn sysfs(bdf: &str) -> PathBuf {
    PathBuf::from("/sys/bus/pci/devices").join(bdf)
}

/// The driver a function is bound to, if any.
pub fn bound_driver(bdf: &str) -> Result<Option<String>, String> {
    let dir = sysfs(bdf);
    if !dir.exists() {
        return Err(format!("no PCI function {bdf} (nothing at {})", dir.display()));
    }
    Ok(std::fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|link| link.file_name().map(|name| name.to_string_lossy().into_owned())))
}

fn rebind_hint(bdf: &str) -> String {
    format!(
        "bind it to vfio-pci (with an IOMMU) or uio_pci_generic: \
         echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; \
         echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; echo {bdf} > /sys/bus/pci/drivers_probe"
    )
}

/// One VFIO container for the process, every function's group in it, and the table that
/// maps registered host memory into its IOMMU. The IOVAs are the table's own rather than
/// the virtual addresses, so an IOMMU narrower than user addresses (39 bits is common)
/// works as well as a 48-bit one.
struct SharedVfio {
    container: Arc<VfioContainer>,
    iovas: Option<(Arc<IovaTable>, HostMemWatch)>,
    /// Functions opened through it.
    users: usize,
}

static SHARED_VFIO: Mutex<Option<SharedVfio>> = Mutex::new(None);

/// A function's hold on the shared container. The last one to go unmaps host memory and
/// closes the container while its device is still open: memory allocated afterwards is
/// not offered to an IOMMU that no device of ours sits behind any more.
struct VfioUser;

impl VfioUser {
    fn join() -> Result<(VfioUser, Arc<VfioContainer>), String> {
        let mut shared = SHARED_VFIO.lock();
        if let Some(shared) = shared.as_mut() {
            shared.users += 1;
            return Ok((VfioUser, shared.container.clone()));
        }
        let container = Arc::new(VfioContainer::open().map_err(|err| err.to_string())?);
        *shared = Some(SharedVfio { container: container.clone(), iovas: None, users: 1 });
        Ok((VfioUser, container))
    }
}

impl Drop for VfioUser {
    fn drop(&mut self) {
        let last = {
            let mut shared = SHARED_VFIO.lock();
            match shared.as_mut() {
                Some(state) if state.users > 1 => {
                    state.users -= 1;
                    None
                }
                _ => shared.take(),
            }
        };
        // Outside the lock: the watch's end unmaps every region through the table.
        if let Some(SharedVfio { iovas, container, .. }) = last {
            drop(iovas);
            drop(container);
        }
    }
}

/// The container's IOVA table, started once a group has set the IOMMU type: VFIO maps
/// nothing before that. It maps every peer window too.
fn vfio_iovas() -> Result<Arc<IovaTable>, String> {
    let mut shared = SHARED_VFIO.lock();
    let shared = shared.as_mut().ok_or("no VFIO container")?;
    if let Some((table, _)) = &shared.iovas {
        return Ok(table.clone());
    }
    let table = IovaTable::new(shared.container.clone());
    let watch = watch_host_memory(table.clone()).map_err(|err| format!("VFIO DMA mapping: {err}"))?;
    for &(start, len) in PEER_WINDOWS.lock().iter() {
        map_peer_window(&table, start, len);
    }
    shared.iovas = Some((table.clone(), watch));
    Ok(table)
}

/// Device memory windows (CMBs) in this process, by CPU address and length. Each is mapped
/// into the VFIO container's IOMMU beside host memory, so that a function behind it DMAs
/// to another SSD's CMB peer to peer: its PRPs carry an IOVA, which the IOMMU turns into
/// that BAR's bus address, as SPDK registers a CMB in its memory maps. (Over uio no IOMMU
/// stands between the two, and PRPs carry the bus address itself.) Lock order:
/// `SHARED_VFIO`, then this.
static PEER_WINDOWS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Offers a CMB window to the functions behind the VFIO container, now and later.
pub fn share_peer_window(window: (usize, usize)) {
    let shared = SHARED_VFIO.lock();
    PEER_WINDOWS.lock().push(window);
    if let Some((table, _)) = shared.as_ref().and_then(|shared| shared.iovas.as_ref()) {
        map_peer_window(table, window.0, window.1);
    }
}

/// Withdraws a window before its BAR mapping may go.
pub fn unshare_peer_window(window: (usize, usize)) {
    let shared = SHARED_VFIO.lock();
    PEER_WINDOWS.lock().retain(|shared_window| *shared_window != window);
    if let Some((table, _)) = shared.as_ref().and_then(|shared| shared.iovas.as_ref()) {
        table.host_region_removed(window.0, window.1);
    }
}

fn map_peer_window(table: &IovaTable, start: usize, len: usize) {
    // Not fatal: a peer then reaches that CMB through bounce buffers, and says so in its
    // bounced_commands.
    match table.host_region_added(start, len) {
        Ok(()) => peerless_core::log_notice!("nvme: a CMB window of {} MiB mapped for VFIO peers", len >> 20),
        Err(err) => {
            peerless_core::log_warn!("nvme: a CMB window of {} MiB is not mapped for VFIO peers: {err}", len >> 20)
        }
    }
}

fn shared_phys_table() -> Result<Arc<PhysTable>, String> {
    static TABLE: OnceLock<Result<(Arc<PhysTable>, HostMemWatch), String>> = OnceLock::new();
    match TABLE.get_or_init(|| {
        let table = PhysTable::new();
        let watch = watch_host_memory(table.clone()).map_err(|err| format!("physical address table: {err}"))?;
        Ok((table, watch))
    }) {
        Ok((table, _)) => Ok(table.clone()),
        Err(err) => Err(err.clone()),
    }
}

impl PciFunction {
    pub fn open(bdf: &str) -> Result<PciFunction, String> {
        let bdf = canonical_bdf(bdf)?;
        let driver = bound_driver(&bdf)?;
        let (route, access, bar0) = match driver.as_deref() {
            Some("vfio-pci") => {
                let (user, container) = VfioUser::join()?;
                let device = VfioDevice::open(&container, &bdf).map_err(|err| err.to_string())?;
                let iovas = vfio_iovas()?;
                let bar0 = device.map_bar(0).map_err(|err| format!("{bdf}: BAR0: {err}"))?;
                (Route::Vfio, Access::Vfio { _user: user, device, iovas }, bar0)
            }
            Some("uio_pci_generic") => {
                let path = sysfs(&bdf);
                let config = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path.join("config"))
                    .map_err(|err| format!("{bdf}: config space: {err} (run as root)"))?;
                let resource = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path.join("resource0"))
                    .map_err(|err| format!("{bdf}: resource0: {err} (run as root)"))?;
                let len = resource.metadata().map_err(|err| format!("{bdf}: resource0: {err}"))?.len() as usize;
                let bar0 = Mmio::map_file(&resource, 0, len).map_err(|err| format!("{bdf}: BAR0: {err}"))?;
                let phys = shared_phys_table()?;
                (Route::Uio, Access::Uio { config, phys }, bar0)
            }
            Some("nvme") => {
                return Err(format!("{bdf} is bound to the kernel's nvme driver; {}", rebind_hint(&bdf)));
            }
            Some(other) => return Err(format!("{bdf} is bound to {other}; {}", rebind_hint(&bdf))),
            None => return Err(format!("{bdf} is bound to no driver; {}", rebind_hint(&bdf))),
        };
        let function = PciFunction { bdf, route, bar0: Arc::new(bar0), access };
        let command = function.config_read16(CONFIG_COMMAND)?;
        function.config_write16(CONFIG_COMMAND, command | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER)?;
        Ok(function)
    }

    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    pub fn route(&self) -> Route {
        self.route
    }

    pub fn bar0(&self) -> &Arc<Mmio> {
        &self.bar0
    }

    /// Whether the function is still on the bus: a removed one leaves sysfs, while its
    /// BAR mapping may go on answering for a while (the kernel disables bus mastering,
    /// and the controller then fails its completions with CSTS.CFS instead).
    pub fn present(&self) -> bool {
        sysfs(&self.bdf).exists()
    }

    /// Over VFIO, an eventfd the kernel signals when it wants the device back (a remove
    /// or unbind waits until the device is closed); None over uio, where nothing waits.
    pub fn removal_request(&self) -> Option<Result<OwnedFd, String>> {
        match &self.access {
            Access::Vfio { device, .. } => Some(device.request_notifier().map_err(|err| err.to_string())),
            Access::Uio { .. } => None,
        }
    }

    /// The VFIO device, which alone of the two routes offers MSI-X vectors as eventfds
    /// (uio_pci_generic has INTx only, one line for every queue).
    pub fn vfio_device(&self) -> Option<&VfioDevice> {
        match &self.access {
            Access::Vfio { device, .. } => Some(device),
            Access::Uio { .. } => None,
        }
    }

    /// Maps BAR `index` (BAR0, the registers, is mapped at open: ask only for others).
    pub fn map_bar(&self, index: u32) -> Result<Mmio, String> {
        match &self.access {
            Access::Vfio { device, .. } => device.map_bar(index).map_err(|err| err.to_string()),
            Access::Uio { .. } => {
                let path = sysfs(&self.bdf).join(format!("resource{index}"));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|err| format!("{}: {err} (run as root)", path.display()))?;
                let len = file.metadata().map_err(|err| format!("{}: {err}", path.display()))?.len() as usize;
                Mmio::map_file(&file, 0, len).map_err(|err| err.to_string())
            }
        }
        .map_err(|err| format!("{}: BAR{index}: {err}", self.bdf))
    }

    /// The bus address BAR `index` decodes (its base register, 64-bit when it says so).
    pub fn bar_bus_address(&self, index: u64) -> Result<u64, String> {
        let low = self.config_read32(CONFIG_BAR0 + 4 * index)?;
        let base = u64::from(low & !0xf);
        if low >> 1 & 0x3 == 0x2 {
            Ok(base | u64::from(self.config_read32(CONFIG_BAR0 + 4 * index + 4)?) << 32)
        } else {
            Ok(base)
        }
    }

    fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        match &self.access {
            Access::Vfio { device, .. } => device.config_read(offset, buf).map_err(|err| err.to_string()),
            Access::Uio { config, .. } => config.read_exact_at(buf, offset).map_err(|err| err.to_string()),
        }
        .map_err(|err| format!("{}: config space read at {offset:#x}: {err}", self.bdf))
    }

    fn config_write(&self, offset: u64, buf: &[u8]) -> Result<(), String> {
        match &self.access {
            Access::Vfio { device, .. } => device.config_write(offset, buf).map_err(|err| err.to_string()),
            Access::Uio { config, .. } => config.write_all_at(buf, offset).map_err(|err| err.to_string()),
        }
        .map_err(|err| format!("{}: config space write at {offset:#x}: {err}", self.bdf))
    }

    fn config_read16(&self, offset: u64) -> Result<u16, String> {
        let mut bytes = [0u8; 2];
        self.config_read(offset, &mut bytes)?;
        Ok(u16::from_le_bytes(bytes))
    }

    fn config_write16(&self, offset: u64, value: u16) -> Result<(), String> {
        self.config_write(offset, &value.to_le_bytes())
    }

    fn config_read32(&self, offset: u64) -> Result<u32, String> {
        let mut bytes = [0u8; 4];
        self.config_read(offset, &mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }
}

impl BusTranslate for PciFunction {
    fn host_bus_address(&self, addr: usize) -> Option<u64> {
        match &self.access {
            Access::Vfio { iovas, .. } => iovas.translate(addr),
            Access::Uio { phys, .. } => phys.translate(addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_are_checked_and_made_canonical() {
        assert_eq!(canonical_bdf("0000:00:04.0").unwrap(), "0000:00:04.0");
        assert_eq!(canonical_bdf("00:04.0").unwrap(), "0000:00:04.0");
        assert_eq!(canonical_bdf("0000:0A:1f.7").unwrap(), "0000:0a:1f.7");
        for bad in [
            "",
            "04.0",
            "0000:+1:04.0",
            "0000:00:20.0",
            "0000:00:04.8",
            "0000:00:04",
            "../../etc:00:04.0",
            "0000:000:04.0",
        ] {
            assert!(canonical_bdf(bad).unwrap_err().contains("not a PCI address"), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_function_is_named() {
        let err = PciFunction::open("0000:7f:1f.7").err().unwrap();
        assert!(err.contains("no PCI function 0000:7f:1f.7"), "{err}");
    }
}
