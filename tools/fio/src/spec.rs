//! The engines' text inputs: SPDK's transport ID filename
//! (`trtype=tcp adrfam=IPv4 traddr=127.0.0.1 trsvcid=4420 ns=1 [subnqn=...]`, or
//! `trtype=rdma` in a build with the `rdma` feature; spaces
//! between pairs because fio splits filenames on ':') and the `digest_enable` option.

use std::net::{IpAddr, SocketAddr};

use peerless_tools::initiator::{Digests, Trtype};

/// NVMe-oF's well-known port, TCP and RDMA alike (NVMe/TCP 1.0, 3.2).
pub const DEFAULT_TRSVCID: u16 = 4420;

/// Where one fio file lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmfFile {
    pub trtype: Trtype,
    pub addr: SocketAddr,
    /// None: discover and use the first NVMe subsystem.
    pub subnqn: Option<String>,
    /// None: the first active namespace.
    pub nsid: Option<u32>,
}

/// Parses a filename. Keys are case-insensitive as in SPDK's
/// `spdk_nvme_transport_id_parse`; `key:value` is accepted too (peerless-perf's `-r`).
pub fn parse_nvmf_filename(text: &str) -> Result<NvmfFile, String> {
    let (mut trtype, mut adrfam, mut traddr, mut trsvcid, mut subnqn, mut nsid) = (None, None, None, None, None, None);
    for pair in text.split_whitespace() {
        let Some((key, value)) = pair.split_once(['=', ':']) else {
            return Err(format!("'{pair}' is not key=value in filename '{text}'"));
        };
        if value.is_empty() {
            return Err(format!("'{key}' has no value in filename '{text}'"));
        }
        let slot = match key.to_ascii_lowercase().as_str() {
            "trtype" => &mut trtype,
            "adrfam" => &mut adrfam,
            "traddr" => &mut traddr,
            "trsvcid" => &mut trsvcid,
            "subnqn" => &mut subnqn,
            "ns" => &mut nsid,
            other => return Err(format!("unknown key '{other}' in filename '{text}'")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("'{key}' given twice in filename '{text}'"));
        }
    }
    let trtype = match trtype {
        Some(kind) => Trtype::parse(kind).ok_or_else(|| format!("trtype={kind}: tcp or rdma"))?,
        None => return Err(format!("no trtype in filename '{text}'")),
    };
    trtype.available()?;
    let traddr = traddr.ok_or_else(|| format!("no traddr in filename '{text}'"))?;
    let ip: IpAddr = traddr.parse().map_err(|_| format!("traddr={traddr} is not an IP address"))?;
    match adrfam.map(str::to_ascii_lowercase).as_deref() {
        None => {}
        Some("ipv4") if ip.is_ipv4() => {}
        Some("ipv6") if ip.is_ipv6() => {}
        Some(family) => return Err(format!("adrfam={family} does not match traddr={traddr}")),
    }
    let port = match trsvcid {
        None => DEFAULT_TRSVCID,
        Some(port) => port.parse().map_err(|_| format!("trsvcid={port} is not a port number"))?,
    };
    let nsid = match nsid {
        None => None,
        Some(ns) => match ns.parse::<u32>() {
            // NSID 0 and FFFFFFFFh are not namespaces (NVMe Base 2.0, 3.2.1.2).
            Ok(id) if id != 0 && id != u32::MAX => Some(id),
            _ => return Err(format!("ns={ns} is not a namespace ID")),
        },
    };
    Ok(NvmfFile { trtype, addr: SocketAddr::new(ip, port), subnqn: subnqn.map(str::to_string), nsid })
}

