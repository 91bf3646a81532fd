//! What the media may hold, as the hosts can know it. NVMe orders nothing between
//! commands in flight together, so a block's value is a set: every write to it that may
//! have landed and that no later write is known to have covered. Writes enter the set
//! when sent, are known to have landed when acknowledged, and a write sent after another
//! one has finished (acknowledged, failed, or left the device) covers it once it is
//! acknowledged. A read may return any version that was possible at some moment between
//! its sending and its answer.
//!
//! Times here are the world's event sequence numbers, not nanoseconds: strictly
//! increasing, one per host-visible event.

use std::collections::{BTreeMap, HashMap};

/// Not yet.
const NEVER: u64 = u64::MAX;

#[derive(Clone, Copy, Debug)]
struct Version {
    stamp: u64,
    /// The command wrote zeroes (Write Zeroes, deallocation): it reads as stamp 0.
    zero: bool,
    sent: u64,
    /// When it was known to have finished: acknowledged, failed, or gone from the device.
    finished: u64,
    /// When a later write was acknowledged that certainly came after it.
    covered: u64,
}

impl Version {
    /// Whether a block that decodes as `stamp` may be this version.
    fn reads_as(&self, stamp: u64) -> bool {
        if self.zero {
            stamp == 0
        } else {
            self.stamp == stamp
        }
    }
}

struct Namespace {
    /// Per block, the versions that may be there (or may have been, for reads in flight).
    blocks: Vec<Vec<Version>>,
}

/// Where a write went, to find its versions again.
#[derive(Clone, Copy, Debug)]
struct Extent {
    nsid: u32,
    lba: u64,
    blocks: u64,
    sent: u64,
}

pub struct Model {
    namespaces: BTreeMap<u32, Namespace>,
    /// Writes in flight or lost with their connection, by stamp (a deallocation may
    /// name several ranges).
    writes: HashMap<u64, Vec<Extent>>,
    /// Reads in flight, by the sequence number they were sent at (with a count).
    reads: BTreeMap<u64, u32>,
    pub versions_checked: u64,
}

impl Model {
    pub fn new(namespaces: &[(u32, u64)]) -> Model {
        let initial = Version { stamp: 0, zero: true, sent: 0, finished: 0, covered: NEVER };
        Model {
            namespaces: namespaces
                .iter()
                .map(|(nsid, blocks)| (*nsid, Namespace { blocks: vec![vec![initial]; *blocks as usize] }))
                .collect(),
            writes: HashMap::new(),
            reads: BTreeMap::new(),
            versions_checked: 0,
        }
    }

    fn blocks_mut(&mut self, extent: &Extent) -> &mut [Vec<Version>] {
        let ns = self.namespaces.get_mut(&extent.nsid).expect("a namespace the model knows");
        &mut ns.blocks[extent.lba as usize..(extent.lba + extent.blocks) as usize]
    }

    pub fn write_sent(&mut self, stamp: u64, nsid: u32, lba: u64, blocks: u64, seq: u64) {
        self.sent(stamp, &[(lba, blocks)], nsid, seq, false);
    }

    /// A command that zeroes `ranges` (Write Zeroes, Dataset Management deallocate).
    pub fn zeroes_sent(&mut self, stamp: u64, nsid: u32, ranges: &[(u64, u64)], seq: u64) {
        self.sent(stamp, ranges, nsid, seq, true);
    }

    fn sent(&mut self, stamp: u64, ranges: &[(u64, u64)], nsid: u32, seq: u64, zero: bool) {
        let extents: Vec<Extent> =
            ranges.iter().map(|&(lba, blocks)| Extent { nsid, lba, blocks, sent: seq }).collect();
        for extent in &extents {
            for versions in self.blocks_mut(extent) {
                // Ranges of one deallocation may overlap: one version per block.
                if versions.last().is_none_or(|last| last.stamp != stamp) {
                    versions.push(Version { stamp, zero, sent: seq, finished: NEVER, covered: NEVER });
                }
            }
        }
        assert!(self.writes.insert(stamp, extents).is_none(), "stamp {stamp} used twice");
    }

    /// The write is acknowledged: it landed, and covers what finished before it was sent.
    pub fn write_acked(&mut self, stamp: u64, seq: u64) {
        let extents = self.writes.remove(&stamp).unwrap_or_else(|| panic!("ack of unknown write {stamp}"));
        let horizon = self.oldest_read();
        for extent in &extents {
            for versions in self.blocks_mut(extent) {
                for version in versions.iter_mut() {
                    if version.stamp == stamp {
                        version.finished = seq;
                    } else if version.finished < extent.sent && version.covered == NEVER {
                        version.covered = seq;
                    }
                }
                // What was covered before the oldest read in flight was sent, no read can see.
                versions.retain(|version| version.covered >= horizon);
            }
        }
    }

    /// The write failed: it may or may not have landed; either way it is finished.
    pub fn write_failed(&mut self, stamp: u64, seq: u64) {
        self.write_finished(stamp, seq);
    }

