//! Credentials as the AWS SDKs resolve them (`target.ecs`): the real
//! `bluegreen` binary, each run in a clean environment of its own (no
//! inherited AWS variables, HOME an empty directory), deploys a spec against
//! moto (BLUEGREEN_TEST_MOTO_ENDPOINT) whose cluster does not exist, so the
//! run stops in preflight with nothing changed after it has named the
//! identity it runs as. The credentials come from:
//! - `role_arn` with `external_id` and `session_name`: moto's STS AssumeRole;
//! - a web identity token file (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN):
//!   moto's AssumeRoleWithWebIdentity;
//! - a local server playing the ECS container credentials endpoint
//!   (AWS_CONTAINER_CREDENTIALS_FULL_URI on 127.0.0.1);
//! - another playing IMDSv2 (AWS_EC2_METADATA_SERVICE_ENDPOINT);
//! - a profile of the shared credentials file.
//!
//! The fake servers hand out credentials that moto's AssumeRole issued, so
//! GetCallerIdentity's ARN (moto maps the access key id back to its role and
//! session) proves that those credentials, and not others, reached moto.
//! No run shows a secret access key.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use bluegreen_aws::testing::alb::{alb_fixture, AlbFixture};
use bluegreen_aws::testing::{endpoint, moto, unique, REGION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ACCOUNT: &str = "123456789012";

fn prometheus_url() -> String {
    std::env::var("BLUEGREEN_TEST_PROMETHEUS_URL").unwrap_or_else(|_| {
        panic!(
            "BLUEGREEN_TEST_PROMETHEUS_URL is not set: run scripts/test, which starts Prometheus \
             (scripts/services/prometheus.sh) and exports it"
        )
    })
}

/// A spec on a cluster that does not exist, routing on `alb`'s rule, with
/// `extra` lines in `[target.ecs]`.
fn spec(alb: &AlbFixture, extra: &str) -> String {
    format!(
        r#"
[scope]
service = "order-api"
version = "2.5.0"
image = "order-api:2.5.0"

[target.ecs]
cluster = "{cluster}"
region = "{REGION}"
endpoint_url = "{endpoint}"
services = {{ blue = "order-api-blue", green = "order-api-green" }}
{extra}

[target.alb]
rule_arn = "{rule}"
target_groups = {{ blue = "{blue}", green = "{green}" }}

[deployment]
replicas = 1

[monitoring]
provider = "prometheus"
prometheus = {{ url = "{prom}" }}

[[monitoring.checks]]
name = "error-rate"
query = "bluegreen_error_ratio_{{color}}"
unit = "ratio"
success = "< 0.01"
min_samples = 1

[journal]
path = "deploy.journal"
"#,
        cluster = unique("bg-no-cluster"),
        endpoint = endpoint(),
        rule = alb.rule,
        blue = alb.blue,
        green = alb.green,
        prom = prometheus_url(),
    )
}

/// Runs `bluegreen deploy spec.toml` in `dir` with only `env` (and PATH,
/// HOME = `dir`, the instance metadata service off unless `env` sets its
/// endpoint), off the async runtime so that the test's servers answer.
async fn deploy(dir: &Path, env: &[(&str, &str)]) -> Output {
    let dir = dir.to_path_buf();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bluegreen"));
        c.current_dir(&dir)
            .args(["deploy", "spec.toml"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &dir);
        if !env
            .iter()
            .any(|(k, _)| k == "AWS_EC2_METADATA_SERVICE_ENDPOINT")
        {
            c.env("AWS_EC2_METADATA_DISABLED", "true");
        }
        c.envs(env).output().expect("the bluegreen binary runs")
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The identity line of the run; asserts the run was refused in preflight
/// (the cluster is missing), not for its credentials, and shows no secret.
fn identity_line(out: &Output, secrets: &[&str]) -> String {
    let all = text(out);
    eprintln!("{all}");
    for s in secrets {
        assert!(!all.contains(s), "a secret key shows: {all}");
    }
    assert_eq!(
        out.status.code(),
        Some(bluegreen_cli::cli::EXIT_REFUSED),
        "refused in preflight: {all}"
    );
    assert!(
        all.contains("ClusterNotFoundException"),
        "refused for the missing cluster, after the identity: {all}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("AWS identity: "))
        .unwrap_or_else(|| panic!("an identity line: {all}"))
        .to_string()
}

/// Temporary credentials moto's STS issues for `role`/`session`.
async fn moto_credentials(role: &str, session: &str) -> aws_sdk_sts::types::Credentials {
    aws_sdk_sts::Client::new(&moto())
        .assume_role()
        .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/{role}"))
        .role_session_name(session)
        .send()
        .await
        .expect("moto's AssumeRole")
        .credentials
        .expect("credentials")
}

async fn setup(extra: &str) -> (tempfile::TempDir, AlbFixture) {
    let alb = alb_fixture(&aws_sdk_elasticloadbalancingv2::Client::new(&moto()), 1).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec(&alb, extra)).unwrap();
    (dir, alb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_arn_is_assumed_with_its_external_id_and_session_name() {
    let role = unique("deployer");
    let session = unique("ci-run");
    let (dir, _alb) = setup(&format!(
        "role_arn = \"arn:aws:iam::{ACCOUNT}:role/{role}\"\nexternal_id = \"ext-42\"\nsession_name = \"{session}\""
    ))
    .await;
    let out = deploy(
        dir.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "AKIABASEKEY"),
            ("AWS_SECRET_ACCESS_KEY", "base-secret-key-never-shown"),
        ],
    )
    .await;
    let line = identity_line(&out, &["base-secret-key-never-shown"]);
    assert_eq!(
        line,
        format!(
            "AWS identity: account {ACCOUNT}, arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"
        ),
        "GetCallerIdentity ran as the assumed role and session"
    );
    let arn = format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}");
    let journal = std::fs::read_to_string(dir.path().join("deploy.journal")).unwrap();
    assert!(
        journal.contains(&format!(", as {arn}, pid ")),
        "the journal's holder names the identity: {journal}"
    );
    assert!(!journal.contains("base-secret-key-never-shown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_identity_token_file_is_exchanged_through_sts() {
    let role = unique("ci-oidc");
    let session = unique("pipeline");
    let (dir, _alb) = setup("").await;
    let token = dir.path().join("oidc-token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJl").unwrap();
    let out = deploy(
        dir.path(),
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            (
                "AWS_ROLE_ARN",
                &format!("arn:aws:iam::{ACCOUNT}:role/{role}"),
            ),
            ("AWS_ROLE_SESSION_NAME", &session),
            ("AWS_ENDPOINT_URL_STS", &endpoint()),
        ],
    )
    .await;
    let line = identity_line(&out, &[]);
    assert_eq!(
        line,
        format!(
            "AWS identity: account {ACCOUNT}, arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"
        ),
        "AssumeRoleWithWebIdentity's role and session"
    );
}

/// A one-route-table HTTP server on 127.0.0.1: answers each request with
/// `answer(method, path, headers)` (status, extra headers, body) and
/// records "METHOD PATH" and the headers of each; the request's body (by
/// its `content-length`) is in the headers as `:body`.
struct Fake {
    url: String,
    requests: Requests,
}

/// Each request's "METHOD PATH" and headers (lowercase names).
type Requests = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

type Answer = (u16, Vec<(String, String)>, String);

async fn fake_server(
    answer: impl Fn(&str, &str, &BTreeMap<String, String>) -> Answer + Send + Sync + 'static,
) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests: Requests = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    let log = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            let log = log.clone();
            tokio::spawn(async move {
                loop {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let mut body_bytes = buf[end..].to_vec();
                    let mut lines = head.lines();
                    let first = lines.next().unwrap_or("").to_string();
                    let mut parts = first.split(' ');
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("").to_string();
                    let headers: BTreeMap<String, String> = lines
                        .take_while(|l| !l.is_empty())
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let length: usize = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    while body_bytes.len() < length {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => body_bytes.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let mut headers = headers;
                    headers.insert(
                        ":body".into(),
                        String::from_utf8_lossy(&body_bytes).to_string(),
                    );
                    let (status, extra, body) = answer(&method, &path, &headers);
                    log.lock()
                        .unwrap()
                        .push((format!("{method} {path}"), headers));
                    let mut resp =
                        format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
                    for (k, v) in extra {
                        resp.push_str(&format!("{k}: {v}\r\n"));
                    }
                    resp.push_str("\r\n");
                    resp.push_str(&body);
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Fake { url, requests }
}

fn expiration() -> String {
    expiring_in(3600)
}

fn expiring_in(secs: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(secs),
    )
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_credentials_endpoint_is_read_with_its_authorization_token() {
    let role = unique("ecs-task-role");
    let session = unique("task");
    let issued = moto_credentials(&role, &session).await;
    let body = serde_json::json!({
        "RoleArn": format!("arn:aws:iam::{ACCOUNT}:role/{role}"),
        "AccessKeyId": issued.access_key_id(),
        "SecretAccessKey": issued.secret_access_key(),
        "Token": issued.session_token(),
        "Expiration": expiration(),
    })
    .to_string();
    let server = fake_server(move |m, p, _| match (m, p) {
        ("GET", "/v2/credentials/task") => (200, vec![], body.clone()),
        _ => (404, vec![], String::new()),
    })
    .await;
    let (dir, _alb) = setup("").await;
    let out = deploy(
        dir.path(),
        &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                &format!("{}/v2/credentials/task", server.url),
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-auth-token"),
        ],
    )
    .await;
    let line = identity_line(&out, &[issued.secret_access_key()]);
    assert_eq!(
        line,
        format!(
            "AWS identity: account {ACCOUNT}, arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"
        ),
        "the credentials the container endpoint served reached moto"
    );
    let requests = server.requests.lock().unwrap().clone();
    assert!(!requests.is_empty(), "the endpoint was asked");
    for (r, headers) in &requests {
        assert_eq!(r, "GET /v2/credentials/task");
        assert_eq!(
            headers.get("authorization").map(String::as_str),
            Some("container-auth-token"),
            "the authorization token is sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_role_is_read_over_imdsv2() {
    let role = unique("ec2-role");
    let session = unique("i-0abc");
    let issued = moto_credentials(&role, &session).await;
    let body = serde_json::json!({
        "Code": "Success",
        "LastUpdated": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "Type": "AWS-HMAC",
        "AccessKeyId": issued.access_key_id(),
        "SecretAccessKey": issued.secret_access_key(),
        "Token": issued.session_token(),
        "Expiration": expiration(),
    })
    .to_string();
    let role_path = format!("/latest/meta-data/iam/security-credentials/{role}");
    let listed = role.clone();
    let server = fake_server(move |m, p, h| {
        let token_ok = h.get("x-aws-ec2-metadata-token").map(String::as_str) == Some("imds-token");
        match (m, p) {
            ("PUT", "/latest/api/token") => (
                200,
                vec![(
                    "x-aws-ec2-metadata-token-ttl-seconds".into(),
                    "21600".into(),
                )],
                "imds-token".into(),
            ),
            ("GET", _) if !token_ok => (401, vec![], String::new()),
            ("GET", "/latest/meta-data/iam/security-credentials/") => (200, vec![], listed.clone()),
            ("GET", p) if p == role_path => (200, vec![], body.clone()),
            _ => (404, vec![], String::new()),
        }
    })
    .await;
    let (dir, _alb) = setup("").await;
    let out = deploy(
        dir.path(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &server.url)],
    )
    .await;
    let line = identity_line(&out, &[issued.secret_access_key()]);
    assert_eq!(
        line,
        format!(
            "AWS identity: account {ACCOUNT}, arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"
        ),
        "the instance role's credentials reached moto"
    );
    let requests: Vec<String> = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(r, _)| r.clone())
        .collect();
    assert_eq!(
        requests.first().map(String::as_str),
        Some("PUT /latest/api/token"),
        "IMDSv2: a session token first: {requests:?}"
    );
    assert!(
        requests.contains(&format!(
            "GET /latest/meta-data/iam/security-credentials/{role}"
        )),
        "the role's credentials were read: {requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_of_the_shared_credentials_file_is_used_and_a_missing_one_refuses() {
    let role = unique("profile-role");
    let session = unique("laptop");
    let issued = moto_credentials(&role, &session).await;
    let (dir, alb) = setup("profile = \"deploy\"").await;
    std::fs::create_dir(dir.path().join(".aws")).unwrap();
    std::fs::write(
        dir.path().join(".aws/credentials"),
        format!(
            "[default]\naws_access_key_id = AKIANOTTHISONE\naws_secret_access_key = wrong\n\n[deploy]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
            issued.access_key_id(),
            issued.secret_access_key(),
            issued.session_token()
        ),
    )
    .unwrap();
    let out = deploy(dir.path(), &[]).await;
    let line = identity_line(&out, &[issued.secret_access_key()]);
    assert_eq!(
        line,
        format!(
            "AWS identity: account {ACCOUNT}, arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"
        ),
        "the profile's credentials reached moto"
    );

    std::fs::write(
        dir.path().join("spec.toml"),
        spec(&alb, "profile = \"nope\""),
    )
    .unwrap();
    let out = deploy(dir.path(), &[]).await;
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(bluegreen_cli::cli::EXIT_REFUSED),
        "refused, nothing changed: {all}"
    );
    assert!(
        all.contains("target.ecs.profile \"nope\"") && all.contains("GetCallerIdentity"),
        "the error names the field and the call: {all}"
    );
    assert!(!all.contains(issued.secret_access_key()), "{all}");
    assert!(!all.contains("AWS identity: "), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_anywhere_refuses_before_any_change() {
    let (dir, _alb) = setup("").await;
    let out = deploy(dir.path(), &[]).await;
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(bluegreen_cli::cli::EXIT_REFUSED),
        "refused, nothing changed: {all}"
    );
    assert!(
        all.contains("refused, nothing was changed")
            && all.contains("GetCallerIdentity")
            && all.contains("default credential chain"),
        "says the identity could not be resolved and from where: {all}"
    );
    assert!(!all.contains("AWS identity: "), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credential_keys_are_refused_naming_the_field() {
    let (dir, alb) = setup("").await;
    for (extra, field, says) in [
        (
            "role_arn = \"arn:aws:iam::123456789012:user/deployer\"",
            "target.ecs.role_arn",
            "is not an IAM role ARN",
        ),
        (
            "session_name = \"ci\"",
            "target.ecs.session_name",
            "give target.ecs.role_arn too",
        ),
        (
            "role_arn = \"arn:aws:iam::123456789012:role/deployer\"\nexternal_id = \"has space\"",
            "target.ecs.external_id",
            "must be 2 to 1224 characters",
        ),
        ("profile = \"\"", "target.ecs.profile", "must not be empty"),
        ("region = \" \"", "target.ecs.region", "must not be empty"),
    ] {
        let text_spec = spec(&alb, extra).replace(&format!("region = \"{REGION}\"\n"), "");
        std::fs::write(dir.path().join("spec.toml"), text_spec).unwrap();
        let out = tokio::task::spawn_blocking({
            let d = dir.path().to_path_buf();
            move || {
                Command::new(env!("CARGO_BIN_EXE_bluegreen"))
                    .current_dir(d)
                    .args(["validate", "spec.toml"])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let all = text(&out);
        assert_ne!(out.status.code(), Some(0), "{extra}: {all}");
        assert!(all.contains(field) && all.contains(says), "{extra}: {all}");
    }
}

/// Credentials are not read once into static values: ones about to expire
/// (inside the SDK's refresh buffer) are fetched again for a later call,
/// here the preflight's ECS call after GetCallerIdentity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_about_to_expire_are_fetched_again_during_the_run() {
    let role = unique("ecs-task-role");
    let session = unique("short");
    let issued = moto_credentials(&role, &session).await;
    let (key, secret, token) = (
        issued.access_key_id().to_string(),
        issued.secret_access_key().to_string(),
        issued.session_token().to_string(),
    );
    let server = fake_server(move |_, _, _| {
        let body = serde_json::json!({
            "AccessKeyId": key,
            "SecretAccessKey": secret,
            "Token": token,
            "Expiration": expiring_in(3),
        });
        (200, vec![], body.to_string())
    })
    .await;
    let (dir, _alb) = setup("").await;
    let out = deploy(
        dir.path(),
        &[(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            &format!("{}/creds", server.url),
        )],
    )
    .await;
    let line = identity_line(&out, &[issued.secret_access_key()]);
    assert!(
        line.ends_with(&format!("assumed-role/{role}/{session}")),
        "{line}"
    );
    let asked = server.requests.lock().unwrap().len();
    assert!(
        asked >= 2,
        "credentials 3 s from expiry were fetched again for the next call, {asked} fetch(es)"
    );
}

/// `spec(alb, extra)` as a member of a group, for `service`.
fn member(alb: &AlbFixture, extra: &str, service: &str) -> String {
    let s = spec(alb, extra);
    let s = &s[..s.find("[journal]").unwrap()];
    s.replace(
        "service = \"order-api\"",
        &format!("service = \"{service}\""),
    )
    .replace("[scope]", "[[services]]\n[services.scope]")
    .replace("\n[target.", "\n[services.target.")
    .replace("\n[deployment]", "\n[services.deployment]")
    .replace("\n[monitoring]", "\n[services.monitoring]")
    .replace("[[monitoring.checks]]", "[[services.monitoring.checks]]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_names_its_identity_once_and_refuses_without_credentials() {
    let role = unique("group-deployer");
    let extra = format!("role_arn = \"arn:aws:iam::{ACCOUNT}:role/{role}\"");
    let (dir, alb) = setup("").await;
    let group = format!(
        "[group]\nname = \"checkout\"\n{}{}\n[journal]\npath = \"checkout.journal\"\n",
        member(&alb, &extra, "order-api"),
        member(&alb, &extra, "payment-api"),
    );
    std::fs::write(dir.path().join("spec.toml"), &group).unwrap();
    let out = deploy(
        dir.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "AKIABASEKEY"),
            ("AWS_SECRET_ACCESS_KEY", "base-secret-key-never-shown"),
        ],
    )
    .await;
    let all = text(&out);
    assert!(!all.contains("base-secret-key-never-shown"), "{all}");
    let lines: Vec<&str> = all
        .lines()
        .filter(|l| l.starts_with("AWS identity: "))
        .collect();
    assert_eq!(
        lines,
        vec![format!(
            "AWS identity: account {ACCOUNT}, arn:aws:sts::{ACCOUNT}:assumed-role/{role}/bluegreen"
        )],
        "one line for the members' one identity, the default session name: {all}"
    );

    let out = deploy(dir.path(), &[]).await;
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(bluegreen_cli::cli::EXIT_REFUSED),
        "refused, nothing changed: {all}"
    );
    assert!(all.contains("GetCallerIdentity"), "{all}");
}

/// What reaches STS for `role_arn`: the spec's endpoint is a fake STS here
/// (moto does not check an external id), which records each request.
/// AssumeRole carries RoleArn, ExternalId and RoleSessionName from the
/// spec and is signed with the chain's key; GetCallerIdentity is signed
/// with the key AssumeRole returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_sends_the_external_id_and_session_name_and_uses_the_returned_key() {
    let arn = format!("arn:aws:sts::{ACCOUNT}:assumed-role/deployer/ci-4711");
    let caller = arn.clone();
    let server = fake_server(move |_, _, h| {
        let body = h.get(":body").cloned().unwrap_or_default();
        let xml = |name: &str, inner: String| {
            format!(
                "<{name}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{name}Result>{inner}</{name}Result><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></{name}Response>"
            )
        };
        if body.contains("Action=AssumeRole&") || body.ends_with("Action=AssumeRole") {
            let inner = format!(
                "<Credentials><AccessKeyId>ASIAFAKEASSUMED</AccessKeyId><SecretAccessKey>assumed-secret-never-shown</SecretAccessKey><SessionToken>assumed-token</SessionToken><Expiration>{}</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROAFAKE:ci-4711</AssumedRoleId><Arn>{caller}</Arn></AssumedRoleUser>",
                expiration()
            );
            (200, vec![], xml("AssumeRole", inner))
        } else if body.contains("Action=GetCallerIdentity") {
            let inner = format!(
                "<Arn>{caller}</Arn><UserId>AROAFAKE:ci-4711</UserId><Account>{ACCOUNT}</Account>"
            );
            (200, vec![], xml("GetCallerIdentity", inner))
        } else {
            (
                400,
                vec![("content-type".into(), "application/x-amz-json-1.1".into())],
                r#"{"__type":"ClusterNotFoundException","message":"Cluster not found."}"#.into(),
            )
        }
    })
    .await;
    let alb = AlbFixture {
        rule: "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/x/1/2/3"
            .into(),
        blue: "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/b/1".into(),
        green: "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/g/2".into(),
        listener: "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/x/1/2".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let text_spec = spec(
        &alb,
        &format!("role_arn = \"arn:aws:iam::{ACCOUNT}:role/deployer\"\nexternal_id = \"ext-42\"\nsession_name = \"ci-4711\""),
    )
    .replace(&format!("endpoint_url = \"{}\"", endpoint()), &format!("endpoint_url = \"{}\"", server.url));
    std::fs::write(dir.path().join("spec.toml"), text_spec).unwrap();
    let out = deploy(
        dir.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "AKIABASEKEY"),
            ("AWS_SECRET_ACCESS_KEY", "base-secret-key-never-shown"),
        ],
    )
    .await;
    let all = text(&out);
    eprintln!("{all}");
    for secret in ["base-secret-key-never-shown", "assumed-secret-never-shown"] {
        assert!(!all.contains(secret), "{all}");
    }
    assert!(
        all.contains(&format!("AWS identity: account {ACCOUNT}, {arn}")),
        "{all}"
    );
    let requests = server.requests.lock().unwrap().clone();
    let sts = |action: &str| {
        requests
            .iter()
            .filter(|(_, h)| {
                h.get(":body")
                    .is_some_and(|b| b.split('&').any(|kv| kv == format!("Action={action}")))
            })
            .map(|(_, h)| h.clone())
            .collect::<Vec<_>>()
    };
    let assume = sts("AssumeRole");
    assert_eq!(
        assume.len(),
        1,
        "one AssumeRole for the whole run: {requests:?}"
    );
    let body = &assume[0][":body"];
    for kv in [
        "ExternalId=ext-42",
        "RoleSessionName=ci-4711",
        &format!("RoleArn=arn%3Aaws%3Aiam%3A%3A{ACCOUNT}%3Arole%2Fdeployer"),
    ] {
        assert!(body.split('&').any(|p| p == kv), "{kv} in {body}");
    }
    assert!(
        assume[0]["authorization"].contains("Credential=AKIABASEKEY/"),
        "AssumeRole is signed with the chain's key"
    );
    let who = sts("GetCallerIdentity");
    assert_eq!(who.len(), 1, "{requests:?}");
    assert!(
        who[0]["authorization"].contains("Credential=ASIAFAKEASSUMED/"),
        "GetCallerIdentity is signed with the assumed role's key"
    );
}

/// A fake STS that refuses `action` with `code` (a query-protocol error)
/// and answers every other call with a JSON error.
async fn refusing_sts(action: &'static str, code: &'static str) -> Fake {
    fake_server(move |_, _, h| {
        let body = h.get(":body").cloned().unwrap_or_default();
        if body.split('&').any(|kv| kv == format!("Action={action}")) {
            (
                if code == "AccessDenied" { 403 } else { 400 },
                vec![("content-type".into(), "text/xml".into())],
                format!(
                    "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>refused by the test</Message></Error><RequestId>r</RequestId></ErrorResponse>"
                ),
            )
        } else {
            (
                400,
                vec![("content-type".into(), "application/x-amz-json-1.1".into())],
                r#"{"__type":"UnexpectedCall","message":"not for this test"}"#.into(),
            )
        }
    })
    .await
}

fn fake_alb() -> AlbFixture {
    AlbFixture {
        rule: "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/x/1/2/3"
            .into(),
        blue: "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/b/1".into(),
        green: "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/g/2".into(),
        listener: "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/x/1/2".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_cannot_be_assumed_refuses_naming_the_field() {
    let sts = refusing_sts("AssumeRole", "AccessDenied").await;
    let dir = tempfile::tempdir().unwrap();
    let text_spec = spec(
        &fake_alb(),
        &format!("role_arn = \"arn:aws:iam::{ACCOUNT}:role/not-trusted\""),
    )
    .replace(&endpoint(), &sts.url);
    std::fs::write(dir.path().join("spec.toml"), text_spec).unwrap();
    let out = deploy(
        dir.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "AKIABASEKEY"),
            ("AWS_SECRET_ACCESS_KEY", "base-secret-key-never-shown"),
        ],
    )
    .await;
    let all = text(&out);
    eprintln!("{all}");
    assert_eq!(
        out.status.code(),
        Some(bluegreen_cli::cli::EXIT_REFUSED),
        "refused, nothing changed: {all}"
    );
    assert!(
        all.contains("refused, nothing was changed")
            && all.contains(&format!(
                "target.ecs.role_arn \"arn:aws:iam::{ACCOUNT}:role/not-trusted\""
            ))
            && all.contains("AccessDenied"),
        "names the field, the role and STS's reason: {all}"
    );
    assert!(!all.contains("base-secret-key-never-shown"), "{all}");
    assert!(
        !dir.path().join("deploy.journal").exists(),
        "nothing journaled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_web_identity_token_refuses_with_stss_reason() {
    let sts = refusing_sts("AssumeRoleWithWebIdentity", "ExpiredTokenException").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spec.toml"),
        spec(&fake_alb(), "").replace(&endpoint(), &sts.url),
    )
    .unwrap();
    let token = dir.path().join("oidc-token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln").unwrap();
    let out = deploy(
        dir.path(),
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            ("AWS_ROLE_ARN", &format!("arn:aws:iam::{ACCOUNT}:role/ci")),
            ("AWS_ENDPOINT_URL_STS", &sts.url),
        ],
    )
    .await;
    let all = text(&out);
    eprintln!("{all}");
    assert_eq!(
        out.status.code(),
        Some(bluegreen_cli::cli::EXIT_REFUSED),
        "refused, nothing changed: {all}"
    );
    assert!(
        all.contains("GetCallerIdentity") && all.contains("ExpiredTokenException"),
        "says the identity could not be resolved, with STS's reason: {all}"
    );
    assert!(
        !dir.path().join("deploy.journal").exists(),
        "nothing journaled"
    );
}
