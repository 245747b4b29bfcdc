//! The serial console on a terminal: input reaches the guest, and the terminal is restored on
//! every way out (guest power-off, SIGTERM). `script` gives plainvm a real pseudo-terminal.

use plainvm_tests::*;
use std::process::Command;
use std::time::Duration;

/// Run `shell` inside a pseudo-terminal, feeding it `input`.
fn in_pty(shell: &str, input: &str) -> Outcome {
    let cmd = format!("printf '{input}' | script -qec \"{shell}\" /dev/null");
    run_with_timeout(
        Command::new("sh").args(["-c", &cmd]),
        Duration::from_secs(30),
    )
}

/// The `stty -g` outputs printed around a command (before, after): runs of hex digits and
/// colons with many fields (the pty's echo of the input may share their line).
fn stty_lines(out: &str) -> Vec<String> {
    out.split(|c: char| !(c.is_ascii_hexdigit() || c == ':'))
        .filter(|t| t.split(':').count() > 10)
        .map(str::to_string)
        .collect()
}

#[test]
fn terminal_input_reaches_the_guest_and_the_terminal_is_restored() {
    if !have("script") {
        panic!("`script` (util-linux) is needed for the console tests: apt-get install util-linux");
    }
    let bin = plainvm_bin();
    let o = in_pty(
        &format!("stty -g; {} run --cmdline echo; stty -g", bin.display()),
        "plain q",
    );
    assert!(o.stdout.contains("PLAIN"), "{}", o.dump());
    assert!(o.stdout.contains("ECHO-DONE"), "{}", o.dump());
    let s = stty_lines(&o.stdout);
    assert_eq!(s.len(), 2, "{}", o.dump());
    assert_eq!(s[0], s[1], "terminal settings changed: {}", o.dump());
}

#[test]
fn terminal_is_restored_when_plainvm_is_killed() {
    let bin = plainvm_bin();
    let o = in_pty(
        &format!(
            "stty -g; timeout --foreground -s TERM 1 {} run --cmdline idle; echo status=\\$?; stty -g",
            bin.display()
        ),
        "",
    );
    assert!(o.stdout.contains("TESTGUEST-IDLE"), "{}", o.dump());
    assert!(o.stdout.contains("status=124"), "{}", o.dump());
    let s = stty_lines(&o.stdout);
    assert_eq!(s.len(), 2, "{}", o.dump());
    assert_eq!(s[0], s[1], "terminal left in raw mode: {}", o.dump());
}
