//! CloudWatch Logs pattern counts on moto (scripts/test starts it).

use bluegreen_aws::testing;
use bluegreen_cloudwatch::CloudWatchLogs;
use bluegreen_core::testing::conformance;
use bluegreen_core::{ErrorKind, MetricAnswer, MetricQuery, MetricsSource, Timestamp};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn q(check: &str, query: &str, from: u64, to: u64) -> MetricQuery {
    MetricQuery {
        check: check.into(),
        query: query.into(),
        from: Timestamp(from),
        to: Timestamp(to),
        color: None,
        baseline: false,
    }
}

/// A log group with a green and a blue stream: green logs three ERROR lines
/// and two INFO lines inside the window and one ERROR line after it; blue
/// logs one ERROR line.
async fn group(from: u64) -> String {
    let config = testing::moto();
    let logs = aws_sdk_cloudwatchlogs::Client::new(&config);
    let group = format!("/ecs/{}", testing::unique("order-api"));
    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    let lines: [(&str, &[(u64, &str)]); 2] = [
        (
            "order-api-green/web/1",
            &[
                (1_000, "INFO started"),
                (2_000, "ERROR db timeout"),
                (3_000, "INFO request ok"),
                (4_000, "ERROR db timeout"),
                (5_000, "ERROR upstream 502"),
                (70_000, "ERROR after the window"),
            ],
        ),
        ("order-api-blue/web/1", &[(2_500, "ERROR old color")]),
    ];
    for (stream, events) in lines {
        logs.create_log_stream()
            .log_group_name(&group)
            .log_stream_name(stream)
            .send()
            .await
            .unwrap();
        let mut put = logs
            .put_log_events()
            .log_group_name(&group)
            .log_stream_name(stream);
        for (at, message) in events {
            put = put.log_events(
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                    .timestamp((from + at) as i64)
                    .message(*message)
                    .build()
                    .unwrap(),
            );
        }
        put.send().await.unwrap();
    }
    group
}

#[tokio::test]
async fn error_lines_of_the_new_colors_streams_are_counted_over_the_window() {
    let from = now_ms() - 120_000;
    let group = group(from).await;
    let source = CloudWatchLogs::new(&testing::moto());
    let query = format!("logs group={group} stream_prefix=order-api-green/ pattern=ERROR");
    let a = source
        .query(&q("error-logs", &query, from, from + 60_000))
        .await
        .unwrap();
    let MetricAnswer::Samples { samples } = a else {
        panic!("{a:?}")
    };
    assert_eq!(samples.len(), 1);
    assert_eq!(
        samples[0].value, 3.0,
        "three ERROR lines of green in the window"
    );
    assert_eq!(samples[0].at, Timestamp(from + 60_000));
    // The old color's stream is counted only when asked for.
    let blue = format!("logs group={group} stream_prefix=order-api-blue/ pattern=ERROR");
    let a = source
        .query(&q("error-logs", &blue, from, from + 60_000))
        .await
        .unwrap();
    assert!(
        matches!(a, MetricAnswer::Samples { ref samples } if samples[0].value == 1.0),
        "{a:?}"
    );
}

#[tokio::test]
async fn streams_that_logged_nothing_are_no_data_and_a_clean_log_counts_zero() {
    let from = now_ms() - 120_000;
    let group = group(from).await;
    let source = CloudWatchLogs::new(&testing::moto());
    // Green logged, but nothing matches: zero is evidence.
    let clean = format!("logs group={group} stream_prefix=order-api-green/ pattern=FATAL");
    let a = source
        .query(&q("fatal-logs", &clean, from, from + 60_000))
        .await
        .unwrap();
    assert!(
        matches!(a, MetricAnswer::Samples { ref samples } if samples[0].value == 0.0),
        "{a:?}"
    );
    // No stream of that prefix logged anything: no data, never 0.
    let silent = format!("logs group={group} stream_prefix=order-api-purple/ pattern=ERROR");
    let a = source
        .query(&q("error-logs", &silent, from, from + 60_000))
        .await
        .unwrap();
    let MetricAnswer::NoData { reason } = a else {
        panic!("{a:?}")
    };
    assert!(
        reason.contains("\"error-logs\"") && reason.contains("no stream starting with"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_log_group_that_does_not_exist_is_an_error_naming_the_check_and_the_group() {
    let source = CloudWatchLogs::new(&testing::moto());
    let from = now_ms() - 120_000;
    let e = source
        .query(&q(
            "error-logs",
            "logs group=/ecs/no-such-group pattern=ERROR",
            from,
            from + 60_000,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().starts_with("check \"error-logs\""), "{e}");
    assert!(e.message().contains("/ecs/no-such-group"), "{e}");
    let e = source
        .query(&q("error-logs", "logs group=/ecs/x", from, from + 1))
        .await
        .unwrap_err();
    assert!(e.message().contains("needs pattern="), "{e}");
}

#[tokio::test]
async fn logs_pass_the_conformance_suite_on_moto() {
    let from = now_ms() - 120_000;
    let group = group(from).await;
    let source = CloudWatchLogs::new(&testing::moto());
    let report = conformance::check_metrics(
        &source,
        &q(
            "error-logs",
            &format!("logs group={group} stream_prefix=order-api-green/ pattern=ERROR"),
            from,
            from + 60_000,
        ),
        &q(
            "error-logs",
            &format!("logs group={group} stream_prefix=nobody/ pattern=ERROR"),
            from,
            from + 60_000,
        ),
        &conformance::Capabilities::all(),
    )
    .await;
    assert!(report.passed(), "{report}");
}
