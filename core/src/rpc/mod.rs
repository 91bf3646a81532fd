//! JSON-RPC 2.0 control plane, compatible with SPDK's `scripts/rpc.py`: a
//! Unix-socket server off the reactors, a registry of methods with SPDK's state masks,
//! error codes and strict parameter decoding, and the framework methods.

pub mod error;
pub mod framework;
pub mod registry;
pub mod request;
pub mod server;
pub mod stream;

pub use error::RpcError;
pub use registry::{decode_params, CallContext, Registry, Reply, Responder, StateMask};
pub use server::{RpcServer, ServerError, DEFAULT_RPC_SOCKET};
