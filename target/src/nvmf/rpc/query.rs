//! The nvmf methods that only report: subsystems, controllers, queue pairs, listeners,
//! statistics and memory.

use super::*;

/// One subsystem as `nvmf_get_subsystems` shows it, keys in SPDK's order.
pub fn subsystem_json(subsystem: &Subsystem) -> Value {
    let state = subsystem.state.lock();
    let listen: Vec<Value> = state.listeners.iter().map(ListenAddress::to_json).collect();
    // Key names as SPDK shows them; the keys themselves stay in their files.
    let hosts: Vec<Value> = state
        .hosts
        .iter()
        .map(|host| {
            let mut entry = json!({"nqn": host});
            if let Some(keys) = state.host_keys.get(host) {
                if let Some(key) = &keys.dhchap_key {
                    entry["dhchap_key"] = json!(key.name());
                }
                if let Some(key) = &keys.dhchap_ctrlr_key {
                    entry["dhchap_ctrlr_key"] = json!(key.name());
                }
            }
            if let Some(key) = state.host_psks.get(host) {
                entry["psk"] = json!(key.name());
            }
            entry
        })
        .collect();
    let mut object = json!({
        "nqn": subsystem.nqn,
        "subtype": if subsystem.kind == SubsystemKind::Discovery { "Discovery" } else { "NVMe" },
        "listen_addresses": listen,
        "allow_any_host": state.allow_any_host,
        "hosts": hosts,
    });
    if subsystem.kind == SubsystemKind::Nvme {
        let map = object.as_object_mut().expect("built as an object");
        let namespaces: Vec<Value> = state
            .namespaces
            .values()
            .map(|ns| {
                let mut entry = json!({"nsid": ns.nsid, "bdev_name": ns.bdev_name, "name": ns.bdev_name,
                    "nguid": hex(&ns.nguid), "uuid": peerless_bdev::Uuid(ns.uuid).to_string(),
                    "p2pmem": ns.p2pmem.as_str()});
                if ns.eui64 != [0; 8] {
                    entry["eui64"] = json!(hex(&ns.eui64));
                }
                if state.ana_reporting {
                    entry["anagrpid"] = json!(ns.anagrpid);
                }
                entry
            })
            .collect();
        map.insert("serial_number".into(), json!(state.serial));
        map.insert("model_number".into(), json!(state.model));
        if let Some(label) = &state.admin_label {
            map.insert("admin_label".into(), json!(label));
        }
        map.insert("max_namespaces".into(), json!(state.max_namespaces));
        // Always false: nvmf_create_subsystem refuses passthrough.
        map.insert("passthrough".into(), json!(false));
        map.insert("min_cntlid".into(), json!(state.min_cntlid));
        map.insert("max_cntlid".into(), json!(state.max_cntlid));
        map.insert("dmrsl".into(), json!(state.limits.dmrsl));
        map.insert("wzsl".into(), json!(state.limits.wzsl));
        map.insert("namespaces".into(), Value::Array(namespaces));
    }
    object
}

pub(super) fn get_subsystems(_: &mut ThreadCtx, target: &NvmfTarget, params: OptionalNqn, responder: Responder) {
    let result = check_target(&params.tgt_name).and_then(|()| match &params.nqn {
        Some(nqn) => Ok(vec![subsystem_json(&*target.lookup(nqn)?)]),
        None => Ok(target.subsystems().iter().map(|subsystem| subsystem_json(subsystem)).collect()),
    });
    match result {
        Ok(subsystems) => responder.ok(subsystems),
        Err(err) => responder.err(err),
    }
}

pub(super) fn get_controllers(_: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    let found = match check_target(&params.tgt_name).and_then(|()| Ok(target.lookup(&params.nqn)?)) {
        Ok(found) => found,
        Err(err) => return responder.err(err),
    };
    let controllers: Vec<Value> = found
        .state
        .lock()
        .controllers
        .values()
        .map(|controller| {
            let io_qpairs = controller.qpairs.lock().iter().filter(|qpair| qpair.qid > 0).count();
            json!({"cntlid": controller.cntlid,
                "cntrltype": if found.kind == SubsystemKind::Discovery { "discovery" } else { "io" },
                "hostnqn": controller.hostnqn, "hostid": peerless_bdev::Uuid(controller.hostid).to_string(),
                "num_io_qpairs": io_qpairs})
        })
        .collect();
    responder.ok(controllers)
}

