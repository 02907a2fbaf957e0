//! XenStore: the wire format (`io/xs_wire.h`) and the shared ring page.
//!
//! A message is a 16-byte header `xsd_sockmsg { u32 type, req_id, tx_id, len }` and `len`
//! (at most [`PAYLOAD_MAX`]) payload bytes. Requests are encoded into a caller's buffer
//! ([`encode`]). Everything the daemon writes is untrusted: [`Assembler`] takes ring bytes in
//! any split and yields whole messages, refusing an oversized length or an unknown type;
//! [`parse_incoming`] splits watch events (`path\0token\0`) from replies; [`Reply::check`]
//! matches a reply to its request (type and `req_id`) and parses its payload per type; an
//! `XS_ERROR` reply (`"EINVAL\0"` ...) becomes [`XsError::Daemon`] with a typed [`ErrorCode`].
//!
//! The interface page (`xenstore_domain_interface`): `req[1024]` (guest produces),
//! `rsp[1024]` (guest consumes), then `req_cons, req_prod, rsp_cons, rsp_prod,
//! server_features, connection, error`.

use core::sync::atomic::{fence, Ordering};

use crate::bytes::{put_u32, u32_at};
use crate::ring::{byte_ring_read, byte_ring_write};
use crate::RingIndexError;

pub const HEADER_LEN: usize = 16;
pub const PAYLOAD_MAX: usize = 4096;
pub const MESSAGE_MAX: usize = HEADER_LEN + PAYLOAD_MAX;
pub const ABS_PATH_MAX: usize = 3072;
pub const RING_SIZE: usize = 1024;
pub const REQ: usize = 0;
pub const RSP: usize = RING_SIZE;
pub const REQ_CONS: usize = 2 * RING_SIZE;
pub const REQ_PROD: usize = REQ_CONS + 4;
pub const RSP_CONS: usize = REQ_PROD + 4;
pub const RSP_PROD: usize = RSP_CONS + 4;
pub const SERVER_FEATURES: usize = RSP_PROD + 4;
pub const CONNECTION: usize = SERVER_FEATURES + 4;
pub const ERROR: usize = CONNECTION + 4;
/// `sizeof(struct xenstore_domain_interface)`.
pub const INTERFACE_SIZE: usize = ERROR + 4;

/// `enum xsd_sockmsg_type` (the ones with a fixed meaning for a guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MsgType {
    pub fn from_u32(v: u32) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// The daemon's error strings (`xsd_errors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Einval,
    Eacces,
    Eexist,
    Eisdir,
    Enoent,
    Enomem,
    Enospc,
    Eio,
    Enotempty,
    Enosys,
    Erofs,
    Ebusy,
    Eagain,
    Eisconn,
    E2big,
    Eperm,
}

impl ErrorCode {
    pub const ALL: [(&'static str, ErrorCode); 16] = [
        ("EINVAL", Self::Einval),
        ("EACCES", Self::Eacces),
        ("EEXIST", Self::Eexist),
        ("EISDIR", Self::Eisdir),
        ("ENOENT", Self::Enoent),
        ("ENOMEM", Self::Enomem),
        ("ENOSPC", Self::Enospc),
        ("EIO", Self::Eio),
        ("ENOTEMPTY", Self::Enotempty),
        ("ENOSYS", Self::Enosys),
        ("EROFS", Self::Erofs),
        ("EBUSY", Self::Ebusy),
        ("EAGAIN", Self::Eagain),
        ("EISCONN", Self::Eisconn),
        ("E2BIG", Self::E2big),
        ("EPERM", Self::Eperm),
    ];

    pub fn from_name(name: &[u8]) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(n, _)| n.as_bytes() == name)
            .map(|&(_, c)| c)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("?", |(n, _)| n)
    }
}

