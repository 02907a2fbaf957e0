//! Grant table v1 (`grant_table.h`): 8-byte entries `{u16 flags; u16 domid; u32 frame}`,
//! 512 per 4 KiB frame. The first [`NR_RESERVED_ENTRIES`] references belong to the toolstack
//! (the console and XenStore pages).
//!
//! Granting writes `domid` and `frame` first, then (after a release fence, so the other domain
//! never sees a valid flag with a stale frame) the flags. Ending access must find neither
//! `GTF_reading` nor `GTF_writing` (the backend still has the page mapped); the kernel clears
//! the flags with a compare-and-exchange on the 16-bit word at [`flags_offset`] that expects the
//! value [`GrantTable::flags`] read, as Linux does.

use crate::bytes::{put_u16, put_u32, u16_at, u32_at};

pub const ENTRY_SIZE: usize = 8;
pub const ENTRIES_PER_FRAME: u32 = (crate::PAGE_SIZE / ENTRY_SIZE) as u32;
pub const NR_RESERVED_ENTRIES: u32 = 8;
pub const GTF_INVALID: u16 = 0;
pub const GTF_PERMIT_ACCESS: u16 = 1;
pub const GTF_TYPE_MASK: u16 = 3;
pub const GTF_READONLY: u16 = 1 << 2;
pub const GTF_READING: u16 = 1 << 3;
pub const GTF_WRITING: u16 = 1 << 4;

/// Why a grant operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The reference is beyond the table the kernel mapped.
    OutOfRange { gref: u32, entries: u32 },
    /// One of the toolstack's reserved references.
    Reserved(u32),
    /// The other domain still maps the page: retry later, never reuse the page.
    InUse { gref: u32, flags: u16 },
}

impl core::fmt::Display for GrantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfRange { gref, entries } => {
                write!(
                    f,
                    "grant reference {gref} is beyond the table's {entries} entries"
                )
            }
            Self::Reserved(g) => write!(f, "grant reference {g} is reserved for the toolstack"),
            Self::InUse { gref, flags } => write!(
                f,
                "grant reference {gref} is still mapped by the backend (flags {flags:#x}); \
                 keep the page until the backend unmaps it"
            ),
        }
    }
}

/// Byte offset of `gref`'s flags in the table.
pub fn flags_offset(gref: u32) -> usize {
    gref as usize * ENTRY_SIZE
}

/// The grant table frames, mapped contiguously.
pub struct GrantTable<'a>(&'a mut [u8]);

impl<'a> GrantTable<'a> {
    pub fn new(frames: &'a mut [u8]) -> Self {
        Self(frames)
    }

    pub fn entries(&self) -> u32 {
        (self.0.len() / ENTRY_SIZE).min(u32::MAX as usize) as u32
    }

    fn check(&self, gref: u32) -> Result<usize, GrantError> {
        if gref < NR_RESERVED_ENTRIES {
            return Err(GrantError::Reserved(gref));
        }
        if gref >= self.entries() {
            return Err(GrantError::OutOfRange {
                gref,
                entries: self.entries(),
            });
        }
        Ok(flags_offset(gref))
    }

    /// Lets `domid` map guest frame `frame` through `gref`.
    pub fn grant_access(
        &mut self,
        gref: u32,
        domid: u16,
        frame: u32,
        readonly: bool,
    ) -> Result<(), GrantError> {
        let at = self.check(gref)?;
        put_u16(self.0, at + 2, domid);
        put_u32(self.0, at + 4, frame);
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        put_u16(self.0, at, flags);
        Ok(())
    }

    /// The entry's current flags.
    pub fn flags(&self, gref: u32) -> Result<u16, GrantError> {
        Ok(u16_at(self.0, self.check(gref)?))
    }

    /// `(domid, frame)` of the entry.
    pub fn target(&self, gref: u32) -> Result<(u16, u32), GrantError> {
        let at = self.check(gref)?;
        Ok((u16_at(self.0, at + 2), u32_at(self.0, at + 4)))
    }

    /// Checks that the backend no longer maps the entry; returns the flags the kernel's
    /// compare-and-exchange to 0 must expect.
    pub fn ready_to_end(&self, gref: u32) -> Result<u16, GrantError> {
        let flags = self.flags(gref)?;
        if flags & (GTF_READING | GTF_WRITING) != 0 {
            return Err(GrantError::InUse { gref, flags });
        }
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_and_end() {
        let mut frame = vec![0u8; crate::PAGE_SIZE];
        let mut t = GrantTable::new(&mut frame);
        assert_eq!(t.entries(), 512);
        t.grant_access(9, 0, 0x1234, false).unwrap();
        assert_eq!(t.flags(9), Ok(GTF_PERMIT_ACCESS));
        assert_eq!(t.target(9), Ok((0, 0x1234)));
        t.grant_access(10, 0, 0x99, true).unwrap();
        assert_eq!(t.flags(10), Ok(GTF_PERMIT_ACCESS | GTF_READONLY));
        assert_eq!(t.grant_access(3, 0, 1, false), Err(GrantError::Reserved(3)));
        assert_eq!(
            t.grant_access(512, 0, 1, false),
            Err(GrantError::OutOfRange {
                gref: 512,
                entries: 512
            })
        );
        // The backend maps it for writing: ending must wait.
        frame[flags_offset(9)] |= GTF_WRITING as u8;
        let t = GrantTable::new(&mut frame);
        assert!(matches!(
            t.ready_to_end(9),
            Err(GrantError::InUse { gref: 9, .. })
        ));
        assert_eq!(t.ready_to_end(10), Ok(GTF_PERMIT_ACCESS | GTF_READONLY));
    }
}
