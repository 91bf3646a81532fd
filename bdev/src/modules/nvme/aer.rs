//! What the driver does with asynchronous events (NVMe Base 2.0 §5.2). The controller
//! keeps AERs outstanding on its admin queue (`Controller::take_async_events` reaps
//! their completions from the app thread's health poller). Each event's log page is
//! read, which clears it, on a thread of its own (admin commands block for as long as
//! the controller takes); a Namespace Attribute Changed notice then has every namespace
//! the Changed Namespace List names (log page 04h, §5.16.1.5) identified again, and the
//! bdevs follow on the app thread: a namespace that appeared becomes a bdev `NAMEnNSID`,
//! one that went away has its bdev unregistered (its openers are told, as on hot-remove),
//! one whose size changed has its bdev resized (the layer tells its openers). The AERs
//! are posted again once the log page is read: the controller holds back further events
//! of a type until then.

use std::sync::Arc;

use peerless_core::reactor::ThreadCtx;

use super::async_event::{aer_aborted, parse_changed_namespaces, AsyncEvent, ChangedNamespaces, EventKind};
use super::controller::{Controller, Namespace};
use super::health::Watched;
use super::spec::{Cqe, IdentifyNamespace};
use super::{NvmeBdev, MODULE_NAME};
use crate::error::BdevError;

/// What a namespace's identify data now says against what the driver serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Added(Namespace),
    Removed(u32),
    Resized { nsid: u32, blocks: u64 },
}

/// Compares a namespace as served (`known`) with what Identify says now (`now`; None:
/// not active). A namespace formatted to another block size is a new namespace to the
/// bdev layer, which cannot change a bdev's block size: removed, then added.
pub fn compare(nsid: u32, known: Option<&IdentifyNamespace>, now: Option<&IdentifyNamespace>) -> Vec<Change> {
    match (known, now) {
        (None, Some(now)) => vec![Change::Added(Namespace { nsid, id: now.clone() })],
        (Some(_), None) => vec![Change::Removed(nsid)],
        (Some(known), Some(now)) if known.block_size != now.block_size || known.nguid != now.nguid => {
            vec![Change::Removed(nsid), Change::Added(Namespace { nsid, id: now.clone() })]
        }
        (Some(known), Some(now)) if known.size_blocks != now.size_blocks => {
            vec![Change::Resized { nsid, blocks: now.size_blocks }]
        }
        _ => Vec::new(),
    }
}

/// Applies `compare` to a list of namespaces as served, keeping it ascending by NSID.
pub fn update(served: &mut Vec<Namespace>, nsid: u32, now: Option<IdentifyNamespace>) -> Vec<Change> {
    let index = served.iter().position(|ns| ns.nsid == nsid);
    let changes = compare(nsid, index.map(|index| &served[index].id), now.as_ref());
    if changes.is_empty() {
        return changes;
    }
    served.retain(|ns| ns.nsid != nsid);
    if let Some(id) = now {
        served.push(Namespace { nsid, id });
        served.sort_by_key(|ns| ns.nsid);
    }
    changes
}

/// From the health poller on the app thread: hands the events that came in to a thread
/// that reads their log pages, and applies what changed back on this thread.
pub(super) fn handle_events(ctx: &mut ThreadCtx, watched: &Watched, ctrlr: &Arc<Controller>) {
    let bdf = ctrlr.pci().bdf().to_string();
    let events: Vec<AsyncEvent> =
        ctrlr.take_async_events().into_iter().filter_map(|cqe| event_of(&bdf, &cqe)).collect();
    if events.is_empty() {
        return;
    }
    let (worker, watched, app_thread) = (ctrlr.clone(), watched.clone(), ctx.handle());
    let spawned = std::thread::Builder::new().name("nvme-aen".into()).spawn(move || {
        let changes: Vec<Change> = events.iter().flat_map(|event| read_event(&worker, event)).collect();
        worker.repost_async_events();
        if changes.is_empty() {
            return;
        }
        let ctrlr = worker.clone();
        if app_thread.send(move |ctx| apply(ctx, &watched, &ctrlr, changes)).is_err() {
            peerless_core::log_error!("nvme {}: namespace changes came in after the app stopped", worker.pci().bdf());
        }
    });
    if let Err(err) = spawned {
        peerless_core::log_error!("nvme {bdf}: cannot start a thread for asynchronous events: {err}");
        ctrlr.repost_async_events();
    }
}