/// Why a XenStore operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    /// The daemon answered `XS_ERROR` with this code.
    Daemon(ErrorCode),
    /// An `XS_ERROR` whose payload is not a known NUL-terminated error name.
    BadErrorReply,
    /// A header with `len` above [`PAYLOAD_MAX`].
    Oversized(u32),
    /// A header with a type this client does not know.
    UnknownType(u32),
    /// A reply of the wrong type for the request.
    WrongType { expected: u32, got: u32 },
    /// A reply to a request that is not the one outstanding.
    WrongReqId { expected: u32, got: u32 },
    /// A payload that is not what its type requires (missing NUL, bad number, not UTF-8...).
    Malformed(&'static str),
    /// A request that cannot be encoded (path with NUL, empty, too long, or buffer too small).
    BadRequest(&'static str),
    /// The ring's indices are impossible.
    Ring(RingIndexError),
}

impl core::fmt::Display for XsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Daemon(c) => write!(f, "xenstore: {}", c.name()),
            Self::BadErrorReply => write!(f, "xenstore: an error reply without a known error name"),
            Self::Oversized(n) => write!(
                f,
                "xenstore: a {n}-byte payload, more than {PAYLOAD_MAX}; the daemon is broken"
            ),
            Self::UnknownType(t) => write!(f, "xenstore: unknown message type {t}"),
            Self::WrongType { expected, got } => {
                write!(
                    f,
                    "xenstore: reply of type {got} to a request of type {expected}"
                )
            }
            Self::WrongReqId { expected, got } => {
                write!(f, "xenstore: reply for request {got}, expected {expected}")
            }
            Self::Malformed(what) => write!(f, "xenstore: malformed reply: {what}"),
            Self::BadRequest(what) => write!(f, "xenstore: cannot encode the request: {what}"),
            Self::Ring(e) => write!(f, "xenstore: {e}"),
        }
    }
}

/// `struct xsd_sockmsg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub msg_type: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    /// Checks the length and the type.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Self, XsError> {
        let h = Self {
            msg_type: u32_at(b, 0),
            req_id: u32_at(b, 4),
            tx_id: u32_at(b, 8),
            len: u32_at(b, 12),
        };
        if h.len as usize > PAYLOAD_MAX {
            return Err(XsError::Oversized(h.len));
        }
        if MsgType::from_u32(h.msg_type).is_none() {
            return Err(XsError::UnknownType(h.msg_type));
        }
        Ok(h)
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        put_u32(&mut b, 0, self.msg_type);
        put_u32(&mut b, 4, self.req_id);
        put_u32(&mut b, 8, self.tx_id);
        put_u32(&mut b, 12, self.len);
        b
    }
}

