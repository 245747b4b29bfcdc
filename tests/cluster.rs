//! plainvm under a real Pacemaker + Corosync cluster: two nodes on this machine, each in its own
//! mount, UTS, IPC, network and PID namespaces (integrations/pacemaker/ns-cluster.sh), VMs managed
//! by the OCF resource agent (integrations/pacemaker/plainvm), and the cluster driven with its own
//! tools (crm, crm_resource, crm_failcount), never with plainvm. The witnesses are the guests'
//! own: the test guest's memwrite and blk-loop workloads (pass numbers continue, every page and
//! disk chunk checked, the GENERATION register counts migrations and restores) and a Linux guest
//! with its root disk on storage both nodes see (its TICK counter continues, no second boot).
//!
//! Needs root, the Debian packages pacemaker, corosync, crmsh, resource-agents and
//! openssh-server (.ci/run installs them), and the Linux guest artifacts.

use plainvm_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const NODES: [&str; 2] = ["node-a", "node-b"];
const AGENT: &str = "/usr/lib/ocf/resource.d/plainvm/plainvm";
/// The PATH Pacemaker's daemons have in the nodes (and so the agent).
const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script() -> PathBuf {
    repo().join("integrations/pacemaker/ns-cluster.sh")
}

/// A cluster of two namespace nodes; every node (and so every VM in it), the switch namespace
/// and the node directories are removed on drop, also when the test fails.
struct Cluster {
    base: PathBuf,
    /// The `unshare` process of each running node (killed with the node, reaped here).
    nodes: Vec<(String, Child)>,
}

impl Cluster {
    fn up() -> Self {
        let o = run_with_timeout(
            Command::new("sh").arg(repo().join("integrations/pacemaker/install.sh")),
            T,
        );
        assert_eq!(o.status, Some(0), "install the agent: {}", o.dump());
        let base = std::env::temp_dir().join(format!("plainvm-cluster-{}", std::process::id()));
        let mut c = Self {
            base,
            nodes: Vec::new(),
        };
        c.sh(&["down"]);
        c.sh_ok(&["prepare"]);
        for n in NODES {
            c.boot(n);
        }
        c.sh_ok(&["settle", "90"]);
        c
    }

    fn sh(&self, args: &[&str]) -> Outcome {
        run_with_timeout(
            Command::new("bash")
                .arg(script())
                .args(args)
                .env("NSC_BASE", &self.base),
            Duration::from_secs(150),
        )
    }

    fn sh_ok(&self, args: &[&str]) -> Outcome {
        let o = self.sh(args);
        assert_eq!(o.status, Some(0), "ns-cluster.sh {args:?}: {}", o.dump());
        o
    }

