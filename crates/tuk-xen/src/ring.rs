//! Shared rings (`io/ring.h`): the generic request/response front ring over one page, and the
//! byte rings of the XenStore and console interfaces.
//!
//! **Front ring.** The page starts with the 64-byte `sring` header (`req_prod`, `req_event`,
//! `rsp_prod`, `rsp_event`, padding), then `nr_ents` slots of `max(sizeof req, sizeof rsp)`
//! bytes, `nr_ents` the largest power of two that fits. The frontend owns `req_prod_pvt`
//! and `rsp_cons` (private), writes `req_prod` and `rsp_event`; the backend writes `rsp_prod`
//! and `req_event`. [`FrontRing::take_response`] refuses a `rsp_prod` that claims more
//! responses than requests outstanding (which also catches one more than the ring size ahead)
//! or that moved backwards from a value already seen: a backend doing that is broken or
//! hostile, and the driver disconnects it.
//!
//! **Byte rings.** A 1024- or 2048-byte array with free-running `u32` indices, masked by the
//! size. [`byte_ring_read`] and [`byte_ring_write`] refuse `prod - cons > size`.

use core::sync::atomic::{fence, Ordering};

use crate::bytes::{put_u32, u32_at};
use crate::RingIndexError;

/// `sizeof` the shared ring header.
pub const SRING_HEADER: usize = 64;
pub const REQ_PROD: usize = 0;
pub const REQ_EVENT: usize = 4;
pub const RSP_PROD: usize = 8;
pub const RSP_EVENT: usize = 12;

/// `__RING_SIZE`: the largest power of two of `entry_size`-byte slots after the header.
pub const fn ring_size(page_bytes: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || page_bytes <= SRING_HEADER {
        return 0;
    }
    let n = (page_bytes - SRING_HEADER) / entry_size;
    if n == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// Why a ring operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The page is too small for the header and one slot.
    PageTooSmall { len: usize },
    /// `rsp_prod - rsp_cons` exceeds the requests outstanding.
    ResponsesAhead {
        rsp_prod: u32,
        rsp_cons: u32,
        outstanding: u32,
    },
    /// `rsp_prod` is behind a value already seen.
    ResponsesBackwards { rsp_prod: u32, seen: u32 },
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::PageTooSmall { len } => write!(f, "a {len}-byte page cannot hold a shared ring"),
            Self::ResponsesAhead { rsp_prod, rsp_cons, outstanding } => write!(
                f,
                "the backend claims {} responses (rsp_prod {rsp_prod}, rsp_cons {rsp_cons}) with only \
                 {outstanding} requests outstanding; disconnect it",
                rsp_prod.wrapping_sub(*rsp_cons)
            ),
            Self::ResponsesBackwards { rsp_prod, seen } => write!(
                f,
                "the backend moved rsp_prod backwards from {seen} to {rsp_prod}; disconnect it"
            ),
        }
    }
}

/// The frontend's private state of one ring; the page is passed to each call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontRing {
    entry_size: usize,
    nr_ents: u32,
    req_prod_pvt: u32,
    rsp_cons: u32,
    rsp_prod_seen: u32,
}

/// What [`FrontRing::publish`] did: compare with the backend's `req_event` afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    old: u32,
    new: u32,
}

impl FrontRing {
    /// `SHARED_RING_INIT` + `FRONT_RING_INIT`: zeroes the header, sets both event indices to 1.
    pub fn init(page: &mut [u8], entry_size: usize) -> Result<Self, RingError> {
        let nr_ents = ring_size(page.len(), entry_size);
        if nr_ents == 0 {
            return Err(RingError::PageTooSmall { len: page.len() });
        }
        page[..SRING_HEADER].fill(0);
        put_u32(page, REQ_EVENT, 1);
        put_u32(page, RSP_EVENT, 1);
        Ok(Self {
            entry_size,
            nr_ents,
            req_prod_pvt: 0,
            rsp_cons: 0,
            rsp_prod_seen: 0,
        })
    }

    pub fn size(&self) -> u32 {
        self.nr_ents
    }

    /// Requests pushed (or being built) that have no response yet.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// `RING_FREE_REQUESTS`.
    pub fn free_requests(&self) -> u32 {
        self.nr_ents - self.outstanding()
    }

