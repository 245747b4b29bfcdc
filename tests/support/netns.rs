//! Network namespaces the tests create and delete (also when a test fails): one holding a tap for
//! a guest, or two joined by a veth pair as two "hosts". Tests only use addresses inside them.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Run `ip ARGS`; panics with its error output on failure.
pub fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A network namespace with its loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace named after `tag` and this process.
    pub fn new(tag: &str) -> Self {
        let name = format!("pv{tag}{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Add a persistent tap `tap` (with vnet headers, as plainvm opens it) whose host side has
    /// address `cidr`, `mtu`, and, when given, the MAC `mac`; it is up.
    pub fn add_tap(&self, tap: &str, cidr: &str, mtu: u32, mac: Option<&str>) {
        let n = self.name.as_str();
        ip(&[
            "-n", n, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr",
        ]);
        ip(&["-n", n, "addr", "add", cidr, "dev", tap]);
        if let Some(mac) = mac {
            ip(&["-n", n, "link", "set", tap, "address", mac]);
        }
        ip(&["-n", n, "link", "set", tap, "mtu", &mtu.to_string(), "up"]);
    }

    /// `program` run inside this namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Run `f` on a thread that has entered this namespace (a thread's namespace is its own).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f_ns = std::fs::File::open(&path).expect("open netns");
            // SAFETY: plain syscall on a valid namespace descriptor; it changes only this thread.
            let rc = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair, 10.231.0.1 in `a` and `b_addr` (10.231.0.2) in `b`.
pub struct NetnsPair {
    pub a: Netns,
    pub b: Netns,
    pub b_addr: String,
}

impl NetnsPair {
    /// Two fresh namespaces named after `tag`.
    pub fn new(tag: &str) -> Self {
        let (a, b) = (
            Netns::new(&format!("{tag}a")),
            Netns::new(&format!("{tag}b")),
        );
        // The veth ends are created inside the namespaces, so their names need not be unique.
        ip(&[
            "link", "add", "va", "netns", &a.name, "type", "veth", "peer", "name", "vb", "netns",
            &b.name,
        ]);
        ip(&["-n", &a.name, "addr", "add", "10.231.0.1/24", "dev", "va"]);
        ip(&["-n", &b.name, "addr", "add", "10.231.0.2/24", "dev", "vb"]);
        ip(&["-n", &a.name, "link", "set", "va", "up"]);
        ip(&["-n", &b.name, "link", "set", "vb", "up"]);
        Self {
            a,
            b,
            b_addr: "10.231.0.2".into(),
        }
    }
}
