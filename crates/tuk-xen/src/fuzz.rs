//! One entry point over every parser of bytes a backend or Xen writes, for the cargo-fuzz
//! target (`fuzz/`) and the deterministic property test below. It asserts the bounds each
//! parser promises; any panic is a bug.

use crate::ring::{byte_ring_read, byte_ring_write, FrontRing};
use crate::{console, netif, start_info, xenstore as xs};

/// Runs `data` through every parser; `data[0]` picks the split and parameters.
pub fn run(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    xenstore_stream(data, usize::from(mode % 17) + 1);
    start_info_region(data, u64::from(mode) << 4);
    front_ring(data, mode);
    byte_rings(data);
}

/// Ring bytes in chunks of `chunk` through the assembler; whole messages through the parsers
/// against each kind of request.
fn xenstore_stream(mut data: &[u8], chunk: usize) {
    let requests = [
        xs::Request::Read("name"),
        xs::Request::Write("data/tuk-exit", b"16"),
        xs::Request::Directory("device/vif"),
        xs::Request::Watch {
            path: "control/shutdown",
            token: "t",
        },
        xs::Request::TransactionStart,
        xs::Request::TransactionEnd { commit: true },
    ];
    let mut asm = xs::Assembler::default();
    let (mut rounds, max_rounds) = (0, 2 * data.len() + 1);
    while !data.is_empty() {
        rounds += 1;
        assert!(
            rounds <= max_rounds,
            "the assembler stopped making progress"
        );
        let n = chunk.min(data.len());
        match asm.push(&data[..n]) {
            Err(_) => {
                asm.clear();
                data = &data[n..];
                continue;
            }
            Ok(used) => {
                assert!(used <= n);
                data = &data[used..];
                if used == 0 && asm.message().is_none() {
                    panic!("the assembler took nothing yet has no message");
                }
            }
        }
        if let Some(msg) = asm.message() {
            assert!(msg.len() <= xs::MESSAGE_MAX);
            match xs::parse_incoming(msg) {
                Ok(xs::Incoming::WatchEvent { path, token }) => {
                    assert!(
                        !path.is_empty()
                            && path.len() + token.len() + 2 + xs::HEADER_LEN == msg.len()
                    );
                }
                Ok(xs::Incoming::Reply(h, payload)) => {
                    assert_eq!(payload.len(), h.len as usize);
                    for r in &requests {
                        if let Ok(reply) = xs::Reply::check(h, payload, r, h.req_id) {
                            for e in reply.entries() {
                                assert!(!e.contains('\0') && e.len() <= payload.len());
                            }
                            if let xs::Reply::Transaction(id) = reply {
                                assert_ne!(id, 0);
                            }
                        }
                    }
                }
                Err(_) => {}
            }
            asm.clear();
        }
    }
}

fn start_info_region(data: &[u8], base: u64) {
    if let Ok(r) = start_info::StartInfo::parse_region(data, base) {
        assert!(r.modules().count() as u32 == r.info.nr_modules);
        assert!(r.memmap().count() as u32 == r.info.memmap_entries);
        assert!(r.cmdline().len() < data.len() && !r.cmdline().contains(&0));
        for m in r.modules() {
            assert!(m.paddr.checked_add(m.size).is_some());
        }
    }
}

/// A netif rx ring whose backend writes `data` as indices and responses.
fn front_ring(data: &[u8], mode: u8) {
    let mut page = [0u8; crate::PAGE_SIZE];
    let Ok(mut ring) = FrontRing::init(&mut page, netif::RX_SLOT) else {
        unreachable!("a page holds a ring");
    };
    let posted = u32::from(mode) + 1;
    for id in 0..posted {
        let Some(slot) = ring.next_request(&mut page) else {
            break;
        };
        netif::RxRequest {
            id: id as u16,
            gref: 8 + id,
        }
        .write(slot);
    }
    ring.publish(&mut page);
    let body = &mut page[crate::ring::SRING_HEADER..];
    for (d, s) in body.iter_mut().zip(data.iter().skip(4)) {
        *d = *s;
    }
    let mut taken = 0u32;
    for round in 0..4 {
        let at = (round * 4) % data.len().max(1);
        let mut prod = [0u8; 4];
        for (k, b) in prod.iter_mut().enumerate() {
            *b = data.get(at + k).copied().unwrap_or(round as u8);
        }
        page[crate::ring::RSP_PROD..crate::ring::RSP_PROD + 4].copy_from_slice(&prod);
        while let Ok(Some(slot)) = ring.take_response(&page) {
            taken += 1;
            assert!(taken <= posted, "more responses than requests");
            if let Ok(r) = netif::RxResponse::parse(slot, |id| u32::from(id) < posted) {
                if let Ok(range) = r.packet() {
                    assert!(range.end <= crate::PAGE_SIZE);
                }
            }
            let _ = netif::TxResponse::parse(slot, |id| id < 4);
        }
    }
}

