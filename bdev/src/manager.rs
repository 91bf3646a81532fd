//! The registry of bdevs: registration and removal, descriptors opened by name with
//! claims, hot-remove and resize events to every open descriptor, QoS limits. Control
//! plane only: a mutex guards the tables, and no I/O path takes it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use peerless_core::reactor::{IoChannel, IoDevice, ThreadCtx, ThreadHandle};

use crate::bdev::{self, Bdev};
use crate::channel::LayerChannel;
use crate::error::BdevError;
use crate::qos::QosLimits;
use crate::stat::{IoStat, ResetMode};

/// SPDK's claim types (`bdev_get_bdevs` reports them by these names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimType {
    ExclusiveWrite,
    ReadManyWriteOne,
    ReadManyWriteNone,
    ReadManyWriteShared,
}

impl ClaimType {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimType::ExclusiveWrite => "exclusive_write",
            ClaimType::ReadManyWriteOne => "read_many_write_one",
            ClaimType::ReadManyWriteNone => "read_many_write_none",
            ClaimType::ReadManyWriteShared => "read_many_write_shared",
        }
    }
}

struct Claim {
    claim_type: ClaimType,
    by: String,
    /// Descriptors holding this claim; a shared claim may have several.
    holders: Vec<u64>,
}

pub type RemoveCallback = Box<dyn FnOnce(&mut ThreadCtx) + Send>;
/// Told the new block count each time the bdev grows or shrinks while open.
pub type ResizeCallback = Arc<dyn Fn(&mut ThreadCtx, u64) + Send + Sync>;

struct DescState {
    id: u64,
    write: bool,
    opener: Option<ThreadHandle>,
    on_remove: Mutex<Option<RemoveCallback>>,
    on_resize: Mutex<Option<ResizeCallback>>,
}

pub(crate) struct Entry {
    pub bdev: Arc<dyn Bdev>,
    pub device: IoDevice<LayerChannel>,
    pub removed: Arc<AtomicBool>,
    /// The block count now: the module's `info()` is the one it registered with, and
    /// SPDK's `spdk_bdev_notify_blockcnt_change` moves it after a resize.
    pub num_blocks: Arc<AtomicU64>,
    claim: Mutex<Option<Claim>>,
    descs: Mutex<Vec<Weak<DescState>>>,
    pub qos: Arc<Mutex<QosLimits>>,
    /// Stats of channels that have been destroyed, so totals survive thread exits.
    pub retired: Arc<Mutex<IoStat>>,
}

/// An open handle on a bdev. Dropping it closes it and releases its claim.
pub struct Desc {
    entry: Arc<Entry>,
    state: Arc<DescState>,
    manager: Weak<Inner>,
}

impl Desc {
    pub fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.entry.bdev
    }

    pub fn name(&self) -> &str {
        &self.entry.bdev.info().name
    }

    pub fn is_writable(&self) -> bool {
        self.state.write
    }

    pub fn is_removed(&self) -> bool {
        self.entry.removed.load(Ordering::Acquire)
    }

    /// The bdev's block count now (it may have been resized since it was registered).
    pub fn num_blocks(&self) -> u64 {
        self.entry.num_blocks.load(Ordering::Acquire)
    }

    /// Runs `callback` on the opening thread (inline when opened outside a reactor)
    /// with the new block count whenever the bdev is resized while this is open.
    pub fn on_resize(&self, callback: ResizeCallback) {
        *self.state.on_resize.lock() = Some(callback);
    }

    /// Claims the bdev for a module or subsystem (`by` names it in errors and output).
    pub fn claim(&self, claim_type: ClaimType, by: &str) -> Result<(), BdevError> {
        let name = self.name().to_string();
        let mut claim = self.entry.claim.lock();
        if let Some(existing) = claim.as_mut() {
            let shared = existing.claim_type == ClaimType::ReadManyWriteShared && claim_type == existing.claim_type;
            let read_many = existing.claim_type == ClaimType::ReadManyWriteNone && claim_type == existing.claim_type;
            if (shared || read_many) && !existing.holders.contains(&self.state.id) {
                existing.holders.push(self.state.id);
                return Ok(());
            }
            return Err(BdevError::Claimed { name, claim: existing.claim_type.as_str(), by: existing.by.clone() });
        }
        let needs_sole_writer = matches!(claim_type, ClaimType::ExclusiveWrite | ClaimType::ReadManyWriteOne);
        let other_writers =
            self.entry.descs.lock().iter().filter_map(Weak::upgrade).any(|desc| desc.write && desc.id != self.state.id);
        if (needs_sole_writer || claim_type == ClaimType::ReadManyWriteNone) && other_writers {
            return Err(BdevError::WritersOpen { name, claim: claim_type.as_str() });
        }
        if claim_type == ClaimType::ReadManyWriteNone && self.state.write {
            return Err(BdevError::invalid("claim", "a read_many_write_none claim needs a read-only descriptor"));
        }
        *claim = Some(Claim { claim_type, by: by.to_string(), holders: vec![self.state.id] });
        Ok(())
    }

    /// This thread's channel for I/O through this descriptor.
    pub fn channel(&self, ctx: &mut ThreadCtx) -> BdevHandle {
        BdevHandle { channel: ctx.get_io_channel(&self.entry.device), writable: self.state.write }
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        let mut claim = self.entry.claim.lock();
        if let Some(existing) = claim.as_mut() {
            existing.holders.retain(|id| *id != self.state.id);
            if existing.holders.is_empty() {
                *claim = None;
            }
        }
        drop(claim);
        let id = self.state.id;
        self.entry.descs.lock().retain(|desc| desc.upgrade().is_some_and(|desc| desc.id != id));
        if let Some(manager) = self.manager.upgrade() {
            manager.note_closed();
        }
    }
}

