//! Free ports for the servers autopilot starts itself: local services' processes, the demo's
//! listeners, and the Prometheus, registry and PostgreSQL servers of the tests and benchmarks.
//!
//! A port the kernel hands out for a bind to port 0 comes from the ephemeral range, the range
//! every outgoing connection takes its local port from too. Between choosing such a port and
//! the server's own bind, any connection on the machine can take it, and the server then
//! finds its port in use (seen in CI, with many clients connecting in parallel). Ports are
//! therefore picked below the ephemeral range, where only servers bind, and checked free by
//! a bind; where the machine leaves no room below it, the kernel chooses as before.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr, TcpListener};

/// How many ports under the ephemeral range are tried before asking the kernel.
const TRIES: usize = 64;

/// The lowest port of the band below the ephemeral range (above the registered ports most
/// services use by default).
const BAND_FLOOR: u16 = 10_000;

/// A port on `ip` that nothing listens on now, below the ephemeral range where the machine has
/// room for it.
pub fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    let band = band(ephemeral_low());
    if let Some((low, high)) = band {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let width = u64::from(high - low);
        for i in 0..TRIES as u64 {
            // a fixed odd stride from a random start visits distinct ports
            let port = low + ((seed.wrapping_add(i.wrapping_mul(7919))) % width) as u16;
            if TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind(SocketAddr::new(ip, 0))?.local_addr()?.port())
}

/// A free port on loopback (see [`free_port`]).
pub fn free_loopback() -> std::io::Result<SocketAddr> {
    let ip = IpAddr::from([127, 0, 0, 1]);
    Ok(SocketAddr::new(ip, free_port(ip)?))
}

/// The first port of the machine's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The ports `[low, high)` to pick from below an ephemeral range starting at `ephemeral`, if
/// there is room for a thousand.
fn band(ephemeral: u16) -> Option<(u16, u16)> {
    (ephemeral >= BAND_FLOOR + 1_000).then_some((BAND_FLOOR.max(ephemeral / 2), ephemeral))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_band_lies_below_the_ephemeral_range_or_is_none() {
        assert_eq!(band(32_768), Some((16_384, 32_768)));
        assert_eq!(band(49_152), Some((24_576, 49_152)));
        assert_eq!(band(15_000), Some((10_000, 15_000)));
        assert_eq!(band(10_500), None);
        assert_eq!(band(1_024), None);
    }

    #[test]
    fn a_free_port_is_below_the_ephemeral_range_and_free() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let port = free_port(ip).unwrap();
        if let Some((low, high)) = band(ephemeral_low()) {
            assert!((low..high).contains(&port), "{port} not in {low}..{high}");
        }
        TcpListener::bind(SocketAddr::new(ip, port)).expect("the port is free");
    }

    #[test]
    fn a_port_in_use_is_never_returned() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        // hold many ports of the band; none of them comes back
        let held: Vec<TcpListener> = (0..200)
            .filter_map(|_| TcpListener::bind(SocketAddr::new(ip, free_port(ip).ok()?)).ok())
            .collect();
        let taken: std::collections::BTreeSet<u16> =
            held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(taken.len(), held.len(), "a port was handed out twice while held");
        for _ in 0..200 {
            let port = free_port(ip).unwrap();
            assert!(!taken.contains(&port), "{port} is held");
        }
    }
}
