//! `nvmf_subsystem_listener_set_ana_state`, with SPDK's parameters: a listener's ANA
//! state for one group or all of them.

use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, Responder, StateMask};
use serde::Deserialize;

use super::ana::AnaState;
use super::rpc::{answer, check_target, parse_address, ListenAddressParams};
use super::target::NvmfTarget;

pub fn register(registry: &mut Registry, target: &NvmfTarget) {
    let target = target.clone();
    registry.method("nvmf_subsystem_listener_set_ana_state", StateMask::RUNTIME, move |ctx, params, responder| {
        set_ana_state(ctx, &target, params, responder)
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAnaState {
    nqn: String,
    listen_address: ListenAddressParams,
    ana_state: String,
    /// One group; absent or 0 sets every group, as in SPDK.
    #[serde(default)]
    anagrpid: Option<u32>,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn set_ana_state(_: &mut ThreadCtx, target: &NvmfTarget, params: SetAnaState, responder: Responder) {
    let result = check_target(&params.tgt_name).and_then(|()| {
        let state = AnaState::parse_settable(&params.ana_state)?;
        let addr = parse_address(target, &params.listen_address)?;
        Ok(target.set_ana_state(&params.nqn, &params.listen_address.trtype, addr, state, params.anagrpid)?)
    });
    answer(responder, result);
}
