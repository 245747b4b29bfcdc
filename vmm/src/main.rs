//! The `plainvm` command: parse the command line, run the subcommand, turn its outcome into an
//! exit status (errors print one line on stderr).

use clap::Parser;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let start = Instant::now();
    plainvm::host::heap::use_one_arena();
    let cli = plainvm::cli::Cli::parse();
    match plainvm::cli::dispatch(cli, start) {
        Ok(code) => ExitCode::from(code as u8),
        Err(msg) => {
            plainvm_devices::log_line!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
