//! Just the HTTP/1.1 SockJS needs, by hand, as the WebSocket handshake is: requests read and
//! parsed with `httparse` (heads of 16 KiB at most, bodies by `Content-Length` or chunked, one
//! request at a time), answers written whole (`Content-Length`) or streamed (chunked; to an
//! HTTP/1.0 client, until the connection closes), connections kept alive between requests for
//! `connect-timeout` at most.
//!
//! Why not hyper: an idle SockJS session is one streaming response on one connection, and hyper
//! gives every connection an 8 KiB read buffer and an 8 KiB header buffer for its whole life.
//! With it, an idle xhr-streaming session cost the broker 25.8 KiB against 8.0 KiB for a
//! WebSocket session; here a connection holds no buffer while it waits, and the session costs
//! 15.7 KiB (bench/notes.md, "SockJS sessions at rest").

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a request.
const MAX_HEADERS: usize = 64;
/// Bytes read at a time.
const READ_CHUNK: usize = 2048;

/// An answer's body.
pub(super) enum Body {
    Empty,
    Full(Bytes),
    /// Sent as it comes, until the stream ends.
    Stream(Pin<Box<dyn Stream<Item = Bytes> + Send>>),
}

/// A request's body as read: its bytes, or too large to read (the connection is closed after
/// the answer).
pub(super) type RequestBody = Result<Bytes, TooLarge>;

/// A request body over the limit the server was given.
#[derive(Debug, Clone, Copy)]
pub(super) struct TooLarge(pub(super) usize);

/// A request that could not be read as HTTP/1.x: answered with `status` and the connection
/// closed.
struct Malformed(StatusCode, &'static str);

/// Serves requests on `stream` with `answer` until the client closes, goes quiet for `idle`
/// between requests, or sends something that is not HTTP. `buf` holds bytes already read (the
/// first request's, at least its head). Bodies over `body_limit` are not read.
pub(super) async fn serve<S, F, Fut>(
    mut stream: S,
    mut buf: BytesMut,
    idle: Duration,
    body_limit: usize,
    answer: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: std::future::Future<Output = Response<Body>>,
{
    loop {
        let request = match tokio::time::timeout(idle, read_request(&mut stream, &mut buf, body_limit)).await
        {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(Failed::Io(error))) => {
                tracing::debug!(%error, "SockJS HTTP connection ended mid-request");
                return;
            }
            Ok(Err(Failed::Malformed(Malformed(status, why)))) => {
                let mut response = Response::new(Body::Full(Bytes::from_static(why.as_bytes())));
                *response.status_mut() = status;
                let _ = write_response(&mut stream, &mut buf, response, true, true).await;
                return;
            }
        };
        let http11 = request.version() == http::Version::HTTP_11;
        let close = !http11 || connection_close(request.headers()) || request.body().is_err();
        let response = answer(request).await;
        if buf.is_empty() {
            // Nothing pipelined: hold no buffer while the connection waits.
            buf = BytesMut::new();
        }
        match write_response(&mut stream, &mut buf, response, close, http11).await {
            Ok(true) if !close => {}
            _ => {
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// Why no request was read.
enum Failed {
    Malformed(Malformed),
    /// The connection failed or closed mid-request: nothing to answer.
    Io(io::Error),
}

impl From<io::Error> for Failed {
    fn from(error: io::Error) -> Failed {
        Failed::Io(error)
    }
}

/// Reads the next request (`None`: the client closed between requests).
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    body_limit: usize,
) -> Result<Option<Request<RequestBody>>, Failed> {
    let head = loop {
        if let Some(end) = head_end(buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return Err(Failed::Malformed(Malformed(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request too large",
            )));
        }
        if read_more(stream, buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(Failed::Io(io::ErrorKind::UnexpectedEof.into()))
            };
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let bad = |why| Failed::Malformed(Malformed(StatusCode::BAD_REQUEST, why));
    match parsed.parse(&buf[..head]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad("malformed HTTP request")),
    }
    let mut request = Request::builder()
        .method(
            Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
                .map_err(|_| bad("bad method"))?,
        )
        .uri(parsed.path.unwrap_or("/"))
        .version(if parsed.version == Some(1) { http::Version::HTTP_11 } else { http::Version::HTTP_10 });
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| bad("bad header name"))?;
        let value = HeaderValue::from_bytes(header.value).map_err(|_| bad("bad header value"))?;
        map.append(name, value);
    }
    if let Some(headers) = request.headers_mut() {
        *headers = map;
    }
    let request = request.body(()).map_err(|_| bad("bad request target"))?;
    buf.advance(head);
    let chunked = request
        .headers()
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("chunked")));
    let body = if chunked {
        read_chunked(stream, buf, body_limit).await?
    } else {
        let length = match request.headers().get(http::header::CONTENT_LENGTH) {
            None => 0,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| bad("bad Content-Length"))?,
        };
        if length > body_limit {
            Err(TooLarge(body_limit))
        } else {
            while buf.len() < length {
                if read_more(stream, buf).await? == 0 {
                    return Err(Failed::Io(io::ErrorKind::UnexpectedEof.into()));
                }
            }
            Ok(buf.split_to(length).freeze())
        }
    };
    Ok(Some(request.map(|()| body)))
}