pub(super) fn get_qpairs(ctx: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    let found = match check_target(&params.tgt_name).and_then(|()| Ok(target.lookup(&params.nqn)?)) {
        Ok(found) => found,
        Err(err) => return responder.err(err),
    };
    let nqn = found.nqn.clone();
    let hosts: Vec<(u16, String)> =
        found.state.lock().controllers.values().map(|c| (c.cntlid, c.hostnqn.clone())).collect();
    gather(
        ctx,
        target,
        move |group, _| group.qpairs(&nqn),
        move |_, groups| {
            let mut qpairs = Vec::new();
            for (thread, entries) in groups {
                for row in entries {
                    let hostnqn =
                        hosts.iter().find(|(id, _)| *id == row.cntlid).map(|(_, nqn)| nqn.clone()).unwrap_or_default();
                    qpairs.push(qpair_json(&row, &thread, &hostnqn));
                }
            }
            responder.ok(qpairs)
        },
    );
}

/// One queue pair as `nvmf_subsystem_get_qpairs` shows it: its addresses are of its own
/// transport, as SPDK prints the queue's transport ID ("RDMA" for an RDMA queue).
fn qpair_json(row: &QpairRow, thread: &str, hostnqn: &str) -> Value {
    let mut qpair = json!({"cntlid": row.cntlid, "qid": row.qid, "state": row.state, "thread": thread,
        "hostnqn": hostnqn, "trtype": row.trtype,
        "listen_address": transport_address_json(row.trtype, row.local),
        "peer_address": transport_address_json(row.trtype, row.peer)});
    // SPDK's `auth` object, on queues that authenticated or are authenticating.
    if let Some((state, digest, dhgroup)) = row.auth {
        qpair["auth"] = json!({"state": state, "digest": digest, "dhgroup": dhgroup});
    }
    qpair
}

pub(super) fn get_listeners(_: &mut ThreadCtx, target: &NvmfTarget, params: NqnParams, responder: Responder) {
    match check_target(&params.tgt_name).and_then(|()| Ok(target.lookup(&params.nqn)?)) {
        Ok(found) => {
            let state = found.state.lock();
            let listeners: Vec<Value> = state
                .listeners
                .iter()
                .map(|listener| {
                    let mut entry = json!({"address": listener.to_json()});
                    if listener.secure {
                        entry["secure_channel"] = json!(true);
                    }
                    // As SPDK: every group up to ANAGRPMAX, when the subsystem reports ANA.
                    if state.ana_reporting {
                        let states: Vec<Value> = (1..=listener.ana.groups())
                            .map(|group| json!({"ana_group": group, "ana_state": listener.ana.state(group).name()}))
                            .collect();
                        entry["ana_states"] = Value::Array(states);
                    }
                    entry
                })
                .collect();
            responder.ok(listeners)
        }
        Err(err) => responder.err(err),
    }
}

pub(super) fn get_stats(ctx: &mut ThreadCtx, target: &NvmfTarget, params: TargetOnly, responder: Responder) {
    if let Err(err) = check_target(&params.tgt_name) {
        return responder.err(err);
    }
    let auth_failures = target.0.auth_limiter.counts();
    gather(
        ctx,
        target,
        |group, ctx| (group.stats(ctx.stats().busy_ns), group.transport_stats()),
        move |_, groups| {
            let poll_groups: Vec<Value> = groups
                .iter()
                .map(|(name, (stats, transports)): &(String, (PollGroupStats, Vec<Value>))| {
                    json!({"name": name, "admin_qpairs": stats.admin_qpairs, "io_qpairs": stats.io_qpairs,
                        "current_admin_qpairs": stats.current_admin_qpairs, "current_io_qpairs": stats.current_io_qpairs,
                        "current_unassociated_qpairs": stats.current_unassociated_qpairs,
                        "pending_bdev_io": stats.pending_bdev_io, "completed_nvme_io": stats.completed_nvme_io,
                        "pending_buffer_waits": stats.buffer_waits, "busy_ns": stats.busy_ns,
                        "cpu_ns_per_io": stats.busy_ns.checked_div(stats.completed_nvme_io).unwrap_or(0),
                        "transports": transports})
                })
                .collect();
            // Beside SPDK's fields: failed DH-HMAC-CHAP attempts by host and address.
            let auth_failures: Vec<Value> = auth_failures
                .iter()
                .map(|count| {
                    json!({"hostnqn": count.hostnqn, "address": count.addr.to_string(),
                        "failures": count.failures, "throttled": count.throttled})
                })
                .collect();
            responder.ok(json!({"tick_rate": TICK_RATE_HZ, "poll_groups": poll_groups, "auth_failures": auth_failures}))
        },
    );
}

