//! What a process holds, as the kernel sees it: its resident memory (`/proc/<pid>/status`)
//! and the TCP sockets on a port (`/proc/net/tcp`, `/proc/net/tcp6`). Linux only.

/// The resident memory of process `pid` in KiB (`VmRSS`). Panics if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {path}"))
}

/// One TCP socket of this host (network namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// Its local port.
    pub local_port: u16,
    /// Its peer's port.
    pub remote_port: u16,
    /// The kernel's state number (`01` established, `04` FIN-WAIT-1, `06` TIME-WAIT, `07`
    /// closed, `0A` listening, ...).
    pub state: u8,
    /// Bytes sent but not yet acknowledged by the peer (the send queue).
    pub tx_queue: u64,
    /// Bytes received but not yet read by the process (the receive queue).
    pub rx_queue: u64,
}

/// `/proc/net/tcp`'s state number of a listening socket.
pub const TCP_LISTEN: u8 = 0x0A;
/// ... of a socket in TIME-WAIT (it holds no buffers and belongs to no process).
pub const TCP_TIME_WAIT: u8 = 0x06;
/// ... of an established connection.
pub const TCP_ESTABLISHED: u8 = 0x01;

impl TcpSocket {
    /// True if the kernel still holds this socket with its buffers on the behalf of some
    /// process (or of one that closed it with data still to send): neither listening nor in
    /// TIME-WAIT.
    pub fn is_held(&self) -> bool {
        self.state != TCP_LISTEN && self.state != TCP_TIME_WAIT
    }
}

/// Every TCP socket of this host (IPv4 and IPv6).
pub fn tcp_sockets() -> Vec<TcpSocket> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        sockets.extend(text.lines().skip(1).filter_map(parse_line));
    }
    sockets
}

/// The sockets whose local port is `port`: a server's listener and accepted connections.
pub fn sockets_on(port: u16) -> Vec<TcpSocket> {
    tcp_sockets()
        .into_iter()
        .filter(|s| s.local_port == port)
        .collect()
}

fn parse_line(line: &str) -> Option<TcpSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    let (tx, rx) = fields.get(4)?.split_once(':')?;
    Some(TcpSocket {
        local_port: port(fields.get(1)?)?,
        remote_port: port(fields.get(2)?)?,
        state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
        tx_queue: u64::from_str_radix(tx, 16).ok()?,
        rx_queue: u64::from_str_radix(rx, 16).ok()?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_proc_net_tcp_line_is_parsed() {
        let line = "   3: 0100007F:0BB9 0100007F:C350 01 0001F000:00000010 01:00000014 00000000  \
                    0        0 123456 2 0000000000000000 20 4 30 10 -1";
        let socket = super::parse_line(line).unwrap();
        assert_eq!((socket.local_port, socket.remote_port), (3001, 50000));
        assert_eq!(socket.state, super::TCP_ESTABLISHED);
        assert_eq!((socket.tx_queue, socket.rx_queue), (0x1F000, 0x10));
        assert!(super::rss_kib(std::process::id()) > 0);
    }
}