/// The event an AER's completion reports; None (logged) when the AER failed.
fn event_of(bdf: &str, cqe: &Cqe) -> Option<AsyncEvent> {
    if cqe.is_success() {
        return Some(AsyncEvent::decode(cqe.result));
    }
    if aer_aborted(cqe) {
        peerless_core::log_notice!("nvme {bdf}: an asynchronous event request was aborted");
    } else {
        peerless_core::log_error!(
            "nvme {bdf}: asynchronous event request failed (status type {:#x} code {:#x}); not posted again",
            cqe.sct,
            cqe.sc
        );
    }
    None
}

/// Reads the event's log page (clearing it) and, for a namespace change, identifies the
/// namespaces it lists. Runs off the reactors.
fn read_event(ctrlr: &Controller, event: &AsyncEvent) -> Vec<Change> {
    let bdf = ctrlr.pci().bdf();
    if event.log_page == 0 {
        peerless_core::log_warn!("nvme {bdf}: asynchronous event {} names no log page", event.describe());
        return Vec::new();
    }
    let log = ctrlr.read_log_page(event.log_page, event.log_bytes());
    if !event.is_namespace_change() {
        let detail = match (&log, event.kind) {
            (Ok(data), EventKind::SmartHealth) => format!("critical warning {:#04x}", data[0]),
            (Ok(data), _) => format!("log page read ({} bytes)", data.len()),
            (Err(err), _) => format!("its log page could not be read: {err}"),
        };
        match event.kind {
            EventKind::Error | EventKind::SmartHealth => {
                peerless_core::log_error!("nvme {bdf}: asynchronous event: {}; {detail}", event.describe())
            }
            _ => peerless_core::log_notice!("nvme {bdf}: asynchronous event: {}; {detail}", event.describe()),
        }
        return Vec::new();
    }
    let changed = match log.map(|data| parse_changed_namespaces(&data)) {
        // Someone else read the list first (a Get Log Page through bdev_nvme_send_cmd,
        // say): the event is real, the list lost.
        Ok(ChangedNamespaces::Some(nsids)) if nsids.is_empty() => {
            peerless_core::log_warn!("nvme {bdf}: the changed namespace list is empty; looking at every namespace");
            ChangedNamespaces::All
        }
        Ok(changed) => changed,
        Err(err) => {
            peerless_core::log_error!("nvme {bdf}: changed namespace list: {err}; looking at every namespace");
            ChangedNamespaces::All
        }
    };
    peerless_core::log_notice!("nvme {bdf}: namespace attribute changed: {changed:?}");
    rescan(ctrlr, changed)
}

fn rescan(ctrlr: &Controller, changed: ChangedNamespaces) -> Vec<Change> {
    let bdf = ctrlr.pci().bdf();
    let nsids = match changed {
        ChangedNamespaces::Some(nsids) => nsids,
        ChangedNamespaces::All => {
            let mut nsids: Vec<u32> = ctrlr.namespaces().iter().map(|ns| ns.nsid).collect();
            match ctrlr.active_namespaces() {
                Ok(active) => nsids.extend(active),
                Err(err) => peerless_core::log_error!("nvme {bdf}: active namespace list: {err}"),
            }
            nsids.sort_unstable();
            nsids.dedup();
            nsids
        }
    };
    let mut changes = Vec::new();
    for nsid in nsids.into_iter().filter(|nsid| (1..=ctrlr.identity().nn).contains(nsid)) {
        match ctrlr.identify_namespace(nsid) {
            Ok(now) => changes.extend(update(&mut ctrlr.namespaces_mut(), nsid, now)),
            Err(err) => peerless_core::log_error!("nvme {bdf}: {err}; namespace {nsid} left as it was"),
        }
    }
    changes
}