    fn slot(&self, idx: u32) -> core::ops::Range<usize> {
        let at = SRING_HEADER + (idx & (self.nr_ents - 1)) as usize * self.entry_size;
        at..at + self.entry_size
    }

    /// The next request slot (zeroed), or `None` if the ring is full. Not visible to the
    /// backend until [`publish`](Self::publish).
    pub fn next_request<'p>(&mut self, page: &'p mut [u8]) -> Option<&'p mut [u8]> {
        if self.free_requests() == 0 {
            return None;
        }
        let slot = self.slot(self.req_prod_pvt);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        let s = &mut page[slot];
        s.fill(0);
        Some(s)
    }

    /// `RING_PUSH_REQUESTS`: makes the built requests visible (write barrier first).
    pub fn publish(&self, page: &mut [u8]) -> Published {
        let old = u32_at(page, REQ_PROD);
        fence(Ordering::Release);
        put_u32(page, REQ_PROD, self.req_prod_pvt);
        Published {
            old,
            new: self.req_prod_pvt,
        }
    }

    /// `..._AND_CHECK_NOTIFY`'s second half: whether the backend asked to be notified for any
    /// of the requests just published (full barrier first).
    pub fn needs_notify(page: &[u8], p: Published) -> bool {
        fence(Ordering::SeqCst);
        let event = u32_at(page, REQ_EVENT);
        p.new.wrapping_sub(event) < p.new.wrapping_sub(p.old)
    }

    /// Responses available now, after validating `rsp_prod`.
    pub fn responses_available(&mut self, page: &[u8]) -> Result<u32, RingError> {
        let rsp_prod = u32_at(page, RSP_PROD);
        let avail = rsp_prod.wrapping_sub(self.rsp_cons);
        let seen = self.rsp_prod_seen.wrapping_sub(self.rsp_cons);
        let outstanding = self.outstanding();
        if avail > outstanding {
            return Err(RingError::ResponsesAhead {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                outstanding,
            });
        }
        if avail < seen {
            return Err(RingError::ResponsesBackwards {
                rsp_prod,
                seen: self.rsp_prod_seen,
            });
        }
        self.rsp_prod_seen = rsp_prod;
        fence(Ordering::Acquire);
        Ok(avail)
    }

    /// The next response's bytes (consumed), `None` if there is none.
    pub fn take_response<'p>(&mut self, page: &'p [u8]) -> Result<Option<&'p [u8]>, RingError> {
        if self.responses_available(page)? == 0 {
            return Ok(None);
        }
        let slot = self.slot(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(&page[slot]))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`'s first half: asks for an event at the next response.
    /// Check for responses again afterwards before sleeping.
    pub fn request_response_event(&self, page: &mut [u8]) {
        put_u32(page, RSP_EVENT, self.rsp_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
    }
}

fn checked(cons: u32, prod: u32, size: usize) -> Result<u32, RingIndexError> {
    let used = prod.wrapping_sub(cons);
    if used as usize > size {
        return Err(RingIndexError {
            cons,
            prod,
            size: size as u32,
        });
    }
    Ok(used)
}

/// Copies up to `out.len()` bytes from a byte ring whose indices are `cons` (ours) and `prod`
/// (the peer's); returns how many, by which the caller advances `cons`. `ring.len()` must be a
/// power of two.
pub fn byte_ring_read(
    ring: &[u8],
    cons: u32,
    prod: u32,
    out: &mut [u8],
) -> Result<usize, RingIndexError> {
    let avail = checked(cons, prod, ring.len())? as usize;
    fence(Ordering::Acquire);
    let n = avail.min(out.len());
    for (i, b) in out[..n].iter_mut().enumerate() {
        *b = ring[(cons.wrapping_add(i as u32) as usize) & (ring.len() - 1)];
    }
    Ok(n)
}

/// Copies as much of `data` as fits into a byte ring whose indices are `cons` (the peer's) and
/// `prod` (ours); returns how many bytes, by which the caller advances `prod` after a release
/// fence.
pub fn byte_ring_write(
    ring: &mut [u8],
    cons: u32,
    prod: u32,
    data: &[u8],
) -> Result<usize, RingIndexError> {
    let used = checked(cons, prod, ring.len())? as usize;
    let n = (ring.len() - used).min(data.len());
    let mask = ring.len() - 1;
    for (i, &b) in data[..n].iter().enumerate() {
        ring[(prod.wrapping_add(i as u32) as usize) & mask] = b;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_match_ring_h() {
        assert_eq!(ring_size(4096, 12), 256); // netif tx
        assert_eq!(ring_size(4096, 8), 256); // netif rx
        assert_eq!(ring_size(4096, 4096), 0);
        assert_eq!(ring_size(64, 8), 0);
    }

    #[test]
    fn requests_responses_and_notification() {
        let mut page = vec![0xaau8; 4096];
        let mut r = FrontRing::init(&mut page, 8).unwrap();
        assert_eq!((r.size(), r.free_requests()), (256, 256));
        for i in 0..3u8 {
            r.next_request(&mut page).unwrap()[0] = i;
        }
        let p = r.publish(&mut page);
        assert_eq!(u32_at(&page, REQ_PROD), 3);
        assert!(FrontRing::needs_notify(&page, p)); // req_event = 1 is within (0, 3]
                                                    // The backend answers two.
        page[SRING_HEADER] = 0x10;
        page[SRING_HEADER + 8] = 0x11;
        put_u32(&mut page, RSP_PROD, 2);
        assert_eq!(r.take_response(&page).unwrap().unwrap()[0], 0x10);
        assert_eq!(r.take_response(&page).unwrap().unwrap()[0], 0x11);
        assert_eq!(r.take_response(&page).unwrap(), None);
        assert_eq!(r.free_requests(), 255);
        put_u32(&mut page, REQ_EVENT, 10);
        let p = r.publish(&mut page);
        assert!(!FrontRing::needs_notify(&page, p));
    }

    #[test]
    fn a_lying_backend_is_refused() {
        let mut page = vec![0u8; 4096];
        let mut r = FrontRing::init(&mut page, 8).unwrap();
        r.next_request(&mut page).unwrap();
        r.next_request(&mut page).unwrap();
        r.publish(&mut page);
        // More responses than requests (and a ring size + 1 ahead).
        put_u32(&mut page, RSP_PROD, 3);
        assert!(matches!(
            r.take_response(&page),
            Err(RingError::ResponsesAhead { .. })
        ));
        put_u32(&mut page, RSP_PROD, 257);
        assert!(matches!(
            r.take_response(&page),
            Err(RingError::ResponsesAhead { .. })
        ));
        // Backwards from a value seen.
        put_u32(&mut page, RSP_PROD, 2);
        assert_eq!(r.responses_available(&page), Ok(2));
        r.take_response(&page).unwrap();
        put_u32(&mut page, RSP_PROD, 1);
        assert_eq!(
            r.take_response(&page),
            Err(RingError::ResponsesBackwards {
                rsp_prod: 1,
                seen: 2
            })
        );
        put_u32(&mut page, RSP_PROD, 0xffff_fff0);
        assert!(r.take_response(&page).is_err());
        put_u32(&mut page, RSP_PROD, 2);
        assert!(r.take_response(&page).unwrap().is_some());
    }

    #[test]
    fn byte_rings_wrap_and_refuse_impossible_indices() {
        let mut ring = [0u8; 16];
        let n = byte_ring_write(&mut ring, 10, 10, b"abcdefghij").unwrap();
        assert_eq!(n, 10);
        let mut out = [0u8; 32];
        let n = byte_ring_read(&ring, 10, 20, &mut out).unwrap();
        assert_eq!(&out[..n], b"abcdefghij");
        // Wrapping free-running indices.
        let n = byte_ring_write(&mut ring, u32::MAX - 1, u32::MAX - 1, b"xyz").unwrap();
        assert_eq!(n, 3);
        let n = byte_ring_read(&ring, u32::MAX - 1, 1, &mut out).unwrap();
        assert_eq!(&out[..n], b"xyz");
        // Full ring: nothing more fits.
        assert_eq!(byte_ring_write(&mut ring, 0, 16, b"a"), Ok(0));
        assert!(byte_ring_write(&mut ring, 0, 17, b"a").is_err());
        assert!(byte_ring_read(&ring, 5, 4, &mut out).is_err());
        assert!(byte_ring_read(&ring, 0, 17, &mut out).is_err());
    }
}
