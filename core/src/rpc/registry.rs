//! The method registry: names, the framework states each method is allowed in, and how
//! its parameters decode. Parameters decode on the caller's OS thread (the RPC server's
//! or the config loader's), never on a reactor; the decoded call then runs on the app
//! thread, which owns the framework's state, and answers through a `Responder` whenever
//! it completes.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::{RpcError, INVALID_STATE, METHOD_NOT_FOUND};
use crate::reactor::{AppHandle, AppState, ThreadCtx};

/// Framework states a method may be called in, as SPDK's `SPDK_RPC_STARTUP` /
/// `SPDK_RPC_RUNTIME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateMask(u8);

impl StateMask {
    pub const STARTUP: StateMask = StateMask(1);
    pub const RUNTIME: StateMask = StateMask(2);
    pub const ANY: StateMask = StateMask(3);

    pub fn allows(self, state: AppState) -> bool {
        match state {
            AppState::Startup | AppState::Initializing => self.0 & Self::STARTUP.0 != 0,
            AppState::Runtime => self.0 & Self::RUNTIME.0 != 0,
            AppState::ShuttingDown => false,
        }
    }
}

pub type Reply = Result<Value, RpcError>;

/// The one way a method answers. Dropping it unanswered answers with an internal error,
/// so a forgotten path shows up as an error instead of a client that hangs.
pub struct Responder {
    sink: Option<Box<dyn FnOnce(Reply) + Send>>,
    method: String,
}

impl Responder {
    pub fn new(method: &str, sink: impl FnOnce(Reply) + Send + 'static) -> Self {
        Responder { sink: Some(Box::new(sink)), method: method.to_string() }
    }

    pub fn reply(mut self, reply: Reply) {
        if let Some(sink) = self.sink.take() {
            sink(reply);
        }
    }

    pub fn ok(self, result: impl serde::Serialize) {
        let reply =
            serde_json::to_value(result).map_err(|err| RpcError::internal(format!("cannot encode the result: {err}")));
        self.reply(reply);
    }

    pub fn ok_true(self) {
        self.reply(Ok(Value::Bool(true)));
    }

    pub fn err(self, error: RpcError) {
        self.reply(Err(error));
    }

    pub fn method(&self) -> &str {
        &self.method
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink(Err(RpcError::internal(format!("'{}' finished without an answer", self.method))));
        }
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Responder({})", self.method)
    }
}

/// What a call may see when it runs off the reactors (stateless methods).
pub struct CallContext<'a> {
    pub registry: &'a Registry,
    pub app: &'a AppHandle,
}

type Prepared = Box<dyn FnOnce(&mut ThreadCtx, Responder) + Send>;
type DecodeFn = dyn Fn(Option<Value>) -> Result<Prepared, RpcError> + Send + Sync;
type InlineFn = dyn Fn(&CallContext<'_>, Option<Value>) -> Reply + Send + Sync;

enum Handler {
    OnAppThread(Box<DecodeFn>),
    Inline(Box<InlineFn>),
}

struct Method {
    states: StateMask,
    handler: Handler,
}

#[derive(Default)]
pub struct Registry {
    methods: BTreeMap<&'static str, Method>,
}

/// Decodes a method's parameters strictly: an unknown key or a wrong type is an
/// invalid-params error that names the field. Absent params decode as `{}`.
pub fn decode_params<P: DeserializeOwned>(params: Option<Value>) -> Result<P, RpcError> {
    let mut value = match params {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(value) => value,
    };
    integral_floats_as_integers(&mut value, 0);
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            RpcError::invalid_params(format!("Invalid parameters: {inner}"))
        } else {
            RpcError::invalid_params(format!("Invalid parameters: field '{path}': {inner}"))
        }
    })
}

/// Floats beyond this are not exact in an f64, so they stay floats (and fail to decode
/// into an integer, where SPDK's decoder would read the digits exactly).
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
/// Nesting followed when rewriting numbers; the request parser bounds nesting far below it.
const NUMBER_REWRITE_DEPTH: usize = 64;

