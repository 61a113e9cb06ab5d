//! `spool`: Spool's command line. Everything lives in `cli/`; see its module docs for the
//! commands and the exit codes.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
