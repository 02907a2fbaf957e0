//! The host's log import: one line per call, tagged by the host with the component's name.

use crate::bindings::tuk::service::log::{log, Level};

pub fn trace(message: &str) {
    log(Level::Trace, message);
}
pub fn debug(message: &str) {
    log(Level::Debug, message);
}
pub fn info(message: &str) {
    log(Level::Info, message);
}
pub fn warn(message: &str) {
    log(Level::Warn, message);
}
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// A line formatted into a fixed buffer without allocating (for the panic handler); text past
/// `N` bytes is cut at a character boundary.
pub struct StackLine<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackLine<N> {
    pub const fn new() -> Self {
        StackLine {
            buf: [0; N],
            len: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str`s (or their prefixes cut at a char boundary) are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> Default for StackLine<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for StackLine<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::StackLine;
    use core::fmt::Write;

    #[test]
    fn stack_line_cuts_at_char_boundary() {
        let mut line = StackLine::<5>::new();
        write!(line, "ab{}", "cdé").unwrap();
        assert_eq!(line.as_str(), "abcd");
        write!(line, "zzz").unwrap();
        assert_eq!(line.as_str(), "abcdz");
    }
}
