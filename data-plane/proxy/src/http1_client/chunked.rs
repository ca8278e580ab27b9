//! The chunked transfer coding of a response body (RFC 9112 section 7.1),
//! decoded from the connection's read buffer in place.
//!
//! The states and every refusal are hyper's (`proto/h1/decode.rs`), so a
//! body hyper refuses is refused here too, with the same `io::ErrorKind`
//! (which [`crate::upstream::classify`] maps): sizes must start with a hex
//! digit and may not overflow, only spaces/tabs or `;extensions` may follow
//! them, extensions end at CRLF (a bare LF is refused) and are capped at
//! 16 KiB per body, every CR must be followed by LF, trailers are capped at
//! 100 fields and 16 KiB and parsed with `httparse`. The differential test
//! (`tests.rs`) checks the two agree.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Chunk extensions allowed per body, as hyper.
const EXTENSIONS_LIMIT: u64 = 16 * 1024;
/// Bytes of trailers allowed, as hyper.
const TRAILER_LIMIT: usize = 16 * 1024;
/// Trailer fields allowed, as hyper (its header count limit).
const MAX_TRAILERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
    End,
}

/// What one call of [`Chunked::decode`] produced.
#[derive(Debug)]
pub(crate) enum Step {
    /// Body bytes (part of a chunk).
    Data(Bytes),
    /// The last chunk and its trailers, if any.
    End(Option<HeaderMap>),
    /// The buffer holds nothing more to decode: read more.
    More,
}

/// The decoder's state between reads.
#[derive(Debug)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    extensions: u64,
    trailers: Option<BytesMut>,
    trailer_count: usize,
}

fn invalid_input(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn invalid_data(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn hex(byte: u8) -> Option<u64> {
    match byte {
        b'0'..=b'9' => Some(u64::from(byte - b'0')),
        b'a'..=b'f' => Some(u64::from(byte + 10 - b'a')),
        b'A'..=b'F' => Some(u64::from(byte + 10 - b'A')),
        _ => None,
    }
}

impl Chunked {
    pub(crate) fn new() -> Self {
        Chunked {
            state: State::Start,
            size: 0,
            extensions: 0,
            trailers: None,
            trailer_count: 0,
        }
    }

    /// Whether the input ended inside a chunk's data (for the error's text).
    pub(crate) fn in_data(&self) -> bool {
        self.state == State::Body
    }

    /// Decodes from `buf` until it yields data, ends, or needs more bytes.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        loop {
            if self.state == State::Body {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let data = buf.split_to(take).freeze();
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::BodyCr;
                }
                return Ok(Step::Data(data));
            }
            let Some(&byte) = buf.first() else {
                return Ok(Step::More);
            };
            buf.advance(1);
            self.state = self.step(byte)?;
            if self.state == State::End {
                return match self.trailers.take() {
                    None => Ok(Step::End(None)),
                    Some(mut trailers) => decode_trailers(&mut trailers, self.trailer_count)
                        .map(Some)
                        .map(Step::End),
                };
            }
        }
    }

    fn push_trailer(&mut self, byte: u8) -> io::Result<()> {
        let trailers = self
            .trailers
            .get_or_insert_with(|| BytesMut::with_capacity(64));
        trailers.put_u8(byte);
        if trailers.len() >= TRAILER_LIMIT {
            return Err(invalid_data("chunk trailers bytes over limit"));
        }
        Ok(())
    }

    fn add_digit(&mut self, digit: u64) -> io::Result<State> {
        self.size = self
            .size
            .checked_mul(16)
            .and_then(|size| size.checked_add(digit))
            .ok_or_else(|| invalid_data("invalid chunk size: overflow"))?;
        Ok(State::Size)
    }

    fn step(&mut self, byte: u8) -> io::Result<State> {
        use State::*;
        match self.state {
            Start => match hex(byte) {
                Some(digit) => self.add_digit(digit),
                None => Err(invalid_input("invalid chunk size line: missing size digit")),
            },
            Size => match (hex(byte), byte) {
                (Some(digit), _) => self.add_digit(digit),
                (None, b'\t' | b' ') => Ok(SizeLws),
                (None, b';') => Ok(Extension),
                (None, b'\r') => Ok(SizeLf),
                _ => Err(invalid_input("invalid chunk size line: invalid size")),
            },
            SizeLws => match byte {
                b'\t' | b' ' => Ok(SizeLws),
                b';' => Ok(Extension),
                b'\r' => Ok(SizeLf),
                _ => Err(invalid_input("invalid chunk size linear white space")),
            },
            Extension => match byte {
                b'\r' => Ok(SizeLf),
                b'\n' => Err(invalid_data("invalid chunk extension contains newline")),
                _ => {
                    self.extensions += 1;
                    if self.extensions >= EXTENSIONS_LIMIT {
                        Err(invalid_data("chunk extensions over limit"))
                    } else {
                        Ok(Extension)
                    }
                }
            },
            SizeLf => match byte {
                b'\n' if self.size == 0 => Ok(EndCr),
                b'\n' => Ok(Body),
                _ => Err(invalid_input("invalid chunk size LF")),
            },
            BodyCr => match byte {
                b'\r' => Ok(BodyLf),
                _ => Err(invalid_input("invalid chunk body CR")),
            },
            BodyLf => match byte {
                b'\n' => Ok(Start),
                _ => Err(invalid_input("invalid chunk body LF")),
            },
            Trailer => {
                self.push_trailer(byte)?;
                Ok(if byte == b'\r' { TrailerLf } else { Trailer })
            }
            TrailerLf => match byte {
                b'\n' => {
                    if self.trailer_count >= MAX_TRAILERS {
                        return Err(invalid_data("chunk trailers count overflow"));
                    }
                    self.trailer_count += 1;
                    self.push_trailer(byte)?;
                    Ok(EndCr)
                }
                _ => Err(invalid_input("invalid trailer end LF")),
            },
            EndCr => {
                if byte == b'\r' {
                    if self.trailers.is_some() {
                        self.push_trailer(byte)?;
                    }
                    Ok(EndLf)
                } else {
                    self.push_trailer(byte)?;
                    Ok(Trailer)
                }
            }
            EndLf => match byte {
                b'\n' => {
                    if self.trailers.is_some() {
                        self.push_trailer(byte)?;
                    }
                    Ok(End)
                }
                _ => Err(invalid_input("invalid chunk end LF")),
            },
            // Handled by the caller.
            Body | End => Ok(self.state),
        }
    }
}

/// The trailer fields, parsed as hyper parses them.
fn decode_trailers(buf: &mut BytesMut, count: usize) -> io::Result<HeaderMap> {
    let mut trailers = HeaderMap::new();
    let mut headers = vec![httparse::EMPTY_HEADER; count];
    match httparse::parse_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete((_, headers))) => {
            for header in headers {
                let name = HeaderName::from_bytes(header.name.as_bytes())
                    .map_err(|_| invalid_input("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(header.value)
                    .map_err(|_| invalid_input("invalid trailer value"))?;
                trailers.append(name, value);
            }
            Ok(trailers)
        }
        Ok(httparse::Status::Partial) => Err(invalid_input("partial trailers")),
        Err(_) => Err(invalid_input("invalid trailers")),
    }
}