    /// Start node `n` (its namespaces, then sshd, corosync and pacemaker in them).
    fn boot(&mut self, n: &str) {
        let out = std::fs::File::create(self.base.join(format!("{n}.init.out"))).unwrap();
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
                "--fork",
                "--mount-proc",
                "bash",
            ])
            .arg(script())
            .args(["node-init", n])
            .env("NSC_BASE", &self.base)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("unshare");
        let pid = child.id().to_string();
        self.nodes.push((n.to_string(), child));
        self.sh_ok(&["boot", n, &pid]);
    }

    /// Kill node `n` at once: every process in it (corosync, pacemaker, its VMs) dies.
    fn crash(&mut self, n: &str) {
        self.sh_ok(&["crash", n]);
        if let Some(i) = self.nodes.iter().position(|(name, _)| name == n) {
            let (_, mut child) = self.nodes.remove(i);
            let _ = child.wait();
        }
    }

    /// `args` run inside node `n`.
    fn exec(&self, n: &str, args: &[&str]) -> Outcome {
        let mut a = vec!["exec", n];
        a.extend_from_slice(args);
        self.sh(&a)
    }

    fn exec_ok(&self, n: &str, args: &[&str]) -> Outcome {
        let o = self.exec(n, args);
        assert_eq!(o.status, Some(0), "{n}: {args:?}: {}", o.dump());
        o
    }

    /// A cluster command, run on the first node that is up.
    fn crm(&self, args: &[&str]) -> Outcome {
        let n = self.nodes.first().map(|(n, _)| n.clone()).expect("a node");
        self.exec_ok(&n, args)
    }

    /// The nodes resource `r` runs on, as the cluster sees it.
    fn location(&self, r: &str) -> Vec<String> {
        let n = self.nodes.first().map(|(n, _)| n.clone()).expect("a node");
        let o = self.exec(&n, &["crm_resource", "--locate", "-r", r]);
        o.stdout
            .lines()
            .filter_map(|l| l.split("is running on: ").nth(1))
            .map(|s| s.trim().to_string())
            .collect()
    }

    /// No operation failed: probes, monitors, starts, stops and migrations all returned what
    /// Pacemaker expected (a wrong exit code shows here first).
    fn assert_no_failed_actions(&self, when: &str) {
        let st = self.status();
        assert!(
            !st.contains("Failed Resource Actions") && !st.contains("fail-count="),
            "{when}: failed actions:\n{st}"
        );
    }

    fn status(&self) -> String {
        let n = self.nodes.first().map(|(n, _)| n.clone()).expect("a node");
        self.exec(&n, &["crm_mon", "-1", "--include=failcounts"])
            .stdout
    }

    /// Wait until the cluster has nothing left to do and `r` runs on `node` alone.
    fn wait_on(&self, r: &str, node: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            if self.location(r) == [node] {
                let n = self.nodes.first().map(|(n, _)| n.clone()).unwrap();
                let o = self.exec(&n, &["crm_resource", "--wait", "--timeout", "60s"]);
                if o.status == Some(0) && self.location(r) == [node] {
                    return;
                }
            }
            assert!(
                start.elapsed() < limit,
                "{r} is not on {node} after {limit:?}:\n{}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Wait until `r` runs nowhere.
    fn wait_stopped(&self, r: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            if self.location(r).is_empty() {
                let n = self.nodes.first().map(|(n, _)| n.clone()).unwrap();
                let o = self.exec(&n, &["crm_resource", "--wait", "--timeout", "60s"]);
                if o.status == Some(0) && self.location(r).is_empty() {
                    return;
                }
            }
            assert!(
                start.elapsed() < limit,
                "{r} still runs after {limit:?}:\n{}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// VM `vm`'s console log on node `n` (the agent's console_log, in the node's /var/log).
    fn log_path(&self, n: &str, vm: &str) -> PathBuf {
        self.base.join(n).join(format!("var-log/plainvm/{vm}.log"))
    }

    fn log_len(&self, n: &str, vm: &str) -> usize {
        std::fs::metadata(self.log_path(n, vm))
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// What the VM printed on node `n` since the log was `from` bytes long.
    fn log_since(&self, n: &str, vm: &str, from: usize) -> String {
        let all = std::fs::read(self.log_path(n, vm)).unwrap_or_default();
        String::from_utf8_lossy(all.get(from..).unwrap_or_default()).into_owned()
    }

    /// Wait until the log on `n` since `from` satisfies `ok`; returns it.
    fn wait_log(
        &self,
        n: &str,
        vm: &str,
        from: usize,
        what: &str,
        limit: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let s = self.log_since(n, vm, from);
            if ok(&s) {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "{vm} on {n}: no {what} within {limit:?}:\n{s}\n--- cluster\n{}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent run by hand on node `n`, with the environment Pacemaker gives it.
    fn agent(&self, n: &str, action: &str, env: &[(&str, &str)]) -> Outcome {
        let mut args = vec![
            "env".to_string(),
            "-i".to_string(),
            format!("PATH={CLEAN_PATH}"),
            "OCF_ROOT=/usr/lib/ocf".to_string(),
            "OCF_RESKEY_CRM_meta_timeout=30000".to_string(),
        ];
        args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        args.push(AGENT.to_string());
        args.push(action.to_string());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.exec(n, &a)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep every node's /var/log (consoles, agent notes, pacemaker and corosync logs).
            let keep =
                std::env::temp_dir().join(format!("plainvm-cluster-failed-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for n in NODES {
                let _ = Command::new("cp")
                    .arg("-a")
                    .arg(self.base.join(n).join("var-log"))
                    .arg(keep.join(n))
                    .status();
            }
            eprintln!("cluster logs kept in {}", keep.display());
        }
        let o = self.sh(&["down"]);
        if o.status != Some(0) {
            eprintln!("ns-cluster.sh down: {}", o.dump());
        }
        for (_, c) in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The N of every `blkloop pass=N ok` line.
fn last_blkloop_pass(s: &str) -> u64 {
    s.lines()
        .filter_map(|l| {
            l.strip_prefix("blkloop pass=")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

fn first_blkloop_pass(s: &str) -> u64 {
    s.lines()
        .find_map(|l| {
            l.strip_prefix("blkloop pass=")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// What no console may show: lost memory or disk contents, a guest kernel in trouble.
fn assert_no_damage(vm: &str, s: &str) {
    for bad in [
        "CORRUPT",
        "BLKLOOP-FAIL",
        "Kernel panic",
        "BUG:",
        "Oops",
        "soft lockup",
    ] {
        assert!(!s.contains(bad), "{vm}: '{bad}' on the console:\n{s}");
    }
}

/// What a live migration of test guest `vm` from `from` to `to` must leave: the agent migrated
/// (no stop/start), the source process handed over, and at the destination the workload goes
/// on from where it was, without a boot, with the GENERATION register bumped.
fn assert_migrated(c: &Cluster, vm: &str, from: &str, to: &str, src_at: usize, dst_at: usize) {
    let src = c.log_since(from, vm, src_at);
    assert!(
        src.contains(&format!("migrate_to: the VM runs on {to}")),
        "{vm}: migrate_to did not succeed:\n{src}"
    );
    let info = c.exec(from, &[plainvm_bin().to_str().unwrap(), "info", vm]);
    assert_ne!(
        info.status,
        Some(0),
        "{vm} still runs on {from}: {}",
        info.dump()
    );
    let memwrite = vm != "disk";
    let before = match memwrite {
        true => last_memwrite_pass(&src),
        false => last_blkloop_pass(&src),
    };
    let dst = c.wait_log(to, vm, dst_at, "progress", T, |s| {
        let now = match memwrite {
            true => last_memwrite_pass(s),
            false => last_blkloop_pass(s),
        };
        now >= before + 10
    });
    assert!(dst.contains("plainvm-ra[migrate_from]"), "{vm}:\n{dst}");
    assert!(
        !dst.contains("plainvm-ra[start]"),
        "{vm} was started, not migrated:\n{dst}"
    );
    assert!(
        !dst.contains("hello from vCPU"),
        "{vm} booted again on {to}:\n{dst}"
    );
    // memwrite prints every pass; blk-loop only now and then (so only: not from the start).
    let (first, slack) = match memwrite {
        true => (first_memwrite_pass(&dst), 2),
        false => (first_blkloop_pass(&dst), u64::MAX / 2),
    };
    assert!(
        first >= before && first <= before + slack,
        "{vm}: the workload did not go on from pass {before} (first pass on {to}: {first}):\n{dst}"
    );
    assert!(dst.contains(" gen="), "{dst}");
    assert!(
        !dst.contains(" gen=0"),
        "{vm}: GENERATION not bumped on {to}:\n{dst}"
    );
    assert_no_damage(vm, &dst);
}

/// A VM configuration file and what the agent needs for it.
struct Vm {
    name: &'static str,
    config: PathBuf,
    extra: String,
    /// Meta attributes beyond allow-migrate=true.
    meta: &'static str,
}

impl Vm {
    /// The crm command that defines it.
    fn primitive(&self, bin: &Path, key: &Path) -> String {
        let mut p: Vec<String> = vec![
            "configure".into(),
            "primitive".into(),
            self.name.into(),
            "ocf:plainvm:plainvm".into(),
            "params".into(),
            format!("config={}", self.config.display()),
            format!("binary={}", bin.display()),
            format!("key_file={}", key.display()),
        ];
        p.extend(self.extra.split_whitespace().map(String::from));
        p.extend(
            [
                "meta",
                "allow-migrate=true",
                "op",
                "monitor",
                "interval=2s",
                "timeout=30s",
                "op",
                "start",
                "timeout=60s",
                "op",
                "stop",
                "timeout=60s",
                "op",
                "migrate_to",
                "timeout=120s",
                "op",
                "migrate_from",
                "timeout=60s",
            ]
            .map(String::from),
        );
        let mut p = p.join(" ");
        if !self.meta.is_empty() {
            p = p.replacen(
                "allow-migrate=true",
                &format!("allow-migrate=true {}", self.meta),
                1,
            );
        }
        p
    }
}

#[test]
fn vms_live_migrate_restart_and_fail_over_under_pacemaker() {
    let t0 = Instant::now();
    let a = linux_artifacts();
    let rootfs = a.rootfs.clone();
    assert!(
        rootfs.exists(),
        "{} is missing: run resources/build-guest.sh",
        rootfs.display()
    );
    let dir = scratch("cluster");
    let bin = plainvm_bin();
    let key = dir.join("migration.key");
    std::fs::write(
        &key,
        (0..32u8)
            .map(|i| i.wrapping_mul(37) ^ 0x5a)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let snapdir = dir.join("snapshots");
    // Storage both nodes see: this directory (the nodes share the host's /tmp).
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let root = dir.join("root.ext4");
    std::fs::copy(&rootfs, &root).unwrap();
    let write = |name: &str, v: serde_json::Value| {
        let p = dir.join(format!("{name}.json"));
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let mem = Vm {
        name: "mem",
        config: write(
            "mem",
            serde_json::json!({
                "cmdline": "memwrite=64 passes=0 dirty=2048 delay=100000 show-gen",
                "memory": "128M",
            }),
        ),
        extra: format!(
            "migration_addresses=node-a=10.99.0.1 snapshot_dir={} stop_timeout=2",
            snapdir.display()
        ),
        meta: "",
    };
    let diskvm = Vm {
        name: "disk",
        config: write(
            "disk",
            serde_json::json!({
                "cmdline": "blk-loop passes=0 show-gen",
                "memory": "64M",
                "disks": [{"path": disk}],
            }),
        ),
        extra: "stop_timeout=2".into(),
        // blk-loop keeps a CPU busy: it starts once the Linux guest has booted.
        meta: "target-role=Stopped",
    };
    let linux = Vm {
        name: "linux",
        config: write(
            "linux",
            serde_json::json!({
                "kernel": a.vmlinux,
                "cmdline": format!("{} root=/dev/vda rw plainvm.cmd=wait plainvm.agent=on", a.cmdline),
                "memory": "256M",
                "disks": [{"path": root}],
            }),
        ),
        extra: "stop_timeout=30".into(),
        meta: "",
    };

    let mut c = Cluster::up();
    eprintln!("[{:5.1}s] cluster up", t0.elapsed().as_secs_f64());
    // One crm script (as an operator would write it): every VM starts on node-a, since node-b
    // is in standby while they are defined.
    let mut script =
        String::from("node standby node-b\nconfigure rsc_defaults resource-stickiness=100\n");
    for vm in [&mem, &diskvm, &linux] {
        script.push_str(&vm.primitive(&bin, &key));
        script.push('\n');
    }
    script.push_str("configure location disk-prefers-a disk 50: node-a\n");
    let crm_file = dir.join("setup.crm");
    std::fs::write(&crm_file, &script).unwrap();
    c.crm(&["crm", "-f", crm_file.to_str().unwrap()]);
    for vm in [&mem, &linux] {
        c.wait_on(vm.name, "node-a", T);
        eprintln!("[{:5.1}s] {} started", t0.elapsed().as_secs_f64(), vm.name);
    }
    eprintln!("[{:5.1}s] VMs defined", t0.elapsed().as_secs_f64());
    c.crm(&["crm", "node", "online", "node-b"]);
    c.wait_log("node-a", "mem", 0, "memwrite", T, |s| {
        last_memwrite_pass(s) >= 5
    });
    c.assert_no_failed_actions("after the first start");
    eprintln!(
        "[{:5.1}s] VMs started on node-a",
        t0.elapsed().as_secs_f64()
    );

    // 1. A VM's plainvm process dies (SIGKILL): the monitor sees it gone (7) and Pacemaker
    //    restarts it in place (the default policy: on-fail=restart, migration-threshold
    //    INFINITY), counting one failure. A fresh boot: no snapshot was saved by a stop.
    let info = c.exec_ok("node-a", &[bin.to_str().unwrap(), "info", "mem"]);
    let v: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    let pid = v["pid"].as_i64().expect("pid in GET /vm").to_string();
    let at = c.log_len("node-a", "mem");
    c.exec_ok("node-a", &["sh", "-c", &format!("kill -KILL {pid}")]);
    let s = c.wait_log("node-a", "mem", at, "restart", T, |s| {
        s.contains("plainvm-ra[start]: start: running") && last_memwrite_pass(s) >= 3
    });
    assert!(s.contains("hello from vCPU"), "not a fresh boot:\n{s}");
    c.wait_on("mem", "node-a", T);
    let fc = c.crm(&["crm_failcount", "--query", "-r", "mem", "-N", "node-a"]);
    assert!(fc.stdout.contains("value=1"), "{}", fc.dump());
    let info = c.exec_ok("node-a", &[bin.to_str().unwrap(), "info", "mem"]);
    let v: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    assert_ne!(
        v["pid"].as_i64().map(|p| p.to_string()),
        Some(pid),
        "the same process"
    );
    c.crm(&["crm_resource", "--cleanup", "-r", "mem"]);
    // The cleanup forgets mem's history and probes it again: wait for that.
    c.wait_on("mem", "node-a", T);
    eprintln!(
        "[{:5.1}s] killed VM process restarted",
        t0.elapsed().as_secs_f64()
    );

    // 2. Stop and start with snapshot_dir: the stop saves the paused VM's state, the start
    //    restores it (the workload goes on, GENERATION bumped) and removes the snapshot.
    let at = c.log_len("node-a", "mem");
    c.crm(&["crm", "resource", "stop", "mem"]);
    c.wait_stopped("mem", T);
    assert!(
        snapdir.join("mem/state").exists(),
        "no snapshot saved by the stop"
    );
    let before = last_memwrite_pass(&c.log_since("node-a", "mem", at));
    c.crm(&["crm", "resource", "start", "mem"]);
    c.wait_on("mem", "node-a", T);
    let s = c.wait_log("node-a", "mem", at, "progress", T, |s| {
        last_memwrite_pass(s) >= before + 5
    });
    let after_stop = &s[s.find("plainvm-ra[start]").expect("a start")..];
    assert!(after_stop.contains("restoring from the snapshot"), "{s}");
    assert!(
        !after_stop.contains("hello from vCPU"),
        "booted instead of restored:\n{s}"
    );
    let first = first_memwrite_pass(after_stop);
    assert!(
        first >= before && first <= before + 1,
        "restored at {first}, stopped at {before}:\n{s}"
    );
    assert_eq!(last_generation(after_stop), Some(1), "{s}");
    assert!(
        !snapdir.join("mem").exists(),
        "the snapshot was not consumed"
    );
    assert_no_damage("mem", &s);
    eprintln!("[{:5.1}s] snapshot stop/start", t0.elapsed().as_secs_f64());

    // 3. The agent by hand, with the environment Pacemaker gives it, on a VM the cluster does
    //    not manage: every exit code, and a migrate_to that returns only after the commit.
    agent_exit_codes_and_migration(&c, &bin, &key, &dir);
    eprintln!(
        "[{:5.1}s] agent actions by hand",
        t0.elapsed().as_secs_f64()
    );

    // 4. ocf-tester, on node-b (its PID 1 reaps the VMs the agent leaves behind).
    let o = c.exec(
        "node-b",
        &[
            "env",
            "-i",
            &format!("PATH={CLEAN_PATH}"),
            "ocf-tester",
            "-n",
            "ocftest",
            "-o",
            &format!("config={}", mem.config.display()),
            "-o",
            &format!("binary={}", bin.display()),
            "-o",
            "stop_timeout=1",
            AGENT,
        ],
    );
    assert_eq!(o.status, Some(0), "ocf-tester: {}", o.dump());
    assert!(o.stdout.contains("passed all tests"), "{}", o.dump());
    eprintln!("[{:5.1}s] ocf-tester", t0.elapsed().as_secs_f64());

    // 5. Node standby: the VMs on node-a live-migrate to node-b at once.
    // The Linux guest booted meanwhile (~40 s here: its kernel is emulated) and waits, its
    // guest agent watching.
    let linux_boot = c.wait_log(
        "node-a",
        "linux",
        0,
        "INIT-WAITING",
        Duration::from_secs(400),
        |s| s.contains("INIT-WAITING") && s.contains("plainvm-guest: watching"),
    );
    assert_no_damage("linux", &linux_boot);
    eprintln!("[{:5.1}s] Linux guest up", t0.elapsed().as_secs_f64());
    c.crm(&["crm", "resource", "start", "disk"]);
    c.wait_on("disk", "node-a", T);
    c.wait_log("node-a", "disk", 0, "blk-loop", T, |s| {
        last_blkloop_pass(s) >= 10
    });
    // The Linux guest live-migrates with the others. (Guest user code must not use x87 or SSE on
    // kvm_pvm hosts: it faults there with or without a migration, see ../shared/linux-boot.md;
    // the image's sleep is x87-free for that reason.)
    let vms: &[&str] = &["mem", "disk", "linux"];
    let src: Vec<usize> = vms.iter().map(|v| c.log_len("node-a", v)).collect();
    let dst: Vec<usize> = vms.iter().map(|v| c.log_len("node-b", v)).collect();
    c.crm(&["crm", "node", "standby", "node-a"]);
    for vm in vms {
        c.wait_on(vm, "node-b", T);
    }
    assert_migrated(&c, "mem", "node-a", "node-b", src[0], dst[0]);
    assert_migrated(&c, "disk", "node-a", "node-b", src[1], dst[1]);
    {
        // Linux: the same kernel goes on at node-b (no second boot) and its guest agent,
        // running from the root disk both nodes see, notices the move (GENERATION 0 -> 1).
        let s = c.wait_log("node-b", "linux", dst[2], "the agent's resync", T, |s| {
            s.contains("generation 0 -> 1")
        });
        assert!(c
            .log_since("node-a", "linux", src[2])
            .contains("migrate_to: the VM runs on node-b"));
        assert!(
            !s.contains("GUEST-INIT-REACHED"),
            "Linux booted again:\n{s}"
        );
        assert!(!s.contains("plainvm-ra[start]"), "{s}");
        assert!(s.contains("plainvm-ra[migrate_from]"), "{s}");
        // Its processes still run: a few seconds later nothing died.
        std::thread::sleep(Duration::from_secs(5));
        let s = c.log_since("node-b", "linux", dst[2]);
        assert!(!s.contains("Illegal instruction"), "{s}");
        assert!(!s.contains("GUEST-POWEROFF"), "{s}");
        assert_no_damage("linux", &s);
    }
    c.assert_no_failed_actions("after the standby");
    c.crm(&["crm", "node", "online", "node-a"]);
    eprintln!(
        "[{:5.1}s] standby: live migrations",
        t0.elapsed().as_secs_f64()
    );

    // 6. crm_resource --move: back to node-a, live.
    let (sa, da) = (c.log_len("node-b", "mem"), c.log_len("node-a", "mem"));
    c.crm(&["crm_resource", "--move", "-r", "mem", "-N", "node-a"]);
    c.wait_on("mem", "node-a", T);
    assert_migrated(&c, "mem", "node-b", "node-a", sa, da);
    c.crm(&["crm_resource", "--clear", "-r", "mem"]);
    c.assert_no_failed_actions("after the move");
    eprintln!("[{:5.1}s] crm_resource --move", t0.elapsed().as_secs_f64());

    stop_linux_gracefully(&c, "node-b");
    eprintln!(
        "[{:5.1}s] Linux stopped gracefully",
        t0.elapsed().as_secs_f64()
    );

    // 8. node-a dies with mem on it: after the membership change mem boots afresh on node-b.
    //    Its snapshot_dir holds nothing (a crash saves no state, and the last one was consumed):
    //    a memory image older than the disks would be wrong, so a fresh boot is the only safe
    //    start.
    let at = c.log_len("node-b", "mem");
    let crashed = Instant::now();
    c.crash("node-a");
    c.wait_on("mem", "node-b", T);
    let s = c.wait_log("node-b", "mem", at, "a fresh boot", T, |s| {
        last_memwrite_pass(s) >= 3
    });
    assert!(s.contains("plainvm-ra[start]: start: running"), "{s}");
    assert!(s.contains("hello from vCPU"), "{s}");
    assert!(!s.contains("restoring"), "{s}");
    eprintln!(
        "[{:5.1}s] node crash: mem runs on node-b {:.1}s after the crash",
        t0.elapsed().as_secs_f64(),
        crashed.elapsed().as_secs_f64()
    );
    // The disk VM, untouched on node-b, still runs its workload.
    let at = c.log_len("node-b", "disk");
    c.wait_log("node-b", "disk", at, "progress", T, |s| {
        last_blkloop_pass(s) > 0
    });

    // 9. node-a comes back: its probes find nothing running there, nothing moves or restarts.
    let at = c.log_len("node-b", "mem");
    c.boot("node-a");
    c.sh_ok(&["settle", "60"]);
    c.wait_on("mem", "node-b", T);
    c.wait_on("disk", "node-b", T);
    assert!(
        !c.log_since("node-b", "mem", at)
            .contains("plainvm-ra[stop]"),
        "mem was stopped after the rejoin"
    );
    c.assert_no_failed_actions("after the rejoin");
    eprintln!("[{:5.1}s] node-a rejoined", t0.elapsed().as_secs_f64());
}

/// 7. A graceful stop: the Linux guest's agent powers it off (no forced kill).
fn stop_linux_gracefully(c: &Cluster, on: &str) {
    let at = c.log_len(on, "linux");
    c.crm(&["crm", "resource", "stop", "linux"]);
    c.wait_stopped("linux", T);
    let s = c.log_since(on, "linux", at);
    assert!(s.contains("stop: the guest powered off"), "{s}");
    assert!(s.contains("the guest agent powered it off"), "{s}");
    assert_no_damage("linux", &s);
}

/// `base` with the variables of `over` replaced (an empty value: unset).
fn with_env<'a>(
    base: &[(&'static str, &'a str)],
    over: &[(&'static str, &'a str)],
) -> Vec<(&'static str, &'a str)> {
    let mut e: Vec<_> = base
        .iter()
        .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
        .copied()
        .collect();
    e.extend(over.iter().filter(|(_, v)| !v.is_empty()).copied());
    e
}

/// The agent run by hand on the nodes (no Pacemaker involved) for a VM named `direct`.
fn agent_exit_codes_and_migration(c: &Cluster, bin: &Path, key: &Path, dir: &Path) {
    let config = dir.join("direct.json");
    std::fs::write(
        &config,
        // 16 MiB written at boot, then again only every 30 s: a migration moves 16 MiB.
        r#"{"cmdline": "memwrite=16 passes=0 delay=30000000 show-gen"}"#,
    )
    .unwrap();
    let bad_json = dir.join("bad.json");
    std::fs::write(&bad_json, "{ not json").unwrap();
    let short_key = dir.join("short.key");
    std::fs::write(&short_key, [1u8; 16]).unwrap();
    let (cfg, b, k) = (
        config.to_str().unwrap(),
        bin.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let base = [
        ("OCF_RESOURCE_INSTANCE", "direct"),
        ("OCF_RESKEY_config", cfg),
        ("OCF_RESKEY_binary", b),
        ("OCF_RESKEY_key_file", k),
        ("OCF_RESKEY_stop_timeout", "1"),
        ("OCF_RESKEY_CRM_meta_migrate_source", "node-a"),
        ("OCF_RESKEY_CRM_meta_migrate_target", "node-b"),
        ("OCF_RESKEY_CRM_meta_interval", "2000"),
    ];
    let expect = |n: &str, action: &str, env: &[(&str, &str)], want: i32, why: &str| {
        let o = c.agent(n, action, env);
        assert_eq!(o.status, Some(want), "{why}: {action} on {n}: {}", o.dump());
        o
    };
    let probe = with_env(&base, &[("OCF_RESKEY_CRM_meta_interval", "0")]);

    // Stopped: monitor and probe say "not running" (7), on both nodes.
    expect("node-a", "monitor", &base, 7, "stopped");
    expect("node-b", "monitor", &probe, 7, "probe, stopped");
    // Not installed (5) / not configured (6) / invalid arguments (2) / unimplemented (3).
    let nobin = with_env(&base, &[("OCF_RESKEY_binary", "/nonexistent/plainvm")]);
    expect("node-a", "start", &nobin, 5, "no binary");
    expect(
        "node-a",
        "monitor",
        &with_env(
            &base,
            &[
                ("OCF_RESKEY_binary", "/nonexistent/plainvm"),
                ("OCF_RESKEY_CRM_meta_interval", "0"),
            ],
        ),
        7,
        "probe without binary",
    );
    expect(
        "node-a",
        "start",
        &with_env(&base, &[("OCF_RESKEY_config", "/nonexistent/vm.json")]),
        5,
        "no config file here",
    );
    expect(
        "node-a",
        "monitor",
        &with_env(
            &base,
            &[
                ("OCF_RESKEY_config", "/nonexistent/vm.json"),
                ("OCF_RESKEY_CRM_meta_interval", "0"),
            ],
        ),
        7,
        "probe without config file",
    );
    expect(
        "node-a",
        "validate-all",
        &with_env(&base, &[("OCF_RESKEY_config", "")]),
        6,
        "no config parameter",
    );
    let bad = bad_json.to_str().unwrap();
    expect(
        "node-a",
        "start",
        &with_env(&base, &[("OCF_RESKEY_config", bad)]),
        6,
        "config not JSON",
    );
    expect(
        "node-a",
        "validate-all",
        &with_env(&base, &[("OCF_RESKEY_stop_timeout", "soon")]),
        6,
        "stop_timeout not a number",
    );
    expect(
        "node-a",
        "validate-all",
        &with_env(&base, &[("OCF_RESKEY_name", "-bad name")]),
        6,
        "invalid VM name",
    );
    let sk = short_key.to_str().unwrap();
    expect(
        "node-a",
        "validate-all",
        &with_env(&base, &[("OCF_RESKEY_key_file", sk)]),
        6,
        "key of 16 bytes",
    );
    expect(
        "node-a",
        "validate-all",
        &with_env(
            &base,
            &[
                ("OCF_RESKEY_key_file", ""),
                ("OCF_RESKEY_CRM_meta_allow_migrate", "true"),
            ],
        ),
        6,
        "allow-migrate without a key",
    );
    expect("node-a", "validate-all", &base, 0, "valid");
    expect("node-a", "promote", &base, 3, "unimplemented");
    expect(
        "node-a",
        "migrate_to",
        &base,
        1,
        "migrate_to of a VM not running here",
    );
    expect("node-a", "stop", &base, 0, "stopping a stopped VM");

    // Running: start, monitor 0 (probe too), start again 0.
    expect("node-a", "start", &base, 0, "start");
    expect("node-a", "monitor", &base, 0, "running");
    expect("node-a", "monitor", &probe, 0, "probe, running");
    expect("node-b", "monitor", &probe, 7, "probe on the other node");
    expect("node-a", "start", &base, 0, "starting a started VM");
    expect(
        "node-a",
        "migrate_to",
        &with_env(&base, &[("OCF_RESKEY_CRM_meta_migrate_target", "")]),
        2,
        "migrate_to without a target",
    );
    expect(
        "node-a",
        "migrate_to",
        &with_env(&base, &[("OCF_RESKEY_CRM_meta_migrate_target", "node-x")]),
        6,
        "a target without an address",
    );

    // A failed migration (a VM of that name already runs on the target): the VM runs on here.
    expect(
        "node-b",
        "start",
        &base,
        0,
        "a second VM named direct, on node-b",
    );
    let o = expect(
        "node-a",
        "migrate_to",
        &base,
        1,
        "migration to a node that runs the name",
    );
    assert!(
        o.stdout.contains("already here") || o.stderr.contains("already here"),
        "{}",
        o.dump()
    );
    expect("node-a", "monitor", &base, 0, "still running at the source");
    expect("node-b", "stop", &base, 0, "stop on node-b");

    // A paused VM is not a running one (1).
    c.exec_ok("node-a", &[b, "pause", "direct"]);
    expect("node-a", "monitor", &base, 1, "paused");
    c.exec_ok("node-a", &[b, "resume", "direct"]);

    // migrate_to returns only after the commit: at that moment the source process is gone and
    // the VM already runs on the target; migrate_from then confirms it at once. node-a's link
    // is held to 64 Mbit/s meanwhile, so the migration takes seconds: a migrate_to that
    // returned early would be caught with the VM still at the source.
    let at = c.log_len("node-b", "direct");
    let tbf = ["tbf", "rate", "64mbit", "burst", "64kb", "latency", "500ms"];
    c.exec_ok(
        "node-a",
        &[&["tc", "qdisc", "add", "dev", "eth0", "root"][..], &tbf].concat(),
    );
    let started = Instant::now();
    let o = c.agent("node-a", "migrate_to", &base);
    let gone = c.exec("node-a", &[b, "info", "direct"]);
    let info = c.exec("node-b", &[b, "info", "direct"]);
    c.exec_ok("node-a", &["tc", "qdisc", "del", "dev", "eth0", "root"]);
    assert_eq!(o.status, Some(0), "migrate_to: {}", o.dump());
    assert_ne!(
        gone.status,
        Some(0),
        "still on node-a when migrate_to returned: {}",
        gone.dump()
    );
    assert!(
        info.stdout.contains("\"Running\""),
        "not running on node-b when migrate_to returned: {}",
        info.dump()
    );
    eprintln!(
        "migrate_to over 64 Mbit/s: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    expect("node-a", "monitor", &base, 7, "migrated away");
    expect("node-b", "migrate_from", &base, 0, "migrate_from");
    expect("node-b", "monitor", &base, 0, "running on node-b");
    let log = c.log_since("node-b", "direct", at);
    assert!(!log.contains("hello from vCPU"), "{log}");
    assert!(log.contains("plainvm-ra[migrate_from]"), "{log}");
    assert_no_damage("direct", &log);
    // migrate_from where the VM does not run fails (1).
    expect(
        "node-a",
        "migrate_from",
        &base,
        1,
        "migrate_from without the VM",
    );

    expect("node-b", "stop", &base, 0, "stop");
    expect("node-b", "monitor", &base, 7, "stopped");
    expect("node-b", "stop", &base, 0, "stopping a stopped VM");
}
