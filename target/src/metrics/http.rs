//! Just enough HTTP/1.x for a Prometheus scraper: one bounded request head per
//! connection, one response, then the connection closes. No bodies are read, no
//! keep-alive, no chunking: a scraper needs none of them, and each is surface to defend.

use std::io::{self, Read, Write};

/// The largest request head read (request line and headers). Prometheus sends a few
/// hundred bytes; anything larger is refused with 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Where the exposition is served, as every Prometheus exporter does.
pub const METRICS_PATH: &str = "/metrics";

#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// GET (or HEAD, which gets the headers only) of [`METRICS_PATH`], query ignored.
    Metrics {
        head_only: bool,
    },
    /// GET or HEAD of `/`: a pointer to the metrics.
    Index {
        head_only: bool,
    },
    NotFound {
        head_only: bool,
    },
    MethodNotAllowed,
    Malformed,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The peer sent more than [`MAX_REQUEST_BYTES`] without ending its head.
    TooLarge,
    /// The peer closed the connection before ending its head.
    Truncated,
    Io(io::ErrorKind),
}

/// Reads up to the blank line that ends a request head, never past
/// [`MAX_REQUEST_BYTES`]. The caller sets the socket's read timeout, which bounds a
/// peer that sends slowly.
pub fn read_head(stream: &mut impl Read) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let room = MAX_REQUEST_BYTES - head.len();
        if room == 0 {
            return Err(HeadError::TooLarge);
        }
        let take = room.min(chunk.len());
        let read = match stream.read(&mut chunk[..take]) {
            Ok(0) => return Err(HeadError::Truncated),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(HeadError::Io(err.kind())),
        };
        // Only the new bytes and the three before them can complete the terminator.
        let search_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..read]);
        if let Some(end) = find_head_end(&head[search_from..]) {
            head.truncate(search_from + end);
            return Ok(head);
        }
        debug_assert!(head.len() <= MAX_REQUEST_BYTES);
    }
}

/// The end of the head: CRLF CRLF, or bare LF LF, which RFC 9112 lets a server accept.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|window| window == b"\r\n\r\n").map(|at| at + 4);
    let lf = bytes.windows(2).position(|window| window == b"\n\n").map(|at| at + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Classifies a request head by its request line (RFC 9112, 3).
pub fn parse_request(head: &[u8]) -> Request {
    let Some(line) = head.split(|byte| *byte == b'\n').next() else { return Request::Malformed };
    let Ok(line) = std::str::from_utf8(line) else { return Request::Malformed };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Request::Malformed;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::MethodNotAllowed,
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match path {
        METRICS_PATH => Request::Metrics { head_only },
        "/" => Request::Index { head_only },
        _ => Request::NotFound { head_only },
    }
}

/// One complete response with `Connection: close`.
pub fn write_response(
    stream: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(head: &str, expected: Request) {
        assert_eq!(parse_request(head.as_bytes()), expected, "{head:?}");
    }

    #[test]
    fn request_lines() {
        check("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Request::Metrics { head_only: false });
        check("HEAD /metrics HTTP/1.0\r\n\r\n", Request::Metrics { head_only: true });
        check("GET /metrics?name[]=x HTTP/1.1\r\n\r\n", Request::Metrics { head_only: false });
        check("GET / HTTP/1.1\n\n", Request::Index { head_only: false });
        check("GET /metricsx HTTP/1.1\r\n\r\n", Request::NotFound { head_only: false });
        check("POST /metrics HTTP/1.1\r\n\r\n", Request::MethodNotAllowed);
        check("GET /metrics\r\n\r\n", Request::Malformed);
        check("GET  /metrics HTTP/1.1\r\n\r\n", Request::Malformed);
        check("GET metrics HTTP/1.1\r\n\r\n", Request::Malformed);
        check("GET /metrics SPDY/3\r\n\r\n", Request::Malformed);
        check("\u{0}\u{1}\u{2}", Request::Malformed);
    }

    #[test]
    fn heads_are_bounded() {
        let mut one = "GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\nextra".as_bytes();
        assert_eq!(read_head(&mut one).unwrap(), b"GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n");

        let endless = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(read_head(&mut endless.as_bytes()), Err(HeadError::TooLarge));
        assert_eq!(read_head(&mut "GET /metrics HTTP/1.1\r\n".as_bytes()), Err(HeadError::Truncated));

        // A terminator split across reads is still found.
        struct Drip<'a>(&'a [u8]);
        impl Read for Drip<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((first, rest)) = self.0.split_first() else { return Ok(0) };
                buf[0] = *first;
                self.0 = rest;
                Ok(1)
            }
        }
        assert_eq!(read_head(&mut Drip(b"GET / HTTP/1.1\r\n\r\n")).unwrap().len(), 18);
    }

    #[test]
    fn responses_close_and_size_their_body() {
        let mut out = Vec::new();
        write_response(&mut out, 404, "text/plain", b"no", false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 2\r\nConnection: close\r\n\r\nno"), "{text}");
        let mut head = Vec::new();
        write_response(&mut head, 200, "text/plain", b"body", true).unwrap();
        assert!(String::from_utf8(head).unwrap().ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"));
    }
}
