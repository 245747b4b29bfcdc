//! The jail (issue 14): a VM run, restored or received with `--jail UID:GID` runs as that user
//! with no capabilities, in a mount namespace of its own whose `/` is its jail directory; what it
//! writes (snapshots) lands under that directory and nowhere else; it snapshots, restores and
//! live-migrates between jails over TCP between two network namespaces. The Linux guest with
//! disk, net and vsock runs jailed in tests/device_state.rs.

use plainvm_tests::support::netns::NetnsPair;
use plainvm_tests::*;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
/// Ids no account on a test machine uses.
const UID: u32 = 64_201;
const GID: u32 = 64_202;

fn ids(uid: u32, gid: u32) -> String {
    format!("{uid}:{gid}")
}

fn info(sock: &Path) -> Value {
    let o = api(&["info"], sock);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    serde_json::from_str(&o.stdout).unwrap()
}

/// `key:` of /proc/PID/task/TID/status, e.g. "Uid".
fn status_field(task: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(task.join("status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Every thread of `pid` runs as `uid`:`gid` with no groups and no capabilities, in one mount
/// namespace that is not ours; returns that namespace.
fn assert_jailed(pid: u32, uid: u32, gid: u32) -> String {
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let mut namespaces = Vec::new();
    let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(tasks.len() >= 3, "{tasks:?}");
    for t in &tasks {
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let what = format!("thread {} ({})", t.display(), comm.trim());
        assert_eq!(
            status_field(t, "Uid"),
            format!("{uid} {uid} {uid} {uid}"),
            "{what}"
        );
        assert_eq!(
            status_field(t, "Gid"),
            format!("{gid} {gid} {gid} {gid}"),
            "{what}"
        );
        assert_eq!(status_field(t, "Groups"), "", "{what}");
        assert_eq!(status_field(t, "CapEff"), "0000000000000000", "{what}");
        assert_eq!(status_field(t, "CapPrm"), "0000000000000000", "{what}");
        namespaces.push(std::fs::read_link(t.join("ns/mnt")).unwrap());
    }
    assert!(
        namespaces.iter().all(|n| *n == namespaces[0]),
        "{namespaces:?}"
    );
    assert_ne!(
        namespaces[0], ours,
        "the VM shares the host's mount namespace"
    );
    let main = PathBuf::from(format!("/proc/{pid}"));
    assert_eq!(status_field(&main, "NoNewPrivs"), "1");
    assert_eq!(status_field(&main, "Seccomp"), "2");
    namespaces[0].display().to_string()
}

/// The names in directory `d`, sorted.
fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_jailed_vm_runs_unprivileged_and_sees_only_its_jail() {
    let dir = scratch("jail-basic");
    let (jail, sock, img) = (dir.join("jail"), dir.join("api.sock"), dir.join("disk.img"));
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let disk = format!("path={}", img.display());
    let mut vm = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--jail",
            &ids(UID, GID),
            "--jail-dir",
            jail.to_str().unwrap(),
            "--cpus",
            "2",
            "--cmdline",
            "idle",
            "--disk",
            &disk,
        ],
        &dir.join("console"),
    );
    wait_api(&sock);
    std::thread::sleep(Duration::from_millis(300)); // the vCPU threads are up
    assert_jailed(vm.pid(), UID, GID);
    // The jail directory was made for the jail's user, and is all the VM sees of the host.
    let m = std::fs::metadata(&jail).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (UID, GID, 0o700));
    let root = PathBuf::from(format!("/proc/{}/root", vm.pid()));
    assert_eq!(names(&root), Vec::<String>::new());
    assert!(!root.join("etc/passwd").exists());
    assert!(!root.join("dev/kvm").exists());
    std::fs::write(jail.join("marker"), b"x").unwrap();
    assert_eq!(names(&root), ["marker"]);

    let v = info(&sock);
    assert_eq!(v["jailed"], true, "{v}");
    assert_eq!(v["seccomp"], true, "{v}");
    assert_eq!(v["jail"]["uid"], UID, "{v}");
    assert_eq!(v["jail"]["dir"], jail.to_str().unwrap(), "{v}");
    let o = plainvm(&["ls", "--json"], T);
    let rows: Value = serde_json::from_str(&o.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == vm.pid())
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["jailed"], true, "{rows}");
    let o = plainvm(&["ls"], T);
    assert!(
        o.stdout.lines().next().unwrap_or("").contains("JAIL"),
        "{}",
        o.dump()
    );
    assert!(o.stdout.contains(&ids(UID, GID)), "{}", o.dump());

    // It writes under its jail and nowhere else: not at a host path outside it, not through a
    // `..`, not through a symlink planted in the jail (it resolves inside the jail).
    let outside = dir.join("outside");
    for bad in [
        outside.clone(),
        jail.join("../outside"),
        dir.join("jail-not/snap"),
    ] {
        let o = api(&["snapshot", "--path", bad.to_str().unwrap()], &sock);
        assert_ne!(o.status, Some(0), "{}", o.dump());
        assert!(o.stderr.contains("jailed in"), "{}", o.dump());
    }
    std::os::unix::fs::symlink(&dir, jail.join("escape")).unwrap();
    let o = api(
        &[
            "snapshot",
            "--path",
            jail.join("escape/outside").to_str().unwrap(),
        ],
        &sock,
    );
    assert_ne!(o.status, Some(0), "{}", o.dump());
    assert!(!outside.exists(), "a jailed VM wrote outside its jail");
    // Its disk, opened before it entered the jail, still works.
    let o = api(
        &["snapshot", "--path", jail.join("snap").to_str().unwrap()],
        &sock,
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    for f in ["state", "memory"] {
        assert_eq!(
            std::fs::metadata(jail.join("snap").join(f)).unwrap().uid(),
            UID
        );
    }
    vm.kill();
}

