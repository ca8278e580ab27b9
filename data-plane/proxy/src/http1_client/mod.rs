//! Our own HTTP/1.1 client connection for pooled upstream connections
//! (plain TCP and TLS), driven by the request's own task.
//!
//! Why: hyper's client connection is a second task per connection, fed
//! through an mpsc channel and answering through a oneshot (two wake-ups and
//! a hand-off per request), and it parses every response head into a
//! `HeaderMap` through a general-purpose path. Under callgrind that task was
//! about 13k of the ~43k instructions of a proxied request
//! (docs/performance.md). Here the request's task writes the head (and a
//! buffered body) with one write, parses the response head with `httparse`
//! straight into a pre-sized `HeaderMap`, and reads the body from the same
//! buffer as the client consumes it; no task, no channel.
//!
//! It only takes the ordinary case ([`takes`]): HTTP/1.1 requests with no
//! body or a body already buffered, and no `Transfer-Encoding`. Streaming
//! request bodies, WebSocket upgrades and HTTP/2 stay on hyper, and
//! `--upstream-http1 hyper` sends everything through hyper again.
//!
//! The response rules are hyper's, decision for decision (the differential
//! test in `tests.rs` feeds random responses to both): `httparse` with
//! hyper's default configuration (obs-fold and bare CR refused, bare LF line
//! ends accepted), at most 100 header fields and a 408 KiB head, 1xx interim
//! responses skipped, no body for `HEAD`, 204 and 304, `Transfer-Encoding`
//! refused in HTTP/1.0, chunked when it is the last coding, otherwise read to
//! the close, `Content-Length` values that differ or do not parse refused,
//! a body shorter than its length an error (never a short success).
//! Keep-alive as hyper: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only
//! with `Connection: keep-alive`.

mod chunked;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::UpstreamBody;
use chunked::{Chunked, Step};
use tollgate_plugin_api::RefusalKind;

/// Header fields allowed in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// Header fields tried first.
const FEW_HEADERS: usize = 24;
/// The most bytes a response head may take (hyper's default read buffer
/// limit).
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Read buffer growth per read.
const READ_CHUNK: usize = 8192;

static NATIVE: AtomicBool = AtomicBool::new(true);

/// Chooses this client (`true`, the default) or hyper's for HTTP/1
/// upstream connections (`--upstream-http1`), once at startup.
pub fn set_native(native: bool) {
    NATIVE.store(native, Ordering::Relaxed);
}

/// Whether this client is in use.
#[inline]
pub fn native() -> bool {
    NATIVE.load(Ordering::Relaxed)
}

/// Whether this client takes `request`: HTTP/1.1, no body or a buffered
/// one, no `Transfer-Encoding`, a `Content-Length` (if any) that matches the
/// buffered body. Anything else goes through hyper.
pub fn takes(request: &Request<UpstreamBody>) -> bool {
    if !native() || request.version() != Version::HTTP_11 {
        return false;
    }
    let length = match request.body() {
        UpstreamBody::Empty | UpstreamBody::Buffered(None) => 0,
        UpstreamBody::Buffered(Some(bytes)) => bytes.len() as u64,
        UpstreamBody::Streaming(_) => return false,
    };
    let headers = request.headers();
    if headers.contains_key(TRANSFER_ENCODING) {
        return false;
    }
    match content_length(headers) {
        Length::Absent => true,
        Length::Valid(n) => n == length,
        Length::Invalid => false,
    }
}

