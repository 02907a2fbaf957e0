//! The console ring (`io/console.h`): `xencons_interface { char in[1024]; char out[2048];
//! u32 in_cons, in_prod, out_cons, out_prod; }` in the page `HVM_PARAM_CONSOLE_PFN` names.
//! The guest produces `out` and consumes `in`; the console daemon does the opposite.

use core::sync::atomic::{fence, Ordering};

use crate::bytes::{put_u32, u32_at};
use crate::ring::{byte_ring_read, byte_ring_write};
use crate::RingIndexError;

pub const IN: usize = 0;
pub const IN_SIZE: usize = 1024;
pub const OUT: usize = IN + IN_SIZE;
pub const OUT_SIZE: usize = 2048;
pub const IN_CONS: usize = OUT + OUT_SIZE;
pub const IN_PROD: usize = IN_CONS + 4;
pub const OUT_CONS: usize = IN_PROD + 4;
pub const OUT_PROD: usize = OUT_CONS + 4;
/// `sizeof(struct xencons_interface)`.
pub const SIZE: usize = OUT_PROD + 4;

/// The console interface page.
pub struct Console<'a>(&'a mut [u8]);

impl<'a> Console<'a> {
    /// `None` if the slice is shorter than the interface.
    pub fn new_checked(page: &'a mut [u8]) -> Option<Self> {
        (page.len() >= SIZE).then_some(Self(page))
    }

    /// Queues as much of `data` as fits; returns how many bytes (0 when the daemon is behind:
    /// wait boundedly or drop, never spin forever). Notify the console event channel after.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, RingIndexError> {
        let cons = u32_at(self.0, OUT_CONS);
        let prod = u32_at(self.0, OUT_PROD);
        let n = byte_ring_write(&mut self.0[OUT..OUT + OUT_SIZE], cons, prod, data)?;
        fence(Ordering::Release);
        put_u32(self.0, OUT_PROD, prod.wrapping_add(n as u32));
        Ok(n)
    }

    /// Takes up to `out.len()` input bytes.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, RingIndexError> {
        let cons = u32_at(self.0, IN_CONS);
        let prod = u32_at(self.0, IN_PROD);
        let n = byte_ring_read(&self.0[IN..IN + IN_SIZE], cons, prod, out)?;
        fence(Ordering::SeqCst);
        put_u32(self.0, IN_CONS, cons.wrapping_add(n as u32));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_input_round_trip_and_bad_indices_are_refused() {
        let mut page = vec![0u8; 4096];
        let mut c = Console::new_checked(&mut page).unwrap();
        assert_eq!(c.write(b"hello\n").unwrap(), 6);
        assert_eq!(&page[OUT..OUT + 6], b"hello\n");
        assert_eq!(u32_at(&page, OUT_PROD), 6);
        page[IN..IN + 3].copy_from_slice(b"ls\n");
        put_u32(&mut page, IN_PROD, 3);
        let mut c = Console::new_checked(&mut page).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"ls\n");
        assert_eq!(u32_at(&page, IN_CONS), 3);
        // The daemon claims 2000 input bytes on a 1024-byte ring.
        put_u32(&mut page, IN_PROD, 2003);
        let mut c = Console::new_checked(&mut page).unwrap();
        assert!(c.read(&mut buf).is_err());
        // ... or moves out_cons past out_prod.
        put_u32(&mut page, OUT_CONS, 7);
        let mut c = Console::new_checked(&mut page).unwrap();
        assert!(c.write(b"x").is_err());
        assert!(Console::new_checked(&mut page[..SIZE - 1]).is_none());
    }
}
