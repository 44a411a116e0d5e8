//! Hosts emulated with network namespaces: each [`Host`] is a namespace joined to the
//! root namespace by a veth pair (a /30 of its own), so a test can cut one host off
//! the network (`cut`) and put it back (`heal`) while everything on it keeps running.
//! Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2.
//!
//! Services that listen on the root namespace's loopback only (the local RabbitMQ) are
//! reached from a host through a [`Forward`] listening on the host's gateway address.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

/// A network namespace with one veth link to the root namespace.
pub struct Host {
    pub name: String,
    /// This host's address (inside its namespace).
    pub ip: String,
    /// The root namespace's end of the link.
    pub gateway: String,
    link: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2; see scripts/install-deps)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Host {
    pub fn create() -> Result<Host> {
        // A random /30 in 10.213.0.0/16, so parallel tests do not collide.
        let n: u16 = (std::process::id() as u16).wrapping_mul(31) ^ rand_u16();
        let (a, b) = ((n >> 6) & 0xff, (n & 0x3f) * 4);
        let suffix = format!("{:04x}", n);
        let name = format!("tandem-{suffix}");
        let link = format!("tdm{suffix}");
        let peer = format!("tdp{suffix}");
        let gateway = format!("10.213.{a}.{}", b + 1);
        let host_ip = format!("10.213.{a}.{}", b + 2);
        // Hosts reach each other through the root namespace, which must route between
        // their links (a replica on one host, its master on another).
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("enable IPv4 forwarding between test hosts")?;
        ip(&["netns", "add", &name])?;
        let host = Host {
            name: name.clone(),
            ip: host_ip.clone(),
            gateway: gateway.clone(),
            link: link.clone(),
        };
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &name])?;
        ip(&["addr", "add", &format!("{gateway}/30"), "dev", &link])?;
        ip(&["link", "set", &link, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{host_ip}/30"), "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        inside(&["route", "add", "default", "via", &gateway])?;
        Ok(host)
    }

    /// Cuts the host off: nothing crosses its link until [`Host::heal`]. Packets are
    /// dropped, not refused, as when a switch or a cable fails.
    pub fn cut(&self) -> Result<()> {
        ip(&["link", "set", &self.link, "down"])
    }

    /// The shell command that does what [`Host::cut`] does: for a fence script.
    pub fn cut_command(&self) -> String {
        format!("ip link set {} down", self.link)
    }

    pub fn heal(&self) -> Result<()> {
        ip(&["link", "set", &self.link, "up"])
    }

    /// Drops everything this host sends to `addr` (a blackhole route inside it), while
    /// the rest of its network keeps working: half of a partition between two hosts.
    pub fn unroute(&self, addr: &str) -> Result<()> {
        self.blackhole("add", addr)
    }

    /// Undoes [`Host::unroute`].
    pub fn reroute(&self, addr: &str) -> Result<()> {
        self.blackhole("del", addr)
    }

    fn blackhole(&self, verb: &str, addr: &str) -> Result<()> {
        let dest = format!("{addr}/32");
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "route",
            verb,
            "blackhole",
            &dest,
        ])
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it ours.
        let _ = ip(&["netns", "delete", &self.name]);
        let _ = ip(&["link", "delete", &self.link]);
    }
}

/// An address of the root namespace that isolated hosts reach through their links
/// (their default route) and that stays up whatever happens to any one link: services
/// of the root namespace that isolated hosts must reach listen here. Removed on drop.
pub struct RootAddress {
    pub ip: String,
}

impl RootAddress {
    pub fn create() -> Result<RootAddress> {
        let n = rand_u16();
        let ip = format!("10.214.{}.{}", (n >> 8) & 0xff, (n & 0xfe) | 1);
        self::ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        Ok(RootAddress { ip })
    }
}

impl Drop for RootAddress {
    fn drop(&mut self) {
        let _ = ip(&["addr", "delete", &format!("{}/32", self.ip), "dev", "lo"]);
    }
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos >> 4) as u16
}

/// Forwards TCP connections from `listen` to `to` (threads; stops accepting on drop).
pub struct Forward {
    pub listen: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Forward {
    pub fn start(listen: &str, to: &str) -> Result<Forward> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("forward: bind {listen}"))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let to = to.to_owned();
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(inbound) = conn else { continue };
                    let Ok(outbound) = TcpStream::connect(&to) else {
                        continue;
                    };
                    pipe(inbound, outbound);
                }
            });
        }
        Ok(Forward { listen: addr, stop })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.listen);
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => (a2, b2),
        _ => return,
    };
    std::thread::spawn(move || copy(a, b));
    std::thread::spawn(move || copy(b2, a2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