/// `mem_get_stats`: where payload went and what the CPU touched, so a user can see it:
/// payload bytes the target placed in buffers of each kind, CPU bytes by path from the
/// memory gate's counters, fallbacks to host memory, refusals, and every P2P provider.
pub(super) fn mem_get_stats(ctx: &mut ThreadCtx, target: &NvmfTarget, responder: Responder) {
    let providers: Vec<Value> = target
        .0
        .bdevs
        .list()
        .iter()
        .filter_map(|bdev| bdev.p2p_provider())
        .map(|provider| {
            json!({"name": provider.name(), "kind": provider.kind().to_string(), "size": provider.capacity_bytes(),
                "free": provider.available_bytes()})
        })
        .collect();
    // Each transport's data buffers: fixed at creation, the bound on payload memory.
    let data_buffers: Vec<Value> = target
        .transports()
        .iter()
        .map(|transport| {
            let pool = transport.pool();
            let (small_free, large_free) = pool.available();
            json!({"trtype": transport.trtype(), "bytes": pool.memory_bytes(), "buffers_per_class": pool.capacity(),
                "cache_per_poll_group": pool.cache_size(), "small_free": small_free, "large_free": large_free})
        })
        .collect();
    gather(
        ctx,
        target,
        |group, ctx| group.stats(ctx.stats().busy_ns),
        move |_, groups| {
            use peerless_core::mem::{stats, MemKind, Path};
            let mut placed = [0u64; 3];
            let mut fallbacks = 0;
            let mut buffer_waits = 0;
            for (_, group) in &groups {
                buffer_waits += group.buffer_waits;
                for (total, bytes) in placed.iter_mut().zip(group.placed_bytes) {
                    *total += bytes;
                }
                fallbacks += group.p2p_fallbacks;
            }
            let cpu = stats::snapshot();
            responder.ok(json!({
                "payload_bytes": {"host": placed[MemKind::Host.index()], "iomem": placed[MemKind::IoMem.index()],
                    "device": placed[MemKind::Device.index()]},
                "cpu_bytes": {"direct": cpu.cpu_bytes(Path::Direct), "io_accessor": cpu.cpu_bytes(Path::IoAccessor),
                    "bounce": cpu.cpu_bytes(Path::Bounce)},
                "p2p_fallbacks": fallbacks,
                "buffer_waits": buffer_waits,
                "data_buffers": data_buffers,
                "refused": cpu.refusals,
                "providers": providers,
                "heap_bytes": peerless_core::mem::alloc_count::live_bytes(),
                "zerocopy": zerocopy_json(),
            }))
        },
    );
}

/// MSG_ZEROCOPY sends of NVMe/TCP (`sock_impl_set_options`): how many, how many the
/// kernel copied anyway, how many fell back to copying, and the data buffers lent to
/// the kernel now.
fn zerocopy_json() -> Value {
    let zerocopy = crate::tcp::zerocopy::stats();
    json!({"sends": zerocopy.sends, "copied": zerocopy.copied, "fallbacks": zerocopy.fallbacks, "held": zerocopy.held})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(trtype: &'static str) -> QpairRow {
        QpairRow {
            cntlid: 3,
            qid: 1,
            state: "enabled",
            trtype,
            peer: "192.168.100.2:51234".parse().expect("an address"),
            local: "192.168.100.1:4420".parse().expect("an address"),
            auth: None,
        }
    }

    #[test]
    fn each_qpair_shows_its_own_transport() {
        for trtype in ["TCP", "RDMA"] {
            let shown = qpair_json(&row(trtype), "nvmf_tgt_poll_group_000", "nqn.host");
            assert_eq!(shown["trtype"], trtype);
            assert_eq!(shown["listen_address"]["trtype"], trtype);
            assert_eq!(shown["listen_address"]["traddr"], "192.168.100.1");
            assert_eq!(shown["listen_address"]["trsvcid"], "4420");
            assert_eq!(shown["peer_address"]["trtype"], trtype);
            assert_eq!(shown["peer_address"]["trsvcid"], "51234");
            assert!(shown.get("auth").is_none());
        }
    }

    #[test]
    fn an_ipv6_queue_says_so() {
        let mut ipv6 = row("RDMA");
        ipv6.local = "[fd00::1]:4420".parse().expect("an address");
        ipv6.peer = "[fd00::2]:50000".parse().expect("an address");
        let shown = qpair_json(&ipv6, "t", "h");
        assert_eq!(shown["listen_address"]["adrfam"], "IPv6");
        assert_eq!(shown["listen_address"]["traddr"], "fd00::1");
        assert_eq!(shown["peer_address"]["adrfam"], "IPv6");
    }
}