    /// The write was aborted before it started (Abort found it waiting for buffers): it
    /// never reached the device, so no read may ever see it.
    pub fn write_aborted(&mut self, stamp: u64) {
        let extents = self.writes.remove(&stamp).unwrap_or_else(|| panic!("abort of unknown write {stamp}"));
        for extent in &extents {
            for versions in self.blocks_mut(extent) {
                versions.retain(|version| version.stamp != stamp);
            }
        }
    }

    /// A write whose connection was lost finished at the device (or never will start):
    /// from now on it can only be covered.
    pub fn write_finished(&mut self, stamp: u64, seq: u64) {
        let Some(extents) = self.writes.remove(&stamp) else { return };
        for extent in &extents {
            for versions in self.blocks_mut(extent) {
                for version in versions.iter_mut().filter(|version| version.stamp == stamp) {
                    version.finished = seq;
                }
            }
        }
    }

    pub fn read_sent(&mut self, seq: u64) {
        *self.reads.entry(seq).or_default() += 1;
    }

    /// The read sent at `sent` is over (answered or lost).
    pub fn read_done(&mut self, sent: u64) {
        match self.reads.get_mut(&sent) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                self.reads.remove(&sent);
            }
            None => panic!("read sent at {sent} was not in flight"),
        }
    }

    fn oldest_read(&self) -> u64 {
        self.reads.keys().next().copied().unwrap_or(NEVER)
    }

    /// Checks that block `lba` read as `stamp` by a read sent at `sent`, answered at `seq`.
    pub fn check_read(&mut self, nsid: u32, lba: u64, stamp: u64, sent: u64, seq: u64) -> Result<(), String> {
        self.versions_checked += 1;
        let versions = &self.namespaces[&nsid].blocks[lba as usize];
        let ok = versions.iter().any(|version| version.reads_as(stamp) && version.sent < seq && version.covered > sent);
        if ok {
            return Ok(());
        }
        Err(format!(
            "nsid {nsid} lba {lba}: read (sent at {sent}, answered at {seq}) returned write {stamp}; possible were {:?}",
            versions
                .iter()
                .filter(|version| version.sent < seq && version.covered > sent)
                .map(|version| version.stamp)
                .collect::<Vec<_>>()
        ))
    }

    /// Checks the media at rest (nothing in flight anywhere): each block must hold a
    /// version no acknowledged write has covered.
    pub fn check_rest(&self, nsid: u32, lba: u64, stamp: u64) -> Result<(), String> {
        let versions = &self.namespaces[&nsid].blocks[lba as usize];
        if versions.iter().any(|version| version.reads_as(stamp) && version.covered == NEVER) {
            return Ok(());
        }
        Err(format!(
            "nsid {nsid} lba {lba} holds write {stamp} at rest; possible were {:?}",
            versions.iter().filter(|version| version.covered == NEVER).map(|version| version.stamp).collect::<Vec<_>>()
        ))
    }

    pub fn pending_writes(&self) -> usize {
        self.writes.len()
    }

    pub fn reads_in_flight(&self) -> usize {
        self.reads.values().map(|count| *count as usize).sum()
    }
}

#[test]
fn overlapping_writes_are_ambiguous_until_one_covers_the_other() {
    let mut model = Model::new(&[(1, 4)]);
    model.write_sent(10, 1, 0, 2, 1);
    model.write_sent(11, 1, 1, 2, 2);
    model.write_acked(10, 3);
    model.write_acked(11, 4);
    // Block 1 had both in flight together: either may be there.
    assert!(model.check_rest(1, 1, 10).is_ok());
    assert!(model.check_rest(1, 1, 11).is_ok());
    assert!(model.check_rest(1, 0, 0).is_err(), "write 10 covered the zeroes");
    // A write sent after both were acknowledged settles it.
    model.write_sent(12, 1, 1, 1, 5);
    model.read_sent(6);
    model.write_acked(12, 7);
    assert!(model.check_rest(1, 1, 12).is_ok());
    assert!(model.check_rest(1, 1, 11).is_err());
    // ... but the read sent before the acknowledgement may still have seen the old ones.
    assert!(model.check_read(1, 1, 11, 6, 8).is_ok());
    assert!(model.check_read(1, 1, 11, 8, 9).is_err());
    model.read_done(6);
    // A failed write may have landed; an aborted one cannot have.
    model.write_sent(13, 1, 3, 1, 10);
    model.write_failed(13, 11);
    assert!(model.check_rest(1, 3, 13).is_ok() && model.check_rest(1, 3, 0).is_ok());
    model.write_sent(14, 1, 2, 1, 12);
    model.write_aborted(14);
    assert!(model.check_rest(1, 2, 14).is_err());
    // Deallocated blocks read as zeroes, even where the first write put something else.
    model.zeroes_sent(15, 1, &[(0, 1), (0, 2)], 13);
    model.write_acked(15, 14);
    assert!(model.check_rest(1, 0, 0).is_ok() && model.check_rest(1, 1, 0).is_ok());
    assert!(model.check_rest(1, 0, 10).is_err());
}
