//! The serial console (QEMU's stdout) and QEMU's own stderr: copied line by line to a log file,
//! the last lines kept in memory for error messages, and the kernel's ready line recognised
//! (`tuk: ready listen=<ip>:<port> guest_boot_us=<N>`, docs/contracts.md).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

/// How many console lines an error message shows.
pub const TAIL_LINES: usize = 40;
/// Longest line kept in memory; the log file always gets the whole line.
const MAX_LINE: usize = 4096;

/// A bounded ring of the most recent lines.
#[derive(Debug, Clone)]
pub struct TailRing {
    lines: VecDeque<String>,
    cap: usize,
}

impl TailRing {
    pub fn new(cap: usize) -> Self {
        Self {
            lines: VecDeque::with_capacity(cap),
            cap,
        }
    }

    pub fn push(&mut self, line: String) {
        if self.cap == 0 {
            return;
        }
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}

/// The kernel's `tuk: ready ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    /// `listen=<ip>:<port>` as printed.
    pub listen: Option<String>,
    /// TSC time from PVH entry to listening, in microseconds.
    pub guest_boot_us: Option<u64>,
}

impl ReadyLine {
    /// Recognises the ready line anywhere in a console line (log prefixes are allowed).
    pub fn parse(line: &str) -> Option<Self> {
        let at = line.find("tuk: ready")?;
        let rest = &line[at + "tuk: ready".len()..];
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return None;
        }
        let mut ready = ReadyLine {
            listen: None,
            guest_boot_us: None,
        };
        for token in rest.split_whitespace() {
            match token.split_once('=') {
                Some(("listen", v)) => ready.listen = Some(v.to_owned()),
                Some(("guest_boot_us", v)) => ready.guest_boot_us = v.parse().ok(),
                _ => {}
            }
        }
        Some(ready)
    }
}

/// What one captured stream has shown so far.
#[derive(Debug)]
pub struct StreamState {
    pub tail: TailRing,
    /// The first ready line seen (console only).
    pub ready: Option<ReadyLine>,
    /// QEMU reported "KVM internal error" (stderr): the VM is stopped, not exited.
    pub kvm_internal_error: bool,
    /// The stream reached end of file (QEMU closed it, normally by exiting).
    pub closed: bool,
}

/// A captured stream shared between its pump thread and the [`crate::Instance`].
#[derive(Debug, Clone)]
pub struct Capture(Arc<Mutex<StreamState>>);

impl Default for Capture {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(StreamState {
            tail: TailRing::new(TAIL_LINES),
            ready: None,
            kvm_internal_error: false,
            closed: false,
        })))
    }
}

impl Capture {
    pub fn state(&self) -> MutexGuard<'_, StreamState> {
        // A pump thread that panicked leaves consistent data behind: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn tail(&self) -> Vec<String> {
        self.state().tail.lines()
    }

    pub fn ready(&self) -> Option<ReadyLine> {
        self.state().ready.clone()
    }

    /// Copies `input` line by line into `log` (flushed per line) and into this capture, until
    /// end of file. Write errors on the log stop the copy to the log, never the draining of
    /// `input` (QEMU must not block on a full pipe).
    pub fn pump(&self, input: impl Read, mut log: Option<impl Write>) {
        let mut input = BufReader::new(input);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            match input.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            if let Some(w) = log.as_mut() {
                if w.write_all(&buf).and_then(|()| w.flush()).is_err() {
                    log = None;
                }
            }
            let text = String::from_utf8_lossy(&buf);
            let mut line = text.trim_end_matches(['\n', '\r']).to_owned();
            if line.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
                line.push_str(" [...]");
            }
            let mut st = self.state();
            if st.ready.is_none() {
                st.ready = ReadyLine::parse(&line);
            }
            if line.contains("KVM internal error") {
                st.kvm_internal_error = true;
            }
            st.tail.push(line);
        }
        self.state().closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_lines() {
        let mut r = TailRing::new(3);
        for i in 0..5 {
            r.push(i.to_string());
        }
        assert_eq!(r.lines(), ["2", "3", "4"]);
        let mut z = TailRing::new(0);
        z.push("x".into());
        assert!(z.lines().is_empty());
    }

    #[test]
    fn ready_line_parses_with_log_prefix() {
        let r = ReadyLine::parse(
            "[     0.123456] INFO tuk: tuk: ready listen=10.0.2.15:80 guest_boot_us=81234",
        )
        .unwrap();
        assert_eq!(r.listen.as_deref(), Some("10.0.2.15:80"));
        assert_eq!(r.guest_boot_us, Some(81234));
        let bare = ReadyLine::parse("tuk: ready").unwrap();
        assert_eq!(bare.guest_boot_us, None);
        assert!(ReadyLine::parse("tuk: readying things").is_none());
        assert!(ReadyLine::parse("INFO net: link up").is_none());
        assert_eq!(
            ReadyLine::parse("tuk: ready guest_boot_us=x")
                .unwrap()
                .guest_boot_us,
            None
        );
    }

    #[test]
    fn pump_copies_logs_and_tracks_state() {
        let input = b"boot\r\nKVM internal error. Suberror: 1\ntuk: ready listen=10.0.2.15:80 guest_boot_us=7\ntuk: ready guest_boot_us=9\nno newline at end";
        let cap = Capture::default();
        let mut log = Vec::new();
        cap.pump(&input[..], Some(&mut log));
        assert_eq!(log, input);
        let st = cap.state();
        assert!(st.closed && st.kvm_internal_error);
        assert_eq!(st.ready.as_ref().unwrap().guest_boot_us, Some(7));
        assert_eq!(st.tail.lines()[0], "boot");
        assert_eq!(st.tail.lines().last().unwrap(), "no newline at end");
    }

    #[test]
    fn pump_truncates_huge_lines_in_memory_only() {
        let mut input = "é".repeat(MAX_LINE).into_bytes();
        input.push(b'\n');
        let cap = Capture::default();
        let mut log = Vec::new();
        cap.pump(&input[..], Some(&mut log));
        assert_eq!(log.len(), input.len());
        let line = &cap.tail()[0];
        assert!(line.ends_with(" [...]") && line.len() <= MAX_LINE + 6);
    }
}
