//! Incremental decoder for the chunked transfer coding (RFC 9112 §7.1).
//!
//! It consumes input as it goes, so raw chunk framing never piles up in the connection's input
//! buffer. Strict on purpose: chunk lines and trailer lines must end in CRLF (bare LF here is a
//! classic request-smuggling lever), sizes are hex without overflow, extensions are skipped but
//! must be free of control characters, trailer fields are checked and discarded.

use alloc::vec::Vec;

use crate::conn::Reject;
use crate::message::{is_field_value, is_token};
use crate::Limits;

/// Longest chunk-size line (size plus extensions, without CRLF) accepted.
pub(crate) const MAX_CHUNK_LINE: usize = 1024;

#[derive(Debug)]
pub(crate) struct Chunked {
    state: State,
    /// Bytes of trailer section seen so far; bounded by `Limits::max_head_bytes`.
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Size,
    Data(usize),
    DataEnd,
    Trailer,
}

enum Line<'a> {
    Complete(&'a [u8], usize),
    Partial,
    TooLong,
    BareLf,
}

/// Splits a CRLF-terminated line of at most `max` bytes (CRLF excluded) off the front of `buf`.
fn take_line(buf: &[u8], max: usize) -> Line<'_> {
    let window = &buf[..buf.len().min(max.saturating_add(2))];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) if nl > 0 && buf[nl - 1] == b'\r' => Line::Complete(&buf[..nl - 1], nl + 1),
        Some(_) => Line::BareLf,
        None if window.len() < buf.len() || buf.len() >= max.saturating_add(2) => Line::TooLong,
        None => Line::Partial,
    }
}

const BAD_CHUNK: Reject = Reject::new(400, "malformed chunked body");
const BODY_TOO_LARGE: Reject = Reject::new(413, "request body too large");
const TRAILERS_TOO_LARGE: Reject = Reject::new(431, "request trailer section too large");

impl Chunked {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Size,
            trailer_bytes: 0,
        }
    }

    /// Decodes what it can of `input` into `body`. Returns the bytes consumed and whether the
    /// message (including its trailer section) is complete. `body` never grows past
    /// `limits.max_body_bytes`.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<(usize, bool), Reject> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Size => {
                    let (line, n) = match take_line(rest, MAX_CHUNK_LINE) {
                        Line::Complete(line, n) => (line, n),
                        Line::Partial => return Ok((used, false)),
                        Line::TooLong | Line::BareLf => return Err(BAD_CHUNK),
                    };
                    let size = chunk_size(line).ok_or(BAD_CHUNK)?;
                    let room = limits.max_body_bytes.saturating_sub(body.len());
                    self.state = match size {
                        0 => State::Trailer,
                        s if s > room as u64 => return Err(BODY_TOO_LARGE),
                        s => State::Data(s as usize),
                    };
                    used += n;
                }
                State::Data(remaining) => {
                    let n = remaining.min(rest.len());
                    body.extend_from_slice(&rest[..n]);
                    used += n;
                    if n < remaining {
                        self.state = State::Data(remaining - n);
                        return Ok((used, false));
                    }
                    self.state = State::DataEnd;
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        used += 2;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok((used, false)),
                    _ => return Err(BAD_CHUNK),
                },
                State::Trailer => {
                    let budget = limits.max_head_bytes.saturating_sub(self.trailer_bytes);
                    let (line, n) = match take_line(rest, budget) {
                        Line::Complete(line, n) => (line, n),
                        Line::Partial => return Ok((used, false)),
                        Line::TooLong => return Err(TRAILERS_TOO_LARGE),
                        Line::BareLf => return Err(BAD_CHUNK),
                    };
                    self.trailer_bytes += n;
                    if self.trailer_bytes > limits.max_head_bytes {
                        return Err(TRAILERS_TOO_LARGE);
                    }
                    used += n;
                    if line.is_empty() {
                        return Ok((used, true));
                    }
                    if !is_field_line(line) {
                        return Err(BAD_CHUNK);
                    }
                }
            }
        }
    }
}

/// `chunk-size [ chunk-ext ]`: the size in hex, then nothing or (after optional BWS) `;...`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16)?;
        size = size.checked_mul(16)?.checked_add(d.into())?;
    }
    let ext = &line[digits..];
    let ext_start = ext.iter().position(|&b| b != b' ' && b != b'\t');
    match ext_start {
        None => Some(size),
        Some(i) if ext[i] == b';' && is_field_value(ext) => Some(size),
        Some(_) => None,
    }
}

