//! The JSON-RPC 2.0 envelope: validating a request and encoding a response, with SPDK's
//! rules (jsonrpc optional but "2.0" if present; id a string of at most 128 bytes, a
//! number or null; a request without an id, or with a null one, is a notification).

use serde::Serialize;
use serde_json::Value;

use super::error::{RpcError, INVALID_REQUEST};

/// SPDK refuses request ids longer than this.
pub const MAX_ID_BYTES: usize = 128;

#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub params: Option<Value>,
    /// `None` for a notification, which gets no response.
    pub id: Option<Value>,
}

/// Validates one request object. On error, the id to answer with comes back too (null
/// when the request had none we could trust).
pub fn parse_request(value: Value) -> Result<Request, (RpcError, Value)> {
    let Value::Object(mut object) = value else {
        return Err((RpcError::new(INVALID_REQUEST, "Invalid request: not a JSON object"), Value::Null));
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.len() > MAX_ID_BYTES => {
            let message = format!("Invalid request: id is {} bytes, the limit is {MAX_ID_BYTES}", text.len());
            return Err((RpcError::new(INVALID_REQUEST, message), Value::Null));
        }
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => {
            return Err((
                RpcError::new(INVALID_REQUEST, "Invalid request: id must be a string, a number or null"),
                Value::Null,
            ))
        }
    };
    let answer_id = id.clone().unwrap_or(Value::Null);
    let invalid = |why: &str| (RpcError::new(INVALID_REQUEST, format!("Invalid request: {why}")), answer_id.clone());
    match object.remove("jsonrpc") {
        None => {}
        Some(Value::String(version)) if version == "2.0" => {}
        Some(_) => return Err(invalid("jsonrpc must be \"2.0\"")),
    }
    let method = match object.remove("method") {
        Some(Value::String(method)) => method,
        Some(_) => return Err(invalid("method must be a string")),
        None => return Err(invalid("method is missing")),
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => None,
        Some(params @ (Value::Object(_) | Value::Array(_))) => Some(params),
        Some(_) => return Err(invalid("params must be an object or an array")),
    };
    Ok(Request { method, params, id })
}

#[derive(Serialize)]
struct Success<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    result: &'a Value,
}

#[derive(Serialize)]
struct Failure<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i32,
    message: &'a str,
}

/// One response object, keys in SPDK's order (jsonrpc, id, result|error).
pub fn response(id: &Value, reply: &Result<Value, RpcError>) -> Value {
    let encoded = match reply {
        Ok(result) => serde_json::to_value(Success { jsonrpc: "2.0", id, result }),
        Err(error) => serde_json::to_value(Failure {
            jsonrpc: "2.0",
            id,
            error: ErrorBody { code: error.code, message: &error.message },
        }),
    };
    encoded.unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check_err(value: Value, needle: &str) {
        let (err, _) = parse_request(value).unwrap_err();
        assert_eq!(err.code, INVALID_REQUEST);
        assert!(err.message.contains(needle), "{} lacks {needle}", err.message);
    }

    #[test]
    fn envelopes() {
        let req = parse_request(json!({"jsonrpc":"2.0","method":"m","id":1,"params":{"a":1}})).unwrap();
        assert_eq!(req, Request { method: "m".into(), params: Some(json!({"a":1})), id: Some(json!(1)) });
        let note = parse_request(json!({"method":"m"})).unwrap();
        assert_eq!(note.id, None);
        assert_eq!(parse_request(json!({"method":"m","id":null})).unwrap().id, None);
        check_err(json!([]), "not a JSON object");
        check_err(json!({"jsonrpc":"1.0","method":"m","id":1}), "\"2.0\"");
        check_err(json!({"id":1}), "method is missing");
        check_err(json!({"method":7,"id":1}), "method must be a string");
        check_err(json!({"method":"m","id":1,"params":3}), "params must be");
        check_err(json!({"method":"m","id":{"x":1}}), "id must be");
        check_err(json!({"method":"m","id":"x".repeat(129)}), "129 bytes");
        // JSON-RPC 2.0 does not forbid extra members; like SPDK, ignore them.
        assert!(parse_request(json!({"method":"m","id":1,"extra":true})).is_ok());
        let (_, id) = parse_request(json!({"method":5,"id":"abc"})).unwrap_err();
        assert_eq!(id, json!("abc"), "an error echoes a valid id");
    }

    #[test]
    fn responses_keep_spdk_key_order() {
        let ok = serde_json::to_string(&response(&json!(1), &Ok(json!(true)))).unwrap();
        assert_eq!(ok, r#"{"jsonrpc":"2.0","id":1,"result":true}"#);
        let err =
            serde_json::to_string(&response(&json!("a"), &Err(RpcError::new(-32601, "Method not found")))).unwrap();
        assert_eq!(err, r#"{"jsonrpc":"2.0","id":"a","error":{"code":-32601,"message":"Method not found"}}"#);
    }
}
