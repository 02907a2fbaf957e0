//! netif requests and responses (`io/netif.h`), for a single-queue netfront without
//! scatter-gather, GSO or extra-info slots: one packet per slot.
//!
//! Responses come from the backend: [`TxResponse::parse`] and [`RxResponse::parse`] check
//! them against what tuk asked for (an id it has outstanding, a packet inside the page) and
//! refuse the features tuk never negotiated.

use crate::bytes::{put_u16, put_u32, u16_at};
use crate::ring::ring_size;

pub const TX_REQUEST_SIZE: usize = 12;
pub const TX_RESPONSE_SIZE: usize = 4;
pub const RX_REQUEST_SIZE: usize = 8;
pub const RX_RESPONSE_SIZE: usize = 8;
/// Slot sizes of the two rings (`max(req, rsp)`).
pub const TX_SLOT: usize = 12;
pub const RX_SLOT: usize = 8;
/// Slots per one-page ring.
pub const TX_RING_SIZE: u32 = ring_size(crate::PAGE_SIZE, TX_SLOT);
pub const RX_RING_SIZE: u32 = ring_size(crate::PAGE_SIZE, RX_SLOT);

pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;
pub const NETIF_RSP_DROPPED: i16 = -2;
pub const NETIF_RSP_ERROR: i16 = -1;
pub const NETIF_RSP_OKAY: i16 = 0;
pub const NETIF_RSP_NULL: i16 = 1;

/// `struct netif_tx_request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxRequest {
    pub gref: u32,
    pub offset: u16,
    pub flags: u16,
    pub id: u16,
    pub size: u16,
}

impl TxRequest {
    pub fn write(&self, slot: &mut [u8]) {
        put_u32(slot, 0, self.gref);
        put_u16(slot, 4, self.offset);
        put_u16(slot, 6, self.flags);
        put_u16(slot, 8, self.id);
        put_u16(slot, 10, self.size);
    }
}

/// `struct netif_rx_request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxRequest {
    pub id: u16,
    pub gref: u32,
}

impl RxRequest {
    pub fn write(&self, slot: &mut [u8]) {
        put_u16(slot, 0, self.id);
        put_u16(slot, 2, 0);
        put_u32(slot, 4, self.gref);
    }
}

/// Why a response was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetifError {
    /// The slot is shorter than the response.
    Truncated,
    /// An id tuk has no request outstanding for.
    UnknownId(u16),
    /// A packet that does not fit in its page.
    OutsidePage { offset: u16, len: i16 },
    /// A flag tuk did not negotiate (scatter-gather, extra info, GSO).
    Unnegotiated(u16),
}

impl core::fmt::Display for NetifError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => write!(f, "netif response slot too short"),
            Self::UnknownId(id) => write!(f, "netif response for id {id}, which has no request outstanding"),
            Self::OutsidePage { offset, len } => {
                write!(f, "netif rx packet at offset {offset} length {len} is outside its page")
            }
            Self::Unnegotiated(flags) => write!(
                f,
                "netif rx flags {flags:#x} use features tuk did not negotiate (more_data/extra_info/gso)"
            ),
        }
    }
}

/// `struct netif_tx_response`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxResponse {
    pub id: u16,
    pub status: i16,
}

impl TxResponse {
    /// `outstanding(id)` says whether tuk has a request with this id in flight.
    pub fn parse(slot: &[u8], outstanding: impl Fn(u16) -> bool) -> Result<Self, NetifError> {
        if slot.len() < TX_RESPONSE_SIZE {
            return Err(NetifError::Truncated);
        }
        let id = u16_at(slot, 0);
        if !outstanding(id) {
            return Err(NetifError::UnknownId(id));
        }
        Ok(Self {
            id,
            status: u16_at(slot, 2) as i16,
        })
    }

    pub fn ok(&self) -> bool {
        self.status == NETIF_RSP_OKAY
    }
}

/// `struct netif_rx_response`: `status` is the length if positive, an error if negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxResponse {
    pub id: u16,
    pub offset: u16,
    pub flags: u16,
    pub status: i16,
}

