//! plainvm-guest: the guest side of the plainvm hypercall device for x86_64 Linux guests
//! (docs/hypercall.md). The same subcommands as the 32-bit C helper in guest/c.

mod args;
mod commands;
mod device;
mod system;
mod watch;

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match args::parse(&argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("plainvm-guest: {e}\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let result = device::DevMem::open()
        .map_err(|e| e.to_string())
        .and_then(|mut dev| {
            commands::run(&mut dev, &mut system::Linux, cmd).map_err(|e| e.to_string())
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plainvm-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
#[cfg(test)]
mod fake;
