//! The run-time invariants of a WebAssembly component, derived from its bytes — the `.wasm`
//! inside a signed bundle — and never learned from a running instance.
//!
//! What a running instance must keep true, and where each value comes from:
//! - **linear memory**: the one memory the component defines (its main core module's) starts
//!   at its declared minimum and never exceeds its declared maximum (nor the signed
//!   `memory_bytes` limit, which the host-kernel adds);
//! - **tables**: each defined table stays within its declared maximum;
//! - **immutable data**: every active data segment the linker named `.rodata…` (from the
//!   module's `name` section) keeps the exact bytes it was initialised with, at the offset its
//!   constant offset expression gives; its SHA-256 is taken here from the signed bytes;
//! - **stack region**: the `__stack_pointer` global's initial value and the region the stack
//!   grows in (`[0, initial]` for `wasm-ld --stack-first`, which Rust uses), so that no
//!   immutable range lies inside it.
//!
//! A component built without a `name` section (stripped) declares no immutable ranges and no
//! stack global: the result says so in [`Invariants::notes`] instead of guessing. Components
//! with more than one defined memory get table invariants only (which memory is which at run
//! time would be a guess).
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use wasmparser::{
    DataKind, Encoding, KnownCustom, Name, Operator, Parser, Payload, TypeRef, ValType,
};

/// Bytes in a Wasm page (the default page size; custom page sizes are refused).
pub const WASM_PAGE: u64 = 65_536;
/// The data segment name prefix `wasm-ld` gives read-only data.
pub const RODATA_PREFIX: &str = ".rodata";
/// The global `wasm-ld` names for the shadow stack pointer.
pub const STACK_POINTER: &str = "__stack_pointer";

/// The declared bounds of the component's linear memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryDecl {
    pub min_bytes: u64,
    /// `None`: no declared maximum (the host's limit is then the only bound).
    pub max_bytes: Option<u64>,
}

/// A table defined by one of the component's core modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDecl {
    /// Position of the core module in the component (0-based, in binary order).
    pub module: u32,
    /// Index in that module's table index space.
    pub index: u32,
    pub min: u64,
    pub max: Option<u64>,
}

/// A range of linear memory that must keep its initial bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRange {
    /// The data segment's name (e.g. `.rodata`).
    pub name: String,
    pub offset: u64,
    pub len: u64,
    /// SHA-256 of the segment's bytes as signed.
    pub sha256: [u8; 32],
}

/// Where the shadow stack lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackRegion {
    /// The stack pointer global's index in the main module.
    pub global: u32,
    /// Its initial value: the top of the stack (it grows down).
    pub initial: u64,
    /// The lowest address the stack may reach.
    pub low: u64,
}

impl StackRegion {
    /// Whether a stack pointer value lies in the region.
    pub fn contains(&self, sp: u64) -> bool {
        (self.low..=self.initial).contains(&sp)
    }
}

/// Everything [`derive`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invariants {
    pub memory: Option<MemoryDecl>,
    pub tables: Vec<TableDecl>,
    pub immutable: Vec<DataRange>,
    pub stack: Option<StackRegion>,
    /// Why an invariant is absent (e.g. a stripped component), for reports.
    pub notes: Vec<String>,
}

impl Invariants {
    /// Checks a memory size observed at run time against the declaration and `limit` (the
    /// host's signed limit). Returns what is wrong, if anything.
    pub fn check_memory_size(&self, bytes: u64, limit: u64) -> Result<(), String> {
        if bytes > limit {
            return Err(format!(
                "linear memory is {bytes} bytes, above the {limit}-byte limit"
            ));
        }
        if let Some(m) = &self.memory {
            if bytes < m.min_bytes {
                return Err(format!(
                    "linear memory is {bytes} bytes, below its declared minimum {}",
                    m.min_bytes
                ));
            }
            if let Some(max) = m.max_bytes.filter(|max| bytes > *max) {
                return Err(format!(
                    "linear memory is {bytes} bytes, above its declared maximum {max}"
                ));
            }
        }
        Ok(())
    }
}

/// Why invariants could not be derived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The bytes are not a well-formed component or module.
    Malformed(String),
    /// A feature tuk does not derive invariants for (e.g. memory64, custom page sizes).
    Unsupported(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(e) => write!(f, "malformed WebAssembly: {e}"),
            Error::Unsupported(e) => write!(f, "unsupported WebAssembly: {e}"),
        }
    }
}

