//! The `bluegreen` binary.

fn main() {
    std::process::exit(bluegreen_cli::main());
}
