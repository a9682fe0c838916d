//! The `xca` command line: parse, dispatch, map errors to exit codes. Nothing else.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
