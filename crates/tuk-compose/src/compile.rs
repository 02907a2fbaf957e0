//! Ahead-of-time compilation of a component for the host-kernel.
//!
//! The kernel's wasmtime has no compiler (no_std wasmtime only loads precompiled code), so
//! the host compiles with Cranelift, using [`tuk_engine::config`]: the very configuration the
//! kernel builds its engine from, so the two agree on target, CPU features, traps, memory
//! layout and epoch interruption. The output is only loadable by wasmtime 48.0.8 (pinned in
//! `tuk-engine`) with that configuration; the kernel checks both when it deserializes it.

use std::path::Path;

use crate::Artifact;

/// The target compiled code runs on (the host-kernel's).
pub const TARGET: &str = tuk_engine::TARGET;

/// What a file given to tuk is, judged by its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmKind {
    /// A component (what `tuk component build` writes): compile it.
    Component,
    /// A core module: it must become a component first.
    CoreModule,
    /// Code wasmtime already compiled (a `.cwasm`).
    Precompiled,
    /// Anything else.
    Unknown,
}

/// Tells what `bytes` are without parsing more than their header.
pub fn detect(bytes: &[u8]) -> WasmKind {
    if wasmparser::Parser::is_component(bytes) {
        WasmKind::Component
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        WasmKind::CoreModule
    } else if wasmtime::Engine::detect_precompiled(bytes).is_some() {
        WasmKind::Precompiled
    } else {
        WasmKind::Unknown
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("this is a core module; build a component with `tuk component build`")]
    CoreModule,
    #[error("this is already compiled code (a .cwasm); give `tuk compile` the component (.wasm)")]
    AlreadyCompiled,
    #[error("this is not a WebAssembly component (no `\\0asm` component header)")]
    NotWasm,
    #[error("cannot set up the compiler for {target}: {message}")]
    Engine {
        target: &'static str,
        message: String,
    },
    #[error("the component is invalid or uses a feature tuk's engine does not enable: {0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Compiles a component (binary) for the host-kernel; returns the serialized code.
///
/// The result is deterministic: the same component and tuk version give the same bytes.
pub fn compile(component: &[u8]) -> Result<Vec<u8>, CompileError> {
    match detect(component) {
        WasmKind::Component => {}
        WasmKind::CoreModule => return Err(CompileError::CoreModule),
        WasmKind::Precompiled => return Err(CompileError::AlreadyCompiled),
        WasmKind::Unknown => return Err(CompileError::NotWasm),
    }
    let engine =
        wasmtime::Engine::new(&tuk_engine::config()).map_err(|e| CompileError::Engine {
            target: tuk_engine::TARGET,
            message: format!("{e:#}"),
        })?;
    engine
        .precompile_component(component)
        .map_err(|e| CompileError::Invalid(format!("{e:#}")))
}

/// The fingerprint of the engine compiled code is for ([`tuk_engine::fingerprint`], the same
/// function the kernel calls): `tuk sign` puts it into the signed statement; the kernel
/// refuses code signed for another fingerprint before deserializing it.
pub fn engine_fingerprint() -> Result<String, CompileError> {
    Ok(tuk_engine::fingerprint())
}

/// Compiles the component at `input` into `output`.
pub fn compile_file(input: &Path, output: &Path) -> Result<Artifact, CompileError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CompileError::Io { path, source }
    };
    let component = std::fs::read(input).map_err(io(input))?;
    let compiled = compile(&component)?;
    crate::write_file(output, &compiled).map_err(io(output))?;
    Ok(Artifact::of(output, &compiled))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The smallest valid component and core module (their headers).
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn detects_kinds() {
        assert_eq!(detect(EMPTY_COMPONENT), WasmKind::Component);
        assert_eq!(detect(EMPTY_MODULE), WasmKind::CoreModule);
        assert_eq!(detect(b"\x7fELF garbage"), WasmKind::Unknown);
        assert_eq!(detect(b""), WasmKind::Unknown);
    }

    #[test]
    fn compiles_the_empty_component_deterministically() {
        let a = compile(EMPTY_COMPONENT).unwrap();
        assert!(!a.is_empty());
        assert_eq!(detect(&a), WasmKind::Precompiled);
        assert_eq!(a, compile(EMPTY_COMPONENT).unwrap());
        assert!(matches!(compile(&a), Err(CompileError::AlreadyCompiled)));
    }

    #[test]
    fn engine_fingerprint_is_stable_hex() {
        let a = engine_fingerprint().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(a, engine_fingerprint().unwrap());
    }

    #[test]
    fn refuses_core_modules_with_the_fix() {
        let err = compile(EMPTY_MODULE).unwrap_err();
        assert!(matches!(err, CompileError::CoreModule));
        assert_eq!(
            err.to_string(),
            "this is a core module; build a component with `tuk component build`"
        );
    }

    #[test]
    fn refuses_garbage_and_truncated_components() {
        assert!(matches!(
            compile(b"hello, world"),
            Err(CompileError::NotWasm)
        ));
        let mut truncated = EMPTY_COMPONENT.to_vec();
        truncated.extend_from_slice(&[0x07, 0x10]); // a section claiming 16 bytes, none there
        assert!(
            matches!(compile(&truncated), Err(CompileError::Invalid(_))),
            "{:?}",
            compile(&truncated)
        );
    }
}
