//! Device drivers. Each sits behind a small interface so the Xen front ends (console ring,
//! netfront) become new files here, not a rewrite: the console is [`serial::Console`], the NIC
//! is smoltcp's `phy::Device` (see `virtio_net`), the TPM is `tuk_tpm::Transport` (see `tpm_crb`).

pub mod serial;
pub mod tpm_crb;
pub mod virtio_net;
pub mod xen;
