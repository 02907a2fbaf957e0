//! Invariants derived from hand-written modules (the layouts `wasm-ld` produces). The real
//! example components are checked in tests/tests/integrity.rs, which builds them.

use tuk_invariants::{derive, Error, WASM_PAGE};

/// The layout of a Rust component's main module: stack first (1 MiB), then `.rodata`, then
/// `.data`, with a name section naming both segments and the stack pointer.
const RUST_LAYOUT: &str = r#"
(module
  (memory 17 32)
  (table 3 8 funcref)
  (global $__stack_pointer (mut i32) (i32.const 1048576))
  (data $.rodata (i32.const 1048576) "constant bytes")
  (data $.data (i32.const 1048600) "mutable"))
"#;

#[test]
fn rust_layout_gives_every_invariant() {
    let wasm = wat::parse_str(RUST_LAYOUT).unwrap();
    let inv = derive(&wasm).unwrap();
    let mem = inv.memory.as_ref().unwrap();
    assert_eq!(mem.min_bytes, 17 * WASM_PAGE);
    assert_eq!(mem.max_bytes, Some(32 * WASM_PAGE));
    assert_eq!(inv.tables.len(), 1);
    assert_eq!((inv.tables[0].min, inv.tables[0].max), (3, Some(8)));
    assert_eq!(inv.immutable.len(), 1, "only .rodata is immutable: {inv:?}");
    let ro = &inv.immutable[0];
    assert_eq!(
        (ro.name.as_str(), ro.offset, ro.len),
        (".rodata", 1_048_576, 14)
    );
    assert_eq!(ro.sha256, tuk_measure::sha256(b"constant bytes"));
    let stack = inv.stack.as_ref().unwrap();
    assert_eq!((stack.global, stack.initial, stack.low), (0, 1_048_576, 0));
    assert!(stack.contains(1000) && !stack.contains(1_048_577));
    assert!(inv.notes.is_empty(), "{:?}", inv.notes);
}

#[test]
fn memory_size_is_checked_against_declaration_and_limit() {
    let inv = derive(&wat::parse_str(RUST_LAYOUT).unwrap()).unwrap();
    assert!(inv.check_memory_size(17 * WASM_PAGE, 16 << 20).is_ok());
    assert!(inv
        .check_memory_size(16 * WASM_PAGE, 16 << 20)
        .unwrap_err()
        .contains("minimum"));
    assert!(inv
        .check_memory_size(33 * WASM_PAGE, 64 << 20)
        .unwrap_err()
        .contains("maximum"));
    assert!(inv
        .check_memory_size(20 * WASM_PAGE, 18 * WASM_PAGE)
        .unwrap_err()
        .contains("limit"));
}

#[test]
fn stripped_module_declares_no_ranges_and_says_why() {
    let wasm = wat::parse_str(
        r#"(module (memory 2) (global (mut i32) (i32.const 65536))
             (data (i32.const 70000) "x"))"#,
    )
    .unwrap();
    let inv = derive(&wasm).unwrap();
    assert!(inv.immutable.is_empty());
    assert!(inv.stack.is_none());
    assert!(
        inv.notes.iter().any(|n| n.contains("stripped")),
        "{:?}",
        inv.notes
    );
    assert_eq!(inv.memory.unwrap().max_bytes, None);
}

#[test]
fn rodata_beyond_initial_memory_is_malformed() {
    let wasm =
        wat::parse_str(r#"(module (memory 1) (data $.rodata (i32.const 65530) "0123456789"))"#)
            .unwrap();
    assert!(matches!(derive(&wasm), Err(Error::Malformed(_))));
}

#[test]
fn stack_overlapping_rodata_is_noted() {
    let wasm = wat::parse_str(
        r#"(module (memory 2)
             (global $__stack_pointer (mut i32) (i32.const 4096))
             (data $.data (i32.const 0) "data first")
             (data $.rodata (i32.const 4090) "straddles the stack top"))"#,
    )
    .unwrap();
    let inv = derive(&wasm).unwrap();
    assert!(
        inv.notes.iter().any(|n| n.contains("overlaps")),
        "{:?}",
        inv.notes
    );
}

#[test]
fn garbage_and_truncation_are_errors_not_panics() {
    assert!(derive(b"not wasm at all").is_err());
    let wasm = wat::parse_str(RUST_LAYOUT).unwrap();
    for cut in [9, wasm.len() / 2, wasm.len() - 1] {
        assert!(derive(&wasm[..cut]).is_err(), "cut at {cut}");
    }
}
