//! `docs/iam-policy.json` lists exactly the AWS actions this crate's sources call.

use bluegreen_aws::testing::iam::IamPolicy;

#[test]
fn the_iam_policy_lists_exactly_the_actions_the_code_calls() {
    IamPolicy {
        crate_dir: env!("CARGO_MANIFEST_DIR"),
        clients: &[("sm", "secretsmanager")],
        implied: &[],
        declared: bluegreen_secretsmanager::IAM_ACTIONS,
    }
    .check();
}