/// The I/O a connection runs over (TCP, TLS over TCP, a test's duplex).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the request failed")]
    Write(#[source] io::Error),
    #[error("reading the response failed")]
    Read(#[source] io::Error),
    #[error("the connection closed before a complete response head")]
    Incomplete,
    #[error("malformed response head")]
    Head(#[source] httparse::Error),
    #[error("malformed response head: {0}")]
    Framing(&'static str),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("malformed response body")]
    Body(#[source] io::Error),
}

impl Error {
    /// The error table's entry, as `classify` maps hyper's errors: a
    /// malformed head or body framing is `UpstreamMalformed`, a timeout
    /// `UpstreamTimeout`, anything else (closed, reset, cut) unavailable.
    pub fn refusal(&self) -> RefusalKind {
        match self {
            Error::Head(_) | Error::Framing(_) | Error::TooLarge => RefusalKind::UpstreamMalformed,
            Error::Body(err) | Error::Read(err) | Error::Write(err) => match err.kind() {
                io::ErrorKind::TimedOut => RefusalKind::UpstreamTimeout,
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
                    RefusalKind::UpstreamMalformed
                }
                _ => RefusalKind::UpstreamUnavailable,
            },
            Error::Incomplete => RefusalKind::UpstreamUnavailable,
        }
    }
}

/// A failed send, with the request when none of it was written (worth a
/// retry on another connection).
#[derive(Debug)]
pub struct SendError {
    pub error: Error,
    pub unsent: Option<Request<UpstreamBody>>,
}

/// One HTTP/1.1 connection: the stream and its buffers, reused across
/// requests. One pointer (the state is boxed once per connection), so the
/// response body that carries it stays small to move.
pub struct Connection {
    state: Box<State>,
}

struct State {
    io: Box<dyn Io>,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("buffered", &self.state.read_buf.len())
            .finish_non_exhaustive()
    }
}

/// How a response body is delimited.
#[derive(Debug)]
enum Framing {
    Length(u64),
    /// Boxed: only chunked bodies pay for the decoder's state.
    Chunked(Box<Chunked>),
    /// Read until the upstream closes.
    Close,
    /// Read to its end (or failed).
    Done,
}

/// A parsed response head and what follows it.
struct Head {
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

enum Parsed {
    Partial,
    Interim,
    Complete(Head),
}

impl Connection {
    pub fn new(io: impl Io) -> Self {
        Connection {
            state: Box::new(State {
                io: Box::new(io),
                read_buf: BytesMut::new(),
                write_buf: Vec::new(),
            }),
        }
    }

    /// Whether an idle connection can take a request: the upstream has not
    /// closed it and sent nothing unasked. Never waits.
    pub fn is_reusable(&mut self) -> bool {
        if !self.state.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.state.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// Reads more into the read buffer: the number of bytes read, 0 at the
    /// end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.state.read_buf.capacity() - self.state.read_buf.len() < READ_CHUNK / 2 {
            self.state.read_buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.state.io), cx, &mut self.state.read_buf)
    }

    /// Sends `request` and waits for its response head. The body is read
    /// from the connection as the returned response's body is polled.
    pub async fn send(
        mut self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        let is_head = request.method() == Method::HEAD;
        let request_close = request
            .headers()
            .get_all(CONNECTION)
            .iter()
            .any(|value| has_token(value, "close"));
        self.state.write_buf.clear();
        encode_request(&mut self.state.write_buf, &request);
        // The first write tells whether the connection still takes bytes:
        // failing there, nothing was sent and the request can go elsewhere.
        let written = match self.state.io.write(&self.state.write_buf).await {
            Ok(0) => {
                return Err(SendError {
                    error: Error::Write(io::ErrorKind::WriteZero.into()),
                    unsent: Some(request),
                })
            }
            Ok(n) => n,
            Err(err) => {
                return Err(SendError {
                    error: Error::Write(err),
                    unsent: Some(request),
                })
            }
        };
        drop(request);
        let rest = async {
            self.state
                .io
                .write_all(&self.state.write_buf[written..])
                .await?;
            self.state.io.flush().await
        };
        if let Err(err) = rest.await {
            return Err(SendError {
                error: Error::Write(err),
                unsent: None,
            });
        }
        let head = self.read_head(is_head).await.map_err(|error| SendError {
            error,
            unsent: None,
        })?;
        let (parts, ()) = head.response.into_parts();
        Ok(Response::from_parts(
            parts,
            ResponseBody {
                conn: Some(self),
                framing: head.framing,
                keep_alive: head.keep_alive && !request_close,
                clean: true,
                yielded: false,
                deferred: None,
            },
        ))
    }

    async fn read_head(&mut self, is_head: bool) -> Result<Head, Error> {
        loop {
            if !self.state.read_buf.is_empty() {
                match parse_head(&mut self.state.read_buf, is_head)? {
                    Parsed::Complete(head) => return Ok(head),
                    Parsed::Interim => continue,
                    Parsed::Partial => {}
                }
                if self.state.read_buf.len() >= MAX_HEAD_BYTES {
                    return Err(Error::TooLarge);
                }
            }
            let read = poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(Error::Read)?;
            if read == 0 {
                return Err(Error::Incomplete);
            }
        }
    }
}

/// The request head (hyper's encoding: lower-case names, the fields in the
/// map's order) and a buffered body, in one buffer. A body of known length
/// gets a `Content-Length` unless it has one already.
fn encode_request(buf: &mut Vec<u8>, request: &Request<UpstreamBody>) {
    let body = match request.body() {
        UpstreamBody::Buffered(Some(bytes)) if !bytes.is_empty() => Some(bytes),
        _ => None,
    };
    let headers = request.headers();
    buf.reserve(64 + headers.len() * 32 + body.map_or(0, |b| b.len()));
    buf.extend_from_slice(request.method().as_str().as_bytes());
    buf.push(b' ');
    let uri = request.uri();
    match uri.path_and_query() {
        Some(path) if uri.scheme().is_none() && uri.authority().is_none() => {
            buf.extend_from_slice(path.as_str().as_bytes())
        }
        _ => buf.extend_from_slice(uri.to_string().as_bytes()),
    }
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let add_length = body.is_some() && !headers.contains_key(CONTENT_LENGTH);
    for (name, value) in headers {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if let (true, Some(body)) = (add_length, body) {
        buf.extend_from_slice(b"content-length: ");
        buf.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        buf.extend_from_slice(body);
    }
}

/// One response head from the front of `buf` (consumed when complete or
/// interim).
fn parse_head(buf: &mut BytesMut, is_head: bool) -> Result<Parsed, Error> {
    // Most heads have a handful of fields: a small array first (less to
    // initialise per response), hyper's limit when it is not enough.
    match parse_head_with::<FEW_HEADERS>(buf, is_head) {
        Err(Error::Head(httparse::Error::TooManyHeaders)) => {
            parse_head_with::<MAX_HEADERS>(buf, is_head)
        }
        parsed => parsed,
    }
}

fn parse_head_with<const N: usize>(buf: &mut BytesMut, is_head: bool) -> Result<Parsed, Error> {
    // Offsets of each field's name and value in the head.
    let mut fields = [(0u32, 0u32, 0u32, 0u32); N];
    let (len, code, reason, version, count) = {
        let mut headers = [httparse::EMPTY_HEADER; N];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(err) => return Err(Error::Head(err)),
        };
        let base = buf.as_ptr() as usize;
        // Empty slices may point anywhere (httparse returns `""`).
        let offset = |s: &[u8]| {
            if s.is_empty() {
                0
            } else {
                (s.as_ptr() as usize - base) as u32
            }
        };
        for (field, header) in fields.iter_mut().zip(response.headers.iter()) {
            if header.name.len() >= 1 << 16 {
                return Err(Error::TooLarge);
            }
            let name = offset(header.name.as_bytes());
            let value = offset(header.value);
            *field = (
                name,
                name + header.name.len() as u32,
                value,
                value + header.value.len() as u32,
            );
        }
        let reason = response.reason.map(|reason| {
            let start = offset(reason.as_bytes()) as usize;
            (start, start + reason.len())
        });
        (
            len,
            response.code.unwrap_or(0),
            reason,
            response.version.unwrap_or(1),
            response.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Error::Framing("invalid status code"))?;
    if matches!(code, 100 | 102..=199) {
        return Ok(Parsed::Interim);
    }
    let version = if version == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let mut headers = HeaderMap::with_capacity(count);
    let mut keep_alive = version == Version::HTTP_11;
    let mut saw_close = false;
    let mut length = Length::Absent;
    let mut chunked: Option<bool> = None;
    for &(name_start, name_end, value_start, value_end) in &fields[..count] {
        let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
            .map_err(|_| Error::Framing("invalid header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
                .map_err(|_| Error::Framing("invalid header value"))?;
        if name == CONTENT_LENGTH {
            length = length.and(&value);
        } else if name == TRANSFER_ENCODING {
            // Only the last field's last coding counts (as hyper).
            chunked = Some(last_coding_is_chunked(&value));
        } else if name == CONNECTION {
            if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
                // The common answer, without the token scan.
                keep_alive = keep_alive || !saw_close;
            } else if saw_close || has_token(&value, "close") {
                saw_close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = has_token(&value, "keep-alive");
            }
        }
        headers.append(name, value);
    }
    let framing = framing(code, is_head, version, chunked, length)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    if let Some((start, end)) = reason {
        let reason = &head[start..end];
        if Some(reason) != status.canonical_reason().map(str::as_bytes) {
            if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(head.slice(start..end)) {
                response.extensions_mut().insert(reason);
            }
        }
    }
    *response.headers_mut() = headers;
    Ok(Parsed::Complete(Head {
        response,
        framing,
        // A 101 switches protocols: the connection is never reused.
        keep_alive: keep_alive && code != 101,
    }))
}

/// The body's framing (RFC 9112 section 6.3, as hyper's client decides
/// it), from the `Transfer-Encoding` seen (`Some(last coding is chunked)`)
/// and the `Content-Length` values.
fn framing(
    code: u16,
    is_head: bool,
    version: Version,
    chunked: Option<bool>,
    length: Length,
) -> Result<Framing, Error> {
    if matches!(code, 101 | 204 | 304) || is_head {
        return Ok(Framing::Done);
    }
    if let Some(chunked) = chunked {
        if version == Version::HTTP_10 {
            return Err(Error::Framing("Transfer-Encoding in an HTTP/1.0 response"));
        }
        return Ok(if chunked {
            Framing::Chunked(Box::new(Chunked::new()))
        } else {
            Framing::Close
        });
    }
    match length {
        Length::Valid(n) if n <= u64::MAX - 2 => Ok(if n == 0 {
            Framing::Done
        } else {
            Framing::Length(n)
        }),
        Length::Valid(_) | Length::Invalid => Err(Error::Framing("invalid Content-Length")),
        Length::Absent => Ok(Framing::Close),
    }
}

/// Whether the last coding of a `Transfer-Encoding` value is `chunked`.
fn last_coding_is_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|value| value.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

#[derive(Clone, Copy)]
enum Length {
    Absent,
    Valid(u64),
    Invalid,
}

/// Every `Content-Length` value, as hyper reads them: comma lists allowed,
/// all equal, digits only.
fn content_length(headers: &HeaderMap) -> Length {
    headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .fold(Length::Absent, Length::and)
}

impl Length {
    /// The length after one more `Content-Length` field.
    fn and(self, value: &HeaderValue) -> Length {
        let mut length = match self {
            Length::Invalid => return Length::Invalid,
            Length::Absent => None,
            Length::Valid(n) => Some(n),
        };
        let Ok(text) = value.to_str() else {
            return Length::Invalid;
        };
        for part in text.split(',') {
            let digits = part.trim().as_bytes();
            if digits.is_empty() {
                return Length::Invalid;
            }
            let mut n: u64 = 0;
            for &digit in digits {
                if !digit.is_ascii_digit() {
                    return Length::Invalid;
                }
                match n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit - b'0')))
                {
                    Some(next) => n = next,
                    None => return Length::Invalid,
                }
            }
            match length {
                None => length = Some(n),
                Some(previous) if previous != n => return Length::Invalid,
                Some(_) => {}
            }
        }
        length.map_or(Length::Absent, Length::Valid)
    }
}