/// The requests a guest sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Read(&'a str),
    Write(&'a str, &'a [u8]),
    Directory(&'a str),
    Mkdir(&'a str),
    Rm(&'a str),
    Watch { path: &'a str, token: &'a str },
    Unwatch { path: &'a str, token: &'a str },
    TransactionStart,
    TransactionEnd { commit: bool },
}

impl Request<'_> {
    pub fn msg_type(&self) -> MsgType {
        match self {
            Self::Read(_) => MsgType::Read,
            Self::Write(..) => MsgType::Write,
            Self::Directory(_) => MsgType::Directory,
            Self::Mkdir(_) => MsgType::Mkdir,
            Self::Rm(_) => MsgType::Rm,
            Self::Watch { .. } => MsgType::Watch,
            Self::Unwatch { .. } => MsgType::Unwatch,
            Self::TransactionStart => MsgType::TransactionStart,
            Self::TransactionEnd { .. } => MsgType::TransactionEnd,
        }
    }
}

fn check_path(p: &str) -> Result<&[u8], XsError> {
    if p.is_empty() || p.len() > ABS_PATH_MAX || p.as_bytes().contains(&0) {
        return Err(XsError::BadRequest(
            "a path must be 1..=3072 bytes without NUL",
        ));
    }
    Ok(p.as_bytes())
}

/// Encodes `req` with `req_id` in transaction `tx_id` (0 = none) into `out`; returns the
/// message length.
pub fn encode(
    out: &mut [u8],
    req: &Request<'_>,
    req_id: u32,
    tx_id: u32,
) -> Result<usize, XsError> {
    let mut parts: [&[u8]; 4] = [&[]; 4];
    match *req {
        Request::Read(p) | Request::Directory(p) | Request::Mkdir(p) | Request::Rm(p) => {
            parts[0] = check_path(p)?;
            parts[1] = b"\0";
        }
        Request::Write(p, v) => {
            parts[0] = check_path(p)?;
            parts[1] = b"\0";
            parts[2] = v;
        }
        Request::Watch { path, token } | Request::Unwatch { path, token } => {
            parts[0] = check_path(path)?;
            parts[1] = b"\0";
            if token.as_bytes().contains(&0) {
                return Err(XsError::BadRequest("a watch token must not contain NUL"));
            }
            parts[2] = token.as_bytes();
            parts[3] = b"\0";
        }
        Request::TransactionStart => parts[0] = b"\0",
        Request::TransactionEnd { commit } => parts[0] = if commit { b"T\0" } else { b"F\0" },
    }
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > PAYLOAD_MAX {
        return Err(XsError::BadRequest("the payload is over 4096 bytes"));
    }
    if out.len() < HEADER_LEN + len {
        return Err(XsError::BadRequest("the output buffer is too small"));
    }
    let h = Header {
        msg_type: req.msg_type() as u32,
        req_id,
        tx_id,
        len: len as u32,
    };
    out[..HEADER_LEN].copy_from_slice(&h.encode());
    let mut at = HEADER_LEN;
    for p in parts {
        out[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    Ok(at)
}

/// A message from the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    WatchEvent { path: &'a str, token: &'a str },
    Reply(Header, &'a [u8]),
}

/// Splits `n` NUL-terminated strings, all of the payload.
fn strings<const N: usize>(mut p: &[u8]) -> Result<[&str; N], XsError> {
    let mut out = [""; N];
    for s in out.iter_mut() {
        let nul = p
            .iter()
            .position(|&b| b == 0)
            .ok_or(XsError::Malformed("a string is not NUL-terminated"))?;
        *s = core::str::from_utf8(&p[..nul])
            .map_err(|_| XsError::Malformed("a string is not UTF-8"))?;
        p = &p[nul + 1..];
    }
    if !p.is_empty() {
        return Err(XsError::Malformed("bytes after the last string"));
    }
    Ok(out)
}

/// Parses one whole message (`header` + payload, exactly).
pub fn parse_incoming(msg: &[u8]) -> Result<Incoming<'_>, XsError> {
    let head: &[u8; HEADER_LEN] = msg
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(XsError::Malformed("shorter than a header"))?;
    let h = Header::parse(head)?;
    let payload = &msg[HEADER_LEN..];
    if payload.len() != h.len as usize {
        return Err(XsError::Malformed(
            "the payload length differs from the header's",
        ));
    }
    if h.msg_type == MsgType::WatchEvent as u32 {
        let [path, token] = strings::<2>(payload)?;
        if path.is_empty() {
            return Err(XsError::Malformed("a watch event with an empty path"));
        }
        return Ok(Incoming::WatchEvent { path, token });
    }
    Ok(Incoming::Reply(h, payload))
}

/// A reply, parsed for the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `"OK\0"`: write, mkdir, rm, watch, unwatch, transaction end.
    Ok,
    /// The value read (arbitrary bytes, no terminator).
    Value(&'a [u8]),
    /// Directory entries: NUL-terminated names (iterate with [`Reply::entries`]).
    Entries(&'a [u8]),
    /// A transaction id (decimal, NUL-terminated, non-zero).
    Transaction(u32),
}

impl<'a> Reply<'a> {
    /// Matches a reply to the request `req` sent with `req_id`, and parses its payload.
    pub fn check(
        header: Header,
        payload: &'a [u8],
        req: &Request<'_>,
        req_id: u32,
    ) -> Result<Self, XsError> {
        if header.req_id != req_id {
            return Err(XsError::WrongReqId {
                expected: req_id,
                got: header.req_id,
            });
        }
        if header.msg_type == MsgType::Error as u32 {
            let name = payload.strip_suffix(b"\0").ok_or(XsError::BadErrorReply)?;
            return Err(ErrorCode::from_name(name).map_or(XsError::BadErrorReply, XsError::Daemon));
        }
        let expected = req.msg_type() as u32;
        if header.msg_type != expected {
            return Err(XsError::WrongType {
                expected,
                got: header.msg_type,
            });
        }
        match req {
            Request::Read(_) => Ok(Self::Value(payload)),
            Request::Directory(_) => {
                if !payload.is_empty() && payload.last() != Some(&0) {
                    return Err(XsError::Malformed(
                        "directory entries are not NUL-terminated",
                    ));
                }
                if core::str::from_utf8(payload).is_err() {
                    return Err(XsError::Malformed("directory entries are not UTF-8"));
                }
                Ok(Self::Entries(payload))
            }
            Request::TransactionStart => {
                let [id] = strings::<1>(payload)?;
                // Plain decimal only: `u32::from_str` would also take "+5" and "007".
                let plain = id.bytes().all(|b| b.is_ascii_digit()) && !id.starts_with('0');
                match id.parse::<u32>() {
                    Ok(id) if plain => Ok(Self::Transaction(id)),
                    _ => Err(XsError::Malformed(
                        "a transaction id is not a non-zero decimal",
                    )),
                }
            }
            _ => {
                if payload != b"OK\0" {
                    return Err(XsError::Malformed("expected \"OK\""));
                }
                Ok(Self::Ok)
            }
        }
    }

    /// The names of a directory reply (empty for other replies).
    pub fn entries(&self) -> impl Iterator<Item = &'a str> {
        let p: &'a [u8] = match self {
            Self::Entries(p) => p,
            _ => &[],
        };
        p.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| core::str::from_utf8(s).unwrap_or(""))
    }
}