/// A thread's I/O path into one bdev through one descriptor.
#[derive(Clone)]
pub struct BdevHandle {
    pub(crate) channel: IoChannel<LayerChannel>,
    pub(crate) writable: bool,
}

pub(crate) struct Inner {
    bdevs: Mutex<Vec<Arc<Entry>>>,
    next_desc: AtomicU64,
    open_descs: AtomicU64,
}

impl Inner {
    fn note_closed(&self) {
        self.open_descs.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bdev registry of one application.
#[derive(Clone)]
pub struct BdevManager {
    inner: Arc<Inner>,
}

impl Default for BdevManager {
    fn default() -> Self {
        BdevManager::new()
    }
}

/// Names of SPDK bdev names may not contain these (they break RPC and config parsing).
fn check_name(name: &str) -> Result<(), BdevError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control() || c == '/' || c.is_whitespace()) {
        return Err(BdevError::invalid(
            "name",
            format!("'{name}' must be 1-255 printable characters without spaces or '/'"),
        ));
    }
    Ok(())
}

impl BdevManager {
    pub fn new() -> Self {
        BdevManager {
            inner: Arc::new(Inner {
                bdevs: Mutex::new(Vec::new()),
                next_desc: AtomicU64::new(1),
                open_descs: AtomicU64::new(0),
            }),
        }
    }

    /// Adds a bdev. Its name and UUID (an alias) must be unique.
    pub fn register(&self, bdev: Arc<dyn Bdev>) -> Result<(), BdevError> {
        let info = bdev.info().clone();
        check_name(&info.name)?;
        if info.block_size == 0 || !info.block_size.is_power_of_two() || info.block_size < 512 {
            return Err(BdevError::invalid(
                "block_size",
                format!("{} is not a power of two of at least 512", info.block_size),
            ));
        }
        if info.num_blocks == 0 {
            return Err(BdevError::invalid("num_blocks", "a bdev needs at least one block"));
        }
        let mut bdevs = self.inner.bdevs.lock();
        let uuid = info.uuid.to_string();
        if bdevs
            .iter()
            .any(|entry| entry.bdev.info().name == info.name || entry.bdev.info().uuid.to_string() == info.name)
        {
            return Err(BdevError::Exists(info.name));
        }
        if bdevs.iter().any(|entry| entry.bdev.info().uuid.to_string() == uuid) {
            return Err(BdevError::Exists(format!("{} (uuid {uuid})", info.name)));
        }
        let removed = Arc::new(AtomicBool::new(false));
        let retired = Arc::new(Mutex::new(IoStat::default()));
        let qos = Arc::new(Mutex::new(QosLimits::default()));
        let num_blocks = Arc::new(AtomicU64::new(info.num_blocks));
        let device =
            LayerChannel::device(bdev.clone(), removed.clone(), num_blocks.clone(), retired.clone(), qos.clone());
        bdevs.push(Arc::new(Entry {
            bdev,
            device,
            removed,
            num_blocks,
            claim: Mutex::new(None),
            descs: Mutex::new(Vec::new()),
            qos,
            retired,
        }));
        peerless_core::log_info!(
            "bdev '{}' registered: {} blocks of {} bytes",
            info.name,
            info.num_blocks,
            info.block_size
        );
        Ok(())
    }

