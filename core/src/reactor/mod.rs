//! SPDK's threading model: reactors (one pinned OS thread per core) run lightweight
//! threads; each thread owns its pollers, io channels and message queue; threads
//! cooperate only by message: no shared state on the data path, no allocation per
//! I/O, no blocking.
//!
//! Architecture invariant: nothing here blocks on a reactor. Back-pressure (a full
//! message queue) is an expected state handled by parking the message in the sender's
//! outbox; locks exist only on control-plane paths (thread and channel registration).

mod app;
mod channel;
mod cpumask;
mod mode;
mod poller;
mod run_loop;
mod stepped;
mod thread;

pub use app::{App, AppError, AppHandle, AppOptions, AppState, FiniDone, InitDone, Subsystem, APP_THREAD_NAME};
pub use channel::{IoChannel, IoDevice, WeakIoChannel};
pub use cpumask::{CoreMask, CoreMaskError, MAX_CORES};
pub use mode::{PollWindow, ReactorMode, MAX_POLL_WINDOW_US};
pub use poller::{PollStatus, Poller, PollerId, PollerStat, PollerState};
pub use run_loop::ReactorStat;
pub use stepped::SteppedApp;
pub use thread::{
    monotonic_ns, Msg, SendError, ThreadCtx, ThreadHandle, ThreadId, ThreadStats, DEFAULT_MSG_QUEUE_CAPACITY,
    MSG_BATCH_SIZE,
};

#[cfg(test)]
mod tests;
