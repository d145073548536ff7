//! The `bluegreen` binary.

fn main() {
    // `bluegreen report ... | head`: when the reader goes away, stop quietly
    // as other command-line tools do (128 + SIGPIPE), not with a panic.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
    std::process::exit(bluegreen_cli::main());
}
