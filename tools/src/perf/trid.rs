//! SPDK's transport ID strings (`spdk_nvme_transport_id_parse`): whitespace-separated
//! `key:value` or `key=value` pairs, keys case-insensitive, e.g.
//! `trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:cnode1`;
//! `trtype:rdma` with the `rdma` feature; `trtype:PCIe traddr:0000:00:04.0` names a local
//! NVMe function that peerless-perf drives in process through the bdev layer's nvme module.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use peerless_bdev::modules::nvme::canonical_bdf;

use crate::initiator::Trtype;

/// The NVMe-oF well-known port, for TCP and RDMA alike (IANA; NVMe/TCP 1.0 3.4.1).
pub const DEFAULT_TRSVCID: u16 = 4420;
/// Longest value accepted for any key (an NQN is 223 bytes; addresses are far shorter).
const MAX_VALUE_BYTES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportId {
    pub trtype: Trtype,
    pub adrfam: AddressFamily,
    pub traddr: String,
    pub trsvcid: u16,
    pub subnqn: Option<String>,
    pub hostnqn: Option<String>,
    /// Restrict the run to one namespace (`ns:N`, as spdk_nvme_perf accepts).
    pub nsid: Option<u32>,
}

impl TransportId {
    pub fn parse(text: &str) -> Result<TransportId, String> {
        let mut trtype = None;
        let mut id = TransportId {
            trtype: Trtype::Tcp,
            adrfam: AddressFamily::Ipv4,
            traddr: String::new(),
            trsvcid: DEFAULT_TRSVCID,
            subnqn: None,
            hostnqn: None,
            nsid: None,
        };
        for pair in text.split_whitespace() {
            // The first ':' or '=' splits; an NQN value holds more of both.
            let Some(at) = pair.find([':', '=']) else { return Err(format!("{pair:?} is not key:value")) };
            let (key, value) = (&pair[..at], &pair[at + 1..]);
            if value.is_empty() || value.len() > MAX_VALUE_BYTES {
                return Err(format!("{key}: value of {} bytes", value.len()));
            }
            match key.to_ascii_lowercase().as_str() {
                "trtype" => trtype = Some(value.to_ascii_lowercase()),
                "adrfam" => {
                    id.adrfam = match value.to_ascii_lowercase().as_str() {
                        "ipv4" => AddressFamily::Ipv4,
                        "ipv6" => AddressFamily::Ipv6,
                        other => return Err(format!("adrfam {other:?}: IPv4 or IPv6")),
                    }
                }
                "traddr" => id.traddr = value.to_string(),
                "trsvcid" => id.trsvcid = value.parse().map_err(|_| format!("trsvcid {value:?} is not a port"))?,
                "subnqn" => id.subnqn = Some(value.to_string()),
                "hostnqn" => id.hostnqn = Some(value.to_string()),
                "ns" => id.nsid = Some(value.parse().ok().filter(|n| *n > 0).ok_or(format!("ns {value:?}"))?),
                other => return Err(format!("unknown transport ID key {other:?}")),
            }
        }
        id.trtype = match trtype.as_deref() {
            Some(name) => Trtype::parse(name).ok_or_else(|| format!("trtype {name:?}: tcp, rdma or PCIe"))?,
            None => return Err("trtype missing".into()),
        };
        id.trtype.available()?;
        if id.traddr.is_empty() {
            return Err("traddr missing".into());
        }
        Ok(id)
    }

    /// Resolves traddr and trsvcid to a socket address of the named family.
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.traddr.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.trsvcid));
        }
        let addrs =
            (self.traddr.as_str(), self.trsvcid).to_socket_addrs().map_err(|e| format!("{}: {e}", self.traddr))?;
        let wanted = |a: &SocketAddr| a.is_ipv4() == (self.adrfam == AddressFamily::Ipv4);
        addrs.into_iter().find(wanted).ok_or_else(|| format!("{}: no {:?} address", self.traddr, self.adrfam))
    }
}