#[test]
fn jailed_vms_snapshot_restore_and_migrate_between_jails() {
    let dir = scratch("jail-state");
    let hosts = NetnsPair::new("jail");
    let (j1, j2, j3) = (dir.join("j1"), dir.join("j2"), dir.join("j3"));
    let (s1, s2, s3) = (
        dir.join("s1.sock"),
        dir.join("s2.sock"),
        dir.join("s3.sock"),
    );
    let src = TestVm::start(
        &[
            "run",
            "--api-sock",
            s1.to_str().unwrap(),
            "--jail",
            &ids(UID, GID),
            "--jail-dir",
            j1.to_str().unwrap(),
            "--cmdline",
            "memwrite=16 passes=0 dirty=256 delay=2000",
        ],
        &dir.join("src.out"),
    );
    src.wait_for("memwrite pass=5 ok", T);
    assert_jailed(src.pid(), UID, GID);
    // A full snapshot and a diff on top of it, both in the jail; the diff names its parent by
    // its host path, so the chain restores from the host.
    for (name, extra) in [("full", None), ("diff", Some("--diff"))] {
        let p = j1.join(name);
        let mut args = vec!["snapshot", "--path", p.to_str().unwrap()];
        args.extend(extra);
        let o = api(&args, &s1);
        assert_eq!(o.status, Some(0), "{}", o.dump());
    }
    assert_eq!(
        std::fs::read_to_string(j1.join("diff/parent")).unwrap(),
        j1.join("full").to_str().unwrap()
    );
    let at = last_memwrite_pass(&src.output());
    drop(src); // killed

    // Restored jailed (another user, another jail) in network namespace a.
    let restored = TestVm::start_cmd(
        hosts.a.command(plainvm_bin()).args([
            "restore",
            j1.join("diff").to_str().unwrap(),
            "--api-sock",
            s2.to_str().unwrap(),
            "--jail",
            &ids(UID + 1, GID + 1),
            "--jail-dir",
            j2.to_str().unwrap(),
        ]),
        &dir.join("restored.out"),
    );
    wait_api(&s2);
    assert_jailed(restored.pid(), UID + 1, GID + 1);
    let start = Instant::now();
    while last_memwrite_pass(&restored.output()) < at + 10 {
        assert!(start.elapsed() < T, "no progress: {}", restored.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = restored.output();
    assert!(
        !out.contains("CORRUPT") && !out.contains("hello from vCPU"),
        "{out}"
    );

    // Live-migrated from that jail into a third one, received in network namespace b.
    let to = format!("tcp:{}:{}", hosts.b_addr, 21000 + std::process::id() % 1000);
    let mut dst = TestVm::start_cmd(
        hosts.b.command(plainvm_bin()).args([
            "receive",
            "--listen",
            &to,
            "--insecure",
            "--api-sock",
            s3.to_str().unwrap(),
            "--jail",
            &ids(UID + 2, GID + 2),
            "--jail-dir",
            j3.to_str().unwrap(),
        ]),
        &dir.join("dst.out"),
    );
    dst.wait_for("waiting for a migration", T);
    let o = plainvm(
        &["migrate", "--api-sock", s2.to_str().unwrap(), "--to", &to],
        T,
    );
    assert_eq!(o.status, Some(0), "{}\n--- dst\n{}", o.dump(), dst.output());
    let at = last_memwrite_pass(&restored.output());
    let start = Instant::now();
    while last_memwrite_pass(&dst.output()) < at + 10 {
        assert!(start.elapsed() < T, "no progress: {}", dst.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = dst.output();
    assert!(
        !out.contains("CORRUPT") && !out.contains("hello from vCPU"),
        "{out}"
    );
    assert_jailed(dst.pid(), UID + 2, GID + 2);
    assert_eq!(info(&s3)["jail"]["dir"], j3.to_str().unwrap());
    // The received VM snapshots into its own jail.
    let o = api(
        &["snapshot", "--path", j3.join("after").to_str().unwrap()],
        &s3,
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    let o = api(&["kill"], &s3);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(dst.wait(T).is_some(), "{}", dst.output());
}

#[test]
fn bad_jails_are_refused_before_anything_runs() {
    let dir = scratch("jail-bad");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let link = dir.join("a-link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--jail".into(), "0:0".into()], "keeps root's power"),
        (vec!["--jail".into(), "1000:0".into()], "keeps root's power"),
        (vec!["--jail".into(), "bob".into()], "use UID:GID"),
        (
            vec!["--jail-dir".into(), dir.join("j").display().to_string()],
            "needs --jail",
        ),
        (
            vec![
                "--jail".into(),
                ids(UID, GID),
                "--jail-dir".into(),
                "rel".into(),
            ],
            "not an absolute path",
        ),
        (
            vec![
                "--jail".into(),
                ids(UID, GID),
                "--jail-dir".into(),
                file.display().to_string(),
            ],
            "not a directory",
        ),
        (
            vec![
                "--jail".into(),
                ids(UID, GID),
                "--jail-dir".into(),
                link.display().to_string(),
            ],
            "not a directory",
        ),
    ];
    // Someone else's directory, one under a parent others can write, and a name that is a path.
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(12_345), Some(12_345)).unwrap();
    let shared = std::env::temp_dir().join(format!("plainvm-jail-shared-{}", std::process::id()));
    let mut cases = cases;
    cases.extend([
        (
            vec![
                "--jail".into(),
                ids(UID, GID),
                "--jail-dir".into(),
                theirs.display().to_string(),
            ],
            "neither root nor the jail's user",
        ),
        (
            vec![
                "--jail".into(),
                ids(UID, GID),
                "--jail-dir".into(),
                shared.display().to_string(),
            ],
            "writable by root only",
        ),
        (
            vec![
                "--jail".into(),
                ids(UID, GID),
                "--name".into(),
                "../etc".into(),
            ],
            "invalid VM name",
        ),
        // The vsock socket's directory holds the jail: showing it would show the jail to itself.
        (
            vec![
                "--jail".into(),
                ids(UID, GID),
                "--jail-dir".into(),
                dir.join("j2").display().to_string(),
                "--vsock".into(),
                format!("cid=3,socket={}", dir.join("v.sock").display()),
            ],
            "directory of its own",
        ),
    ]);
    for (extra, want) in cases {
        let mut args = vec!["run", "--cmdline", "idle"];
        args.extend(extra.iter().map(String::as_str));
        let o = plainvm(&args, T);
        assert_eq!(o.status, Some(1), "{extra:?}: {}", o.dump());
        assert!(o.stderr.contains(want), "{extra:?}: {}", o.dump());
        assert!(!o.stdout.contains("hello from vCPU"), "{}", o.dump());
    }
    assert!(!shared.exists());
    assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 12_345);
    assert_eq!(std::fs::metadata("/etc").unwrap().uid(), 0);
    // The config file's key works like the flag, and is checked like it.
    let cfg = dir.join("vm.json");
    std::fs::write(&cfg, r#"{"cmdline": "idle", "jail": "0:5"}"#).unwrap();
    let o = plainvm(&["run", "--config", cfg.to_str().unwrap()], T);
    assert_eq!(o.status, Some(1), "{}", o.dump());
    assert!(o.stderr.contains("keeps root's power"), "{}", o.dump());
    let jail = dir.join("from-json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"cmdline": "memwrite=4 passes=2", "jail": {{"uid": {UID}, "gid": {GID}, "dir": "{}"}}}}"#,
            jail.display()
        ),
    )
    .unwrap();
    let o = plainvm(&["run", "--config", cfg.to_str().unwrap()], T);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("MEMWRITE-DONE"), "{}", o.dump());
    assert_eq!(std::fs::metadata(&jail).unwrap().uid(), UID);
    // Without root the jail cannot be made: a clear error, not a half-jailed VM.
    let o = run_with_timeout(
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(plainvm_bin())
            .args(["run", "--cmdline", "idle", "--jail", &ids(UID, GID)])
            .env("PLAINVM_RUNTIME_DIR", dir.join("rt"))
            .args(["--jail-dir", dir.join("nobody-jail").to_str().unwrap()]),
        T,
    );
    assert_ne!(o.status, Some(0), "{}", o.dump());
    assert!(o.stderr.contains("cannot set up the jail"), "{}", o.dump());
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': utime and stime are fields 14 and 15, i.e. indexes 11 and 12.
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// The cgroup path of `pid` for `controller` in /proc/PID/cgroup.
fn cgroup_of(pid: u32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctls, path) = (f.next()?, f.next()?, f.next()?);
            (ctls.split(',').any(|c| c == controller) || (ctls.is_empty() && path != "/"))
                .then(|| path.to_string())
        })
        .unwrap_or_default()
}

