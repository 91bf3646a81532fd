//! trtype PCIe: peerless-perf drives a local NVMe function with the bdev layer's own
//! user-space driver, as spdk_nvme_perf drives SPDK's. The function is attached through
//! `bdev_nvme_attach_controller` (VFIO or uio_pci_generic, whichever it is bound to),
//! its namespaces run as bdevs from reactor threads, and it is detached at the end.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use super::config::PerfConfig;
use super::identify::field;
use super::inproc::{names_of, run_on_bdevs, Session, Target};
use super::trid::PcieAddress;
use super::{Error, Summary};

/// The controller name the run attaches under; its bdevs are `perf0n1`, `perf0n2`...
pub const CONTROLLER_NAME: &str = "perf0";
/// Bringing a controller up (reset, identify, queue creation) is slow under emulation.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// The attached controller's namespace bdevs, `only` one of them if named.
fn attach(session: &Session, pcie: &PcieAddress) -> Result<Vec<Target>, Error> {
    let params = json!({"name": CONTROLLER_NAME, "trtype": "PCIe", "traddr": pcie.bdf});
    let reply = session
        .call("bdev_nvme_attach_controller", params, ATTACH_TIMEOUT)
        .map_err(|why| Error::Config(format!("attaching {}: {why}", pcie.bdf)))?;
    let prefix = format!("{CONTROLLER_NAME}n");
    let mut targets: Vec<Target> = names_of(&reply)
        .into_iter()
        .filter_map(|bdev| Some(Target { nsid: bdev.strip_prefix(&prefix)?.parse().ok()?, bdev }))
        .collect();
    targets.sort_by_key(|target| target.nsid);
    if let Some(nsid) = pcie.nsid {
        targets.retain(|target| target.nsid == nsid);
        if targets.is_empty() {
            let _ = detach(session);
            return Err(Error::Config(format!("{} has no active namespace {nsid} the driver serves", pcie.bdf)));
        }
    }
    Ok(targets)
}

fn detach(session: &Session) -> Result<(), Error> {
    session
        .call("bdev_nvme_detach_controller", json!({"name": CONTROLLER_NAME}), DETACH_TIMEOUT)
        .map(drop)
        .map_err(|why| Error::Config(format!("detaching {CONTROLLER_NAME}: {why}")))
}

/// The nvme bdev's `driver_specific.nvme[0]`.
fn driver_data(session: &Session, bdev: &str) -> Value {
    let specific = session.bdevs().get(bdev).map(|bdev| bdev.driver_specific()).unwrap_or(Value::Null);
    specific["nvme"][0].clone()
}

/// The perf run over PCIe: attach, run, detach, whatever the run's outcome.
pub fn run(config: &PerfConfig, pcie: &PcieAddress, out: &mut dyn Write) -> Result<Summary, Error> {
    writeln!(out, "Initializing NVMe Controllers")?;
    let session = Session::start("peerless-perf", &config.cores)?;
    let targets = attach(&session, pcie)?;
    let first = targets.first().map(|target| driver_data(&session, &target.bdev)).unwrap_or(Value::Null);
    let route = first["route"].as_str().unwrap_or("?");
    let model = first["ctrlr_data"]["model_number"].as_str().unwrap_or("?").trim();
    writeln!(out, "Attached to NVMe Controller at {} over {route} [{model}]", pcie.bdf)?;
    let outcome = if targets.is_empty() {
        Err(Error::Config(format!("{} has no active namespace the driver serves", pcie.bdf)))
    } else {
        run_on_bdevs(&session, config, &targets, &format!("PCIE ({})", pcie.bdf), out)
    };
    if outcome.is_ok() {
        // Buffers the driver cannot name in PRPs go through its own bounce buffers; the
        // run's come from DMA memory, so this stays 0 unless something regressed.
        let bounced = targets.first().map(|target| driver_data(&session, &target.bdev)["bounced_commands"].as_u64());
        let bounced = bounced.flatten().map_or("not reported".to_string(), |count| count.to_string());
        writeln!(out, "NVMe commands bounced by the driver: {bounced}")?;
        // Commands whose data was in several buffers go as SGLs where the SSD takes them.
        let sgl = targets.first().and_then(|target| driver_data(&session, &target.bdev)["sgl_commands"].as_u64());
        writeln!(
            out,
            "NVMe commands with SGLs: {}",
            sgl.map_or("not reported".to_string(), |count| count.to_string())
        )?;
    }
    let detached = detach(&session);
    session.stop();
    let summary = outcome?;
    detached?;
    Ok(summary)
}

