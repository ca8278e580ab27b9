//! The answers hyper makes for us, made ours.
//!
//! A request head hyper cannot parse (a garbage request line, two
//! `Content-Length`s) or one over its hard limits never reaches the handler:
//! hyper answers it itself, `HTTP/1.1 400 Bad Request` with `connection:
//! close`, `content-length: 0` and a `date`, then closes. Weakening the
//! parser to see those requests is not an option, so the connection's
//! writer ([`ErrorAnswers`]) recognises that exact answer as it is written
//! and writes the gateway's own instead: the same status, the JSON body of
//! the refusal table with a fresh request id, counted in
//! `tollgate_requests_total` (route `<unmatched>`) and in the access log
//! with its `error` code.
//!
//! Recognition is exact and cheap: a response the handler produced always
//! carries `X-Request-Id`, so a head consisting only of a status line,
//! `connection: close`, `content-length: 0` and `date` can only be hyper's.
//! Every other write costs one prefix comparison.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tollgate_plugin_api::request_id::{generate_request_id, KeptRequestId};
use tollgate_plugin_api::{Refusal, RefusalKind};
use tollgate_telemetry::access_log::{AccessLog, AccessLogRecord};
use tollgate_telemetry::metrics;

const STATUS_PREFIX: &[u8] = b"HTTP/1.1 ";
const HYPER_HEADERS: &[u8] = b"\r\nconnection: close\r\ncontent-length: 0\r\ndate: ";
/// `date: Mon, 07 Dec 2026 04:58:00 GMT`: the value's length.
const DATE_LEN: usize = 29;

/// Where a replaced answer is recorded.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub access_log: Arc<AccessLog>,
    pub request_metrics: bool,
    pub client_ip: IpAddr,
}

/// A client connection's stream, with hyper's own error answers replaced.
#[derive(Debug)]
pub struct ErrorAnswers<S> {
    inner: S,
    recorder: Recorder,
    /// Our answer being written in place of hyper's, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<S> ErrorAnswers<S> {
    pub fn new(inner: S, recorder: Recorder) -> Self {
        ErrorAnswers {
            inner,
            recorder,
            replacing: None,
        }
    }
}

/// The status and `date` value of hyper's own error answer, if `buf` is one.
fn hyper_error_answer(buf: &[u8]) -> Option<(StatusCode, &[u8])> {
    let rest = buf.strip_prefix(STATUS_PREFIX)?;
    let status = StatusCode::from_bytes(rest.get(..3)?).ok()?;
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
    let after = rest.get(line_end..)?.strip_prefix(HYPER_HEADERS)?;
    let (date, end) = (after.get(..DATE_LEN)?, after.get(DATE_LEN..)?);
    (end == b"\r\n\r\n").then_some((status, date))
}

fn refusal_for(status: StatusCode) -> RefusalKind {
    match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => RefusalKind::HeadersTooLarge,
        StatusCode::URI_TOO_LONG => RefusalKind::UriTooLong,
        _ => RefusalKind::BadRequest,
    }
}

impl Recorder {
    /// Our answer for hyper's `status`, recorded in metrics and the log.
    fn answer(&self, status: StatusCode, date: &[u8]) -> Vec<u8> {
        let kind = refusal_for(status);
        let request_id = generate_request_id();
        let body = crate::respond::refusal_body(&Refusal::new(kind), Some(request_id.header()));
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(STATUS_PREFIX);
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("Error").as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: application/json\r\nx-request-id: ");
        out.extend_from_slice(request_id.as_bytes());
        out.extend_from_slice(b"\r\nconnection: close\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\ndate: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body.as_bytes());

        let method = http::Method::from_bytes(b"UNPARSED").unwrap_or(http::Method::GET);
        if self.request_metrics {
            metrics::global().unmatched().record_request(
                &method,
                status.as_u16(),
                std::time::Duration::ZERO,
            );
        }
        if self.access_log.is_enabled() {
            let kept = KeptRequestId::new(&request_id);
            let mut record = AccessLogRecord::new(Instant::now(), &method);
            record.request_id = Some(&kept);
            record.client_ip = Some(self.client_ip);
            record.status = status.as_u16();
            record.error = Some(kind.code());
            record.bytes_out = body.len() as u64;
            self.access_log.log(&record);
        }
        tracing::debug!(status = status.as_u16(), error = kind.code(), client = %self.client_ip, "request head refused by the HTTP parser");
        out
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ErrorAnswers<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ErrorAnswers<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_none() {
            match hyper_error_answer(buf) {
                Some((status, date)) => {
                    let ours = this.recorder.answer(status, date);
                    this.replacing = Some((ours, 0));
                }
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // Write all of ours, then report hyper's bytes as written.
        if let Some((ours, written)) = this.replacing.as_mut() {
            while *written < ours.len() {
                let rest = ours.get(*written..).unwrap_or_default();
                match Pin::new(&mut this.inner).poll_write(cx, rest) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => *written += n,
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        this.replacing = None;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_answer_is_recognised() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 04:58:00 GMT\r\n\r\n";
        let (status, date) = hyper_error_answer(hyper).expect("hyper's");
        assert_eq!(status, 400);
        assert_eq!(date, b"Mon, 07 Dec 2026 04:58:00 GMT");
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nx-request-id: a\r\ncontent-length: 2\r\ndate: Mon, 07 Dec 2026 04:58:00 GMT\r\n\r\n{}";
        assert!(hyper_error_answer(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 04:58:00 GMT\r\n\r\n";
        assert!(hyper_error_answer(ok).is_none(), "only errors");
        let with_body = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 04:58:00 GMT\r\n\r\nx";
        assert!(hyper_error_answer(with_body).is_none());
        assert!(hyper_error_answer(b"HTTP/1.1 4").is_none());
        assert_eq!(
            refusal_for(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            RefusalKind::HeadersTooLarge
        );
    }
}
