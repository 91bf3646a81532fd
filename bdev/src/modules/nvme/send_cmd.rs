//! `bdev_nvme_send_cmd`, SPDK's NVMe passthrough RPC, for admin commands on a PCIe
//! controller: the 64-byte submission queue entry and any data come base64-encoded
//! (URL-safe alphabet, as SPDK's rpc.py sends them; the standard one is taken too), the
//! answer is the 16-byte completion queue entry and the data read, encoded the same way.
//! The driver owns the command identifier and the data pointers, and refuses what would
//! take the admin queue from it (queue creation and deletion, AERs) or what it does not
//! carry (I/O commands, metadata, fused commands, SGLs, more than one page of data).

use std::time::Duration;

use nix::errno::Errno;
use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{RpcError, StateMask};
use serde::Deserialize;
use serde_json::json;

use super::admin::Passthrough;
use super::rpc::Controllers;
use super::spec::{admin, Sqe, SQE_BYTES};

/// One page: the admin queue's data page carries it.
pub const MAX_DATA_BYTES: usize = 4096;
/// Used when the request gives no timeout, or 0 (which SPDK takes as none: a
/// synchronous admin command here always has one).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT_MS: u32 = 600_000;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SendCmdParams {
    name: String,
    cmd_type: String,
    data_direction: String,
    cmdbuf: String,
    data: Option<String>,
    metadata: Option<String>,
    data_len: Option<u32>,
    metadata_len: Option<u32>,
    timeout_ms: Option<u32>,
}

