//! The hypercall device: every call from the ring-3 test guest (malformed ones included, and the
//! VMM keeps running), POWER exit codes, SIGTERM through the guest agent, and one Linux boot
//! driving it from the 32-bit `plainvm-guest` helper.

use plainvm_tests::*;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FAST: Duration = Duration::from_secs(30);

fn host_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The number after `key` in `text` (e.g. "secs=" -> 1795617985).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[test]
fn selftest_exercises_every_call_and_the_vmm_keeps_running() {
    let o = plainvm(
        &["run", "--verbose", "--cmdline", "hypercall-selftest"],
        FAST,
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(!o.stdout.contains("HC FAIL"), "{}", o.dump());
    let passed = number_after(&o.stdout, "HYPERCALL-SELFTEST passed=").unwrap_or(0);
    assert!(passed >= 37, "{}", o.dump());
    assert!(o.stdout.contains("failed=0"), "{}", o.dump());
    // After all the malformed calls the guest still ran to its end.
    assert!(o.stdout.contains("TESTGUEST-OK"), "{}", o.dump());

    // LOG reached the host log, and the flood was cut to the burst size.
    let logged = o
        .stderr
        .matches("plainvm: guest: hello from the hypercall selftest")
        .count();
    // At most the burst (32) plus 8 per second of the flood (its duration is in its line).
    let ns = number_after(&o.stdout, "ns-per-call=").unwrap_or(0);
    let most = 32 + 8 * (ns * 500).div_ceil(1_000_000_000) + 1;
    assert!(
        (1..=most).contains(&(logged as u64)),
        "{logged} lines (at most {most}): {}",
        o.dump()
    );
    // HOST_TIME is the host's wall clock.
    let guest = number_after(&o.stdout, "host-time secs=").expect("host time printed");
    assert!(guest.abs_diff(host_secs()) < 60, "{}", o.dump());
    // HEARTBEAT: the guest went silent for longer than its interval, then beat again.
    assert!(o.stderr.contains("guest heartbeat missed"), "{}", o.dump());
    assert!(o.stderr.contains("guest heartbeat resumed"), "{}", o.dump());
    assert!(
        o.stderr.contains("guest agent announced itself"),
        "{}",
        o.dump()
    );
    // BOOT_MARK: each mark timed from process start and from vCPU start.
    for m in ["boot mark 3 (ready) at ", "boot mark 77 at "] {
        assert!(o.stderr.contains(m), "missing {m}: {}", o.dump());
    }
    assert!(o.stderr.contains("since vCPU start"), "{}", o.dump());
}

#[test]
fn exit_code_word_ends_plainvm_with_that_status() {
    for code in [42, 0, 255] {
        let word = format!("exit-code={code}");
        let o = plainvm(&["run", "--cmdline", &word], FAST);
        assert_eq!(o.status, Some(code), "{}", o.dump());
        assert!(o.stdout.contains("TESTGUEST-OK"), "{}", o.dump());
    }
    // An out-of-range code is refused (INVALID_ARGUMENT = 2); the guest then resets itself.
    let o = plainvm(&["run", "--cmdline", "exit-code=300"], FAST);
    assert!(
        o.stdout.contains("EXIT-CODE-REFUSED code=300 status=2"),
        "{}",
        o.dump()
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
}

fn sigterm(vm: &TestVm) {
    let st = Command::new("kill")
        .args(["-TERM", &vm.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
}

#[test]
fn sigterm_asks_the_guest_agent_to_power_off() {
    let dir = scratch("hc-sigterm-agent");
    let mut vm = TestVm::start(&["run", "--cmdline", "agent"], &dir.join("out"));
    vm.wait_for("AGENT-READY status=0", FAST);
    sigterm(&vm);
    let status = vm.wait(Duration::from_secs(5));
    let out = vm.output();
    assert_eq!(status, Some(0), "{out}");
    assert!(out.contains("asked the guest agent to power off"), "{out}");
    // The agent took the posted request and powered off with its code.
    assert!(out.contains("AGENT-REQUEST id=1 kind=1 arg=0"), "{out}");
}

#[test]
fn sigterm_without_an_agent_stops_at_once() {
    let dir = scratch("hc-sigterm-idle");
    let mut vm = TestVm::start(&["run", "--cmdline", "idle"], &dir.join("out"));
    vm.wait_for("TESTGUEST-IDLE", FAST);
    sigterm(&vm);
    let status = vm.wait(Duration::from_secs(5));
    let out = vm.output();
    assert_eq!(status, Some(1), "{out}");
    assert!(out.contains("no guest agent had announced itself"), "{out}");
}

/// One Linux boot: init marks its start, the agent announces itself and syncs the clock,
/// `plainvm-guest time-sync` sets it from the host, and `poweroff --code 3` ends plainvm with 3
/// once the console has sent everything init wrote (a burst of 6 KiB just before).
#[test]
fn linux_guest_marks_syncs_time_and_powers_off_with_a_code() {
    let a = linux_artifacts();
    let cmdline = format!(
        "{} plainvm.agent=on plainvm.cmd=time-sync plainvm.exitcode=3 plainvm.burst=100",
        a.cmdline
    );
    let o = plainvm(
        &[
            "run",
            "--verbose",
            "--kernel",
            a.vmlinux.to_str().unwrap(),
            "--initrd",
            a.initramfs.to_str().unwrap(),
            "--cmdline",
            &cmdline,
        ],
        Duration::from_secs(240),
    );
    assert_eq!(o.status, Some(3), "{}", o.dump());
    // Nothing init wrote is lost: the power-off waited until the console had sent it all.
    let burst = (1..=100).filter(|n| o.stdout.contains(&format!("BURST {n} ....")));
    assert_eq!(burst.count(), 100, "{}", o.dump());
    assert!(o.stdout.contains("GUEST-POWEROFF"), "{}", o.dump());
    assert!(o.stderr.contains("boot mark 1 (init) at "), "{}", o.dump());
    assert!(o.stderr.contains("since vCPU start"), "{}", o.dump());
    assert!(
        o.stderr
            .contains("guest agent announced itself (power requests: yes"),
        "{}",
        o.dump()
    );
    let set = number_after(&o.stdout, "time-sync: clock set to ").expect("time-sync ran");
    assert!(set.abs_diff(host_secs()) < 300, "{}", o.dump());
}
