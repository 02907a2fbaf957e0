//! The system calls an init process needs and std does not offer: mounting the kernel's
//! filesystems, loading kernel modules, configuring the network interface, the clocks,
//! random bytes, signals and powering the VM off. This is the only module with `unsafe`; every
//! block says why it is sound.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a string"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `mount(source, target, fstype, 0, NULL)`; an already mounted target is not an error.
pub fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    let (s, t, f) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    // SAFETY: all three are valid NUL-terminated strings that outlive the call; no mount data.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    match check(rc) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        r => r,
    }
}

/// Loads a kernel module from an open file (`finit_module`), with its parameters
/// (`key=value` separated by spaces). An already loaded module is not an error.
pub fn load_module(file: &File, params: &str) -> io::Result<()> {
    let params = cstr(params)?;
    // SAFETY: finit_module takes an open file descriptor (borrowed for the call), a
    // NUL-terminated parameter string and flags; it does not keep either pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// A socket for interface ioctls, closed on drop.
struct IoctlSocket(libc::c_int);

impl IoctlSocket {
    fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the descriptor is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(IoctlSocket(fd))
    }
}

impl Drop for IoctlSocket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: `ifreq` is plain old data (integers, arrays and a union of such); all zeroes is
    // a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` have the same size (16 bytes) and the kernel reads
    // the former through the latter, as every AF_INET ioctl caller does.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(sock: &IoctlSocket, request: libc::Ioctl, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: every caller passes a pointer to a live, initialised `ifreq` or `rtentry`, which
    // is what `request` expects; the kernel does not keep it.
    check(unsafe { libc::ioctl(sock.0, request, arg) })
}

/// Whether a network interface of that name exists.
pub fn interface_exists(name: &str) -> bool {
    let Ok(name) = cstr(name) else { return false };
    // SAFETY: a valid NUL-terminated string, only read.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// Sets the flag IFF_UP on an interface.
pub fn interface_up(name: &str) -> io::Result<()> {
    let sock = IoctlSocket::new()?;
    let mut req = ifreq(name)?;
    ioctl(&sock, libc::SIOCGIFFLAGS, (&raw mut req).cast())?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(&sock, libc::SIOCSIFFLAGS, (&raw mut req).cast())
}

/// Gives `name` the address `addr/prefix_len` and brings it up.
pub fn configure_interface(name: &str, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let sock = IoctlSocket::new()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&sock, libc::SIOCSIFADDR, (&raw mut req).cast())?;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    ioctl(&sock, libc::SIOCSIFNETMASK, (&raw mut req).cast())?;
    interface_up(name)
}

/// Adds the default route via `gateway`.
pub fn add_default_route(gateway: Ipv4Addr) -> io::Result<()> {
    let sock = IoctlSocket::new()?;
    // SAFETY: `rtentry` is plain old data plus nullable pointers; all zeroes is valid (no
    // device name: the kernel picks the interface that reaches the gateway).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    match ioctl(&sock, libc::SIOCADDRT, (&raw mut rt).cast()) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used here always exist.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Time since the kernel started counting (CLOCK_BOOTTIME: the clock of the kernel's log
/// timestamps, `dmesg`). It does not include firmware or the bootloader.
pub fn since_boot() -> Duration {
    clock(libc::CLOCK_BOOTTIME)
}

/// The CPU's time-stamp counter. Under QEMU it starts at zero when the VM starts (TCG: QEMU's
/// virtual tick count; KVM: the TSC offset of a fresh vCPU).
pub fn tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; user mode may execute it (Linux leaves CR4.TSD clear).
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Sets the wall clock (the guest may have no RTC, as on tuk's microvm).
pub fn set_wall_clock(since_epoch: Duration) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: since_epoch.as_secs() as libc::time_t,
        tv_nsec: since_epoch.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid timespec, only read.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
}

/// Fills `buf` from the kernel's CSPRNG (getrandom(2), blocking only until it is seeded).
pub fn random_bytes(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            done += n as usize;
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // getrandom cannot fail on a kernel >= 3.17 with a valid buffer; if it ever does,
            // refusing to hand out predictable bytes is the only safe answer.
            panic!("getrandom failed: {}", io::Error::last_os_error());
        }
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread (and every thread it spawns later), so
/// that [`wait_for_termination`] can take them synchronously.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset reads it; both only touch `set`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Waits until SIGTERM or SIGINT arrives (they must be blocked, see above); returns its number.
pub fn wait_for_termination() -> i32 {
    let set = termination_set();
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: `set` is initialised and `sig` writable; sigwait only writes `sig`.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            return sig;
        }
    }
}

/// QEMU's `isa-debug-exit` device (the same port as on tuk): the VM exits with status
/// `(value << 1) | 1`. Without the device the write is ignored.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Ends the VM: flushes filesystems, writes `code` to `isa-debug-exit` (QEMU exits with
/// `code * 2 + 1`: 33 for a clean shutdown, 3 for a failure, as tuk), and if that device is
/// absent powers off (QEMU exits with 0). Outside PID 1 it exits the process instead.
pub fn end_vm(code: u8) -> ! {
    if std::process::id() != 1 {
        std::process::exit(if code == 0x10 { 0 } else { 1 });
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: ioperm grants this process access to one I/O port; the `out` instruction then
    // writes one byte to QEMU's debug-exit device, which has no other effect than ending the
    // VM (or nothing, on a machine without it).
    unsafe {
        if libc::ioperm(DEBUG_EXIT_PORT.into(), 1, 1) == 0 {
            std::arch::asm!("out dx, al", in("dx") DEBUG_EXIT_PORT, in("al") code, options(nomem, nostack));
        }
    }
    // SAFETY: reboot(2) with RB_POWER_OFF as PID 1: the kernel powers the machine off.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    // Still alive: nothing else can be done; exiting PID 1 panics the kernel, which with
    // `panic=-1` and QEMU's `-no-reboot` also ends the VM.
    std::process::exit(1)
}
