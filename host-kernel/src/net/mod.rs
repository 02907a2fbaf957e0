//! Networking: smoltcp's IPv4/TCP stack over the NIC, and the HTTP server on top.

pub mod server;
pub mod stats;

use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketSet};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::config::Config;
use crate::drivers::virtio_net::NetDevice;

/// The interface, its device and the socket set, polled together.
pub struct Stack {
    pub iface: Interface,
    pub device: NetDevice,
    pub sockets: SocketSet<'static>,
}

impl Stack {
    pub fn new(mut device: NetDevice, config: &Config, now_us: u64) -> Stack {
        let mac = EthernetAddress(device.mac());
        let mut iface_config = IfaceConfig::new(HardwareAddress::Ethernet(mac));
        // Seed for TCP initial sequence numbers; the TSC at boot is unpredictable enough for
        // a guest on a private network; the vTPM's RNG replaces it once the TPM driver exists.
        iface_config.random_seed = now_us ^ 0x7475_6b2d_6b65_726e;
        let mut iface = Interface::new(
            iface_config,
            &mut device,
            Instant::from_micros(now_us as i64),
        );
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(config.ip.into(), config.prefix_len));
        });
        if let Some(gw) = config.gateway {
            if let Err(e) = iface.routes_mut().add_default_ipv4_route(gw) {
                log::warn!("cannot add the default route via {gw}: {e}");
            }
        }
        Stack {
            iface,
            device,
            sockets: SocketSet::new(alloc::vec::Vec::new()),
        }
    }

    /// Processes received frames and transmits queued segments. True if socket state changed.
    pub fn poll(&mut self, now_us: u64) -> bool {
        let now = Instant::from_micros(now_us as i64);
        self.iface.poll(now, &mut self.device, &mut self.sockets) == PollResult::SocketStateChanged
    }

    /// Microseconds until smoltcp needs to be polled again (retransmits, delayed ACKs).
    pub fn poll_delay_us(&mut self, now_us: u64) -> Option<u64> {
        let now = Instant::from_micros(now_us as i64);
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d: Duration| d.total_micros())
    }
}