impl From<wasmparser::BinaryReaderError> for Error {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        Error::Malformed(e.to_string())
    }
}

/// What one core module declares.
#[derive(Default)]
struct ModuleFacts {
    imported_memories: u32,
    defined_memories: Vec<MemoryDecl>,
    imported_tables: u32,
    tables: Vec<(u64, Option<u64>)>,
    imported_globals: u32,
    /// Defined mutable i32/i64 globals with a constant initial value: (index, value).
    const_globals: Vec<(u32, u64)>,
    /// Active segments into memory 0 with a constant offset: (segment index, offset, bytes).
    segments: Vec<(u32, u64, [u8; 32], u64)>,
    data_names: Vec<(u32, String)>,
    global_names: Vec<(u32, String)>,
}

/// Derives the invariants of a component (or a core module) from its bytes.
pub fn derive(wasm: &[u8]) -> Result<Invariants, Error> {
    let mut modules = Vec::new();
    collect_modules(wasm, &mut modules)?;
    let mut inv = Invariants::default();
    for (m, facts) in modules.iter().enumerate() {
        let module = u32::try_from(m).unwrap_or(u32::MAX);
        for (i, (min, max)) in facts.tables.iter().enumerate() {
            inv.tables.push(TableDecl {
                module,
                index: facts.imported_tables + u32::try_from(i).unwrap_or(u32::MAX),
                min: *min,
                max: *max,
            });
        }
    }
    let with_memory: Vec<&ModuleFacts> = modules
        .iter()
        .filter(|m| !m.defined_memories.is_empty())
        .collect();
    let main = match with_memory.as_slice() {
        [] => {
            inv.notes
                .push("no core module defines a linear memory".into());
            return Ok(inv);
        }
        [one] if one.defined_memories.len() == 1 && one.imported_memories == 0 => *one,
        _ => {
            inv.notes.push(format!(
                "{} core modules define linear memories: memory invariants need exactly one",
                with_memory.len()
            ));
            return Ok(inv);
        }
    };
    let memory = main.defined_memories[0].clone();
    if main.data_names.is_empty() {
        inv.notes.push(
            "the component has no data segment names (stripped): no immutable ranges; build \
             with `strip = \"debuginfo\"` to keep the name section"
                .into(),
        );
    }
    for (index, offset, sha256, len) in &main.segments {
        let Some(name) = main
            .data_names
            .iter()
            .find(|(i, _)| i == index)
            .map(|(_, n)| n)
        else {
            continue;
        };
        if !name.starts_with(RODATA_PREFIX) || *len == 0 {
            continue;
        }
        if offset.saturating_add(*len) > memory.min_bytes {
            return Err(Error::Malformed(format!(
                "data segment {name} ends at {} beyond the initial memory ({} bytes)",
                offset.saturating_add(*len),
                memory.min_bytes
            )));
        }
        inv.immutable.push(DataRange {
            name: name.clone(),
            offset: *offset,
            len: *len,
            sha256: *sha256,
        });
    }
    let sp = main
        .global_names
        .iter()
        .find(|(_, n)| n == STACK_POINTER)
        .map(|(i, _)| *i);
    match sp.and_then(|g| {
        main.const_globals
            .iter()
            .find(|(i, _)| Some(*i) == sp)
            .map(|(_, v)| (g, *v))
    }) {
        Some((global, initial)) => {
            let data_start = main.segments.iter().map(|s| s.1).min().unwrap_or(u64::MAX);
            let low = if initial <= data_start {
                0 // --stack-first: the stack sits below all data
            } else {
                main.segments
                    .iter()
                    .map(|s| s.1.saturating_add(s.3))
                    .filter(|end| *end <= initial)
                    .max()
                    .unwrap_or(0)
            };
            let region = StackRegion {
                global,
                initial,
                low,
            };
            if let Some(r) = inv
                .immutable
                .iter()
                .find(|r| r.offset < region.initial && r.offset + r.len > region.low)
            {
                inv.notes.push(format!(
                    "the stack region [{}, {}] overlaps immutable data {} at {}: a deep stack \
                     would overwrite it",
                    region.low, region.initial, r.name, r.offset
                ));
            }
            inv.stack = Some(region);
        }
        None => inv
            .notes
            .push("no `__stack_pointer` global with a constant initial value".into()),
    }
    inv.memory = Some(memory);
    Ok(inv)
}

