//! `peerless-perf identify`: controller and namespace data printed the way
//! spdk_nvme_identify prints them.

use std::io::{self, Write};

use crate::initiator::{hex, subtype, uuid_string, Controller, DiscoveryLog, NamespaceInfo};

const RULE: &str = "=====================================================";

pub(crate) fn field(out: &mut dyn Write, name: &str, value: impl std::fmt::Display) -> io::Result<()> {
    writeln!(out, "{:<40}{value}", format!("{name}:"))
}

fn heading(out: &mut dyn Write, title: &str) -> io::Result<()> {
    writeln!(out, "{title}\n{}", "=".repeat(title.len()))
}

pub fn print_controller(ctrl: &Controller, out: &mut dyn Write) -> io::Result<()> {
    let info = ctrl.info();
    writeln!(out, "{RULE}\nNVMe over Fabrics controller at {}: {}\n{RULE}", ctrl.addr(), ctrl.subnqn())?;
    heading(out, "Controller Capabilities/Features")?;
    field(out, "Vendor ID", format!("{:04x}", info.vid))?;
    field(out, "Subsystem Vendor ID", format!("{:04x}", info.ssvid))?;
    field(out, "Serial Number", &info.serial)?;
    field(out, "Model Number", &info.model)?;
    field(out, "Firmware Version", &info.firmware)?;
    field(out, "Controller ID", format!("0x{:04x}", info.cntlid))?;
    let controller_type = match info.cntrltype {
        1 => "I/O Controller",
        2 => "Discovery Controller",
        3 => "Administrative Controller",
        _ => "Not Reported",
    };
    field(out, "Controller Type", controller_type)?;
    let mdts = info.max_transfer_bytes(ctrl.cap().min_page_bytes());
    field(out, "Max Data Transfer Size", mdts.map_or("Unlimited".to_string(), |b| b.to_string()))?;
    field(out, "Max Number of Namespaces", info.nn)?;
    field(out, "NVMe Specification Version (VS)", format!("{}.{}", ctrl.vs() >> 16, (ctrl.vs() >> 8) & 0xff))?;
    field(out, "NVMe Specification Version (Identify)", info.version_string())?;
    field(out, "Maximum Queue Entries", ctrl.cap().max_queue_entries())?;
    field(out, "Timeout", format!("{} ms", ctrl.cap().ready_timeout_ms()))?;
    field(out, "Keep Alive Granularity", format!("{} ms", u32::from(info.kas) * 100))?;
    field(out, "Async Event Request Limit", u16::from(info.aerl) + 1)?;
    field(out, "Abort Command Limit", u16::from(info.acl) + 1)?;
    field(out, "Error Log Page Entries", u16::from(info.elpe) + 1)?;
    field(out, "Volatile Write Cache", if info.vwc & 1 != 0 { "Present" } else { "Not Present" })?;
    field(out, "Maximum Outstanding Commands", info.maxcmd)?;
    field(out, "Compare Command", supported(info.oncs & 1 != 0))?;
    field(out, "Dataset Management Command", supported(info.oncs & (1 << 2) != 0))?;
    field(out, "Write Zeroes Command", supported(info.oncs & (1 << 3) != 0))?;
    field(out, "SGL Supported", supported(info.sgls & 0x3 != 0))?;
    field(out, "NVM Subsystem NQN", &info.subnqn)?;
    heading(out, "NVMe over Fabrics Attributes")?;
    field(out, "I/O Command Capsule Size", format!("{} bytes", info.ioccsz * 16))?;
    field(out, "I/O Response Capsule Size", format!("{} bytes", info.iorcsz * 16))?;
    field(out, "In Capsule Data Offset", format!("{} bytes", u32::from(info.icdoff) * 16))?;
    field(out, "Controller Model", if info.fcatt & 1 == 0 { "Dynamic" } else { "Static" })?;
    field(out, "Max SGL Data Block Descriptors", info.msdbd)?;
    Ok(())
}

fn supported(yes: bool) -> &'static str {
    if yes {
        "Supported"
    } else {
        "Not Supported"
    }
}

pub fn print_namespace(ns: &NamespaceInfo, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "Namespace ID:{}", ns.nsid)?;
    let mib = ns.size_bytes() / (1024 * 1024);
    field(out, "Size (in LBAs)", format!("{} ({mib}MiB)", ns.nsze))?;
    field(out, "Capacity (in LBAs)", ns.ncap)?;
    field(out, "Utilization (in LBAs)", ns.nuse)?;
    field(out, "NGUID", hex(&ns.nguid))?;
    field(out, "EUI64", hex(&ns.eui64))?;
    field(out, "UUID", ns.uuid.as_ref().map_or("Not Reported".to_string(), uuid_string))?;
    field(out, "Thin Provisioning", supported(ns.nsfeat & 1 != 0))?;
    field(out, "Multi-Path I/O", if ns.nmic & 1 != 0 { "May be shared" } else { "Private" })?;
    field(out, "Deallocated Reads", if ns.dlfeat & 0x7 == 1 { "All 0x00" } else { "Not Reported" })?;
    field(out, "Number of LBA Formats", u16::from(ns.nlbaf) + 1)?;
    field(out, "Current LBA Format", format!("LBA Format #{:02}", ns.flbas & 0xf))?;
    writeln!(
        out,
        "LBA Format #{:02}: Data Size: {:>5}  Metadata Size: {:>5}",
        ns.flbas & 0xf,
        ns.block_size,
        ns.metadata_bytes
    )?;
    writeln!(out)
}

pub fn print_discovery(log: &DiscoveryLog, out: &mut dyn Write) -> io::Result<()> {
    heading(out, "Discovery Log Page")?;
    field(out, "Generation Counter", log.generation)?;
    field(out, "Number of Records", log.entries.len())?;
    for (index, entry) in log.entries.iter().enumerate() {
        writeln!(out, "Discovery Log Entry {index}\n----------------------")?;
        let kind = match entry.subtype {
            subtype::REFERRAL => "Discovery Service Referral",
            subtype::NVME => "NVM Subsystem",
            subtype::CURRENT_DISCOVERY => "Current Discovery Subsystem",
            _ => "Unknown",
        };
        field(out, "Transport Type", if entry.trtype == 3 { "TCP".to_string() } else { entry.trtype.to_string() })?;
        field(out, "Address Family", if entry.adrfam == 2 { "IPv6" } else { "IPv4" })?;
        field(out, "Subsystem Type", kind)?;
        field(out, "Port ID", entry.portid)?;
        field(out, "Controller ID", format!("0x{:04x}", entry.cntlid))?;
        field(out, "Admin Max SQ Size", entry.asqsz)?;
        field(out, "Transport Service Identifier", &entry.trsvcid)?;
        field(out, "NVM Subsystem Qualified Name", &entry.subnqn)?;
        field(out, "Transport Address", &entry.traddr)?;
    }
    writeln!(out)
}

/// Prints the controller and every active namespace (or `only`).
pub fn identify(ctrl: &mut Controller, only: Option<u32>, out: &mut dyn Write) -> Result<(), super::Error> {
    print_controller(ctrl, out)?;
    let nsids = match only {
        Some(nsid) => vec![nsid],
        None => ctrl.active_namespaces()?,
    };
    writeln!(out, "\nActive Namespaces\n=================")?;
    for nsid in nsids {
        let ns = ctrl.identify_namespace(nsid)?;
        print_namespace(&ns, out)?;
    }
    Ok(())
}