/// A local NVMe function (`trtype:PCIe traddr:DDDD:BB:DD.F [ns:N]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcieAddress {
    /// Canonical `DDDD:BB:DD.F`, lower-case hex.
    pub bdf: String,
    /// Restrict the run to one namespace.
    pub nsid: Option<u32>,
}

/// What `-r` names: a controller over a fabric, or a local PCIe function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Fabric(TransportId),
    Pcie(PcieAddress),
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let pcie = text.split_whitespace().any(|pair| {
            pair.find([':', '=']).is_some_and(|at| {
                pair[..at].eq_ignore_ascii_case("trtype") && pair[at + 1..].eq_ignore_ascii_case("pcie")
            })
        });
        if pcie {
            PcieAddress::parse(text).map(Endpoint::Pcie)
        } else {
            TransportId::parse(text).map(Endpoint::Fabric)
        }
    }
}

impl PcieAddress {
    /// SPDK's PCIe transport ID: `trtype`, `traddr` and `ns`; the fabric keys are refused
    /// by name rather than ignored.
    pub fn parse(text: &str) -> Result<PcieAddress, String> {
        let (mut traddr, mut nsid) = (None, None);
        for pair in text.split_whitespace() {
            let Some(at) = pair.find([':', '=']) else { return Err(format!("{pair:?} is not key:value")) };
            let (key, value) = (&pair[..at], &pair[at + 1..]);
            if value.is_empty() || value.len() > MAX_VALUE_BYTES {
                return Err(format!("{key}: value of {} bytes", value.len()));
            }
            match key.to_ascii_lowercase().as_str() {
                "trtype" if value.eq_ignore_ascii_case("pcie") => {}
                "trtype" => return Err(format!("trtype {value:?} given twice with PCIe")),
                "traddr" => traddr = Some(canonical_bdf(value)?),
                "ns" => nsid = Some(value.parse().ok().filter(|n| *n > 0).ok_or(format!("ns {value:?}"))?),
                fabric @ ("adrfam" | "trsvcid" | "subnqn" | "hostnqn") => {
                    return Err(format!("{fabric} applies to fabrics (tcp, rdma), not to trtype PCIe"))
                }
                other => return Err(format!("unknown transport ID key {other:?}")),
            }
        }
        let bdf = traddr.ok_or("traddr missing: trtype PCIe needs traddr:DDDD:BB:DD.F (e.g. 0000:00:04.0)")?;
        Ok(PcieAddress { bdf, nsid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcie_addresses() {
        let parsed = Endpoint::parse("trtype:PCIe traddr:0000:00:04.0");
        assert_eq!(parsed, Ok(Endpoint::Pcie(PcieAddress { bdf: "0000:00:04.0".into(), nsid: None })));
        let parsed = Endpoint::parse("TRTYPE=pcie traddr=00:1F.7 ns=2");
        assert_eq!(parsed, Ok(Endpoint::Pcie(PcieAddress { bdf: "0000:00:1f.7".into(), nsid: Some(2) })));
        let parsed = Endpoint::parse("traddr:ABCD:ff:1f.7 trtype:PCIE");
        assert_eq!(parsed, Ok(Endpoint::Pcie(PcieAddress { bdf: "abcd:ff:1f.7".into(), nsid: None })));
        let refused = |text: &str, fragment: &str| {
            let error = Endpoint::parse(text).expect_err(text);
            assert!(error.contains(fragment), "{text}: {error}");
        };
        for bad in [
            "127.0.0.1",
            "0000:00:04",
            "0000:00:20.0",
            "0000:00:04.8",
            "00000:00:04.0",
            "0000:100:04.0",
            "0000:0g:04.0",
            "/dev/nvme0",
            "::.",
        ] {
            refused(&format!("trtype:PCIe traddr:{bad}"), "is not a PCI address like 0000:00:04.0");
        }
        refused("trtype:PCIe", "traddr missing");
        refused("trtype:PCIe traddr:0000:00:04.0 trsvcid:4420", "trsvcid applies to fabrics");
        refused("trtype:PCIe traddr:0000:00:04.0 subnqn:nqn.x", "subnqn applies to fabrics");
        refused("trtype:PCIe traddr:0000:00:04.0 trtype:tcp", "given twice");
        refused("trtype:PCIe traddr:0000:00:04.0 ns:0", "ns");
        refused("trtype:PCIe traddr:0000:00:04.0 color:blue", "unknown transport ID key");
        let fabric = Endpoint::parse("trtype:tcp traddr:127.0.0.1").expect("tcp");
        assert!(matches!(fabric, Endpoint::Fabric(TransportId { trtype: Trtype::Tcp, .. })));
        refused("trtype:fc traddr:1.2.3.4", "tcp, rdma or PCIe");
    }

    /// traddr, trsvcid, subnqn, ns.
    type Parsed<'a> = (&'a str, u16, Option<&'a str>, Option<u32>);

    fn check(text: &str, expected: Result<Parsed<'_>, &str>) {
        let parsed = TransportId::parse(text);
        match expected {
            Ok((traddr, port, subnqn, nsid)) => {
                let id = parsed.expect(text);
                assert_eq!(
                    (id.traddr.as_str(), id.trsvcid, id.subnqn.as_deref(), id.nsid),
                    (traddr, port, subnqn, nsid)
                );
            }
            Err(fragment) => {
                let error = parsed.expect_err(text);
                assert!(error.contains(fragment), "{text}: {error}");
            }
        }
    }

    #[test]
    fn spdk_syntax() {
        check(
            "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:cnode1",
            Ok(("127.0.0.1", 4420, Some("nqn.2016-06.io.spdk:cnode1"), None)),
        );
        check("TRTYPE=TCP traddr=10.0.0.1 trsvcid=4421 ns=2", Ok(("10.0.0.1", 4421, None, Some(2))));
        check("  trtype:tcp\ttraddr:::1  adrfam:ipv6 ", Ok(("::1", 4420, None, None)));
        check("trtype:fc traddr:1.2.3.4", Err("tcp, rdma or PCIe"));
        check("traddr:1.2.3.4", Err("trtype missing"));
        check("trtype:tcp", Err("traddr missing"));
        check("trtype:tcp traddr:1.2.3.4 trsvcid:http", Err("not a port"));
        check("trtype:tcp traddr:1.2.3.4 color:blue", Err("unknown transport ID key"));
        check("trtype:tcp traddr:1.2.3.4 ns:0", Err("ns"));
        check("trtype:tcp traddr", Err("not key:value"));
        check("trtype:tcp traddr:", Err("value of 0 bytes"));
    }

    #[test]
    fn rdma_needs_the_feature() {
        let parsed = TransportId::parse("trtype:RDMA adrfam:IPv4 traddr:10.0.2.15 trsvcid:4420 subnqn:nqn.x");
        if cfg!(feature = "rdma") {
            let id = parsed.expect("rdma");
            assert_eq!((id.trtype, id.trsvcid, id.subnqn.as_deref()), (Trtype::Rdma, 4420, Some("nqn.x")));
        } else {
            let error = parsed.expect_err("no rdma feature");
            assert!(error.contains("peerless-tools/rdma"), "{error}");
        }
        assert_eq!(TransportId::parse("trtype:Tcp traddr:::1").expect("tcp").trtype, Trtype::Tcp);
    }

    #[test]
    fn resolves_literal_addresses() {
        let id = TransportId::parse("trtype:tcp adrfam:IPv6 traddr:::1 trsvcid:9").expect("parse");
        assert_eq!(id.socket_addr(), Ok("[::1]:9".parse().expect("addr")));
    }
}
