//! The demo app: a tiny HTTP service whose version, failure rate and latency
//! come from the environment. See `bluegreen_local::demo`.

fn main() {
    std::process::exit(bluegreen_local::demo::main_from_env());
}
