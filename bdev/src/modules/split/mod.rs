//! bdev_split: cuts a base bdev into equal parts `<base>p0..p<N-1>`. The parts share one
//! write descriptor on the base and its one exclusive_write claim, as SPDK's split
//! shares its module claim; each part shifts its I/O by its first block and forwards
//! it, buffers and tags untouched, so the parts accept what the base accepts.

mod rpc;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::mem::{DomainId, P2pProvider};
use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::RpcError;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo, Uuid};
use crate::error::BdevError;
use crate::io::IoType;
use crate::manager::{BdevManager, ClaimType, Desc};
use crate::modules::forward::ForwardChannel;

pub use rpc::SplitModule;

pub const PRODUCT_NAME: &str = "Split Disk";
pub const MODULE_NAME: &str = "split";
/// Most parts one base may be cut into: a bound on what one RPC registers.
pub const MAX_SPLIT_COUNT: u32 = 1024;
const MIB: u64 = 1 << 20;

/// `bdev_split_create` parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    pub base_bdev: String,
    pub split_count: u32,
    /// Size of each part; 0 or absent divides the base evenly.
    #[serde(default)]
    pub split_size_mb: u64,
}

/// What every part of one split shares: the base's descriptor and how it was cut.
pub struct SplitBase {
    base: Arc<dyn Bdev>,
    base_name: String,
    params: CreateParams,
    /// Taken by the last part's `destruct`, releasing the claim once every part is gone.
    desc: Mutex<Option<Desc>>,
    /// Parts registered and not yet destructed.
    registered_parts: AtomicU32,
}

pub struct SplitPart {
    info: BdevInfo,
    index: u32,
    offset_blocks: u64,
    shared: Arc<SplitBase>,
}

/// Part size in blocks and the number of parts, as SPDK's split computes them: a size
/// given in MiB fixes the part size and clamps the count to what fits.
fn layout(base: &BdevInfo, params: &CreateParams) -> Result<(u64, u32), RpcError> {
    if params.split_count == 0 || params.split_count > MAX_SPLIT_COUNT {
        return Err(RpcError::invalid_params(format!("split_count must be 1 to {MAX_SPLIT_COUNT}")));
    }
    let block_size = u64::from(base.block_size);
    if params.split_size_mb == 0 {
        let blocks = base.num_blocks / u64::from(params.split_count);
        if blocks == 0 {
            return Err(RpcError::invalid_params(format!(
                "'{}' has {} blocks: too few for {} parts",
                base.name, base.num_blocks, params.split_count
            )));
        }
        return Ok((blocks, params.split_count));
    }
    let bytes = params
        .split_size_mb
        .checked_mul(MIB)
        .filter(|bytes| bytes % block_size == 0)
        .ok_or_else(|| RpcError::invalid_params("split_size_mb must be a whole number of blocks"))?;
    let blocks = bytes / block_size;
    let fits = base.num_blocks / blocks;
    if fits == 0 {
        return Err(RpcError::invalid_params(format!(
            "'{}' is smaller than one part of {} MiB",
            base.name, params.split_size_mb
        )));
    }
    let count = u64::from(params.split_count).min(fits) as u32;
    if count < params.split_count {
        peerless_core::log_warn!(
            "split of '{}': {} parts of {} MiB do not fit; making {count}",
            base.name,
            params.split_count,
            params.split_size_mb
        );
    }
    Ok((blocks, count))
}

fn part_name(base: &str, index: u32) -> String {
    format!("{base}p{index}")
}

/// Salt that keeps part 0's UUID apart from its base's.
const PART_UUID_SALT: [u8; 4] = *b"splt";