/// A chunked body, decoded.
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<RequestBody, Failed> {
    let bad = || Failed::Malformed(Malformed(StatusCode::BAD_REQUEST, "malformed chunked body"));
    let mut body = BytesMut::new();
    loop {
        let line = loop {
            if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            if buf.len() > 1024 {
                return Err(bad());
            }
            if read_more(stream, buf).await? == 0 {
                return Err(Failed::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        };
        let size = std::str::from_utf8(&buf[..line])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
            .ok_or_else(bad)?;
        buf.advance(line + 2);
        if size == 0 {
            // Trailers, if any, up to the blank line.
            loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    buf.advance(at + 2);
                    if at == 0 {
                        return Ok(Ok(body.freeze()));
                    }
                    continue;
                }
                if buf.len() > 1024 || read_more(stream, buf).await? == 0 {
                    return Err(bad());
                }
            }
        }
        if body.len() + size > limit {
            return Ok(Err(TooLarge(limit)));
        }
        while buf.len() < size + 2 {
            if read_more(stream, buf).await? == 0 {
                return Err(Failed::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(bad());
        }
        buf.advance(size + 2);
    }
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(READ_CHUNK);
    stream.read_buf(buf).await
}

/// The length of the request head at the start of `buf` (blank line included), once whole.
fn head_end(buf: &[u8]) -> Option<usize> {
    (1..buf.len().min(MAX_HEAD))
        .find(|&i| buf[i] == b'\n' && (buf[i - 1] == b'\n' || (i >= 2 && &buf[i - 2..i] == b"\n\r")))
        .map(|i| i + 1)
}

fn connection_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// Writes `response`; a stream is sent as it comes (chunked to HTTP/1.1 clients), and while it
/// waits the connection is read, so a client that goes away ends it (dropping the stream, which
/// detaches its SockJS receiver). Ok(true): the connection may carry another request.
async fn write_response<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    response: Response<Body>,
    close: bool,
    http11: bool,
) -> io::Result<bool> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let mut head =
        format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or("")).into_bytes();
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let no_body = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    match body {
        Body::Empty | Body::Full(_) => {
            let bytes = match body {
                Body::Full(bytes) => bytes,
                _ => Bytes::new(),
            };
            if !no_body {
                head.extend_from_slice(format!("Content-Length: {}\r\n", bytes.len()).as_bytes());
            }
            if close {
                head.extend_from_slice(b"Connection: close\r\n");
            }
            head.extend_from_slice(b"\r\n");
            head.extend_from_slice(&bytes);
            stream.write_all(&head).await?;
            stream.flush().await?;
            Ok(!close)
        }
        Body::Stream(mut chunks) => {
            head.extend_from_slice(if http11 {
                b"Transfer-Encoding: chunked\r\n"
            } else {
                b"Connection: close\r\n"
            });
            head.extend_from_slice(b"\r\n");
            stream.write_all(&head).await?;
            stream.flush().await?;
            drop(head);
            loop {
                // Read into a few bytes on the stack, not `buf`: an idle session's connection
                // spends its life here, and holds no buffer for it.
                let mut probe = [0u8; 64];
                let next = tokio::select! {
                    next = chunks.next() => next,
                    read = stream.read(&mut probe) => match read {
                        Ok(0) | Err(_) => return Ok(false),
                        // Not expected of a SockJS client: a request sent before the answer
                        // ended, kept for after it.
                        Ok(n) => {
                            buf.extend_from_slice(&probe[..n]);
                            continue;
                        }
                    },
                };
                let Some(chunk) = next else { break };
                if http11 {
                    let size = format!("{:x}\r\n", chunk.len());
                    stream.write_all(size.as_bytes()).await?;
                    stream.write_all(&chunk).await?;
                    stream.write_all(b"\r\n").await?;
                } else {
                    stream.write_all(&chunk).await?;
                }
                stream.flush().await?;
            }
            if http11 {
                stream.write_all(b"0\r\n\r\n").await?;
                stream.flush().await?;
            }
            Ok(http11 && !close)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn requests(wire: &[u8], limit: usize) -> Vec<Result<(Method, String, RequestBody), String>> {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(wire).await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        loop {
            match read_request(&mut server, &mut buf, limit).await {
                Ok(Some(r)) => out.push(Ok((r.method().clone(), r.uri().to_string(), r.into_body()))),
                Ok(None) => return out,
                Err(Failed::Malformed(Malformed(status, why))) => {
                    out.push(Err(format!("{status} {why}")));
                    return out;
                }
                Err(Failed::Io(e)) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn bodies_by_length_and_chunked_one_request_after_another() {
        let wire = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1;x=y\r\nf\r\n0\r\n\r\nGET /c?t=1 HTTP/1.0\r\n\r\n";
        let got = requests(wire, 100).await;
        let bodies: Vec<_> = got
            .iter()
            .map(|r| r.as_ref().map(|(m, p, b)| (m.as_str().to_owned(), p.clone(), b.clone().ok())))
            .collect();
        assert_eq!(
            bodies,
            vec![
                Ok(("POST".into(), "/a".into(), Some(Bytes::from_static(b"abc")))),
                Ok(("POST".into(), "/b".into(), Some(Bytes::from_static(b"def")))),
                Ok(("GET".into(), "/c?t=1".into(), Some(Bytes::new()))),
            ]
        );
    }

    #[tokio::test]
    async fn oversized_and_malformed_requests_are_told_apart() {
        let got = requests(b"POST /a HTTP/1.1\r\nContent-Length: 300\r\n\r\n", 100).await;
        assert!(matches!(got[0], Ok((_, _, Err(TooLarge(100))))));
        let got = requests(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n", 100).await;
        assert!(matches!(got[0], Ok((_, _, Err(TooLarge(100))))));
        let got = requests(b"POST /a HTTP/1.1\r\nContent-Length: x\r\n\r\n", 100).await;
        assert_eq!(got[0].as_ref().unwrap_err(), "400 Bad Request bad Content-Length");
        let got = requests(b"NOT HTTP\r\n\r\n", 100).await;
        assert!(got[0].as_ref().unwrap_err().starts_with("400"), "{got:?}");
        let got = requests(&[b'x'; MAX_HEAD + 10], 100).await;
        assert!(got[0].as_ref().unwrap_err().starts_with("431"), "{got:?}");
    }
}
