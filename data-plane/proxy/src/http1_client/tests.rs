//! The differential test: random response heads and bodies fed to hyper's
//! client connection (`hyper::client::conn::http1`, what the pool used
//! before) and to ours over an in-memory duplex, asserting both reach the
//! same decision: the same status, reason, header list, body bytes and
//! trailers, or both refuse (the head, or the body). Bounded in cases so it
//! runs in a few seconds in a debug build (CI runs it with the unit tests).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// Header or trailer fields in order: name, value.
type Fields = Vec<(String, Vec<u8>)>;

/// What a client made of a response.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// No response head (refused or cut).
    Refused,
    Response {
        status: u16,
        reason: Option<Vec<u8>>,
        headers: Fields,
        /// `None`: the body was refused or cut.
        body: Option<Vec<u8>>,
        trailers: Fields,
    },
}

/// The upstream: reads the request head, answers `bytes`, closes.
async fn upstream(mut io: DuplexStream, bytes: Vec<u8>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ = io.write_all(&bytes).await;
    let _ = io.shutdown().await;
    // Keep reading so the client's writes never fail.
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

fn fields(headers: &http::HeaderMap) -> Fields {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// Reads the body to its end: its bytes and trailers, or `None` on error.
async fn collect<B>(mut body: B) -> (Option<Vec<u8>>, Fields)
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut data = Vec::new();
    let mut trailers = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Err(_) => return (None, Vec::new()),
            Ok(frame) => match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => {
                    if let Ok(map) = frame.into_trailers() {
                        trailers = fields(&map);
                    }
                }
            },
        }
    }
    (Some(data), trailers)
}

async fn outcome<B>(response: http::Response<B>) -> Outcome
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let reason = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|reason| reason.as_bytes().to_vec());
    let status = response.status().as_u16();
    let headers = fields(response.headers());
    let (body, trailers) = collect(response.into_body()).await;
    Outcome::Response {
        status,
        reason,
        headers,
        body,
        trailers,
    }
}

async fn with_hyper(bytes: Vec<u8>, method: Method) -> Outcome {
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(upstream(server, bytes));
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client)).await
    else {
        return Outcome::Refused;
    };
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "upstream")
        .body(Empty::new())
        .unwrap_or_else(|err| panic!("request: {err}"));
    let Ok(response) = sender.send_request(request).await else {
        return Outcome::Refused;
    };
    outcome(response).await
}

async fn with_ours(bytes: Vec<u8>, method: Method) -> Outcome {
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(upstream(server, bytes));
    let mut request = Request::new(UpstreamBody::Empty);
    *request.method_mut() = method;
    request
        .headers_mut()
        .insert(http::header::HOST, HeaderValue::from_static("upstream"));
    let Ok(response) = Connection::new(client).send(request).await else {
        return Outcome::Refused;
    };
    outcome(response).await
}

fn both(bytes: &[u8], method: &Method) -> (Outcome, Outcome) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("runtime: {err}"));
    runtime.block_on(async {
        let limit = Duration::from_secs(10);
        let theirs = tokio::time::timeout(limit, with_hyper(bytes.to_vec(), method.clone()))
            .await
            .unwrap_or_else(|_| panic!("hyper hung on {:?}", String::from_utf8_lossy(bytes)));
        let ours = tokio::time::timeout(limit, with_ours(bytes.to_vec(), method.clone()))
            .await
            .unwrap_or_else(|_| panic!("ours hung on {:?}", String::from_utf8_lossy(bytes)));
        (theirs, ours)
    })
}

fn status_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => Just(b"HTTP/1.1 200 OK".to_vec()),
        1 => Just(b"HTTP/1.0 200 OK".to_vec()),
        1 => Just(b"HTTP/1.1 204 No Content".to_vec()),
        1 => Just(b"HTTP/1.1 304 Not Modified".to_vec()),
        1 => Just(b"HTTP/1.1 404 Nope".to_vec()),
        1 => Just(b"HTTP/1.1 200".to_vec()),
        1 => Just(b"HTTP/1.1 200 ".to_vec()),
        1 => Just(b"HTTP/1.1  200 OK".to_vec()),
        1 => Just(b"http/1.1 200 OK".to_vec()),
        1 => Just(b"HTTP/2.0 200 OK".to_vec()),
        1 => Just(b"HTTP/1.1 099 Low".to_vec()),
        1 => Just(b"HTTP/1.1 20 Short".to_vec()),
        1 => Just(b"HTTP/1.1 2000 Long".to_vec()),
        1 => Just(b"HTTP/1.1 200 O\x01K".to_vec()),
        1 => Just(b"HTTP/1.1 200 r\xe9sum\xe9".to_vec()),
        1 => Just(b"HTTP/1.1 101 Switching Protocols".to_vec()),
        2 => (100u16..=599).prop_map(|code| format!("HTTP/1.1 {code} Reason").into_bytes()),
    ]
}