/// SPDK decodes an integer field from any JSON number whose value is a whole number
/// (`spdk_json_number_to_uint64` strips a zero fraction and applies the exponent), so
/// `60.0` and `1e3` are valid integers there, and SPDK's own clients send them: rpc.py's
/// script and batch modes overwrite a method's `timeout` with the client's float timeout.
/// serde decodes integers only from integer tokens, so whole floats are rewritten first;
/// a float field still accepts the integer.
fn integral_floats_as_integers(value: &mut Value, depth: usize) {
    if depth > NUMBER_REWRITE_DEPTH {
        return;
    }
    match value {
        Value::Number(number) => {
            if let Some(float) = number.as_f64().filter(|_| number.is_f64()) {
                if float.fract() == 0.0 && float.abs() <= EXACT_INTEGER_LIMIT {
                    // Exact by the bound above; `-0.0` becomes 0.
                    *value = Value::from(float as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| integral_floats_as_integers(item, depth + 1)),
        Value::Object(map) => map.values_mut().for_each(|item| integral_floats_as_integers(item, depth + 1)),
        _ => {}
    }
}

/// For methods that take no parameters: SPDK refuses any `params` for them.
pub fn expect_no_params(method: &str, params: &Option<Value>) -> Result<(), RpcError> {
    match params {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(RpcError::invalid_params(format!("'{method}' requires no parameters"))),
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// A method that runs on the app thread with parameters of type `P`.
    pub fn method<P, F>(&mut self, name: &'static str, states: StateMask, run: F)
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(&mut ThreadCtx, P, Responder) + Send + Sync + Clone + 'static,
    {
        let decode = move |params: Option<Value>| -> Result<Prepared, RpcError> {
            let params: P = decode_params(params)?;
            let run = run.clone();
            Ok(Box::new(move |ctx: &mut ThreadCtx, responder: Responder| run(ctx, params, responder)))
        };
        self.insert(name, states, Handler::OnAppThread(Box::new(decode)));
    }

    /// A method without parameters that runs on the app thread.
    pub fn method_without_params<F>(&mut self, name: &'static str, states: StateMask, run: F)
    where
        F: Fn(&mut ThreadCtx, Responder) + Send + Sync + Clone + 'static,
    {
        let decode = move |params: Option<Value>| -> Result<Prepared, RpcError> {
            expect_no_params(name, &params)?;
            let run = run.clone();
            Ok(Box::new(move |ctx: &mut ThreadCtx, responder: Responder| run(ctx, responder)))
        };
        self.insert(name, states, Handler::OnAppThread(Box::new(decode)));
    }

    /// A stateless method answered on the caller's OS thread, without a trip through a
    /// reactor (version, method list, log settings).
    pub fn inline_method<F>(&mut self, name: &'static str, states: StateMask, run: F)
    where
        F: Fn(&CallContext<'_>, Option<Value>) -> Reply + Send + Sync + 'static,
    {
        self.insert(name, states, Handler::Inline(Box::new(run)));
    }

    fn insert(&mut self, name: &'static str, states: StateMask, handler: Handler) {
        let previous = self.methods.insert(name, Method { states, handler });
        assert!(previous.is_none(), "RPC method '{name}' registered twice");
    }

    pub fn contains(&self, name: &str) -> bool {
        self.methods.contains_key(name)
    }

    /// Whether `name` exists and may be called in `state`.
    pub fn allows(&self, name: &str, state: AppState) -> bool {
        self.methods.get(name).is_some_and(|method| method.states.allows(state))
    }

    /// Method names, all or only those callable in `state`.
    pub fn names(&self, state: Option<AppState>) -> Vec<&'static str> {
        self.methods
            .iter()
            .filter(|(_, method)| state.is_none_or(|state| method.states.allows(state)))
            .map(|(name, _)| *name)
            .collect()
    }

    /// Decodes a call's parameters exactly as `call` would, without running it (fuzzing,
    /// config checks). `None` when the method is unknown or answers inline: inline
    /// methods are stateless and decode as they run.
    pub fn decode_only(&self, name: &str, params: Option<Value>) -> Option<Result<(), RpcError>> {
        match &self.methods.get(name)?.handler {
            Handler::OnAppThread(decode) => Some(decode(params).map(drop)),
            Handler::Inline(_) => None,
        }
    }

    /// Checks, decodes and dispatches one call; the answer arrives through `responder`.
    pub fn call(&self, app: &AppHandle, name: &str, params: Option<Value>, responder: Responder) {
        let Some(method) = self.methods.get(name) else {
            responder.err(RpcError::new(METHOD_NOT_FOUND, "Method not found"));
            return;
        };
        let state = app.state();
        if !method.states.allows(state) {
            responder.err(wrong_state(name, state));
            return;
        }
        match &method.handler {
            Handler::Inline(run) => responder.reply(run(&CallContext { registry: self, app }, params)),
            Handler::OnAppThread(decode) => match decode(params) {
                Err(err) => responder.err(err),
                Ok(prepared) => {
                    let sent = app.app_thread().send_blocking(move |ctx| prepared(ctx, responder));
                    if let Err(err) = sent {
                        // The app thread has exited: the responder inside answers as it drops.
                        drop(err.into_msg());
                    }
                }
            },
        }
    }
}

fn wrong_state(name: &str, state: AppState) -> RpcError {
    let message = match state {
        AppState::Startup | AppState::Initializing => {
            format!("Method '{name}' may only be called after the framework is initialized using the framework_start_init RPC")
        }
        AppState::Runtime => {
            format!("Method '{name}' may only be called before framework_start_init (start with --wait-for-rpc)")
        }
        AppState::ShuttingDown => format!("Method '{name}' cannot run: the target is shutting down"),
    };
    RpcError::new(INVALID_STATE, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Params {
        name: String,
        #[serde(default)]
        block_size: u32,
    }

    #[test]
    fn strict_decoding_names_the_field() {
        let ok: Params = decode_params(Some(json!({"name": "Malloc0", "block_size": 512}))).unwrap();
        assert_eq!(ok, Params { name: "Malloc0".into(), block_size: 512 });

        let unknown = decode_params::<Params>(Some(json!({"name": "x", "bogus": 1}))).unwrap_err();
        assert_eq!(unknown.code, super::super::error::INVALID_PARAMS);
        assert!(unknown.message.contains("unknown field `bogus`"), "{}", unknown.message);

        let wrong_type = decode_params::<Params>(Some(json!({"name": "x", "block_size": "big"}))).unwrap_err();
        assert!(wrong_type.message.contains("field 'block_size'"), "{}", wrong_type.message);

        let missing = decode_params::<Params>(None).unwrap_err();
        assert!(missing.message.contains("missing field `name`"), "{}", missing.message);
    }

    #[test]
    fn whole_floats_decode_as_integers_as_in_spdk() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct Numbers {
            timeout: u64,
            offset: i32,
            ratio: f64,
            list: Vec<u16>,
        }
        let decoded: Numbers =
            decode_params(Some(json!({"timeout": 60.0, "offset": -2e1, "ratio": 3, "list": [1.0, 2]}))).unwrap();
        assert_eq!(decoded, Numbers { timeout: 60, offset: -20, ratio: 3.0, list: vec![1, 2] });

        let fraction = decode_params::<Numbers>(Some(json!({"timeout": 60.5, "offset": 0, "ratio": 0, "list": []})));
        assert!(fraction.unwrap_err().message.contains("field 'timeout'"), "a fraction is no integer");
        let huge = decode_params::<Numbers>(Some(json!({"timeout": 1e300, "offset": 0, "ratio": 0, "list": []})));
        assert!(huge.is_err(), "a float beyond exact integers is refused, not rounded");
        let negative = decode_params::<Numbers>(Some(json!({"timeout": -1.0, "offset": 0, "ratio": 0, "list": []})));
        assert!(negative.is_err(), "a negative whole float is still no u64");
    }

    #[test]
    fn decode_only_decodes_without_running() {
        let mut registry = Registry::new();
        registry.method("m", StateMask::ANY, |_ctx: &mut ThreadCtx, _params: Params, _responder| {
            panic!("decode_only must not run the method")
        });
        assert_eq!(registry.decode_only("m", Some(json!({"name": "x"}))), Some(Ok(())));
        let err = registry.decode_only("m", Some(json!({"name": 1}))).unwrap().unwrap_err();
        assert!(err.message.contains("field 'name'"), "{}", err.message);
        assert_eq!(registry.decode_only("missing", None), None);
    }

    #[test]
    fn state_masks() {
        assert!(StateMask::STARTUP.allows(AppState::Startup));
        assert!(!StateMask::STARTUP.allows(AppState::Runtime));
        assert!(StateMask::RUNTIME.allows(AppState::Runtime));
        assert!(StateMask::ANY.allows(AppState::Startup) && StateMask::ANY.allows(AppState::Runtime));
        assert!(!StateMask::ANY.allows(AppState::ShuttingDown));
    }

    #[test]
    fn an_unanswered_responder_answers_with_an_error() {
        let (tx, rx) = std::sync::mpsc::channel();
        drop(Responder::new("forgetful", move |reply| tx.send(reply).unwrap()));
        let reply = rx.recv().unwrap().unwrap_err();
        assert!(reply.message.contains("'forgetful' finished without an answer"));
    }
}
