//! Spec loading: the examples load, and each kind of bad input gets an error
//! with its file, line, column and what was expected — never a panic.

use bluegreen_cli::spec::{Spec, PLAIN_TEXT_SECRET};
use proptest::prelude::*;

fn example(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../examples/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn the_order_api_example_carries_the_reference_numbers() {
    let spec = Spec::from_str(&example("order-api.toml"), "order-api.toml").unwrap();
    let plan = spec.plan().unwrap();
    assert_eq!(plan.replicas, 3);
    assert_eq!(plan.timing.soak.as_secs(), 3600);
    assert_eq!(plan.smoke_tests.len(), 4);
    assert_eq!(plan.preflight.required_secrets.len(), 5);
    assert_eq!(
        plan.preflight.required_secrets[3].max_age, None,
        "webhook secret: on compromise"
    );
    assert_eq!(plan.migrations.as_ref().unwrap().backup_min_entries, 100);
    assert_eq!(
        plan.rollback_triggers[1].describe(),
        "error-rate > 0.05 for 5m"
    );
    assert_eq!(
        plan.release.secrets["DB_PASSWORD"],
        "prod/order-api/db-password"
    );
}

#[test]
fn the_local_example_loads() {
    let spec = Spec::from_str(&example("local.toml"), "local.toml").unwrap();
    assert_eq!(spec.plan().unwrap().replicas, 2);
}

#[test]
fn the_same_spec_in_yaml_loads_to_the_same_plan() {
    let toml_spec = Spec::from_str(&example("local.toml"), "local.toml").unwrap();
    let yaml = serde_norway::to_string(&toml_spec).unwrap();
    let yaml_spec = Spec::from_str(&yaml, "local.yaml").unwrap();
    assert_eq!(yaml_spec.plan().unwrap(), toml_spec.plan().unwrap());
}

fn err(text: &str, file: &str) -> bluegreen_cli::SpecError {
    Spec::from_str(text, file).unwrap_err()
}

#[test]
fn an_unknown_key_is_located_and_gets_a_suggestion() {
    let text = example("order-api.toml").replace("soak = \"1h\"", "soak_time = \"1h\"");
    let e = err(&text, "order-api.toml");
    assert_eq!(e.field, "timing.soak_time");
    assert!(e.message.contains("did you mean `soak`"), "{e}");
    let line = text
        .lines()
        .position(|l| l.starts_with("soak_time"))
        .unwrap()
        + 1;
    assert_eq!(e.line, line, "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("order-api.toml:{line}:")),
        "{e}"
    );
}

#[test]
fn an_unknown_key_in_yaml_is_located_too() {
    let yaml = "scope:\n  service: a\n  version: '1'\n  imgae: x\n";
    let e = err(yaml, "a.yaml");
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("did you mean `image`"), "{e}");
}

#[test]
fn a_wrong_type_names_the_field() {
    let text = example("local.toml").replace("replicas = 2", "replicas = \"two\"");
    let e = err(&text, "local.toml");
    assert_eq!(e.field, "deployment.replicas");
    assert!(e.message.contains("expected u32"), "{e}");
    assert_eq!(e.line, 19, "{e}");
}

#[test]
fn a_missing_section_is_named() {
    let text = example("local.toml").replace("[monitoring]\nprovider = \"local\"", "");
    let text = text.replace("[[monitoring.checks]]", "[[x.checks]]");
    let e = err(&text, "local.toml");
    assert!(
        e.message.contains("monitoring") || e.field.contains("x"),
        "{e}"
    );
    let e = err(
        "[scope]\nservice = \"a\"\nversion = \"1\"\nimage = \"i\"\n",
        "s.toml",
    );
    assert!(
        e.message
            .contains("missing required key or section `target`"),
        "{e}"
    );
}

#[test]
fn a_secret_in_plain_text_is_refused_where_a_reference_is_required() {
    let text = example("order-api.toml").replace(
        "database_url = { secret = \"prod/order-api/database-url\" }",
        "database_url = \"postgresql://admin:hunter2@prod-db:5432/orders\"",
    );
    let e = err(&text, "order-api.toml");
    assert_eq!(e.field, "migrations.database_url");
    assert!(e.message.contains(PLAIN_TEXT_SECRET), "{e}");
    assert!(
        !e.to_string().contains("hunter2"),
        "the value never shows: {e}"
    );
    let text =
        example("order-api.toml").replace("[env]\n", "[env]\nSTRIPE_API_KEY = \"sk_live_123\"\n");
    let e = err(&text, "order-api.toml");
    assert_eq!(e.field, "env.STRIPE_API_KEY");
    assert!(!e.to_string().contains("sk_live_123"), "{e}");
}