/// Walks a component (with its nested modules and components) or a core module, and collects
/// each core module's facts in binary order.
fn collect_modules(wasm: &[u8], out: &mut Vec<ModuleFacts>) -> Result<(), Error> {
    // One entry per module or component being parsed (`parse_all` yields nested payloads
    // in place, between the nested `Version` and its `End`).
    let mut stack: Vec<(bool, ModuleFacts)> = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Payload::Version { encoding, .. } = payload {
            stack.push((encoding == Encoding::Module, ModuleFacts::default()));
            continue;
        }
        let Some((is_module, facts)) = stack.last_mut() else {
            return Err(Error::Malformed("a section before the header".into()));
        };
        match payload {
            Payload::End(_) => {
                let (is_module, facts) = stack.pop().unwrap_or_default();
                if is_module {
                    out.push(facts);
                }
            }
            _ if !*is_module => {}
            Payload::ImportSection(reader) => {
                for imports in reader {
                    for import in imports?.into_iter() {
                        let (_, import) = import?;
                        match import.ty {
                            TypeRef::Memory(_) => facts.imported_memories += 1,
                            TypeRef::Table(_) => facts.imported_tables += 1,
                            TypeRef::Global(_) => facts.imported_globals += 1,
                            _ => {}
                        }
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for mem in reader {
                    let mem = mem?;
                    if mem.memory64 || mem.page_size_log2.is_some() {
                        return Err(Error::Unsupported(
                            "memory64 and custom page sizes are not supported".into(),
                        ));
                    }
                    facts.defined_memories.push(MemoryDecl {
                        min_bytes: mem.initial.saturating_mul(WASM_PAGE),
                        max_bytes: mem.maximum.map(|m| m.saturating_mul(WASM_PAGE)),
                    });
                }
            }
            Payload::TableSection(reader) => {
                for table in reader {
                    let table = table?;
                    facts.tables.push((table.ty.initial, table.ty.maximum));
                }
            }
            Payload::GlobalSection(reader) => {
                for (i, global) in reader.into_iter().enumerate() {
                    let global = global?;
                    let index = facts.imported_globals + u32::try_from(i).unwrap_or(u32::MAX);
                    if !global.ty.mutable
                        || !matches!(global.ty.content_type, ValType::I32 | ValType::I64)
                    {
                        continue;
                    }
                    if let Some(v) = const_value(&global.init_expr)? {
                        facts.const_globals.push((index, v));
                    }
                }
            }
            Payload::DataSection(reader) => {
                for (i, segment) in reader.into_iter().enumerate() {
                    let segment = segment?;
                    let DataKind::Active {
                        memory_index: 0,
                        offset_expr,
                    } = segment.kind
                    else {
                        continue;
                    };
                    if let Some(offset) = const_value(&offset_expr)? {
                        facts.segments.push((
                            u32::try_from(i).unwrap_or(u32::MAX),
                            offset,
                            tuk_measure::sha256(segment.data),
                            segment.data.len() as u64,
                        ));
                    }
                }
            }
            Payload::CustomSection(section) => {
                if let KnownCustom::Name(names) = section.as_known() {
                    for name in names {
                        // A malformed name section only loses names, never the module.
                        let Ok(name) = name else { break };
                        let (target, map) = match name {
                            Name::Data(map) => (&mut facts.data_names, map),
                            Name::Global(map) => (&mut facts.global_names, map),
                            _ => continue,
                        };
                        for naming in map.into_iter().flatten() {
                            target.push((naming.index, naming.name.to_string()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(Error::Malformed("truncated".into()));
    }
    Ok(())
}

/// The value of a constant expression that is a single `i32.const`/`i64.const` (`None` for
/// anything else, e.g. `global.get` of an import).
fn const_value(expr: &wasmparser::ConstExpr<'_>) -> Result<Option<u64>, Error> {
    let mut ops = expr.get_operators_reader();
    let value = match ops.read()? {
        // Addresses are unsigned: an i32 offset is its bit pattern.
        Operator::I32Const { value } => u64::from(value as u32),
        Operator::I64Const { value } => value as u64,
        _ => return Ok(None),
    };
    Ok(match ops.read()? {
        Operator::End => Some(value),
        _ => None,
    })
}