    fn find(&self, name: &str) -> Result<Arc<Entry>, BdevError> {
        self.inner
            .bdevs
            .lock()
            .iter()
            .find(|entry| entry.bdev.info().name == name || entry.bdev.info().uuid.to_string() == name)
            .cloned()
            .ok_or_else(|| BdevError::NotFound(name.to_string()))
    }

    pub(crate) fn entry(&self, name: &str) -> Result<Arc<Entry>, BdevError> {
        self.find(name)
    }

    pub fn get(&self, name: &str) -> Result<Arc<dyn Bdev>, BdevError> {
        Ok(self.find(name)?.bdev.clone())
    }

    /// Every bdev, in registration order (bases before the bdevs built on them).
    pub fn list(&self) -> Vec<Arc<dyn Bdev>> {
        self.inner.bdevs.lock().iter().map(|entry| entry.bdev.clone()).collect()
    }

    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.inner.bdevs.lock().clone()
    }

    /// Opens a bdev by name or UUID. `on_remove` runs on the opening thread (or inline,
    /// when opened outside a reactor) if the bdev is removed while open.
    pub fn open(
        &self,
        name: &str,
        write: bool,
        opener: Option<ThreadHandle>,
        on_remove: Option<RemoveCallback>,
    ) -> Result<Desc, BdevError> {
        let entry = self.find(name)?;
        if entry.removed.load(Ordering::Acquire) {
            return Err(BdevError::Removed(name.to_string()));
        }
        if write {
            if let Some(claim) = entry.claim.lock().as_ref() {
                if claim.claim_type != ClaimType::ReadManyWriteShared {
                    return Err(BdevError::Claimed {
                        name: name.to_string(),
                        claim: claim.claim_type.as_str(),
                        by: claim.by.clone(),
                    });
                }
            }
        }
        let state = Arc::new(DescState {
            id: self.inner.next_desc.fetch_add(1, Ordering::Relaxed),
            write,
            opener,
            on_remove: Mutex::new(on_remove),
            on_resize: Mutex::new(None),
        });
        entry.descs.lock().push(Arc::downgrade(&state));
        self.inner.open_descs.fetch_add(1, Ordering::Relaxed);
        Ok(Desc { entry, state, manager: Arc::downgrade(&self.inner) })
    }

    /// Who claims a bdev, if anyone: (claim type, claimant).
    pub fn claim_of(&self, name: &str) -> Option<(ClaimType, String)> {
        let entry = self.find(name).ok()?;
        let claim = entry.claim.lock();
        claim.as_ref().map(|claim| (claim.claim_type, claim.by.clone()))
    }

    /// Removes a bdev: no new opens, new I/O fails, every open descriptor hears a
    /// hot-remove event, then the module's `destruct` runs, once. A bdev other bdevs are
    /// built on cannot go first.
    pub fn unregister(&self, ctx: Option<&mut ThreadCtx>, name: &str) -> Result<(), BdevError> {
        let entry = self.find(name)?;
        self.remove(ctx, entry)
    }

    /// The block count of bdev `name` now.
    pub fn num_blocks(&self, name: &str) -> Result<u64, BdevError> {
        Ok(self.find(name)?.num_blocks.load(Ordering::Acquire))
    }

    /// SPDK's `spdk_bdev_notify_blockcnt_change`: a module says its device now holds
    /// `num_blocks`. Growing always succeeds; shrinking is refused while anyone has the
    /// bdev open, since an opener may hold addresses past the new end. Every open
    /// descriptor with a resize callback hears the new count on its own thread.
    pub fn notify_resize(&self, ctx: Option<&mut ThreadCtx>, name: &str, num_blocks: u64) -> Result<(), BdevError> {
        let entry = self.find(name)?;
        let real_name = entry.bdev.info().name.clone();
        if num_blocks == 0 {
            return Err(BdevError::invalid("num_blocks", "a bdev needs at least one block"));
        }
        let descs: Vec<Arc<DescState>> = entry.descs.lock().iter().filter_map(Weak::upgrade).collect();
        let old = entry.num_blocks.load(Ordering::Acquire);
        if num_blocks < old && !descs.is_empty() {
            return Err(BdevError::invalid(
                "num_blocks",
                format!(
                    "bdev '{real_name}' is open ({} descriptors): it may grow but not shrink from {old} to {num_blocks} blocks",
                    descs.len()
                ),
            ));
        }
        if num_blocks == old {
            return Ok(());
        }
        entry.num_blocks.store(num_blocks, Ordering::Release);
        peerless_core::log_notice!("bdev '{real_name}' resized from {old} to {num_blocks} blocks");
        let mut ctx = ctx;
        for desc in descs {
            let Some(callback) = desc.on_resize.lock().clone() else { continue };
            let run = move |ctx: &mut ThreadCtx| callback(ctx, num_blocks);
            on_opener_thread(ctx.as_deref_mut(), &desc, run, || format!("resize of '{real_name}'"));
        }
        Ok(())
    }

    /// SPDK's `spdk_bdev_unregister_by_name`: `unregister`, only if `module` made the
    /// bdev. Every module's `bdev_<module>_delete` method goes through here.
    pub fn unregister_by_name(
        &self,
        ctx: Option<&mut ThreadCtx>,
        name: &str,
        module: &'static str,
    ) -> Result<(), BdevError> {
        let entry = self.find(name)?;
        if entry.bdev.module_name() != module {
            return Err(BdevError::OtherModule { name: name.to_string(), module });
        }
        self.remove(ctx, entry)
    }

    fn remove(&self, ctx: Option<&mut ThreadCtx>, entry: Arc<Entry>) -> Result<(), BdevError> {
        let real_name = entry.bdev.info().name.clone();
        if let Some(user) = self.list().iter().find(|bdev| bdev.base_bdevs().contains(&real_name)) {
            let claim = entry.claim.lock().as_ref().map_or("exclusive_write", |claim| claim.claim_type.as_str());
            return Err(BdevError::Claimed { name: real_name, claim, by: format!("bdev '{}'", user.info().name) });
        }
        {
            let mut bdevs = self.inner.bdevs.lock();
            // Whoever takes it out of the table removes it: two racing callers cannot
            // both run its destruct.
            let Some(position) = bdevs.iter().position(|other| Arc::ptr_eq(other, &entry)) else {
                return Err(BdevError::NotFound(real_name));
            };
            bdevs.remove(position);
            entry.removed.store(true, Ordering::Release);
        }
        let descs: Vec<Arc<DescState>> = entry.descs.lock().iter().filter_map(Weak::upgrade).collect();
        let mut ctx = ctx;
        for desc in descs {
            let Some(callback) = desc.on_remove.lock().take() else { continue };
            on_opener_thread(ctx.as_deref_mut(), &desc, callback, || format!("hot-remove of '{real_name}'"));
        }
        entry.bdev.destruct();
        peerless_core::log_info!("bdev '{real_name}' unregistered");
        Ok(())
    }

    /// The bdev `name` as its module's own type `T`; an error naming `module` if another
    /// module made it.
    pub fn get_as<T: Bdev>(&self, name: &str, module: &'static str) -> Result<Arc<T>, BdevError> {
        let found = self.get(name)?;
        if found.module_name() != module {
            return Err(BdevError::OtherModule { name: name.to_string(), module });
        }
        bdev::downcast::<T>(found).ok_or_else(|| BdevError::OtherModule { name: name.to_string(), module })
    }

    /// Every registered bdev of type `T`, in registration order.
    pub fn list_as<T: Bdev>(&self) -> Vec<Arc<T>> {
        self.list().into_iter().filter_map(bdev::downcast::<T>).collect()
    }

    /// Sets a bdev's QoS limits and applies them on every thread holding a channel;
    /// `done` runs on the calling thread once all have them (and not at all on error).
    pub fn set_qos(
        &self,
        ctx: &mut ThreadCtx,
        name: &str,
        limits: QosLimits,
        done: impl FnOnce(&mut ThreadCtx) + Send + 'static,
    ) -> Result<(), BdevError> {
        let entry = self.find(name)?;
        limits.validate().map_err(|why| BdevError::invalid("QoS limit", why))?;
        *entry.qos.lock() = limits;
        let holders = entry.device.holders().len();
        entry.device.for_each_channel(
            ctx,
            move |ctx, channel| {
                channel.set_qos_share(holders);
                channel.set_qos(limits, ctx.now());
            },
            done,
        );
        Ok(())
    }

    pub fn qos_limits(&self, name: &str) -> Result<QosLimits, BdevError> {
        Ok(*self.find(name)?.qos.lock())
    }

    /// Totals per bdev (live channels plus those retired), gathered by visiting every
    /// channel's thread; `done` gets them, in the order named, on the calling thread.
    pub fn collect_iostat(
        &self,
        ctx: &mut ThreadCtx,
        names: Vec<String>,
        done: impl FnOnce(&mut ThreadCtx, Vec<(String, IoStat)>) + Send + 'static,
    ) {
        self.collect_iostat_and_reset(ctx, names, ResetMode::None, done);
    }

    /// As `collect_iostat`, and each channel (and the retired totals) clears what `reset`
    /// names right after it is read, so no I/O is counted in neither window nor in both.
    pub fn collect_iostat_and_reset(
        &self,
        ctx: &mut ThreadCtx,
        names: Vec<String>,
        reset: ResetMode,
        done: impl FnOnce(&mut ThreadCtx, Vec<(String, IoStat)>) + Send + 'static,
    ) {
        let entries: Vec<Arc<Entry>> = names.iter().filter_map(|name| self.find(name).ok()).collect();
        collect_next(ctx, entries, reset, Vec::new(), Box::new(done));
    }

    /// One bdev's figures per live channel, with the id of the thread that owns each
    /// (`bdev_get_iostat {per_channel}`); channels that have gone are not listed.
    pub fn collect_channel_iostat(
        &self,
        ctx: &mut ThreadCtx,
        name: &str,
        reset: ResetMode,
        done: impl FnOnce(&mut ThreadCtx, Vec<(u64, IoStat)>) + Send + 'static,
    ) -> Result<(), BdevError> {
        let entry = self.find(name)?;
        let channels: Arc<Mutex<Vec<(u64, IoStat)>>> = Arc::default();
        let sink = channels.clone();
        entry.device.for_each_channel(
            ctx,
            move |ctx, channel| {
                sink.lock().push((ctx.id().0, channel.stats().clone()));
                channel.stats_mut().reset(reset);
            },
            move |ctx| {
                let mut channels = std::mem::take(&mut *channels.lock());
                channels.sort_by_key(|(thread, _)| *thread);
                done(ctx, channels)
            },
        );
        entry.retired.lock().reset(reset);
        Ok(())
    }

    pub fn open_descriptors(&self) -> u64 {
        self.inner.open_descs.load(Ordering::Relaxed)
    }

    /// A handle that does not keep the registry alive, for callbacks a bdev itself
    /// holds (a strong one there would be a cycle through the registry's table).
    pub fn downgrade(&self) -> WeakBdevManager {
        WeakBdevManager(Arc::downgrade(&self.inner))
    }
}

