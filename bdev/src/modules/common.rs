//! What several modules share: for stacked ones (delay, error), a base bdev opened for
//! writing and claimed for as long as the stacked bdev lives; for all, pollers owned by
//! the channel state they serve.

use std::cell::RefCell;
use std::rc::Weak;
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::reactor::{PollStatus, Poller, ThreadCtx};

use crate::bdev::Bdev;
use crate::error::BdevError;
use crate::manager::{BdevHandle, BdevManager, ClaimType, Desc};

/// The bdev under a stacked one.
pub(crate) struct BaseBdev {
    bdev: Arc<dyn Bdev>,
    /// Taken (closing the descriptor, so releasing the claim) by the stacked bdev's
    /// `destruct`; channels made before that keep their own handle. Locked only to make
    /// a channel and at destruct, never per I/O.
    desc: Mutex<Option<Desc>>,
}

impl BaseBdev {
    /// Opens `name` for writing and claims it exclusive_write for `claimant`, as SPDK's
    /// stacked modules do: nobody else may write underneath them.
    pub(crate) fn open(manager: &BdevManager, name: &str, claimant: &str) -> Result<BaseBdev, BdevError> {
        let desc = manager.open(name, true, None, None)?;
        desc.claim(ClaimType::ExclusiveWrite, claimant)?;
        Ok(BaseBdev { bdev: desc.bdev().clone(), desc: Mutex::new(Some(desc)) })
    }

    pub(crate) fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.bdev
    }

    pub(crate) fn name(&self) -> &str {
        &self.bdev.info().name
    }

    /// This thread's handle on the base; None once the stacked bdev let go of it.
    pub(crate) fn channel(&self, ctx: &mut ThreadCtx) -> Option<BdevHandle> {
        self.desc.lock().as_ref().map(|desc| desc.channel(ctx))
    }

    /// Closes the descriptor, releasing the claim.
    pub(crate) fn release(&self) {
        self.desc.lock().take();
    }
}

/// A poller (active for `period_us` 0, timed otherwise) that runs `poll` on a channel's
/// state, for that state to own: it stops when the state is dropped. It reaches the
/// state weakly, as a strong reference would keep the state, and so itself, alive.
/// Build the state with `Rc::new_cyclic` to have the weak reference before the state.
pub(crate) fn state_poller<S: 'static>(
    ctx: &mut ThreadCtx,
    name: &str,
    period_us: u64,
    state: Weak<RefCell<S>>,
    mut poll: impl FnMut(&mut S, &mut ThreadCtx) -> PollStatus + 'static,
) -> Poller {
    ctx.poller(name, period_us, move |ctx| match state.upgrade() {
        Some(state) => poll(&mut state.borrow_mut(), ctx),
        // Unreachable while the state owns this poller; finishing is the safe answer.
        None => PollStatus::Done,
    })
}