fn byte_rings(data: &[u8]) {
    if data.len() < 16 {
        return;
    }
    let word = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let mut page = [0u8; crate::PAGE_SIZE];
    let n = data.len().min(crate::PAGE_SIZE);
    page[..n].copy_from_slice(&data[..n]);
    page[console::IN_CONS..console::IN_CONS + 4].copy_from_slice(&word(0).to_le_bytes());
    page[console::IN_PROD..console::IN_PROD + 4].copy_from_slice(&word(4).to_le_bytes());
    page[console::OUT_CONS..console::OUT_CONS + 4].copy_from_slice(&word(8).to_le_bytes());
    page[console::OUT_PROD..console::OUT_PROD + 4].copy_from_slice(&word(12).to_le_bytes());
    let mut out = [0u8; 3000];
    if let Some(mut c) = console::Console::new_checked(&mut page) {
        if let Ok(k) = c.read(&mut out) {
            assert!(k <= console::IN_SIZE);
        }
        if let Ok(k) = c.write(data) {
            assert!(k <= console::OUT_SIZE);
        }
    }
    let mut ring = [0u8; 1024];
    if let Ok(k) = byte_ring_read(&ring, word(0), word(4), &mut out) {
        assert!(k <= 1024 && word(4).wrapping_sub(word(0)) as usize >= k);
    }
    if let Ok(k) = byte_ring_write(&mut ring, word(8), word(12), data) {
        assert!(k <= 1024 - word(12).wrapping_sub(word(8)) as usize);
    }
    let mut page = [0u8; crate::PAGE_SIZE];
    page[..n].copy_from_slice(&data[..n]);
    if let Some(mut i) = xs::Interface::new_checked(&mut page) {
        let mut asm = xs::Assembler::default();
        for _ in 0..8 {
            match i.read_into(&mut asm) {
                Ok(0) | Err(_) => break,
                Ok(k) => assert!(k <= xs::RING_SIZE),
            }
        }
        let _ = i.write_request(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn msg(ty: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = xs::Header {
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
    fn random_and_mutated_input_never_panics_and_stays_bounded() {
        let mut seeds: Vec<Vec<u8>> = vec![
            msg(2, 1, b"tuk-1"),
            msg(15, 0, b"control/shutdown\0t\0"),
            msg(16, 3, b"ENOENT\0"),
            msg(1, 2, b"0\0"),
            msg(6, 4, b"17\0"),
            msg(11, 5, b"OK\0"),
            crate::start_info::tests::sample(0),
        ];
        let mut rx = vec![0u8; 64];
        rx[..4].copy_from_slice(&3u32.to_le_bytes());
        rx[4..12].copy_from_slice(&[1, 0, 0, 0, 0, 0, 60, 0]);
        seeds.push(rx);
        let alphabet = b"\0\x01\x02\x0f\x10\xff/OKEINVAL0123456789";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..20_000 {
            let mut input = vec![rng.next() as u8];
            if case % 5 == 4 {
                input.extend((0..rng.below(700)).map(|_| rng.next() as u8));
            } else {
                for _ in 0..1 + rng.below(3) {
                    input.extend_from_slice(&seeds[rng.below(seeds.len())]);
                }
                for _ in 0..rng.below(8) {
                    let at = rng.below(input.len() + 1);
                    let byte = alphabet[rng.below(alphabet.len())];
                    match rng.below(4) {
                        0 => input.insert(at, byte),
                        1 if at < input.len() => drop(input.remove(at)),
                        2 if at < input.len() => input[at] = byte,
                        _ => input.truncate(at + rng.below(input.len() + 1 - at)),
                    }
                }
            }
            run(&input);
        }
    }

    #[test]
    fn honest_streams_come_out_whole() {
        // The same machinery on honest input yields the messages, in any split.
        let stream: Vec<u8> =
            [msg(2, 1, b"a"), msg(15, 0, b"p\0t\0"), msg(11, 2, b"OK\0")].concat();
        for chunk in 1..stream.len() {
            let mut asm = xs::Assembler::default();
            let mut rest = &stream[..];
            let mut got = 0;
            while !rest.is_empty() {
                let used = asm.push(&rest[..chunk.min(rest.len())]).unwrap();
                rest = &rest[used..];
                if let Some(m) = asm.message() {
                    assert!(xs::parse_incoming(m).is_ok());
                    got += 1;
                    asm.clear();
                }
            }
            assert_eq!(got, 3, "chunk {chunk}");
        }
    }
}
