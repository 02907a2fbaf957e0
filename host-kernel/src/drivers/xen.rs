//! Xen front ends on event channels (issue 13, docs/xen.md): the console ring and the XenStore
//! client. The ABI (ring indices, message framing, reply checks) is `tuk_xen`'s; this module
//! maps the pages, notifies the event channels and turns errors into logged refusals.
//!
//! - Events: shared_info is mapped over a .bss page and the upcall arrives on
//!   [`arch::XEN_UPCALL_VECTOR`], whose handler only records it; [`poll`] runs the 2-level
//!   demux in the main loop.
//! - Console: from [`init_early`] on, console output goes to the ring in the page
//!   `HVM_PARAM_CONSOLE_PFN` names (xenconsoled's log, `xl console`), notified on each line;
//!   the debug port 0xe9 keeps the early lines, fatal output and the exit line. A full ring is
//!   waited for boundedly, then the rest is dropped (counted); a ring whose indices are
//!   impossible is refused and the console falls back to 0xe9.
//! - XenStore: requests one at a time, each waited for at most [`STORE_TIMEOUT_US`]; watch
//!   events that arrive meanwhile are remembered. A malformed or mismatched reply is an error
//!   the caller logs; the assembler is reset so the next message starts clean.
//! - Exit: a hook writes tuk's exit code to `data/tuk-exit` (and the exit line to the ring)
//!   before `SCHEDOP_shutdown`, without allocating and without waiting on a held lock.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use spin::Mutex;
use tuk_xen::hypercall::hvm_param as param;
use tuk_xen::xenstore::{self, Assembler, Incoming, Interface, Reply, Request, XsError};

use crate::arch;

const PAGE: usize = 4096;
/// How long one XenStore request may wait for its reply.
pub const STORE_TIMEOUT_US: u64 = 5_000_000;
/// Yields a console write waits for xenconsoled to make room before dropping the rest.
const CONSOLE_FULL_YIELDS: u32 = 20_000;
/// The watch token for `control/shutdown`.
const SHUTDOWN_TOKEN: &str = "tuk-shutdown";

/// The page at guest-physical `addr` (identity-mapped) as bytes.
///
/// # Safety
/// `addr` must be a page mapped for the kernel's life (a Xen ring page), and the caller must
/// hold the lock that owns it for as long as the slice lives.
unsafe fn page(addr: u64) -> &'static mut [u8] {
    // SAFETY: per the contract above.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, PAGE) }
}

fn map_ring(pfn: u64) -> u64 {
    let addr = pfn << 12;
    // Present, writable, no-execute (the W^X audit stays clean); Xen's special pages lie
    // outside the RAM the boot tables map.
    arch::map_mmio(addr, PAGE as u64);
    addr
}

fn debug_line(args: core::fmt::Arguments<'_>) {
    use core::fmt::Write;
    struct E9;
    impl Write for E9 {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            arch::xen_debug_write(s.as_bytes());
            Ok(())
        }
    }
    let _ = E9.write_fmt(args);
    arch::xen_debug_write(b"\n");
}

// ---------------------------------------------------------------------------------------------
// Console ring

struct Ring {
    addr: u64,
    port: u32,
}

static CONSOLE: Mutex<Option<Ring>> = Mutex::new(None);
/// Bytes dropped because xenconsoled did not drain the ring in time.
static CONSOLE_DROPPED: AtomicU64 = AtomicU64::new(0);

fn ring_write(ring: &Ring, mut bytes: &[u8]) -> Result<(), tuk_xen::RingIndexError> {
    let newline = bytes.contains(&b'\n');
    let mut idle = 0;
    while !bytes.is_empty() {
        // SAFETY: the console page is mapped for good by `init_early`; the caller holds
        // `CONSOLE`.
        let page = unsafe { page(ring.addr) };
        let mut c = tuk_xen::console::Console::new_checked(page).expect("a page holds the ring");
        let n = c.write(bytes)?;
        bytes = &bytes[n..];
        if n == 0 {
            let _ = arch::xen_notify(ring.port);
            idle += 1;
            if idle > CONSOLE_FULL_YIELDS {
                CONSOLE_DROPPED.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                break;
            }
            arch::xen_yield();
        } else {
            idle = 0;
        }
    }
    if newline {
        let _ = arch::xen_notify(ring.port);
    }
    Ok(())
}

