//! `bluegreen plan` simulates the spec on healthy providers: for every
//! shipped example the dry run predicts what a real deployment of it does,
//! a success. (It once predicted a rollback for the local example: its fake
//! live color served 3 while the spec says 2, and its instances took the
//! whole 30 s deploy deadline to start.)

use std::path::PathBuf;
use std::process::Command;

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut specs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("toml" | "yaml")
            )
        })
        .collect();
    specs.sort();
    specs
}

#[test]
fn the_dry_run_of_every_example_spec_predicts_success() {
    let specs = examples();
    assert!(specs.len() >= 3, "{specs:?}");
    for spec in specs {
        let out = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
            .arg("plan")
            .arg(&spec)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("Simulated outcome on healthy providers: succeeded."),
            "{}: exit {:?}\n{stdout}\n{}",
            spec.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
