# Shared by the scripts in this folder. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT

# System packages tuk needs (see docs/platform.md for why each one).
APT_PACKAGES=(qemu-system-x86 rustc-web cargo-web rust-web-src rust-web-clippy lld wrk curl docker-registry swtpm swtpm-tools tpm2-tools postgresql libsqlite3-dev libssl-dev pkg-config libxen-dev chromium debootstrap cpio)

log() { printf '==> %s\n' "$*" >&2; }

# Installs missing system packages (as root, or through sudo).
ensure_deps() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing system packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || { echo "error: no cargo in PATH: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
}

# Builds the host tools (release) and the kernel image; prints the kernel path.
build_all() {
  log "building the tuk CLI"
  cargo build --release --locked -p tuk --manifest-path "$ROOT/Cargo.toml" >&2
  log "building the host-kernel"
  "$ROOT/target/release/tuk" kernel build --source "$ROOT" >&2
}
