//! Splits a byte stream into complete JSON values without any framing, as SPDK's
//! server does: rpc.py sends pretty-printed requests with no terminator, several may
//! arrive in one read, and one may span many reads.

use serde_json::Value;

#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A complete value and the bytes it used (including leading whitespace).
    Value(Value, usize),
    /// Only whitespace or a prefix of a value so far: wait for more bytes.
    Incomplete,
    /// Bytes that can never become JSON; the connection must end.
    Invalid(String),
}

/// Parses the first JSON value in `buffer`.
pub fn next_value(buffer: &[u8]) -> Parsed {
    let start = buffer.iter().position(|byte| !byte.is_ascii_whitespace());
    let Some(start) = start else { return Parsed::Incomplete };
    let mut values = serde_json::Deserializer::from_slice(&buffer[start..]).into_iter::<Value>();
    match values.next() {
        Some(Ok(value)) => {
            let used = start + values.byte_offset();
            // A bare number at the end of the buffer may still grow ("12" then "3").
            if used == buffer.len() && value.is_number() {
                return Parsed::Incomplete;
            }
            Parsed::Value(value, used)
        }
        Some(Err(err)) if err.is_eof() => Parsed::Incomplete,
        Some(Err(err)) => Parsed::Invalid(err.to_string()),
        None => Parsed::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(mut input: &[u8]) -> (Vec<Value>, Parsed) {
        let mut out = Vec::new();
        loop {
            match next_value(input) {
                Parsed::Value(value, used) => {
                    out.push(value);
                    input = &input[used..];
                }
                other => return (out, other),
            }
        }
    }

    #[test]
    fn concatenated_pretty_and_compact_values() {
        let input = b"{\n  \"a\": 1\n}{\"b\":2}\n\n[1,2] ";
        let (found, rest) = values(input);
        assert_eq!(found, vec![json!({"a":1}), json!({"b":2}), json!([1, 2])]);
        assert_eq!(rest, Parsed::Incomplete);
    }

    #[test]
    fn a_value_split_anywhere_waits_for_the_rest() {
        let whole = br#"{"jsonrpc": "2.0", "method": "spdk_get_version", "id": 1}"#;
        for cut in 1..whole.len() {
            assert_eq!(next_value(&whole[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        assert!(matches!(next_value(whole), Parsed::Value(_, used) if used == whole.len()));
        assert_eq!(next_value(b"12"), Parsed::Incomplete);
        assert!(matches!(next_value(b"12 "), Parsed::Value(_, 2)));
    }

    #[test]
    fn garbage_is_invalid_not_incomplete() {
        assert!(matches!(next_value(b"{\"a\":}"), Parsed::Invalid(_)));
        assert!(matches!(next_value(b"hello"), Parsed::Invalid(_)));
        assert!(matches!(next_value(b"}"), Parsed::Invalid(_)));
    }
}