fn line_end() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        12 => Just(&b"\r\n"[..]),
        2 => Just(&b"\n"[..]),
        1 => Just(&b"\r"[..]),
    ]
}

fn header() -> impl Strategy<Value = Vec<u8>> {
    let length = prop_oneof![
        Just("5".to_owned()),
        Just("0".to_owned()),
        Just("05".to_owned()),
        Just("5, 5".to_owned()),
        Just("5,6".to_owned()),
        Just("-1".to_owned()),
        Just("+5".to_owned()),
        Just("abc".to_owned()),
        Just("".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("18446744073709551615".to_owned()),
        (0u32..40).prop_map(|n| n.to_string()),
    ];
    let coding = prop_oneof![
        Just("chunked"),
        Just("Chunked"),
        Just("gzip"),
        Just("gzip, chunked"),
        Just("chunked, gzip"),
        Just("chunked "),
        Just(""),
    ];
    prop_oneof![
        4 => length.clone().prop_map(|v| format!("Content-Length: {v}").into_bytes()),
        1 => length.prop_map(|v| format!("content-length:{v}").into_bytes()),
        3 => coding.prop_map(|v| format!("Transfer-Encoding: {v}").into_bytes()),
        1 => Just(b"Connection: close".to_vec()),
        1 => Just(b"Connection: keep-alive".to_vec()),
        2 => Just(b"X-Folded: a\r\n b".to_vec()),
        1 => Just(b"X-Folded: a\n\tb".to_vec()),
        1 => Just(b"Bad Name: x".to_vec()),
        1 => Just(b"Name : x".to_vec()),
        1 => Just(b": empty".to_vec()),
        1 => Just(b"NoColon".to_vec()),
        1 => Just(b"X-Ctl: a\x01b".to_vec()),
        1 => Just(b"X-Nul: a\x00b".to_vec()),
        1 => Just(b"X-Del: a\x7fb".to_vec()),
        1 => Just(b"X-Obs: caf\xc3\xa9".to_vec()),
        1 => Just(b"X-Space: trailing   ".to_vec()),
        3 => (prop::collection::vec(prop::sample::select(&b"abcxyz-_0123456789"[..]), 1..8),
              prop::collection::vec(prop::sample::select(&b"abc 123\t;=,\"/"[..]), 0..12))
            .prop_map(|(name, value)| [&name[..], b": ", &value[..]].concat()),
    ]
}

fn chunk() -> impl Strategy<Value = Vec<u8>> {
    let data = prop::collection::vec(prop::sample::select(&b"abcdef\r\n0"[..]), 1..12);
    prop_oneof![
        6 => data.clone().prop_map(|data| [format!("{:x}\r\n", data.len()).as_bytes(), &data, b"\r\n"].concat()),
        1 => data.clone().prop_map(|data| [format!("{:X};ext=1\r\n", data.len()).as_bytes(), &data, b"\r\n"].concat()),
        1 => data.clone().prop_map(|data| [format!("{:x} \t\r\n", data.len()).as_bytes(), &data, b"\r\n"].concat()),
        1 => data.clone().prop_map(|data| [format!("{:x}\n", data.len()).as_bytes(), &data, b"\r\n"].concat()),
        1 => data.clone().prop_map(|data| [format!("{:x};a\nb\r\n", data.len()).as_bytes(), &data, b"\r\n"].concat()),
        1 => data.clone().prop_map(|data| [format!("{:x}\r\n", data.len() + 1).as_bytes(), &data, b"\r\n"].concat()),
        1 => data.prop_map(|data| [format!("{:x}\r\n", data.len()).as_bytes(), &data, b"\n"].concat()),
        1 => Just(b"zz\r\nab\r\n".to_vec()),
        1 => Just(b"-1\r\n".to_vec()),
        1 => Just(b" 1\r\na\r\n".to_vec()),
        1 => Just(b"fffffffffffffffff\r\n".to_vec()),
        1 => Just(b"0x1\r\na\r\n".to_vec()),
    ]
}

fn last_chunk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => Just(b"0\r\n\r\n".to_vec()),
        1 => Just(b"0;last\r\n\r\n".to_vec()),
        2 => Just(b"0\r\nx-trailer: yes\r\n\r\n".to_vec()),
        1 => Just(b"0\r\nx-a: 1\r\nx-b: 2\r\n\r\n".to_vec()),
        1 => Just(b"0\r\nbad trailer\r\n\r\n".to_vec()),
        1 => Just(b"0\r\nx-a: 1\n\r\n".to_vec()),
        1 => Just(b"0\r\n\n".to_vec()),
        1 => Just(b"0\r\nx-a: 1\r\n\r\nextra".to_vec()),
        1 => Just(b"000\r\n\r\n".to_vec()),
        1 => Just(Vec::new()),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..24),
        1 => Just(b"hello".to_vec()),
        3 => (prop::collection::vec(chunk(), 0..4), last_chunk())
            .prop_map(|(chunks, last)| [chunks.concat(), last].concat()),
    ]
}

