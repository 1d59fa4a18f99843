//! The `pgha` binary: parse the command line, run one operation, map its outcome to an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    pgha::cli::main()
}