/// Collects ring bytes, in any split, into whole messages; at most [`MESSAGE_MAX`] bytes.
pub struct Assembler {
    buf: [u8; MESSAGE_MAX],
    len: usize,
}

impl Default for Assembler {
    fn default() -> Self {
        Self {
            buf: [0; MESSAGE_MAX],
            len: 0,
        }
    }
}

impl Assembler {
    /// How many more bytes the current message needs (a header first, then its payload), or
    /// the header's error (the connection is then unusable: reset it).
    pub fn wanted(&self) -> Result<usize, XsError> {
        if self.len < HEADER_LEN {
            return Ok(HEADER_LEN - self.len);
        }
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&self.buf[..HEADER_LEN]);
        let h = Header::parse(&head)?;
        Ok(HEADER_LEN + h.len as usize - self.len)
    }

    /// Takes bytes up to the end of the current message; returns how many were used.
    pub fn push(&mut self, bytes: &[u8]) -> Result<usize, XsError> {
        let mut used = 0;
        while used < bytes.len() {
            let want = self.wanted()?;
            if want == 0 {
                break;
            }
            let n = want.min(bytes.len() - used);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[used..used + n]);
            self.len += n;
            used += n;
        }
        self.wanted()?;
        Ok(used)
    }

    /// The whole message, once complete; [`clear`](Self::clear) it after handling.
    pub fn message(&self) -> Option<&[u8]> {
        (self.len >= HEADER_LEN && self.wanted() == Ok(0)).then(|| &self.buf[..self.len])
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// The XenStore interface page.
pub struct Interface<'a>(&'a mut [u8]);

impl<'a> Interface<'a> {
    pub fn new_checked(page: &'a mut [u8]) -> Option<Self> {
        (page.len() >= INTERFACE_SIZE).then_some(Self(page))
    }

    /// Queues as much of a request as fits in `req`; returns the bytes taken. Notify the
    /// XenStore event channel afterwards.
    pub fn write_request(&mut self, data: &[u8]) -> Result<usize, XsError> {
        let cons = u32_at(self.0, REQ_CONS);
        let prod = u32_at(self.0, REQ_PROD);
        let n = byte_ring_write(&mut self.0[REQ..REQ + RING_SIZE], cons, prod, data)
            .map_err(XsError::Ring)?;
        fence(Ordering::Release);
        put_u32(self.0, REQ_PROD, prod.wrapping_add(n as u32));
        Ok(n)
    }

