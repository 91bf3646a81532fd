//! Identify Controller on an NVMe SSD through `mem::pci` alone, in safe code: the
//! smallest user of the module's whole stack (BAR mapping, VFIO or uio, bus addresses of
//! registered DMA memory, DMA buffers shared with the device). Not a driver: the bdev
//! module `nvme` is. Used in the guest lab to check the module against a real controller.
//!
//! `nvme_identify BDF vfio|vfio-va|uio`: `vfio` maps memory at IOVAs of its own
//! (`IovaTable`), `vfio-va` at IOVA = VA (the container as listener; needs a 48-bit
//! IOMMU), `uio` uses physical addresses (`PhysTable`; root, device on uio_pci_generic).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerless_core::mem::pci::{
    watch_host_memory, HostMemListener, HostMemWatch, IovaTable, Mmio, PhysTable, VfioContainer, VfioDevice,
};
use peerless_core::mem::DmaBuf;

// NVMe 2.0 base §3.1.4: controller registers.
const CAP: usize = 0x00;
const VS: usize = 0x08;
const CC: usize = 0x14;
const CSTS: usize = 0x1c;
const AQA: usize = 0x24;
const ASQ: usize = 0x28;
const ACQ: usize = 0x30;
const DOORBELLS: usize = 0x1000;
const QUEUE_ENTRIES: u32 = 64;
const IDENTIFY: u32 = 0x06;
const CNS_CONTROLLER: u32 = 0x01;

type Translate = Box<dyn Fn(usize) -> Option<u64>>;

/// What keeps the device reachable: its BAR, and the translation of host memory.
struct Access {
    bar: Mmio,
    translate: Translate,
    _watch: HostMemWatch,
    _device: Option<VfioDevice>,
}

fn open(bdf: &str, mode: &str) -> Result<Access, String> {
    let err = |e: peerless_core::mem::Error| e.to_string();
    match mode {
        "vfio" | "vfio-va" => {
            let container = Arc::new(VfioContainer::open().map_err(err)?);
            let device = VfioDevice::open(&container, bdf).map_err(err)?;
            if device.can_reset() {
                device.reset().map_err(err)?;
                println!("{bdf}: VFIO_DEVICE_RESET done (group {})", device.iommu_group());
            } else {
                println!("{bdf}: no reset offered (group {})", device.iommu_group());
            }
            let mut id = [0u8; 4];
            device.config_read(0, &mut id).map_err(err)?;
            println!(
                "{bdf}: config vendor {:#06x} device {:#06x}",
                u16::from_le_bytes([id[0], id[1]]),
                u16::from_le_bytes([id[2], id[3]])
            );
            device.set_bus_master(true).map_err(err)?;
            let bar = device.map_bar(0).map_err(err)?;
            let (watch, translate): (HostMemWatch, Translate) = if mode == "vfio" {
                let table = IovaTable::new(Arc::clone(&container));
                let watch = watch_host_memory(Arc::clone(&table) as Arc<dyn HostMemListener>).map_err(err)?;
                (watch, Box::new(move |addr| table.translate(addr)))
            } else {
                let watch = watch_host_memory(container as Arc<dyn HostMemListener>).map_err(err)?;
                (watch, Box::new(|addr| Some(addr as u64)))
            };
            Ok(Access { bar, translate, _watch: watch, _device: Some(device) })
        }
        "uio" => {
            let dir = format!("/sys/bus/pci/devices/{bdf}");
            let rw = |name: &str| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(format!("{dir}/{name}"))
                    .map_err(|e| format!("{dir}/{name}: {e}"))
            };
            let config = rw("config")?;
            set_bus_master(&config)?;
            let resource = rw("resource0")?;
            let len = resource.metadata().map_err(|e| e.to_string())?.len() as usize;
            let bar = Mmio::map_file(&resource, 0, len).map_err(err)?;
            let table = PhysTable::new();
            let watch = watch_host_memory(Arc::clone(&table) as Arc<dyn HostMemListener>).map_err(err)?;
            Ok(Access { bar, translate: Box::new(move |addr| table.translate(addr)), _watch: watch, _device: None })
        }
        other => Err(format!("mode {other:?}: vfio, vfio-va or uio")),
    }
}