/// `field-name ":" OWS field-value OWS`, loosely: a token, a colon, clean value bytes.
fn is_field_line(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) => is_token(&line[..colon]) && is_field_value(&line[colon + 1..]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_body: usize, max_head: usize) -> Limits {
        Limits {
            max_body_bytes: max_body,
            max_head_bytes: max_head,
            ..Limits::default()
        }
    }

    /// Decodes `input` fed in pieces of `step` bytes (as the connection would, re-offering
    /// what was not consumed).
    fn decode_in_steps(input: &[u8], step: usize, l: &Limits) -> Result<(Vec<u8>, usize), Reject> {
        let (mut dec, mut body, mut used) = (Chunked::new(), Vec::new(), 0);
        let mut avail = 0;
        while avail < input.len() {
            avail = (avail + step).min(input.len());
            let (n, done) = dec.decode(&input[used..avail], &mut body, l)?;
            used += n;
            if done {
                return Ok((body, used));
            }
        }
        Err(Reject::new(0, "incomplete"))
    }

    #[test]
    fn decodes_with_extensions_and_trailers_at_every_split() {
        let msg = b"4;name=val\r\nWiki\r\n5 ; x\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n\
                    0\r\nExpires: never\r\nX-T:\r\n\r\nNEXT";
        for step in 1..=msg.len() {
            let (body, used) = decode_in_steps(msg, step, &Limits::default()).unwrap();
            assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
            assert_eq!(&msg[used..], b"NEXT", "step {step}");
        }
    }

    #[test]
    fn rejects_malformed_framing() {
        let bad: &[&[u8]] = &[
            b"g\r\n",                         // not hex
            b"\r\n",                          // empty size
            b"-1\r\n",                        // sign
            b"0x5\r\nhello\r\n0\r\n\r\n",     // 0x prefix
            b"5\nhello\r\n0\r\n\r\n",         // bare LF
            b"5 junk\r\nhello\r\n0\r\n\r\n",  // junk instead of extension
            b"5;a\x00\r\nhello\r\n0\r\n\r\n", // control byte in extension
            b"5\r\nhelloXX0\r\n\r\n",         // data not followed by CRLF
            b"10000000000000000\r\n",         // 2^64: overflows u64
            b"0\r\nno colon\r\n\r\n",         // bad trailer
            b"0\r\nX: a\n\r\n",               // bare LF in trailer
        ];
        for input in bad {
            let r = decode_in_steps(input, input.len(), &Limits::default());
            assert_eq!(r.err().map(|r| r.status), Some(400), "{input:?}");
        }
        let long = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_LINE]].concat();
        let r = decode_in_steps(&long, long.len(), &Limits::default());
        assert_eq!(r.err().map(|r| r.status), Some(400));
    }

    #[test]
    fn leading_zeros_do_not_overflow() {
        let msg = b"0000000000000000000000003\r\nabc\r\n0\r\n\r\n";
        assert_eq!(
            decode_in_steps(msg, 7, &Limits::default()).unwrap().0,
            b"abc"
        );
    }

    #[test]
    fn body_limit_is_enforced_before_buffering() {
        let l = limits(8, 8192);
        assert_eq!(
            decode_in_steps(b"8\r\n12345678\r\n0\r\n\r\n", 3, &l)
                .unwrap()
                .0
                .len(),
            8
        );
        // The second chunk's size line alone triggers 413: its data is never buffered.
        let r = decode_in_steps(b"5\r\n12345\r\n4\r\n", 100, &l);
        assert_eq!(r.err().map(|r| r.status), Some(413));
        let r = decode_in_steps(b"ffffffffffffffff\r\n", 100, &l);
        assert_eq!(r.err().map(|r| r.status), Some(413));
    }

    #[test]
    fn trailer_section_is_bounded() {
        let l = limits(1024, 32);
        let ok = b"0\r\nX-A: 0123456789\r\n\r\n";
        assert!(decode_in_steps(ok, 1, &l).is_ok());
        let big = b"0\r\nX-A: 0123456789\r\nX-B: 0123456789\r\n\r\n";
        for step in [1, 5, big.len()] {
            let r = decode_in_steps(big, step, &l);
            assert_eq!(r.err().map(|r| r.status), Some(431), "step {step}");
        }
    }
}
