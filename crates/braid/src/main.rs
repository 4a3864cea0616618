//! `braid`: the command line with braid's own algorithms.

fn main() -> std::process::ExitCode {
    braid::cli::main_with(braid::Registry::builtin())
}