/// PCI Local Bus 3.0 §6.2.2: Command register bit 2, Bus Master Enable.
fn set_bus_master(config: &std::fs::File) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let mut command = [0u8; 2];
    config.read_exact_at(&mut command, 4).map_err(|e| format!("config read: {e}"))?;
    let value = u16::from_le_bytes(command) | 1 << 2;
    config.write_all_at(&value.to_le_bytes(), 4).map_err(|e| format!("config write: {e}"))
}

fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn run(bdf: &str, mode: &str) -> Result<(), String> {
    let access = open(bdf, mode)?;
    let bar = &access.bar;
    let cap = bar.read64(CAP);
    let timeout = Duration::from_millis(500 * ((cap >> 24) & 0xff).max(1));
    println!("{bdf} ({mode}): BAR0 {} bytes, CAP {cap:#018x}, VS {:#010x}", bar.len(), bar.read32(VS));

    bar.write32(CC, 0);
    wait("CSTS.RDY = 0", timeout, || bar.read32(CSTS) & 1 == 0)?;
    let mut sq = DmaBuf::alloc(4096).map_err(|e| e.to_string())?;
    let cq = DmaBuf::alloc(4096).map_err(|e| e.to_string())?;
    let data = DmaBuf::alloc(4096).map_err(|e| e.to_string())?;
    let bus = |buf: &DmaBuf, name: &str| (access.translate)(buf.addr()).ok_or(format!("{name}: no bus address"));
    let (sq_bus, cq_bus, data_bus) = (bus(&sq, "sq")?, bus(&cq, "cq")?, bus(&data, "data")?);
    println!("bus addresses: sq {sq_bus:#x} cq {cq_bus:#x} data {data_bus:#x}");
    bar.write32(AQA, ((QUEUE_ENTRIES - 1) << 16) | (QUEUE_ENTRIES - 1));
    bar.write64(ASQ, sq_bus);
    bar.write64(ACQ, cq_bus);
    // CC: IOCQES 16 bytes (2^4), IOSQES 64 bytes (2^6), 4 KiB pages, NVM command set, EN.
    bar.write32(CC, (4 << 20) | (6 << 16) | 1);
    wait("CSTS.RDY = 1", timeout, || bar.read32(CSTS) & 1 == 1)?;

    let mut sqe = [0u8; 64];
    sqe[0..4].copy_from_slice(&(IDENTIFY | (7 << 16)).to_le_bytes());
    sqe[24..32].copy_from_slice(&data_bus.to_le_bytes());
    sqe[40..44].copy_from_slice(&CNS_CONTROLLER.to_le_bytes());
    sq.write_bytes(0, &sqe);
    bar.write32(DOORBELLS, 1);
    wait("the completion", Duration::from_secs(5), || cq.read_volatile_u32(12) & (1 << 16) != 0)?;
    let dw3 = cq.read_volatile_u32(12);
    let status = dw3 >> 17;
    if dw3 & 0xffff != 7 || status != 0 {
        return Err(format!("completion: cid {} status {status:#x}", dw3 & 0xffff));
    }
    let mut id = vec![0u8; 4096];
    for (i, word) in id.chunks_exact_mut(4).enumerate() {
        word.copy_from_slice(&data.read_volatile_u32(i * 4).to_le_bytes());
    }
    let text = |range: std::ops::Range<usize>| String::from_utf8_lossy(&id[range]).trim().to_string();
    println!("identify: serial {:?} model {:?} firmware {:?}", text(4..24), text(24..64), text(64..72));
    bar.write32(CC, 0);
    wait("CSTS.RDY = 0 at the end", timeout, || bar.read32(CSTS) & 1 == 0)?;
    // Freed buffers leave the table (and, over VFIO, the IOMMU) at once.
    let addr = data.addr();
    drop(data);
    if (access.translate)(addr).is_some() && mode != "vfio-va" {
        return Err(format!("{addr:#x} still translates after its buffer was freed"));
    }
    println!("ok");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(bdf), Some(mode)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: nvme_identify BDF vfio|vfio-va|uio");
        std::process::exit(2);
    };
    if let Err(err) = run(bdf, mode) {
        eprintln!("nvme_identify: {err}");
        std::process::exit(1);
    }
}