fn refuse_console(console: &mut Option<Ring>, e: tuk_xen::RingIndexError) {
    *console = None;
    debug_line(format_args!(
        "tuk: console ring refused ({e}); the console is back on the debug port 0xe9"
    ));
}

/// Writes to the console ring; false when there is none (the caller writes to 0xe9).
pub fn console_write(bytes: &[u8]) -> bool {
    let mut console = CONSOLE.lock();
    let Some(ring) = console.as_ref() else {
        return false;
    };
    match ring_write(ring, bytes) {
        Ok(()) => true,
        Err(e) => {
            refuse_console(&mut console, e);
            false
        }
    }
}

/// For fatal paths: writes to the ring only if its lock is free (the faulting code may hold
/// it). The caller has already written the bytes to 0xe9.
pub fn console_write_emergency(bytes: &[u8]) {
    if let Some(console) = CONSOLE.try_lock() {
        if let Some(ring) = console.as_ref() {
            let _ = ring_write(ring, bytes);
        }
    }
}

/// One input byte from the ring, if any.
pub fn console_read_byte() -> Option<u8> {
    let mut console = CONSOLE.lock();
    let ring = console.as_ref()?;
    // SAFETY: as in `ring_write`.
    let page = unsafe { page(ring.addr) };
    let mut c = tuk_xen::console::Console::new_checked(page).expect("a page holds the ring");
    let mut b = [0u8; 1];
    match c.read(&mut b) {
        Ok(1) => {
            let _ = arch::xen_notify(ring.port);
            Some(b[0])
        }
        Ok(_) => None,
        Err(e) => {
            refuse_console(&mut console, e);
            None
        }
    }
}

