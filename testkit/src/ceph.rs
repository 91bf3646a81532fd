//! A one-node Ceph cluster for tests, through `ci/ceph.sh` (one monitor, one OSD on
//! memstore or bluestore, pool `rbd` of size 1, auth off, loopback): started in a scratch
//! directory on a free monitor port, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{free_port, run, Scratch};

/// Starting takes about 10 s on a quiet 2-core machine; this is the bound if it hangs.
const START_WAIT: Duration = Duration::from_secs(120);
const COMMAND_WAIT: Duration = Duration::from_secs(60);

pub struct CephCluster {
    script: PathBuf,
    dir: PathBuf,
    _scratch: Scratch,
}

impl CephCluster {
    /// Starts a cluster whose OSD keeps its objects in RAM (memstore); `repo` is the
    /// repository root (where `ci/ceph.sh` is).
    #[track_caller]
    pub fn start(repo: &Path, test: &str) -> CephCluster {
        CephCluster::start_on(repo, test, "memstore")
    }

    /// Starts a cluster whose OSD keeps its objects in a file (bluestore), so it can be
    /// stopped and started again (`osd_stop`, `osd_start`) with everything it held.
    #[track_caller]
    pub fn start_bluestore(repo: &Path, test: &str) -> CephCluster {
        CephCluster::start_on(repo, test, "bluestore")
    }

    #[track_caller]
    fn start_on(repo: &Path, test: &str, objectstore: &str) -> CephCluster {
        let scratch = Scratch::new(test);
        let dir = scratch.path().join("ceph");
        let script = repo.join("ci/ceph.sh");
        let cluster = CephCluster { script, dir, _scratch: scratch };
        let port = free_port().to_string();
        let output = run(
            Command::new("bash")
                .arg(&cluster.script)
                .arg("start")
                .arg(&cluster.dir)
                .env("CEPH_PORT", port)
                .env("CEPH_OBJECTSTORE", objectstore),
            START_WAIT,
        );
        assert!(output.status.success(), "ci/ceph.sh start failed: {output:?}");
        cluster
    }

    /// The ceph.conf clients use (`config_file`).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }

    /// Runs the `rbd` tool against this cluster (`rbd create --size 64M rbd/x`).
    #[track_caller]
    pub fn rbd(&self, args: &[&str]) -> String {
        let output = run(Command::new("rbd").arg("-c").arg(self.conf()).args(args), COMMAND_WAIT);
        assert!(output.status.success(), "rbd {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Stops the OSD (orderly); `osd_start` brings it back with its objects on bluestore.
    #[track_caller]
    pub fn osd_stop(&self) {
        self.script_step("osd-stop");
    }

    #[track_caller]
    pub fn osd_start(&self) {
        self.script_step("osd-start");
    }

    /// Freezes the OSD and has the monitor mark it down (its host stops answering).
    #[track_caller]
    pub fn osd_pause(&self) {
        self.script_step("osd-pause");
    }

    /// Thaws a paused OSD and waits until the monitor has it up again.
    #[track_caller]
    pub fn osd_resume(&self) {
        self.script_step("osd-resume");
    }

    #[track_caller]
    fn script_step(&self, step: &str) {
        let output = run(Command::new("bash").arg(&self.script).arg(step).arg(&self.dir), START_WAIT);
        assert!(output.status.success(), "ci/ceph.sh {step}: {output:?}");
    }
}

impl Drop for CephCluster {
    fn drop(&mut self) {
        let _ = run(Command::new("bash").arg(&self.script).arg("stop").arg(&self.dir), START_WAIT);
    }
}
