//! `docs/iam-policy.json` lists exactly the AWS actions this crate's sources call.

use bluegreen_aws::testing::iam::IamPolicy;

#[test]
fn the_iam_policy_lists_exactly_the_actions_the_code_calls() {
    IamPolicy {
        crate_dir: env!("CARGO_MANIFEST_DIR"),
        clients: &[("cloudwatch", "cloudwatch"), ("logs", "logs")],
        implied: &[],
        declared: bluegreen_cloudwatch::IAM_ACTIONS,
    }
    .check();
}