/// `BdevManager::downgrade`.
#[derive(Clone)]
pub struct WeakBdevManager(Weak<Inner>);

impl WeakBdevManager {
    pub fn upgrade(&self) -> Option<BdevManager> {
        self.0.upgrade().map(|inner| BdevManager { inner })
    }
}

/// Runs an event's `work` on the thread that opened `desc`: by message from another
/// reactor, blocking from outside one, inline when already there or when the opener
/// named no thread. `what` names the event for the warning when nobody can run it.
fn on_opener_thread(
    ctx: Option<&mut ThreadCtx>,
    desc: &DescState,
    work: impl FnOnce(&mut ThreadCtx) + Send + 'static,
    what: impl FnOnce() -> String,
) {
    match (&desc.opener, ctx) {
        (Some(opener), Some(ctx)) if opener.id() != ctx.id() => {
            let _ = ctx.send_to(opener, work);
        }
        (Some(opener), None) => {
            let _ = opener.send_blocking(work);
        }
        (_, Some(ctx)) => work(ctx),
        (None, None) => peerless_core::log_warn!("{}: an opener without a thread missed it", what()),
    }
}

type IostatDone = Box<dyn FnOnce(&mut ThreadCtx, Vec<(String, IoStat)>) + Send>;

fn collect_next(
    ctx: &mut ThreadCtx,
    mut entries: Vec<Arc<Entry>>,
    reset: ResetMode,
    mut done: Vec<(String, IoStat)>,
    finish: IostatDone,
) {
    if entries.is_empty() {
        finish(ctx, done);
        return;
    }
    let entry = entries.remove(0);
    let total = {
        let mut retired = entry.retired.lock();
        let total = retired.clone();
        retired.reset(reset);
        Arc::new(Mutex::new(total))
    };
    let sum = total.clone();
    let name = entry.bdev.info().name.clone();
    entry.device.for_each_channel(
        ctx,
        move |_, channel| {
            sum.lock().add(channel.stats());
            channel.stats_mut().reset(reset);
        },
        move |ctx| {
            let stats = total.lock().clone();
            done.push((name, stats));
            collect_next(ctx, entries, reset, done, finish);
        },
    );
}

#[cfg(test)]
mod tests;
