//! The RDMA transport's part of a poll group.

use std::any::Any;

use peerless_core::reactor::ThreadCtx;

use crate::nvmf::qpair::Qpair;
use crate::nvmf::transport::{GroupCtx, TransportPollGroup};

/// No queue pairs yet: the listener that brings them is the next layer.
#[derive(Default)]
pub struct RdmaPollGroup {}

impl TransportPollGroup for RdmaPollGroup {
    fn poll(&mut self, _: &mut ThreadCtx, _: &mut GroupCtx<'_>) -> bool {
        false
    }

    fn for_each_qpair(&mut self, _: &mut dyn FnMut(&mut Qpair)) {}

    fn connection_count(&self) -> usize {
        0
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
