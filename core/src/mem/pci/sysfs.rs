//! What sysfs says about a PCI function: whether it exists, its IOMMU group, its driver;
//! and the advice a person needs when one of them is wrong. Takes the sysfs root as a
//! parameter so tests can build a tree of their own.

use std::path::{Path, PathBuf};

use super::super::{Error, Result};

pub(super) const SYSFS: &str = "/sys";

/// Checks `bdf` is a PCI address (`DDDD:BB:DD.F`, hex), so it is safe in a path and in
/// VFIO_GROUP_GET_DEVICE_FD.
pub(super) fn check_bdf(bdf: &str) -> Result<()> {
    let b = bdf.as_bytes();
    let hex = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_hexdigit);
    let well_formed = b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11]);
    if !well_formed {
        return Err(Error::Pci(format!(
            "{bdf:?} is not a PCI address like 0000:00:04.0 (domain:bus:device.function, as lspci -D prints)"
        )));
    }
    Ok(())
}

fn device_dir(sysfs: &Path, bdf: &str) -> PathBuf {
    sysfs.join("bus/pci/devices").join(bdf)
}

/// The name a symlink points at (a driver, a group number).
fn link_name(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The driver `bdf` is bound to, if any.
pub(super) fn driver_of(sysfs: &Path, bdf: &str) -> Option<String> {
    link_name(&device_dir(sysfs, bdf).join("driver"))
}

/// The IOMMU group of `bdf`, after checking that it exists and is bound to vfio-pci.
pub(super) fn vfio_group_of(sysfs: &Path, bdf: &str) -> Result<u32> {
    check_bdf(bdf)?;
    let dir = device_dir(sysfs, bdf);
    if !dir.exists() {
        return Err(Error::Pci(format!(
            "no PCI device {bdf}: {} does not exist (lspci -D lists the devices)",
            dir.display()
        )));
    }
    let group_link = dir.join("iommu_group");
    let Some(group) = link_name(&group_link) else {
        return Err(Error::Pci(format!(
            "{bdf} has no IOMMU group ({} is missing): the kernel runs without an IOMMU. Boot with \
             intel_iommu=on (QEMU: -device intel-iommu) to use VFIO, or bind uio_pci_generic instead",
            group_link.display()
        )));
    };
    let group: u32 = group
        .parse()
        .map_err(|_| Error::Pci(format!("{bdf}: {} names {group:?}, not a group number", group_link.display())))?;
    let bind = bind_advice(sysfs, bdf);
    match driver_of(sysfs, bdf) {
        Some(driver) if driver == "vfio-pci" => Ok(group),
        Some(driver) => Err(Error::Pci(format!(
            "{bdf} is bound to {driver}, not vfio-pci: echo {bdf} > {}; {bind}",
            dir.join("driver/unbind").display()
        ))),
        None => Err(Error::Pci(format!("{bdf} is bound to no driver: {bind}"))),
    }
}

fn bind_advice(sysfs: &Path, bdf: &str) -> String {
    format!(
        "modprobe vfio-pci; echo vfio-pci > {}; echo {bdf} > {}",
        device_dir(sysfs, bdf).join("driver_override").display(),
        sysfs.join("bus/pci/drivers_probe").display()
    )
}

/// The devices of `group` that hold it back from VFIO: bound to a driver other than
/// vfio-pci (unbound devices and pci-stub do not count), as "BDF (driver)".
pub(super) fn group_blockers(sysfs: &Path, group: u32) -> Vec<String> {
    let dir = sysfs.join("kernel/iommu_groups").join(group.to_string()).join("devices");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut blockers: Vec<String> = entries
        .flatten()
        .filter_map(|entry| {
            let bdf = entry.file_name().to_string_lossy().into_owned();
            let driver = driver_of(sysfs, &bdf)?;
            (driver != "vfio-pci" && driver != "pci-stub").then(|| format!("{bdf} ({driver})"))
        })
        .collect();
    blockers.sort();
    blockers
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fake sysfs tree: each device with an optional group and driver.
    pub(in super::super) struct FakeSysfs {
        pub(in super::super) root: PathBuf,
    }

    impl FakeSysfs {
        pub(in super::super) fn new(name: &str) -> FakeSysfs {
            let root = std::env::temp_dir().join(format!("peerless-sysfs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("bus/pci/devices")).expect("tree");
            FakeSysfs { root }
        }

        pub(in super::super) fn device(&self, bdf: &str, group: Option<u32>, driver: Option<&str>) {
            let dir = self.root.join("bus/pci/devices").join(bdf);
            std::fs::create_dir_all(&dir).expect("device dir");
            if let Some(group) = group {
                let members = self.root.join(format!("kernel/iommu_groups/{group}/devices"));
                std::fs::create_dir_all(&members).expect("group dir");
                symlink(format!("../../../kernel/iommu_groups/{group}"), dir.join("iommu_group")).expect("link");
                symlink(format!("../../../../devices/pci0000:00/{bdf}"), members.join(bdf)).expect("link");
            }
            if let Some(driver) = driver {
                symlink(format!("../../../bus/pci/drivers/{driver}"), dir.join("driver")).expect("link");
            }
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn err(sysfs: &Path, bdf: &str) -> String {
        vfio_group_of(sysfs, bdf).expect_err("refused").to_string()
    }

    #[test]
    fn each_wrong_state_gets_advice_that_names_the_device() {
        let fake = FakeSysfs::new("states");
        fake.device("0000:00:03.0", None, Some("nvme"));
        fake.device("0000:00:04.0", Some(3), Some("nvme"));
        fake.device("0000:00:05.0", Some(4), None);
        fake.device("0000:00:06.0", Some(5), Some("vfio-pci"));
        let root = &fake.root;

        let e = err(root, "0000:00:09.0");
        assert!(e.contains("no PCI device 0000:00:09.0"), "{e}");
        let e = err(root, "0000:00:03.0");
        assert!(e.contains("0000:00:03.0 has no IOMMU group") && e.contains("intel_iommu=on"), "{e}");
        let e = err(root, "0000:00:04.0");
        assert!(e.starts_with("0000:00:04.0 is bound to nvme, not vfio-pci: echo 0000:00:04.0 > "), "{e}");
        assert!(e.contains("0000:00:04.0/driver_override") && e.contains("drivers_probe"), "{e}");
        let e = err(root, "0000:00:05.0");
        assert!(e.contains("0000:00:05.0 is bound to no driver: modprobe vfio-pci"), "{e}");
        assert_eq!(vfio_group_of(root, "0000:00:06.0").expect("bound to vfio-pci"), 5);
    }

    #[test]
    fn malformed_addresses_are_refused_before_any_path_is_built() {
        for bad in ["", "00:04.0", "0000:00:04.8", "0000:00:04-0", "../../../etc", "0000:0g:04.0", "0000:00:04.0 "] {
            let e = check_bdf(bad).expect_err(bad).to_string();
            assert!(e.contains("not a PCI address"), "{bad}: {e}");
        }
        check_bdf("0000:af:1f.7").expect("hex is fine");
    }

    #[test]
    fn group_blockers_are_devices_bound_to_host_drivers() {
        let fake = FakeSysfs::new("group");
        fake.device("0000:00:04.0", Some(7), Some("vfio-pci"));
        fake.device("0000:00:04.1", Some(7), Some("nvme"));
        fake.device("0000:00:04.2", Some(7), None);
        fake.device("0000:00:04.3", Some(7), Some("pci-stub"));
        assert_eq!(group_blockers(&fake.root, 7), ["0000:00:04.1 (nvme)"]);
        assert!(group_blockers(&fake.root, 8).is_empty());
    }

    /// The real /sys: a device that is not there, and (where this machine has one) a
    /// device outside any IOMMU group.
    #[test]
    fn the_real_sysfs_names_what_is_missing() {
        let e = err(Path::new(SYSFS), "ffff:ff:1f.7");
        assert!(e.contains("no PCI device ffff:ff:1f.7"), "{e}");
        let without_group = std::fs::read_dir("/sys/bus/pci/devices")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .find(|bdf| !Path::new("/sys/bus/pci/devices").join(bdf).join("iommu_group").exists());
        match without_group {
            Some(bdf) => {
                let e = err(Path::new(SYSFS), &bdf);
                assert!(e.contains(&format!("{bdf} has no IOMMU group")), "{e}");
            }
            None => {
                println!("note: every PCI device here has an IOMMU group; the no-group case ran on the fake tree only")
            }
        }
    }
}