/// Whether a comma-separated header value has `token` (case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|text| {
        text.split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    })
}

/// A response body read from its connection as it is polled. Read to its
/// end on a keep-alive connection, the connection can be taken back
/// ([`ResponseBody::take_connection`]).
pub struct ResponseBody {
    conn: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    /// No error so far.
    clean: bool,
    /// Data was returned since the body last answered `Pending`.
    yielded: bool,
    /// An error held back for one poll (see [`ResponseBody::fail`]).
    deferred: Option<io::Error>,
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("framing", &self.framing)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// The connection, when the body was read to its end, both sides allow
    /// keep-alive, and nothing unasked arrived after it.
    pub fn take_connection(&mut self) -> Option<Connection> {
        if !(self.clean && self.keep_alive && matches!(self.framing, Framing::Done)) {
            return None;
        }
        let conn = self.conn.take()?;
        conn.state.read_buf.is_empty().then_some(conn)
    }

    /// Ends the body with `err`. When data was just returned, the error
    /// waits for one more poll: a server (hyper's) writes the response head
    /// and the data it got only when the body answers `Pending`, and drops
    /// what it holds unwritten on an error; this way a body cut by the
    /// upstream reaches the client as the head and the bytes that arrived,
    /// then a cut (as with hyper's client, whose errors arrive through a
    /// channel, a wake-up later).
    fn fail(
        &mut self,
        err: io::Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if std::mem::take(&mut self.yielded) {
            self.deferred = Some(err);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.framing = Framing::Done;
        self.clean = false;
        self.conn = None;
        Poll::Ready(Some(Err(Error::Body(err))))
    }
}

fn incomplete() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "end of file before message length reached",
    )
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(err) = this.deferred.take() {
            return this.fail(err, cx);
        }
        let polled = this.poll_data(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => this.yielded = true,
            Poll::Pending => this.yielded = false,
            Poll::Ready(_) => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done) && self.deferred.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            Framing::Chunked(_) | Framing::Close => SizeHint::default(),
        }
    }
}

impl ResponseBody {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(remaining) => {
                    if !conn.state.read_buf.is_empty() {
                        let take = usize::try_from(*remaining)
                            .unwrap_or(usize::MAX)
                            .min(conn.state.read_buf.len());
                        let data = conn.state.read_buf.split_to(take).freeze();
                        *remaining -= take as u64;
                        if *remaining == 0 {
                            this.framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if !conn.state.read_buf.is_empty() {
                        let data = conn.state.read_buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.state.read_buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::End(trailers)) => {
                        this.framing = Framing::Done;
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Step::More) => {}
                    Err(err) => return this.fail(err, cx),
                },
            }
            // Nothing buffered to decode: read more.
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => match &this.framing {
                    Framing::Close => {
                        // The upstream closed: the body's end, and the
                        // connection's.
                        this.framing = Framing::Done;
                        this.keep_alive = false;
                        return Poll::Ready(None);
                    }
                    Framing::Chunked(decoder) if !decoder.in_data() => {
                        return this.fail(
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "unexpected EOF during chunk size line",
                            ),
                            cx,
                        )
                    }
                    _ => return this.fail(incomplete(), cx),
                },
                Ok(_) => {}
                Err(err) => return this.fail(err, cx),
            }
        }
    }
}