/// A part's UUID, derived from its base's and its index so that a split recreated from
/// a saved config (or after a restart) exports the same namespace UUIDs. RFC 9562
/// version 8 (custom): the index lands in bits the version and variant do not touch, so
/// the parts of one base never collide.
fn part_uuid(base: Uuid, index: u32) -> Uuid {
    let mut bytes = base.0;
    for (byte, salt) in bytes[..4].iter_mut().zip(PART_UUID_SALT) {
        *byte ^= salt;
    }
    for (byte, mix) in bytes[12..].iter_mut().zip(index.to_be_bytes()) {
        *byte ^= mix;
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid(bytes)
}

/// Claims `base_bdev` and registers its parts; on any failure none stays registered.
pub fn create(manager: &BdevManager, params: CreateParams) -> Result<Vec<Arc<SplitPart>>, RpcError> {
    let base = manager.get(&params.base_bdev)?;
    let base_info = base.info().clone();
    let (part_blocks, count) = layout(&base_info, &params)?;
    if let Some(taken) = (0..count).map(|index| part_name(&base_info.name, index)).find(|n| manager.get(n).is_ok()) {
        return Err(BdevError::Exists(taken).into());
    }
    let desc = manager.open(&base_info.name, true, None, None)?;
    desc.claim(ClaimType::ExclusiveWrite, &format!("bdev_split {}", base_info.name))?;
    let shared = Arc::new(SplitBase {
        base,
        base_name: base_info.name.clone(),
        params: CreateParams { split_count: count, ..params },
        desc: Mutex::new(Some(desc)),
        registered_parts: AtomicU32::new(0),
    });
    let mut parts: Vec<Arc<SplitPart>> = Vec::with_capacity(count as usize);
    for index in 0..count {
        let info = BdevInfo {
            name: part_name(&base_info.name, index),
            product_name: PRODUCT_NAME.into(),
            block_size: base_info.block_size,
            num_blocks: part_blocks,
            uuid: part_uuid(base_info.uuid, index),
            max_io_blocks: base_info.max_io_blocks,
        };
        let part =
            Arc::new(SplitPart { info, index, offset_blocks: u64::from(index) * part_blocks, shared: shared.clone() });
        if let Err(err) = manager.register(part.clone()) {
            for done in &parts {
                let _ = manager.unregister(None, &done.info.name);
            }
            // Their destructs released the base unless no part was registered at all.
            shared.desc.lock().take();
            return Err(err.into());
        }
        shared.registered_parts.fetch_add(1, Ordering::AcqRel);
        parts.push(part);
    }
    Ok(parts)
}

/// `bdev_split_delete`: unregisters every part of `base_bdev` (their open descriptors
/// hear a hot-remove; the last part's `destruct` releases the base). Refused, with
/// nothing removed, while a part is itself a base of another bdev.
pub fn delete(ctx: Option<&mut ThreadCtx>, manager: &BdevManager, base_bdev: &str) -> Result<(), BdevError> {
    let parts: Vec<Arc<SplitPart>> =
        manager.list_as::<SplitPart>().into_iter().filter(|part| part.shared.base_name == base_bdev).collect();
    if parts.is_empty() {
        return Err(BdevError::NothingBuiltOn { base: base_bdev.to_string(), module: MODULE_NAME });
    }
    let registered = manager.list();
    for part in &parts {
        if let Some(user) = registered.iter().find(|bdev| bdev.base_bdevs().contains(&part.info.name)) {
            let claim = manager.claim_of(&part.info.name).map_or("exclusive_write", |(claim, _)| claim.as_str());
            return Err(BdevError::Claimed {
                name: part.info.name.clone(),
                claim,
                by: format!("bdev '{}'", user.info().name),
            });
        }
    }
    let mut ctx = ctx;
    for part in &parts {
        match manager.unregister_by_name(ctx.as_deref_mut(), &part.info.name, MODULE_NAME) {
            // Gone meanwhile: nothing to do.
            Ok(()) | Err(BdevError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

impl SplitPart {
    pub fn name(&self) -> String {
        self.info.name.clone()
    }

    pub fn base_name(&self) -> &str {
        &self.shared.base_name
    }

    pub fn offset_blocks(&self) -> u64 {
        self.offset_blocks
    }
}

impl Bdev for SplitPart {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        MODULE_NAME
    }

    fn supports(&self, io_type: IoType) -> bool {
        self.shared.base.supports(io_type)
    }

    fn accepts_domain(&self, domain: DomainId) -> bool {
        self.shared.base.accepts_domain(domain)
    }

    fn p2p_provider(&self) -> Option<Arc<dyn P2pProvider>> {
        self.shared.base.p2p_provider()
    }

    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        let base = self.shared.desc.lock().as_ref().map(|desc| desc.channel(ctx));
        Box::new(ForwardChannel::new(ctx, &self.info.name, base, self.offset_blocks, self.info.num_blocks))
    }

    fn driver_specific(&self) -> Value {
        json!({"split": {"base_bdev": self.shared.base_name, "offset_blocks": self.offset_blocks}})
    }

    /// Only the first part recreates the split: one `bdev_split_create` makes them all.
    fn config_entry(&self) -> Option<Value> {
        (self.index == 0).then(|| {
            let params = &self.shared.params;
            let mut entry = json!({"base_bdev": self.shared.base_name, "split_count": params.split_count});
            if params.split_size_mb != 0 {
                entry["split_size_mb"] = json!(params.split_size_mb);
            }
            json!({"method": "bdev_split_create", "params": entry})
        })
    }

    fn base_bdevs(&self) -> Vec<String> {
        vec![self.shared.base_name.clone()]
    }

    /// The last part to go closes the shared descriptor, releasing the base's claim.
    fn destruct(&self) {
        let before = self.shared.registered_parts.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "split part '{}' destructed more often than registered", self.info.name);
        if before == 1 {
            self.shared.desc.lock().take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(num_blocks: u64, block_size: u32) -> BdevInfo {
        BdevInfo {
            name: "Malloc0".into(),
            product_name: "test".into(),
            block_size,
            num_blocks,
            uuid: Uuid::random(),
            max_io_blocks: 0,
        }
    }

    fn params(split_count: u32, split_size_mb: u64) -> CreateParams {
        CreateParams { base_bdev: "Malloc0".into(), split_count, split_size_mb }
    }

    #[test]
    fn layouts_follow_spdk() {
        let check = |info: BdevInfo, params: CreateParams, expected: Option<(u64, u32)>| {
            assert_eq!(layout(&info, &params).ok(), expected, "{params:?}");
        };
        // Even division drops the remainder.
        check(base(1000, 512), params(3, 0), Some((333, 3)));
        // A fixed size clamps the count to what fits: 4 MiB of 512-byte blocks is 8192.
        check(base(20_000, 512), params(4, 4), Some((8192, 2)));
        check(base(8192, 4096), params(2, 16), Some((4096, 2)));
        check(base(2, 512), params(3, 0), None);
        check(base(100, 512), params(1, 1), None);
        check(base(100, 512), params(0, 0), None);
        check(base(1 << 30, 512), params(MAX_SPLIT_COUNT + 1, 0), None);
        check(base(1 << 20, 512), params(1, u64::MAX), None);
    }

    #[test]
    fn part_uuids_are_stable_distinct_and_version_8() {
        let base = Uuid::random();
        let uuids: Vec<Uuid> = (0..MAX_SPLIT_COUNT).map(|index| part_uuid(base, index)).collect();
        assert_eq!(uuids[7], part_uuid(base, 7), "derived, not random");
        let mut unique = uuids.clone();
        unique.sort_by_key(|uuid| uuid.0);
        unique.dedup();
        assert_eq!(unique.len(), uuids.len());
        assert!(uuids.iter().all(|uuid| *uuid != base && uuid.to_string().as_bytes()[14] == b'8'));
    }
}