#[test]
fn a_duration_that_does_not_parse_says_what_a_duration_looks_like() {
    let text = example("order-api.toml").replace("soak = \"1h\"", "soak = \"one hour\"");
    let e = err(&text, "order-api.toml");
    assert_eq!(e.field, "timing.soak");
    assert!(e.message.contains("expected a duration such as"), "{e}");
}

#[test]
fn a_plan_rule_is_reported_with_the_spec_field() {
    let text = example("order-api.toml").replace(
        "check = \"error-rate\"\nbreach",
        "check = \"errors\"\nbreach",
    );
    let e = err(&text, "order-api.toml");
    assert_eq!(e.field, "rollback_triggers[1].check");
    assert!(e.line > 1, "{e}");
}

/// Found by the loader's fuzz test: the TOML parser gives no message for a
/// file cut off after `=`, and the error said nothing.
#[test]
fn a_toml_file_cut_off_after_an_equals_sign_gets_a_message() {
    let e = err("0=", "f.toml");
    assert!(e.message.contains("does not parse here"), "{e}");
    assert_eq!((e.line, e.column), (1, 3));
}

const FUZZ_CASES: u32 = 3000;

proptest! {
    #![proptest_config(ProptestConfig { cases: FUZZ_CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_the_loader(text in "\\PC{0,400}", yaml in any::<bool>()) {
        let file = if yaml { "f.yaml" } else { "f.toml" };
        if let Err(e) = Spec::from_str(&text, file) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn mutated_examples_never_panic_the_loader(cut in 0usize..6000, len in 0usize..40, insert in "[ =\\[\\]\"a-z0-9{}.:\n-]{0,12}") {
        let base = example("order-api.toml");
        let mut cut = cut.min(base.len());
        while !base.is_char_boundary(cut) { cut -= 1; }
        let mut end = (cut + len).min(base.len());
        while !base.is_char_boundary(end) { end -= 1; }
        let text = format!("{}{}{}", &base[..cut], insert, &base[end..]);
        if let Err(e) = Spec::from_str(&text, "order-api.toml") {
            prop_assert!(e.line >= 1, "{}", e);
        }
    }

    #[test]
    fn mutated_group_specs_never_panic_the_group_loader(cut in 0usize..5000, len in 0usize..40, insert in "[ =\\[\\]\"a-z0-9{}.:\n-]{0,12}") {
        let base = example("checkout-group.toml");
        let mut cut = cut.min(base.len());
        while !base.is_char_boundary(cut) { cut -= 1; }
        let mut end = (cut + len).min(base.len());
        while !base.is_char_boundary(end) { end -= 1; }
        let text = format!("{}{}{}", &base[..cut], insert, &base[end..]);
        let path = std::path::Path::new("checkout-group.toml");
        if let Err(e) = bluegreen_cli::group::LoadedGroup::parse(&text, path) {
            prop_assert!(e.line >= 1, "{}", e);
        }
    }
}

/// `[notifications.pagerduty]`: the routing key is a reference, the
/// severity one of PagerDuty's four, and an endpoint that is not https is
/// refused naming the field (the key would travel in plain text).
#[test]
fn a_pagerduty_endpoint_that_is_not_https_is_refused_naming_the_field() {
    let base = example("local.toml");
    let ok = format!(
        "{base}\n[notifications.pagerduty]\nrouting_key = {{ env = \"PD_ROUTING_KEY\" }}\nseverity = \"critical\"\n"
    );
    let spec = Spec::from_str(&ok, "local.toml").unwrap();
    let pd = spec.notifications.pagerduty.expect("parsed");
    assert_eq!(
        pd.severity,
        Some(bluegreen_http::pagerduty::PagerDutySeverity::Critical)
    );
    let plain = format!("{ok}endpoint = \"http://events.pagerduty.com/v2/enqueue\"\n");
    let e = err(&plain, "local.toml");
    assert_eq!(e.field, "notifications.pagerduty.endpoint", "{e}");
    assert!(e.to_string().contains("https"), "{e}");
    let bad = ok.replace("\"critical\"", "\"sev1\"");
    let e = err(&bad, "local.toml");
    assert_eq!(e.field, "notifications.pagerduty.severity", "{e}");
}