prop_compose! {
    fn message()(
        interim in prop::option::weighted(0.1, prop_oneof![
            Just(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
            Just(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n".to_vec()),
        ]),
        status in status_line(),
        first_end in line_end(),
        headers in prop::collection::vec((header(), line_end()), 0..6),
        final_end in line_end(),
        body in body(),
        cut in prop::option::weighted(0.15, any::<prop::sample::Index>()),
    ) -> Vec<u8> {
        let mut bytes = interim.unwrap_or_default();
        bytes.extend_from_slice(&status);
        bytes.extend_from_slice(first_end);
        for (header, end) in headers {
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(end);
        }
        bytes.extend_from_slice(final_end);
        bytes.extend_from_slice(&body);
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_500, ..ProptestConfig::default() })]

    #[test]
    fn same_decisions_as_hyper(bytes in message(), head in prop::bool::weighted(0.1)) {
        let method = if head { Method::HEAD } else { Method::GET };
        let (theirs, ours) = both(&bytes, &method);
        prop_assert_eq!(theirs, ours, "on {:?} ({})", String::from_utf8_lossy(&bytes), method);
    }
}

#[test]
fn known_cases_agree() {
    let cases: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 Fine\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r",
    ];
    // Around the two header arrays (24 first, then hyper's 100).
    let many = |n: usize| {
        let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..n {
            bytes.extend_from_slice(format!("x-h{i}: {i}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
        bytes
    };
    let many: Vec<Vec<u8>> = [22, 23, 24, 60, 98, 99, 100, 150].map(many).into();
    let cases: Vec<&[u8]> = cases
        .iter()
        .copied()
        .chain(many.iter().map(Vec::as_slice))
        .collect();
    for bytes in &cases {
        for method in [Method::GET, Method::HEAD] {
            let (theirs, ours) = both(bytes, &method);
            assert_eq!(
                theirs,
                ours,
                "on {:?} ({method})",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}

/// A keep-alive connection serves a second request once the first body
/// was read; a `Connection: close` one is not handed back.
#[tokio::test]
async fn connections_are_reused_only_after_a_complete_keep_alive_body() {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let mut answered = 0;
        while let Ok(n) = server.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                answered += 1;
                let answer: &[u8] = if answered == 1 {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\ntwo"
                };
                let _ = server.write_all(answer).await;
            }
        }
    });
    let request = || {
        let mut request = Request::new(UpstreamBody::Empty);
        request
            .headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("upstream"));
        request
    };
    let response = Connection::new(client)
        .send(request())
        .await
        .unwrap_or_else(|err| panic!("first: {:?}", err.error));
    let mut body = response.into_body();
    assert!(body.take_connection().is_none(), "not read yet");
    let (data, _) = collect(&mut body).await;
    assert_eq!(data.as_deref(), Some(&b"one"[..]));
    let mut conn = body.take_connection().unwrap_or_else(|| panic!("reusable"));
    assert!(conn.is_reusable());
    let response = conn
        .send(request())
        .await
        .unwrap_or_else(|err| panic!("second: {:?}", err.error));
    let mut body = response.into_body();
    let (data, _) = collect(&mut body).await;
    assert_eq!(data.as_deref(), Some(&b"two"[..]));
    assert!(body.take_connection().is_none(), "Connection: close");
}

/// Requests with a buffered body are written with their length in one
/// buffer; streaming bodies and `Transfer-Encoding` stay with hyper.
#[test]
fn request_heads_are_encoded_as_hyper_would() {
    let mut request = Request::new(UpstreamBody::Buffered(Some(Bytes::from_static(b"data"))));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = http::Uri::from_static("/p?q=1");
    request
        .headers_mut()
        .insert(http::header::HOST, HeaderValue::from_static("h"));
    assert!(takes(&request));
    let mut buf = Vec::new();
    encode_request(&mut buf, &request);
    assert_eq!(
        buf,
        b"POST /p?q=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\n\r\ndata".to_vec()
    );
    request
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    assert!(!takes(&request), "a length that does not match");
    request.headers_mut().remove(http::header::CONTENT_LENGTH);
    request
        .headers_mut()
        .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    assert!(!takes(&request), "transfer codings");
}
