//! Calls the bdev RPC methods the way the target's server does: through a `Registry`
//! on a running app, answers handed back to the test.

#![allow(dead_code)]

use std::sync::mpsc;

use peerless_core::reactor::AppState;
use peerless_core::rpc::{Registry, Responder, RpcError};
use serde_json::Value;

use crate::harness::{Harness, WAIT};

pub struct Rpc {
    registry: Registry,
}

impl Rpc {
    /// Registers every bdev method and moves the harness's app to its runtime state,
    /// where the create and delete methods may run.
    pub fn new(harness: &Harness) -> Rpc {
        let mut registry = Registry::new();
        peerless_bdev::register_rpcs(&mut registry, &harness.bdevs);
        let app = harness.app.as_ref().expect("the harness runs an app").handle();
        if app.state() == AppState::Startup {
            let (tx, rx) = mpsc::channel();
            app.start_init(move |_, result| {
                let _ = tx.send(result);
            });
            rx.recv_timeout(WAIT).expect("init finished").expect("init succeeded");
        }
        app.wait_for_state(AppState::Runtime);
        Rpc { registry }
    }

    pub fn call(&self, harness: &Harness, method: &str, params: Value) -> Result<Value, RpcError> {
        let app = harness.app.as_ref().expect("the harness runs an app").handle();
        let (tx, rx) = mpsc::channel();
        let responder = Responder::new(method, move |reply| {
            let _ = tx.send(reply);
        });
        self.registry.call(&app, method, Some(params), responder);
        rx.recv_timeout(WAIT).expect("the method answered")
    }
}