impl RxResponse {
    pub fn parse(slot: &[u8], outstanding: impl Fn(u16) -> bool) -> Result<Self, NetifError> {
        if slot.len() < RX_RESPONSE_SIZE {
            return Err(NetifError::Truncated);
        }
        let r = Self {
            id: u16_at(slot, 0),
            offset: u16_at(slot, 2),
            flags: u16_at(slot, 4),
            status: u16_at(slot, 6) as i16,
        };
        if !outstanding(r.id) {
            return Err(NetifError::UnknownId(r.id));
        }
        if r.flags & (NETRXF_MORE_DATA | NETRXF_EXTRA_INFO | NETRXF_GSO_PREFIX) != 0 {
            return Err(NetifError::Unnegotiated(r.flags));
        }
        if r.status > 0 && usize::from(r.offset) + r.status as usize > crate::PAGE_SIZE {
            return Err(NetifError::OutsidePage {
                offset: r.offset,
                len: r.status,
            });
        }
        Ok(r)
    }

    /// The packet's byte range in its page, or `Err(status)` for an error or empty response.
    pub fn packet(&self) -> Result<core::ops::Range<usize>, i16> {
        if self.status <= 0 {
            return Err(self.status);
        }
        let start = usize::from(self.offset);
        Ok(start..start + self.status as usize)
    }

    /// The backend left the checksum to tuk (it must be computed or the packet dropped).
    pub fn csum_blank(&self) -> bool {
        self.flags & NETRXF_CSUM_BLANK != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rx(id: u16, offset: u16, flags: u16, status: i16) -> [u8; 8] {
        let mut b = [0u8; 8];
        put_u16(&mut b, 0, id);
        put_u16(&mut b, 2, offset);
        put_u16(&mut b, 4, flags);
        put_u16(&mut b, 6, status as u16);
        b
    }

    #[test]
    fn ring_sizes() {
        assert_eq!((TX_RING_SIZE, RX_RING_SIZE), (256, 256));
    }

    #[test]
    fn rx_responses_are_checked() {
        let mine = |id| id < 4;
        let r = RxResponse::parse(&rx(1, 0, NETRXF_DATA_VALIDATED, 60), mine).unwrap();
        assert_eq!(r.packet(), Ok(0..60));
        assert_eq!(
            RxResponse::parse(&rx(9, 0, 0, 60), mine),
            Err(NetifError::UnknownId(9))
        );
        assert!(matches!(
            RxResponse::parse(&rx(1, 4000, 0, 200), mine),
            Err(NetifError::OutsidePage { .. })
        ));
        assert!(matches!(
            RxResponse::parse(&rx(1, 0, NETRXF_MORE_DATA, 60), mine),
            Err(NetifError::Unnegotiated(_))
        ));
        let e = RxResponse::parse(&rx(2, 0, 0, NETIF_RSP_ERROR), mine).unwrap();
        assert_eq!(e.packet(), Err(-1));
        assert_eq!(
            RxResponse::parse(&rx(1, 0, 0, 1)[..7], mine),
            Err(NetifError::Truncated)
        );
        assert!(RxResponse::parse(&rx(1, 0, NETRXF_CSUM_BLANK, 60), mine)
            .unwrap()
            .csum_blank());
    }

    #[test]
    fn tx_requests_and_responses() {
        let mut slot = [0u8; TX_SLOT];
        TxRequest {
            gref: 0x0102_0304,
            offset: 0,
            flags: 0,
            id: 7,
            size: 1514,
        }
        .write(&mut slot);
        assert_eq!(&slot[8..12], &[7, 0, 0xea, 0x05]);
        let t = TxResponse::parse(&[7, 0, 0, 0], |id| id == 7).unwrap();
        assert!(t.ok());
        assert_eq!(
            TxResponse::parse(&[8, 0, 0, 0], |id| id == 7),
            Err(NetifError::UnknownId(8))
        );
    }
}