/// `identify -r 'trtype:PCIe traddr:...'`: the controller and namespace data the driver
/// reports, in spdk_nvme_identify's layout.
pub fn identify(pcie: &PcieAddress, out: &mut dyn Write) -> Result<(), Error> {
    let session = Session::start("peerless-perf", &[0])?;
    let targets = attach(&session, pcie)?;
    let printed = print(&session, pcie, &targets, out);
    let detached = detach(&session);
    session.stop();
    printed?;
    detached
}

fn print(session: &Session, pcie: &PcieAddress, targets: &[Target], out: &mut dyn Write) -> Result<(), Error> {
    let controllers = session
        .call("bdev_nvme_get_controllers", json!({"name": CONTROLLER_NAME}), DETACH_TIMEOUT)
        .map_err(Error::Config)?;
    let ctrlr = &controllers[0]["ctrlrs"][0];
    let rule = "=====================================================";
    writeln!(out, "{rule}\nNVMe Controller at {}\n{rule}", pcie.bdf)?;
    writeln!(out, "Controller Capabilities/Features\n================================")?;
    // Controller data comes with the namespace bdevs; a controller without one has only
    // what bdev_nvme_get_controllers lists.
    let data = targets.first().map(|target| driver_data(session, &target.bdev)).unwrap_or(Value::Null);
    let text = |value: &Value| value.as_str().map(|s| s.trim().to_string()).unwrap_or_else(|| "Not Reported".into());
    field(out, "Vendor ID", text(&data["ctrlr_data"]["vendor_id"]))?;
    field(out, "Serial Number", text(&data["ctrlr_data"]["serial_number"]))?;
    field(out, "Model Number", text(&data["ctrlr_data"]["model_number"]))?;
    field(out, "Firmware Version", text(&data["ctrlr_data"]["firmware_revision"]))?;
    field(out, "Controller ID", ctrlr["cntlid"].as_u64().map_or("Not Reported".into(), |id| format!("0x{id:04x}")))?;
    let mdts = data["max_transfer_bytes"].as_u64();
    field(out, "Max Data Transfer Size", mdts.map_or("Not Reported".into(), |bytes| bytes.to_string()))?;
    field(out, "NVMe Specification Version (VS)", text(&data["vs"]["nvme_version"]))?;
    field(out, "I/O Queue Pairs", ctrlr["io_queues"].as_u64().map_or("Not Reported".into(), |n| n.to_string()))?;
    field(out, "User-space Access", text(&ctrlr["route"]))?;
    let sgl = match ctrlr["sgl"].as_str() {
        Some("supported") => "Supported",
        Some("dword_aligned") => "Supported (Dword aligned)",
        Some("unsupported") => "Not Supported",
        _ => "Not Reported",
    };
    field(out, "SGL Command Set", sgl)?;
    let cmb = &data["cmb"];
    let cmb = match (cmb["size"].as_u64(), cmb["bus_address"].as_str()) {
        (Some(size), Some(bus)) => format!("{} MiB at bus address {bus}", size >> 20),
        _ => "Not Supported".to_string(),
    };
    field(out, "Controller Memory Buffer", cmb)?;
    writeln!(out, "\nActive Namespaces\n=================")?;
    if targets.is_empty() {
        writeln!(out, "(none the driver serves)")?;
    }
    for target in targets {
        let Ok(bdev) = session.bdevs().get(&target.bdev) else { continue };
        let info = bdev.info();
        writeln!(out, "Namespace ID:{}", target.nsid)?;
        field(out, "Bdev", &info.name)?;
        field(out, "Size (in LBAs)", format!("{} ({}MiB)", info.num_blocks, info.size_bytes() / (1024 * 1024)))?;
        field(out, "Block Size", info.block_size)?;
        field(out, "UUID", info.uuid)?;
        writeln!(out)?;
    }
    Ok(())
}