/// On the app thread: the bdevs follow the namespaces.
fn apply(ctx: &mut ThreadCtx, watched: &Watched, ctrlr: &Arc<Controller>, changes: Vec<Change>) {
    let Some((Some(current), _)) = watched.current() else { return };
    let (Some(bdevs), Some(controllers)) = (watched.bdevs.upgrade(), watched.controllers.upgrade()) else { return };
    if !Arc::ptr_eq(&current, ctrlr) {
        return;
    }
    let name = &watched.name;
    for change in changes {
        match change {
            Change::Added(ns) => {
                let bdev_name = format!("{name}n{}", ns.nsid);
                let full = matches!(controllers.lock().get(name), Some(Some(attached)) if attached.bdevs.len() >= attached.max_bdevs);
                if full {
                    peerless_core::log_warn!("nvme {name}: namespace {} appeared, but max_bdevs are served", ns.nsid);
                    continue;
                }
                let registered = NvmeBdev::new(name, ctrlr.clone(), &ns, controllers.clone())
                    .and_then(|bdev| bdevs.register(Arc::new(bdev)).map_err(|err| err.to_string()));
                match registered {
                    Ok(()) => {
                        if let Some(Some(attached)) = controllers.lock().get_mut(name) {
                            attached.bdevs.push(bdev_name.clone());
                        }
                        peerless_core::log_notice!("nvme {name}: namespace {} appeared: bdev {bdev_name}", ns.nsid);
                    }
                    Err(err) => peerless_core::log_error!("nvme {name}: namespace {}: {err}; it gets no bdev", ns.nsid),
                }
            }
            Change::Removed(nsid) => {
                let bdev_name = format!("{name}n{nsid}");
                // Off the controller's list first, so the bdev's destruct leaves the
                // controller attached however few namespaces it has left.
                if let Some(Some(attached)) = controllers.lock().get_mut(name) {
                    attached.bdevs.retain(|each| *each != bdev_name);
                }
                match bdevs.unregister_by_name(Some(ctx), &bdev_name, MODULE_NAME) {
                    Ok(()) => {
                        peerless_core::log_notice!("nvme {name}: namespace {nsid} went away: bdev {bdev_name} removed")
                    }
                    Err(BdevError::NotFound(_)) => {}
                    Err(err) => peerless_core::log_error!("nvme {name}: unregister {bdev_name}: {err}"),
                }
            }
            Change::Resized { nsid, blocks } => {
                let bdev_name = format!("{name}n{nsid}");
                match bdevs.notify_resize(Some(ctx), &bdev_name, blocks) {
                    Ok(()) => peerless_core::log_notice!(
                        "nvme {name}: namespace {nsid} resized: {bdev_name} has {blocks} blocks"
                    ),
                    Err(BdevError::NotFound(_)) => {}
                    Err(err) => peerless_core::log_error!("nvme {name}: resize {bdev_name} to {blocks} blocks: {err}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(blocks: u64, block_size: u32) -> IdentifyNamespace {
        IdentifyNamespace { size_blocks: blocks, block_size, metadata_bytes: 0, nguid: [7; 16] }
    }

    #[test]
    fn a_namespace_appears_goes_away_or_changes_size() {
        assert_eq!(compare(2, None, Some(&ns(100, 512))), vec![Change::Added(Namespace { nsid: 2, id: ns(100, 512) })]);
        assert_eq!(compare(2, Some(&ns(100, 512)), None), vec![Change::Removed(2)]);
        assert_eq!(
            compare(2, Some(&ns(100, 512)), Some(&ns(300, 512))),
            vec![Change::Resized { nsid: 2, blocks: 300 }]
        );
        assert_eq!(compare(2, Some(&ns(100, 512)), Some(&ns(100, 512))), vec![]);
        assert_eq!(compare(2, None, None), vec![], "listed but neither served nor active");
        // Reformatted to 4 KiB blocks, or another namespace under the same NSID.
        let reformatted = compare(3, Some(&ns(100, 512)), Some(&ns(100, 4096)));
        assert_eq!(reformatted, vec![Change::Removed(3), Change::Added(Namespace { nsid: 3, id: ns(100, 4096) })]);
        let other = IdentifyNamespace { nguid: [9; 16], ..ns(100, 512) };
        assert_eq!(compare(3, Some(&ns(100, 512)), Some(&other)).len(), 2);
    }

    #[test]
    fn the_served_list_follows_and_stays_ascending() {
        let mut served = vec![Namespace { nsid: 1, id: ns(10, 512) }, Namespace { nsid: 4, id: ns(40, 512) }];
        assert_eq!(update(&mut served, 3, Some(ns(30, 512))).len(), 1);
        assert_eq!(served.iter().map(|ns| ns.nsid).collect::<Vec<_>>(), vec![1, 3, 4]);
        assert_eq!(update(&mut served, 1, None), vec![Change::Removed(1)]);
        assert_eq!(update(&mut served, 1, None), vec![], "gone already");
        assert_eq!(update(&mut served, 4, Some(ns(80, 512))), vec![Change::Resized { nsid: 4, blocks: 80 }]);
        assert_eq!(served.iter().map(|ns| (ns.nsid, ns.id.size_blocks)).collect::<Vec<_>>(), vec![(3, 30), (4, 80)]);
        assert_eq!(update(&mut served, 3, Some(ns(30, 512))), vec![], "unchanged");
        assert_eq!(served.len(), 2);
    }
}