    /// Feeds available `rsp` bytes into `asm`, up to the end of its current message.
    pub fn read_into(&mut self, asm: &mut Assembler) -> Result<usize, XsError> {
        let cons = u32_at(self.0, RSP_CONS);
        let prod = u32_at(self.0, RSP_PROD);
        let mut tmp = [0u8; RING_SIZE];
        let want = asm.wanted()?.min(RING_SIZE);
        let n = byte_ring_read(&self.0[RSP..RSP + RING_SIZE], cons, prod, &mut tmp[..want])
            .map_err(XsError::Ring)?;
        let used = asm.push(&tmp[..n])?;
        fence(Ordering::SeqCst);
        put_u32(self.0, RSP_CONS, cons.wrapping_add(used as u32));
        Ok(used)
    }

    /// The daemon's `connection` field (0 = connected).
    pub fn connection(&self) -> u32 {
        u32_at(self.0, CONNECTION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Header {
            msg_type: ty,
            req_id,
            tx_id: 0,
            len: payload.len() as u32,
        }
        .encode()
        .to_vec();
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn requests_encode_as_libxenstore_does() {
        let mut out = [0u8; MESSAGE_MAX];
        let n = encode(&mut out, &Request::Write("data/tuk-exit", b"16"), 7, 3).unwrap();
        assert_eq!(&out[HEADER_LEN..n], b"data/tuk-exit\x0016");
        assert_eq!(
            Header::parse(out[..16].try_into().unwrap()).unwrap(),
            Header {
                msg_type: 11,
                req_id: 7,
                tx_id: 3,
                len: 16
            }
        );
        let n = encode(
            &mut out,
            &Request::Watch {
                path: "control/shutdown",
                token: "t1",
            },
            1,
            0,
        )
        .unwrap();
        assert_eq!(&out[HEADER_LEN..n], b"control/shutdown\0t1\0");
        let n = encode(&mut out, &Request::TransactionEnd { commit: true }, 1, 9).unwrap();
        assert_eq!(&out[HEADER_LEN..n], b"T\0");
        assert!(encode(&mut out, &Request::Read("a\0b"), 1, 0).is_err());
        assert!(encode(&mut out, &Request::Read(""), 1, 0).is_err());
        let big = [b'x'; 4096];
        assert!(encode(&mut out, &Request::Write("p", &big), 1, 0).is_err());
        assert!(encode(&mut out[..20], &Request::Read("device/vif"), 1, 0).is_err());
    }

    #[test]
    fn replies_are_matched_and_parsed() {
        let read = Request::Read("name");
        let m = msg(2, 5, b"tuk-1");
        let Incoming::Reply(h, p) = parse_incoming(&m).unwrap() else {
            panic!()
        };
        assert_eq!(Reply::check(h, p, &read, 5), Ok(Reply::Value(b"tuk-1")));
        assert_eq!(
            Reply::check(h, p, &read, 6),
            Err(XsError::WrongReqId {
                expected: 6,
                got: 5
            })
        );
        assert!(matches!(
            Reply::check(h, p, &Request::Rm("x"), 5),
            Err(XsError::WrongType { .. })
        ));
        let m = msg(16, 5, b"ENOENT\0");
        let Incoming::Reply(h, p) = parse_incoming(&m).unwrap() else {
            panic!()
        };
        assert_eq!(
            Reply::check(h, p, &read, 5),
            Err(XsError::Daemon(ErrorCode::Enoent))
        );
        let m = msg(16, 5, b"EWHAT\0");
        let Incoming::Reply(h, p) = parse_incoming(&m).unwrap() else {
            panic!()
        };
        assert_eq!(Reply::check(h, p, &read, 5), Err(XsError::BadErrorReply));
        let dir = Request::Directory("device");
        let m = msg(1, 1, b"vif\0vbd\0");
        let Incoming::Reply(h, p) = parse_incoming(&m).unwrap() else {
            panic!()
        };
        let r = Reply::check(h, p, &dir, 1).unwrap();
        assert_eq!(r.entries().collect::<Vec<_>>(), ["vif", "vbd"]);
        let m = msg(1, 1, b"vif\0vbd");
        let Incoming::Reply(h, p) = parse_incoming(&m).unwrap() else {
            panic!()
        };
        assert!(Reply::check(h, p, &dir, 1).is_err());
        let tx = Request::TransactionStart;
        for (payload, ok) in [
            (&b"42\0"[..], Some(42)),
            (b"0\0", None),
            (b"+4\0", None),
            (b"042\0", None),
            (b"42", None),
        ] {
            let m = msg(6, 2, payload);
            let Incoming::Reply(h, p) = parse_incoming(&m).unwrap() else {
                panic!()
            };
            assert_eq!(
                Reply::check(h, p, &tx, 2).ok(),
                ok.map(Reply::Transaction),
                "{payload:?}"
            );
        }
        let m = msg(11, 3, b"OK\0");
        let Incoming::Reply(h, p) = parse_incoming(&m).unwrap() else {
            panic!()
        };
        assert_eq!(
            Reply::check(h, p, &Request::Write("a", b"b"), 3),
            Ok(Reply::Ok)
        );
    }

    #[test]
    fn watch_events_need_two_terminated_strings() {
        let m = msg(15, 0, b"control/shutdown\0t1\0");
        assert_eq!(
            parse_incoming(&m),
            Ok(Incoming::WatchEvent {
                path: "control/shutdown",
                token: "t1"
            })
        );
        for bad in [
            &b"control/shutdown\0t1"[..],
            b"control/shutdown\0",
            b"\0t\0",
            b"a\0b\0c\0",
            b"\xff\0t\0",
        ] {
            assert!(parse_incoming(&msg(15, 0, bad)).is_err(), "{bad:?}");
        }
        let mut m = msg(15, 0, b"a\0b\0");
        m.push(0);
        assert!(parse_incoming(&m).is_err());
    }

    #[test]
    fn the_assembler_refuses_oversized_and_unknown_headers() {
        let mut a = Assembler::default();
        let m = msg(2, 1, b"value");
        // Byte by byte.
        for (i, b) in m.iter().enumerate() {
            assert!(a.message().is_none(), "{i}");
            assert_eq!(a.push(core::slice::from_ref(b)), Ok(1));
        }
        assert_eq!(a.message(), Some(&m[..]));
        // Further bytes wait for the next message.
        assert_eq!(a.push(b"xyz"), Ok(0));
        a.clear();
        let big = Header {
            msg_type: 2,
            req_id: 1,
            tx_id: 0,
            len: 4097,
        }
        .encode();
        assert_eq!(a.push(&big), Err(XsError::Oversized(4097)));
        a.clear();
        let unk = Header {
            msg_type: 99,
            req_id: 1,
            tx_id: 0,
            len: 0,
        }
        .encode();
        assert_eq!(a.push(&unk), Err(XsError::UnknownType(99)));
    }

    #[test]
    fn the_ring_carries_requests_and_replies() {
        let mut page = vec![0u8; 4096];
        let mut out = [0u8; MESSAGE_MAX];
        let n = encode(&mut out, &Request::Read("domid"), 1, 0).unwrap();
        let mut i = Interface::new_checked(&mut page).unwrap();
        assert_eq!(i.write_request(&out[..n]).unwrap(), n);
        assert_eq!(&page[REQ + HEADER_LEN..REQ + n], b"domid\0");
        assert_eq!(u32_at(&page, REQ_PROD), n as u32);
        // The daemon replies, wrapping around the end of rsp.
        let reply = msg(2, 1, b"3");
        let start = 1020u32;
        for (k, b) in reply.iter().enumerate() {
            page[RSP + ((start as usize + k) % RING_SIZE)] = *b;
        }
        put_u32(&mut page, RSP_CONS, start);
        put_u32(&mut page, RSP_PROD, start + reply.len() as u32);
        let mut i = Interface::new_checked(&mut page).unwrap();
        let mut asm = Assembler::default();
        while asm.message().is_none() {
            assert!(i.read_into(&mut asm).unwrap() > 0);
        }
        assert_eq!(asm.message(), Some(&reply[..]));
        // An impossible rsp_prod.
        put_u32(&mut page, RSP_PROD, start + 5000);
        let mut i = Interface::new_checked(&mut page).unwrap();
        asm.clear();
        assert!(matches!(i.read_into(&mut asm), Err(XsError::Ring(_))));
    }
}