#[test]
fn a_vm_in_its_cgroup_is_held_to_its_limits() {
    let dir = scratch("cgroup");
    let name = format!("cg-{}", std::process::id());
    // A guest that never stops computing, held to 10% of one CPU.
    let sock = dir.join("api.sock");
    let mut vm = TestVm::start(
        &[
            "run",
            "--name",
            &name,
            "--api-sock",
            sock.to_str().unwrap(),
            "--cgroup",
            "cpu.max=10000 100000,pids.max=64",
            "--jail",
            &ids(UID, GID),
            "--jail-dir",
            dir.join("jail").to_str().unwrap(),
            "--cmdline",
            "memwrite=8 passes=0",
        ],
        &dir.join("cpu.out"),
    );
    wait_api(&sock);
    for c in ["cpu", "pids"] {
        assert!(
            cgroup_of(vm.pid(), c).ends_with(&format!("plainvm/{name}")),
            "{c}: {}",
            std::fs::read_to_string(format!("/proc/{}/cgroup", vm.pid())).unwrap()
        );
    }
    let v = info(&sock);
    assert!(
        v["cgroup"]["paths"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{v}"
    );
    let (t0, c0) = (Instant::now(), cpu_ticks(vm.pid()));
    std::thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(vm.pid()) - c0) as f64 / 100.0; // USER_HZ = 100
    let share = used / t0.elapsed().as_secs_f64();
    assert!(share < 0.3, "the VM used {:.0}% of a CPU", share * 100.0);
    assert!(vm.output().contains("memwrite pass="), "{}", vm.dump());
    vm.kill();

    // Guest RAM counts: a guest that touches 200 MiB under memory.max=64M is ended by the
    // kernel (the host stays fine), and only that VM.
    let o = plainvm(
        &[
            "run",
            "--name",
            &format!("{name}-mem"),
            "--memory",
            "256M",
            "--cgroup",
            "memory.max=64M",
            "--cmdline",
            "memwrite=200 passes=1",
        ],
        T,
    );
    assert_ne!(o.status, Some(0), "{}", o.dump());
    assert!(!o.stdout.contains("MEMWRITE-DONE"), "{}", o.dump());
    // Bad limits are refused before anything runs.
    for (bad, want) in [
        ("memory.max=1M", "below 16 MiB"),
        ("cpu.max=5 100000", "quota"),
        ("io.max=5", "invalid --cgroup"),
    ] {
        let o = plainvm(&["run", "--cmdline", "idle", "--cgroup", bad], T);
        assert_eq!(o.status, Some(1), "{bad}: {}", o.dump());
        assert!(o.stderr.contains(want), "{bad}: {}", o.dump());
    }
}
