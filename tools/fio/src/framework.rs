//! The Peerless framework inside fio, for `peerless_bdev`: one app per process, started
//! by the first fio job's setup, loaded from its JSON config, stopped when the last job
//! using it cleans up (SPDK's bdev plugin keeps an init thread the same way).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use peerless_bdev::BdevManager;
use peerless_core::config;
use peerless_core::reactor::{App, AppHandle, AppOptions, CoreMask};

struct Running {
    app: App,
    bdevs: BdevManager,
    conf: PathBuf,
    users: usize,
}

/// std's Mutex: the control plane only (setup and cleanup of fio jobs), never per I/O.
static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// A job's hold on the running framework; dropping the last one stops it.
pub struct Framework {
    pub app: AppHandle,
    pub bdevs: BdevManager,
}

impl Framework {
    /// Joins the running framework, or starts one from `conf`. Every job of one fio run
    /// must name the same config: the bdevs it creates are shared.
    pub fn acquire(conf: &Path) -> Result<Framework, String> {
        let mut running = RUNNING.lock().map_err(|_| "the framework lock is poisoned".to_string())?;
        if running.is_none() {
            *running = Some(start(conf)?);
        }
        let state = running.as_mut().expect("started above");
        if state.conf != conf {
            return Err(format!(
                "json_conf={} differs from {}, which the framework in this fio process was started with",
                conf.display(),
                state.conf.display()
            ));
        }
        state.users += 1;
        Ok(Framework { app: state.app.handle(), bdevs: state.bdevs.clone() })
    }
}

impl Drop for Framework {
    fn drop(&mut self) {
        let Ok(mut running) = RUNNING.lock() else { return };
        let Some(state) = running.as_mut() else { return };
        assert!(state.users > 0, "more framework releases than holds");
        state.users -= 1;
        if state.users == 0 {
            if let Some(state) = running.take() {
                state.app.handle().stop();
                state.app.wait();
            }
        }
    }
}

fn start(conf: &Path) -> Result<Running, String> {
    let options = AppOptions {
        name: "peerless-fio".into(),
        cpumask: CoreMask::single(reactor_core()),
        // A reactor that sleeps when idle leaves the cores to fio's own threads.
        interrupt_mode: true,
        ..AppOptions::default()
    };
    let app = App::start(options).map_err(|err| format!("cannot start the framework: {err}"))?;
    let handle = app.handle();
    // The framework and bdev methods are all a bdev config may call here.
    let (bdevs, registry) = peerless_bdev::serve_in_app(&handle);
    if let Err(err) = config::load(conf, &registry, &handle, true) {
        handle.stop();
        app.wait();
        return Err(err.to_string());
    }
    handle.mark_ready();
    Ok(Running { app, bdevs, conf: conf.to_path_buf(), users: 0 })
}

/// The highest core this process may run on: fio pins nothing unless told to
/// (cpus_allowed), and its first jobs land on low cores more often.
fn reactor_core() -> u32 {
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
    let cores = u32::try_from(nix::sched::CpuSet::count()).unwrap_or(1);
    (0..cores)
        .rev()
        .find(|core| allowed.as_ref().is_some_and(|set| set.is_set(*core as usize).unwrap_or(false)))
        .unwrap_or(0)
}