/// `digest_enable`: NONE, HEADER, DATA or BOTH (SPDK's fio plugin), any case.
pub fn parse_digests(text: Option<&str>) -> Result<Digests, String> {
    let Some(text) = text else { return Ok(Digests::default()) };
    match text.to_ascii_uppercase().as_str() {
        "NONE" => Ok(Digests { header: false, data: false }),
        "HEADER" => Ok(Digests { header: true, data: false }),
        "DATA" => Ok(Digests { header: false, data: true }),
        "BOTH" => Ok(Digests { header: true, data: true }),
        _ => Err(format!("digest_enable={text}: expected NONE, HEADER, DATA or BOTH")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<(&str, Option<&str>, Option<u32>), &str>) {
        let got = parse_nvmf_filename(text);
        match expected {
            Ok((addr, subnqn, nsid)) => {
                let want = NvmfFile {
                    trtype: Trtype::Tcp,
                    addr: addr.parse().unwrap(),
                    subnqn: subnqn.map(str::to_string),
                    nsid,
                };
                assert_eq!(got, Ok(want), "{text}");
            }
            Err(fragment) => {
                let err = got.expect_err(text);
                assert!(err.contains(fragment), "{text}: {err}");
            }
        }
    }

    #[test]
    fn spdk_filenames() {
        check("trtype=tcp adrfam=IPv4 traddr=127.0.0.1 trsvcid=4420 ns=1", Ok(("127.0.0.1:4420", None, Some(1))));
        check(
            "trtype=TCP traddr=10.0.0.2 trsvcid=4421 subnqn=nqn.2016-06.io.spdk:cnode1 ns=2",
            Ok(("10.0.0.2:4421", Some("nqn.2016-06.io.spdk:cnode1"), Some(2))),
        );
        check("  TrType=tcp   traddr=127.0.0.1  ", Ok(("127.0.0.1:4420", None, None)));
        check("trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420", Ok(("127.0.0.1:4420", None, None)));
        check("trtype=tcp adrfam=IPv6 traddr=::1 ns=1", Ok(("[::1]:4420", None, Some(1))));
    }

    #[test]
    fn bad_filenames_say_what_is_wrong() {
        check("traddr=127.0.0.1", Err("no trtype"));
        check("trtype=fc traddr=127.0.0.1", Err("tcp or rdma"));
        check("trtype=tcp", Err("no traddr"));
        check("trtype=tcp traddr=host.example", Err("not an IP address"));
        check("trtype=tcp traddr=127.0.0.1 adrfam=IPv6", Err("does not match"));
        check("trtype=tcp traddr=127.0.0.1 trsvcid=99999", Err("not a port"));
        check("trtype=tcp traddr=127.0.0.1 ns=0", Err("not a namespace"));
        check("trtype=tcp traddr=127.0.0.1 ns=x", Err("not a namespace"));
        check("trtype=tcp traddr=127.0.0.1 bogus=1", Err("unknown key 'bogus'"));
        check("trtype=tcp traddr=127.0.0.1 traddr=127.0.0.2", Err("given twice"));
        check("trtype=tcp traddr", Err("not key=value"));
        check("trtype=tcp traddr=", Err("has no value"));
    }

    #[test]
    fn rdma_filenames_need_the_feature() {
        let parsed = parse_nvmf_filename("trtype=RDMA adrfam=IPv4 traddr=10.0.2.15 trsvcid=4420 ns=1");
        if Trtype::Rdma.available().is_ok() {
            let file = parsed.expect("rdma");
            assert_eq!((file.trtype, file.addr, file.nsid), (Trtype::Rdma, "10.0.2.15:4420".parse().unwrap(), Some(1)));
        } else {
            let error = parsed.expect_err("a build without rdma");
            assert!(error.contains("peerless-tools/rdma"), "{error}");
        }
    }

    #[test]
    fn digest_enable_values() {
        let none = Digests { header: false, data: false };
        assert_eq!(parse_digests(None), Ok(none));
        assert_eq!(parse_digests(Some("NONE")), Ok(none));
        assert_eq!(parse_digests(Some("header")), Ok(Digests { header: true, data: false }));
        assert_eq!(parse_digests(Some("Data")), Ok(Digests { header: false, data: true }));
        assert_eq!(parse_digests(Some("BOTH")), Ok(Digests { header: true, data: true }));
        assert!(parse_digests(Some("crc")).unwrap_err().contains("expected NONE"));
    }
}