/// Bytes the console dropped because its ring stayed full.
pub fn console_dropped() -> u64 {
    CONSOLE_DROPPED.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Start-up

static CONSOLE_PORT: AtomicU32 = AtomicU32::new(u32::MAX);
static STORE_PORT: AtomicU32 = AtomicU32::new(u32::MAX);

/// Maps shared_info, installs the upcall vector and moves the console to the ring. Runs right
/// after the final page tables (the ring page needs `map_mmio`); failures are printed on 0xe9
/// and leave the console there.
pub fn init_early() {
    let shared_info = match arch::xen_init_events(arch::XEN_UPCALL_VECTOR) {
        Ok(a) => a,
        Err(e) => {
            debug_line(format_args!(
                "tuk: Xen events unavailable ({e}); console stays on 0xe9, no XenStore"
            ));
            return;
        }
    };
    arch::xen_set_exit_hook(on_exit);
    let ring = arch::xen_hvm_param(param::CONSOLE_PFN)
        .and_then(|pfn| Ok((pfn, arch::xen_hvm_param(param::CONSOLE_EVTCHN)?)));
    match ring {
        Ok((pfn, port)) if pfn != 0 && port != 0 && port < u64::from(u32::MAX) => {
            let addr = map_ring(pfn);
            let port = port as u32;
            if let Err(e) = arch::xen_unmask(port) {
                debug_line(format_args!(
                    "tuk: cannot unmask the console port {port}: {e}"
                ));
            }
            CONSOLE_PORT.store(port, Ordering::Relaxed);
            *CONSOLE.lock() = Some(Ring { addr, port });
            debug_line(format_args!(
                "tuk: events: shared_info at {shared_info:#x}, upcall vector {}; console on \
                 the Xen console ring (pfn {pfn:#x}, event channel {port}); 0xe9 keeps fatal \
                 output and the exit line",
                arch::XEN_UPCALL_VECTOR
            ));
            crate::drivers::serial::write_str("tuk: on Xen: console on the Xen console ring\n");
        }
        Ok((pfn, port)) => debug_line(format_args!(
            "tuk: no Xen console ring (pfn {pfn:#x}, event channel {port}); console stays on 0xe9"
        )),
        Err(e) => debug_line(format_args!(
            "tuk: cannot read the console ring's parameters ({e}); console stays on 0xe9"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// XenStore

/// Why a XenStore operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// The reply (or the ring) broke the protocol, or the daemon answered an error.
    Xs(XsError),
    /// No reply within [`STORE_TIMEOUT_US`].
    Timeout(&'static str),
    /// The client is not connected.
    Down,
}

impl From<XsError> for StoreError {
    fn from(e: XsError) -> Self {
        Self::Xs(e)
    }
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Xs(e) => write!(f, "{e} (refused)"),
            Self::Timeout(what) => write!(
                f,
                "xenstore: {what} within {} s; is xenstored running in dom0?",
                STORE_TIMEOUT_US / 1_000_000
            ),
            Self::Down => write!(f, "xenstore: not connected"),
        }
    }
}

enum Answer {
    Ok,
    Value(Vec<u8>),
    Entries(Vec<String>),
}

struct Store {
    addr: u64,
    port: u32,
    req_id: u32,
    asm: Box<Assembler>,
    buf: Box<[u8; xenstore::MESSAGE_MAX]>,
}

static STORE: Mutex<Option<Store>> = Mutex::new(None);
/// A `control/shutdown` watch event arrived and has not been looked at.
static SHUTDOWN_WATCH: AtomicBool = AtomicBool::new(false);
/// Incoming messages refused (malformed, unexpected).
static STORE_REFUSED: AtomicU64 = AtomicU64::new(0);

enum Got {
    Nothing,
    Watch,
    Reply(Result<Answer, XsError>),
}

impl Store {
    fn iface(&self) -> Interface<'static> {
        // SAFETY: the store page is mapped for good by `init_store`; `self` lives inside the
        // `STORE` lock, held by every caller, and the interface does not outlive the call.
        Interface::new_checked(unsafe { page(self.addr) }).expect("a page holds the interface")
    }

    /// Reads whatever the daemon sent, up to one whole message, and handles it. `pending`:
    /// the request a reply would answer.
    fn receive(&mut self, pending: Option<(&Request<'_>, u32)>) -> Result<(usize, Got), XsError> {
        let r = self.iface().read_into(&mut self.asm);
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                self.asm.clear();
                return Err(e);
            }
        };
        let Some(msg) = self.asm.message() else {
            return Ok((n, Got::Nothing));
        };
        let got = match xenstore::parse_incoming(msg) {
            Ok(Incoming::WatchEvent { path, token }) => {
                if token == SHUTDOWN_TOKEN {
                    SHUTDOWN_WATCH.store(true, Ordering::Release);
                }
                let _ = path;
                Got::Watch
            }
            Ok(Incoming::Reply(h, p)) => match pending {
                Some((req, id)) => Got::Reply(Reply::check(h, p, req, id).map(|r| match r {
                    Reply::Value(v) => Answer::Value(v.to_vec()),
                    Reply::Entries(_) => Answer::Entries(r.entries().map(String::from).collect()),
                    _ => Answer::Ok,
                })),
                None => Got::Reply(Err(XsError::Malformed(
                    "a reply with no request outstanding",
                ))),
            },
            Err(e) => Got::Reply(Err(e)),
        };
        self.asm.clear();
        // Room was made in the response ring.
        let _ = arch::xen_notify(self.port);
        Ok((n, got))
    }

    fn request(&mut self, req: &Request<'_>) -> Result<Answer, StoreError> {
        self.req_id = self.req_id.wrapping_add(1);
        let id = self.req_id;
        let len = xenstore::encode(&mut self.buf[..], req, id, 0)?;
        let deadline = arch::now_us() + STORE_TIMEOUT_US;
        let mut sent = 0;
        while sent < len {
            let n = self.iface().write_request(&self.buf[sent..len])?;
            sent += n;
            let _ = arch::xen_notify(self.port);
            if n == 0 {
                if arch::now_us() > deadline {
                    return Err(StoreError::Timeout("the request ring stayed full"));
                }
                arch::xen_yield();
            }
        }
        loop {
            let (n, got) = match self.receive(Some((req, id))) {
                Ok(x) => x,
                Err(e) => {
                    STORE_REFUSED.fetch_add(1, Ordering::Relaxed);
                    return Err(e.into());
                }
            };
            match got {
                Got::Reply(Ok(a)) => return Ok(a),
                Got::Reply(Err(e)) => {
                    if !matches!(e, XsError::Daemon(_)) {
                        STORE_REFUSED.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e.into());
                }
                Got::Watch => continue,
                Got::Nothing if n > 0 => continue,
                Got::Nothing => {}
            }
            if arch::now_us() > deadline {
                return Err(StoreError::Timeout("no reply"));
            }
            arch::xen_yield();
        }
    }
}

fn with_store<T>(f: impl FnOnce(&mut Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
    let mut store = STORE.lock();
    f(store.as_mut().ok_or(StoreError::Down)?)
}

/// Reads `path` (relative paths are under `/local/domain/<domid>/`).
pub fn store_read(path: &str) -> Result<Vec<u8>, StoreError> {
    with_store(|s| match s.request(&Request::Read(path))? {
        Answer::Value(v) => Ok(v),
        _ => Err(StoreError::Xs(XsError::Malformed("not a value"))),
    })
}

/// Lists the children of `path`.
pub fn store_directory(path: &str) -> Result<Vec<String>, StoreError> {
    with_store(|s| match s.request(&Request::Directory(path))? {
        Answer::Entries(v) => Ok(v),
        _ => Err(StoreError::Xs(XsError::Malformed("not a directory"))),
    })
}

pub fn store_write(path: &str, value: &[u8]) -> Result<(), StoreError> {
    with_store(|s| s.request(&Request::Write(path, value)).map(|_| ()))
}

fn text(v: &[u8]) -> &str {
    core::str::from_utf8(v).unwrap_or("<not UTF-8>")
}

/// Connects the XenStore client (`HVM_PARAM_STORE_PFN`/`STORE_EVTCHN`), logs `domid`, `name`
/// and what `device/` lists, and watches `control/shutdown`. Needs the clock (timeouts).
/// Returns false (after logging why) when there is no usable XenStore.
pub fn init_store() -> bool {
    if !arch::xen_events_up() {
        log::warn!("xenstore: no event channels, so no XenStore client");
        return false;
    }
    let params = arch::xen_hvm_param(param::STORE_PFN)
        .and_then(|pfn| Ok((pfn, arch::xen_hvm_param(param::STORE_EVTCHN)?)));
    let (pfn, port) = match params {
        Ok((pfn, port)) if pfn != 0 && port != 0 && port < u64::from(u32::MAX) => {
            (pfn, port as u32)
        }
        Ok((pfn, port)) => {
            log::warn!("xenstore: none offered (pfn {pfn:#x}, event channel {port})");
            return false;
        }
        Err(e) => {
            log::warn!("xenstore: cannot read its parameters: {e}");
            return false;
        }
    };
    let addr = map_ring(pfn);
    if let Err(e) = arch::xen_unmask(port) {
        log::warn!("xenstore: cannot unmask event channel {port}: {e}");
    }
    STORE_PORT.store(port, Ordering::Relaxed);
    *STORE.lock() = Some(Store {
        addr,
        port,
        req_id: 0,
        asm: Box::default(),
        buf: Box::new([0; xenstore::MESSAGE_MAX]),
    });
    let domid = store_read("domid");
    let name = store_read("name");
    match (&domid, &name) {
        (Ok(d), Ok(n)) => log::info!(
            "xenstore: connected (pfn {pfn:#x}, event channel {port}); domid {}, name \"{}\"",
            text(d),
            text(n)
        ),
        _ => {
            log::info!("xenstore: connected (pfn {pfn:#x}, event channel {port})");
            for (key, r) in [("domid", &domid), ("name", &name)] {
                if let Err(e) = r {
                    log::warn!("xenstore: cannot read `{key}`: {e}");
                }
            }
        }
    }
    match store_directory("device") {
        Ok(kinds) => {
            let vif = kinds.iter().any(|k| k == "vif");
            log::info!(
                "xenstore: device/ lists [{}]: {}",
                kinds.join(", "),
                if vif {
                    "a vif exists (netfront not built yet)"
                } else {
                    "no vif"
                }
            );
        }
        Err(StoreError::Xs(XsError::Daemon(c))) if c.name() == "ENOENT" => {
            log::info!("xenstore: device/ does not exist: no vif")
        }
        Err(e) => log::warn!("xenstore: cannot list device/: {e}"),
    }
    let watched = with_store(|s| {
        s.request(&Request::Watch {
            path: "control/shutdown",
            token: SHUTDOWN_TOKEN,
        })
        .map(|_| ())
    });
    match watched {
        Ok(()) => {
            log::info!("xenstore: watching control/shutdown (xl shutdown drains and powers off)");
            true
        }
        Err(e) => {
            log::warn!("xenstore: cannot watch control/shutdown: {e}");
            false
        }
    }
}

/// The main loop's part: the 2-level demux (after the upcall vector arrived), then whatever
/// the XenStore daemon sent unasked (watch events). Refusals are logged.
pub fn poll() {
    let store_port = STORE_PORT.load(Ordering::Relaxed);
    let mut store_event = false;
    arch::xen_take_events(|port| store_event |= port == store_port);
    if !store_event {
        return;
    }
    let mut store = STORE.lock();
    let Some(s) = store.as_mut() else { return };
    for _ in 0..64 {
        match s.receive(None) {
            Ok((0, Got::Nothing)) => break,
            Ok((_, Got::Nothing | Got::Watch)) => {}
            Ok((_, Got::Reply(Err(e)))) | Err(e) => {
                STORE_REFUSED.fetch_add(1, Ordering::Relaxed);
                log::warn!("xenstore: refused a message from the daemon: {e}");
                if matches!(e, XsError::Ring(_)) {
                    break;
                }
            }
            Ok((_, Got::Reply(Ok(_)))) => {}
        }
    }
}

/// Checks the `control/shutdown` watch: returns the request (`poweroff`, `reboot`, `halt`)
/// once, after acknowledging it by writing an empty value back (as Linux does). Other values
/// are logged and ignored.
pub fn shutdown_requested() -> Option<String> {
    if !SHUTDOWN_WATCH.swap(false, Ordering::AcqRel) {
        return None;
    }
    let v = match store_read("control/shutdown") {
        Ok(v) => v,
        Err(StoreError::Xs(XsError::Daemon(c))) if c.name() == "ENOENT" => return None,
        Err(e) => {
            log::warn!("xenstore: cannot read control/shutdown: {e}");
            return None;
        }
    };
    if v.is_empty() {
        return None;
    }
    let what = String::from(text(&v));
    if let Err(e) = store_write("control/shutdown", b"") {
        log::warn!("xenstore: cannot acknowledge control/shutdown: {e}");
    }
    match what.as_str() {
        "poweroff" | "halt" | "reboot" => {
            log::info!(
                "xen: {} console bytes dropped (ring full), {} malformed XenStore messages",
                console_dropped(),
                store_refused()
            );
            Some(what)
        }
        other => {
            log::warn!("xenstore: control/shutdown = \"{other}\" is not supported (poweroff, halt, reboot are); ignored");
            None
        }
    }
}

/// Incoming XenStore messages refused so far.
pub fn store_refused() -> u64 {
    STORE_REFUSED.load(Ordering::Relaxed)
}

/// Runs in `SCHEDOP_shutdown`'s path: the exit line on the ring, the code in `data/tuk-exit`.
/// Takes no lock a faulting path could hold (try_lock) and allocates nothing.
fn on_exit(code: u8, line: &[u8]) {
    console_write_emergency(line);
    let digits = [b'0' + code / 100, b'0' + code / 10 % 10, b'0' + code % 10];
    let first = digits.iter().take(2).take_while(|&&d| d == b'0').count();
    let Some(mut store) = STORE.try_lock() else {
        debug_line(format_args!(
            "tuk: data/tuk-exit not written (XenStore busy)"
        ));
        return;
    };
    let Some(s) = store.as_mut() else { return };
    match s.request(&Request::Write("data/tuk-exit", &digits[first..])) {
        Ok(_) => {}
        Err(e) => debug_line(format_args!("tuk: cannot write data/tuk-exit: {e}")),
    }
}
