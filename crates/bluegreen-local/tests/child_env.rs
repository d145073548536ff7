//! What a deployer gives its instances: an explicit environment, not its own
//! (which holds the journal's URL with its password and secrets), and logs in
//! a private directory that goes away with the deployment. Each instance is
//! a real child process (the demo app); its environment is read back from
//! `/proc/<pid>/environ`, the environment the kernel started it with.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Once};
use std::time::Duration;

use bluegreen_core::testing::FakeSecrets;
use bluegreen_core::{Color, ComputeProvider};
use bluegreen_local::LocalCompute;
use common::*;

const JOURNAL_URL: &str = "postgres://u:secret@h/db";
const SOME_SECRET: &str = "s3cr3t-value-of-the-deployer";

/// The deployer's environment, as the CLI would have it: set once, before
/// any runtime or child starts (this test binary's tests all want the same).
fn deployer_env() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        std::env::set_var("BLUEGREEN_JOURNAL_URL", JOURNAL_URL);
        std::env::set_var("SOME_SECRET", SOME_SECRET);
        std::env::set_var("TZ", "Europe/Paris");
        std::env::set_var("LANG_NOT_LISTED", "fr_FR.UTF-8");
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The environment process `pid` was started with.
fn environ(pid: u32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read /proc/<pid>/environ");
    raw.split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn compute(builder: bluegreen_local::LocalComputeBuilder) -> LocalCompute {
    builder
        .command([DEMO_APP])
        .health_interval(Duration::from_millis(200))
        .grace(Duration::from_secs(3))
        .build()
        .expect("compute")
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn an_instance_does_not_see_the_deployers_journal_url_or_secrets() {
    deployer_env();
    runtime().block_on(async {
        let secrets = Arc::new(FakeSecrets::new());
        secrets.insert("db-password", "the-release-secret", None);
        let c = compute(LocalCompute::builder().pass_env(["TZ"]).secrets(secrets));
        let mut r = release("1.0.0", 0.0);
        r.secrets
            .insert("DATABASE_PASSWORD".into(), "db-password".into());
        deploy(&c, Color::Green, &r, 1).await;
        let i = &c.instances(Color::Green)[0];
        let env = environ(i.pid.expect("pid"));
        let shown = format!("{:?}", env.keys().collect::<Vec<_>>());

        assert!(
            !env.contains_key("BLUEGREEN_JOURNAL_URL"),
            "the journal URL reached the instance: {shown}"
        );
        assert!(
            !env.contains_key("SOME_SECRET"),
            "a secret of the deployer reached the instance: {shown}"
        );
        assert!(
            !env.values()
                .any(|v| v.contains("secret@h") || v == SOME_SECRET),
            "a value of the deployer's secrets reached the instance: {shown}"
        );
        assert!(
            !env.contains_key("LANG_NOT_LISTED"),
            "a variable not passed through reached the instance: {shown}"
        );
        assert_eq!(env.get("PORT"), Some(&i.port.to_string()), "{shown}");
        assert_eq!(
            env.get("PATH").map(String::as_str),
            std::env::var("PATH").ok().as_deref(),
            "the deployer's PATH: {shown}"
        );
        assert_eq!(
            env.get("APP_VERSION").map(String::as_str),
            Some("1.0.0"),
            "{shown}"
        );
        assert_eq!(
            env.get("FAILURE_RATE").map(String::as_str),
            Some("0"),
            "{shown}"
        );
        assert_eq!(
            env.get("DATABASE_PASSWORD").map(String::as_str),
            Some("the-release-secret"),
            "the release's secret: {shown}"
        );
        assert_eq!(
            env.get("TZ").map(String::as_str),
            Some("Europe/Paris"),
            "the variable passed through: {shown}"
        );
        let expected: Vec<&str> = vec![
            "APP_VERSION",
            "BLUEGREEN_COLOR",
            // The deployer's pid, by which a resumed deployer finds the
            // instances a killed one left running (not a secret).
            "BLUEGREEN_DEPLOYER_PID",
            "BLUEGREEN_INSTANCE",
            "BLUEGREEN_VERSION",
            "DATABASE_PASSWORD",
            "FAILURE_RATE",
            "PATH",
            "PORT",
            "TZ",
        ];
        assert_eq!(
            env.keys().map(String::as_str).collect::<Vec<_>>(),
            expected,
            "nothing else"
        );
        c.shutdown().await;
    });
}

#[test]
fn instance_logs_are_in_a_private_directory_removed_with_the_deployment() {
    deployer_env();
    let parent = tempfile::tempdir().expect("tempdir");
    // A parent directory that is missing is created private too.
    let parent = parent.path().join("logs");
    runtime().block_on(async {
        let c = compute(LocalCompute::builder().log_dir(&parent));
        let dir = c.log_dir().to_path_buf();
        assert!(dir.starts_with(&parent), "{}", dir.display());
        assert_eq!(mode(&parent), 0o700, "the parent made for the logs");
        assert_eq!(mode(&dir), 0o700, "the log directory");
        deploy(&c, Color::Green, &release("1.0.0", 0.0), 1).await;
        let log = c.instances(Color::Green)[0].log.clone();
        assert!(log.starts_with(&dir), "{}", log.display());
        assert_eq!(mode(&log), 0o600, "the log file");
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.contains("listening"), "{text}");

        // Scaling one color to 0 mid-deployment keeps the directory.
        c.scale(Color::Green, 0).await.expect("scale to 0");
        assert!(dir.is_dir(), "still there while the provider is in use");

        // The deployment ends: removed.
        c.shutdown().await;
        assert!(!dir.exists(), "{} left behind", dir.display());

        // Used again after a shutdown: a private directory again.
        deploy(&c, Color::Blue, &release("1.0.1", 0.0), 1).await;
        assert_eq!(mode(&dir), 0o700);
        let pid = c.instances(Color::Blue)[0].pid.expect("pid");
        // The last handle dropped at the end: removed as well.
        drop(c);
        assert!(!dir.exists(), "{} left behind by drop", dir.display());
        for _ in 0..100 {
            if !alive(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive(pid), "the instance was killed with its provider");
    });
}

#[test]
fn the_default_log_directory_is_private_and_removed_unless_kept() {
    deployer_env();
    runtime().block_on(async {
        let c = compute(LocalCompute::builder());
        let dir = c.log_dir().to_path_buf();
        assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
        assert_eq!(mode(&dir), 0o700);
        deploy(&c, Color::Green, &release("1.0.0", 0.0), 1).await;
        c.shutdown().await;
        assert!(!dir.exists(), "{} left behind", dir.display());

        let kept = compute(LocalCompute::builder().keep_logs(true));
        let dir = kept.log_dir().to_path_buf();
        deploy(&kept, Color::Green, &release("1.0.0", 0.0), 1).await;
        let log = kept.instances(Color::Green)[0].log.clone();
        kept.shutdown().await;
        drop(kept);
        assert!(log.is_file(), "keep_logs(true) keeps {}", log.display());
        std::fs::remove_dir_all(&dir).expect("clean up");
    });
}

#[test]
fn a_pass_env_entry_that_is_no_variable_name_is_refused() {
    let e = LocalCompute::builder()
        .pass_env(["TZ", "A=B"])
        .build()
        .expect_err("refused");
    assert!(e.to_string().contains("\"A=B\""), "{e}");
}