/// A checked request.
#[derive(Debug, PartialEq, Eq)]
pub struct SendCmd {
    pub name: String,
    pub sqe: Sqe,
    pub data: Direction,
    pub timeout: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Direction {
    ToController(Vec<u8>),
    /// This many bytes back (0: none).
    FromController(usize),
}

fn invalid(message: impl Into<String>) -> RpcError {
    RpcError::invalid_params(message)
}

pub fn check(params: SendCmdParams) -> Result<SendCmd, RpcError> {
    match params.cmd_type.as_str() {
        "admin" => {}
        "io" => {
            return Err(invalid(
                "cmd_type io: only admin commands pass through a PCIe controller here; \
                 send I/O through its bdev",
            ))
        }
        other => return Err(invalid(format!("cmd_type {other:?}: admin or io"))),
    }
    if params.metadata.as_deref().is_some_and(|md| !md.is_empty()) {
        return Err(invalid("metadata: the driver serves no metadata"));
    }
    if params.metadata_len.is_some_and(|len| len != 0) {
        return Err(invalid("metadata_len: the driver serves no metadata"));
    }
    let bytes = base64_decode(&params.cmdbuf).map_err(|err| invalid(format!("cmdbuf: {err}")))?;
    let sqe = decode_sqe(&bytes)?;
    let data = match params.data_direction.as_str() {
        "h2c" => {
            let data = match params.data.as_deref() {
                Some(text) => base64_decode(text).map_err(|err| invalid(format!("data: {err}")))?,
                None => Vec::new(),
            };
            if let Some(len) = params.data_len.filter(|len| *len as usize != data.len()) {
                return Err(invalid(format!("data_len {len} differs from the {} bytes of data", data.len())));
            }
            Direction::ToController(data)
        }
        "c2h" => {
            if params.data.as_deref().is_some_and(|data| !data.is_empty()) {
                return Err(invalid("data goes with data_direction h2c; for c2h give data_len"));
            }
            Direction::FromController(params.data_len.unwrap_or(0) as usize)
        }
        other => return Err(invalid(format!("data_direction {other:?}: c2h or h2c"))),
    };
    let len = match &data {
        Direction::ToController(data) => data.len(),
        Direction::FromController(len) => *len,
    };
    if len > MAX_DATA_BYTES {
        return Err(invalid(format!("{len} bytes of data: at most {MAX_DATA_BYTES} (one page) pass through")));
    }
    let timeout = match params.timeout_ms {
        None | Some(0) => DEFAULT_TIMEOUT,
        Some(ms) if ms > MAX_TIMEOUT_MS => {
            return Err(invalid(format!("timeout_ms {ms}: at most {MAX_TIMEOUT_MS}")));
        }
        Some(ms) => Duration::from_millis(u64::from(ms)),
    };
    Ok(SendCmd { name: params.name, sqe, data, timeout })
}

/// The submission queue entry (NVMe Base 2.0 §4.2); PRP1 and PRP2 are the driver's
/// and overwritten.
fn decode_sqe(bytes: &[u8]) -> Result<Sqe, RpcError> {
    if bytes.len() != SQE_BYTES {
        return Err(invalid(format!("cmdbuf holds {} bytes; a submission queue entry is {SQE_BYTES}", bytes.len())));
    }
    let dword = |index: usize| u32::from_le_bytes(bytes[index * 4..index * 4 + 4].try_into().unwrap_or_default());
    if bytes[1] != 0 {
        return Err(invalid(format!(
            "cmdbuf byte 1 is {:#04x}: fused commands and SGLs (FUSE, PSDT) are not passed through",
            bytes[1]
        )));
    }
    if dword(2) != 0 || dword(3) != 0 {
        return Err(invalid("cmdbuf dwords 2 and 3 must be 0"));
    }
    if dword(4) != 0 || dword(5) != 0 {
        return Err(invalid("cmdbuf MPTR (dwords 4 and 5) must be 0: the driver serves no metadata"));
    }
    let opcode = bytes[0];
    let owned = match opcode {
        admin::DELETE_IO_SQ | admin::CREATE_IO_SQ | admin::DELETE_IO_CQ | admin::CREATE_IO_CQ => {
            Some("I/O queues are the driver's")
        }
        admin::ASYNC_EVENT_REQUEST => Some("the driver keeps its own asynchronous event requests outstanding"),
        _ => None,
    };
    if let Some(why) = owned {
        return Err(invalid(format!("admin opcode {opcode:#04x} is not passed through: {why}")));
    }
    Ok(Sqe {
        opcode,
        // Byte 1 was checked to be 0 above: the data goes by PRP.
        psdt: super::spec::psdt::PRP,
        cid: 0,
        nsid: dword(1),
        prp1: 0,
        prp2: 0,
        cdw10: dword(10),
        cdw11: dword(11),
        cdw12: dword(12),
        cdw13: dword(13),
        cdw14: dword(14),
        cdw15: dword(15),
    })
}

pub(super) fn register(registry: &mut peerless_core::rpc::Registry, controllers: Controllers) {
    registry.method(
        "bdev_nvme_send_cmd",
        StateMask::RUNTIME,
        move |_: &mut ThreadCtx, params: SendCmdParams, responder| {
            let request = match check(params) {
                Ok(request) => request,
                Err(err) => return responder.err(err),
            };
            let ctrlr = match controllers.lock().get(&request.name) {
                Some(Some(attached)) => attached.ctrlr.clone(),
                _ => {
                    let why = format!("controller {} does not exist", request.name);
                    return responder.err(RpcError::errno(Errno::ENODEV, why));
                }
            };
            // The command blocks until it completes: never on a reactor.
            let spawned = std::thread::Builder::new().name("nvme-send-cmd".into()).spawn(move || {
                let data = match &request.data {
                    Direction::ToController(data) if data.is_empty() => Passthrough::None,
                    Direction::ToController(data) => Passthrough::ToController(data.as_slice()),
                    Direction::FromController(0) => Passthrough::None,
                    Direction::FromController(len) => Passthrough::FromController(*len),
                };
                match ctrlr.passthrough_admin(request.sqe, data, request.timeout) {
                    Ok((cqe, read)) => {
                        let mut answer = json!({"cpl": base64_encode(&cqe.encode())});
                        if matches!(request.data, Direction::FromController(len) if len > 0) {
                            answer["data"] = json!(base64_encode(&read));
                        }
                        responder.ok(answer)
                    }
                    Err(err) => {
                        let errno = if err.contains("timed out") { Errno::ETIMEDOUT } else { Errno::EIO };
                        responder.err(RpcError::errno(errno, err))
                    }
                }
            });
            if let Err(err) = spawned {
                // The responder went with the closure and answers with an error.
                peerless_core::log_error!("nvme: cannot start a thread for bdev_nvme_send_cmd: {err}");
            }
        },
    );
}

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 with the URL-safe alphabet and padding (RFC 4648 §5), as SPDK answers.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group =
            chunk.iter().enumerate().fold(0u32, |group, (index, byte)| group | u32::from(*byte) << (16 - 8 * index));
        for index in 0..4 {
            if index <= chunk.len() {
                text.push(URL_SAFE[(group >> (18 - 6 * index) & 0x3f) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Either alphabet (RFC 4648 §4 and §5), padding optional.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let trimmed = text.trim_end_matches('=');
    if text.len() - trimmed.len() > 2 {
        return Err("too much padding".into());
    }
    let mut bytes = Vec::with_capacity(trimmed.len() * 3 / 4);
    let (mut group, mut bits) = (0u32, 0u32);
    for (position, char) in trimmed.chars().enumerate() {
        let value = match char {
            'A'..='Z' => char as u32 - 'A' as u32,
            'a'..='z' => char as u32 - 'a' as u32 + 26,
            '0'..='9' => char as u32 - '0' as u32 + 52,
            '-' | '+' => 62,
            '_' | '/' => 63,
            other => return Err(format!("{other:?} at {position} is not base64")),
        };
        group = group << 6 | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((group >> bits) as u8);
            group &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err("not valid base64: its length leaves a lone character".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sqe_bytes(opcode: u8, nsid: u32, cdw10: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[0] = opcode;
        bytes[4..8].copy_from_slice(&nsid.to_le_bytes());
        bytes[40..44].copy_from_slice(&cdw10.to_le_bytes());
        bytes
    }

    fn params(extra: Value) -> Result<SendCmd, String> {
        let mut base = json!({"name": "Nvme0", "cmd_type": "admin", "data_direction": "c2h",
            "cmdbuf": base64_encode(&sqe_bytes(0x06, 0, 1)), "data_len": 4096});
        for (key, value) in extra.as_object().unwrap() {
            if value.is_null() {
                base.as_object_mut().unwrap().remove(key);
            } else {
                base[key] = value.clone();
            }
        }
        let params: SendCmdParams = serde_json::from_value(base).map_err(|err| err.to_string())?;
        check(params).map_err(|err| err.to_string())
    }

    #[test]
    fn base64_round_trips_in_both_alphabets() {
        for len in 0..70 {
            let bytes: Vec<u8> = (0..len).map(|index| (index * 37 + 250) as u8).collect();
            let text = base64_encode(&bytes);
            assert_eq!(text.len() % 4, 0);
            assert_eq!(base64_decode(&text).unwrap(), bytes, "{len} bytes");
            assert_eq!(base64_decode(text.trim_end_matches('=')).unwrap(), bytes, "unpadded");
            let standard = text.replace('-', "+").replace('_', "/");
            assert_eq!(base64_decode(&standard).unwrap(), bytes, "standard alphabet");
        }
        assert_eq!(base64_encode(b"\xfb\xff"), "-_8=");
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert!(base64_decode("TWF*").is_err());
        assert!(base64_decode("T").is_err(), "a lone sextet is no byte");
        assert!(base64_decode("TQ===").is_err());
    }

    #[test]
    fn an_identify_goes_through_with_the_drivers_cid_and_pointers() {
        let mut bytes = sqe_bytes(0x06, 0, 1);
        bytes[2..4].copy_from_slice(&77u16.to_le_bytes());
        bytes[24..32].copy_from_slice(&0xdead_0000u64.to_le_bytes());
        let request = params(json!({"cmdbuf": base64_encode(&bytes), "timeout_ms": 0})).unwrap();
        assert_eq!(request.sqe, Sqe { cdw10: 1, ..Sqe::new(0x06) });
        assert_eq!((request.data, request.timeout), (Direction::FromController(4096), DEFAULT_TIMEOUT));
        // Namespace Attachment: attach (SEL 0) namespace 2 to a controller list of one.
        let mut list = vec![0u8; 4096];
        list[0..2].copy_from_slice(&1u16.to_le_bytes());
        let attach = params(json!({"cmdbuf": base64_encode(&sqe_bytes(0x15, 2, 0)), "data_direction": "h2c",
            "data": base64_encode(&list), "data_len": null, "timeout_ms": 5000}))
        .unwrap();
        assert_eq!((attach.sqe.opcode, attach.sqe.nsid), (0x15, 2));
        assert_eq!((attach.data, attach.timeout), (Direction::ToController(list), Duration::from_secs(5)));
        let no_data = params(json!({"data_len": null})).unwrap();
        assert_eq!(no_data.data, Direction::FromController(0));
    }

    #[test]
    fn what_is_not_carried_is_refused_by_name() {
        let refused = |extra: Value, expected: &str| {
            let err = params(extra).unwrap_err();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        };
        refused(json!({"cmd_type": "io"}), "cmd_type io");
        refused(json!({"cmd_type": "fabrics"}), "admin or io");
        refused(json!({"data_direction": "both"}), "c2h or h2c");
        refused(json!({"metadata": "AAAA"}), "metadata");
        refused(json!({"metadata_len": 8}), "metadata_len");
        refused(json!({"data_len": 8192}), "at most 4096");
        refused(json!({"data": "AAAA"}), "h2c");
        refused(json!({"data_direction": "h2c", "data": "AAAA", "data_len": 4}), "data_len 4 differs");
        refused(json!({"data_direction": "h2c", "data": base64_encode(&[0; 4097]), "data_len": null}), "at most 4096");
        refused(json!({"cmdbuf": base64_encode(&[0; 63])}), "63 bytes");
        refused(json!({"cmdbuf": "not base64!"}), "cmdbuf");
        refused(json!({"cmdbuf": base64_encode(&sqe_bytes(0x01, 0, 0))}), "I/O queues");
        refused(json!({"cmdbuf": base64_encode(&sqe_bytes(0x0c, 0, 0))}), "asynchronous event");
        let mut fused = sqe_bytes(0x06, 0, 1);
        fused[1] = 0x40;
        refused(json!({"cmdbuf": base64_encode(&fused)}), "SGL");
        let mut with_mptr = sqe_bytes(0x06, 0, 1);
        with_mptr[16] = 1;
        refused(json!({"cmdbuf": base64_encode(&with_mptr)}), "MPTR");
        refused(json!({"timeout_ms": 600_001}), "timeout_ms");
        refused(json!({"bogus": 1}), "bogus");
        refused(json!({"name": null}), "name");
    }
}
