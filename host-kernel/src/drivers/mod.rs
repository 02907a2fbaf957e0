//! Device drivers. Each sits behind a small interface so the Xen front ends (console ring,
//! netfront) become new files here, not a rewrite: the console is [`serial::Console`], the NIC
//! is smoltcp's `phy::Device` (see `virtio_net`).

pub mod serial;
pub mod virtio_net;
