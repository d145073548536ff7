//! Continuous HTTP load through the proxy while it performs 20 cutovers and
//! 20 rollbacks (and redeploys the idle color now and then): not one request
//! may fail.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::{Color, ComputeProvider, TrafficRouter, TrafficSplit};
use bluegreen_local::{Load, LocalProxy};
use common::*;

fn count(t: &bluegreen_local::LoadTally, c: Color) -> u64 {
    t.per_color.get(c.as_str()).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cutovers_and_twenty_rollbacks_under_load_fail_no_request() {
    let compute = demo_compute();
    let mut v1 = release("1.0.0", 0.0);
    v1.env.insert("LATENCY_MS".into(), "2".into());
    let mut v2 = release("2.0.0", 0.0);
    v2.env.insert("LATENCY_MS".into(), "2".into());
    deploy(&compute, Color::Green, &v1, 2).await;
    deploy(&compute, Color::Blue, &v2, 2).await;
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .initial_split(TrafficSplit::all_on(Color::Green))
        .start()
        .await
        .unwrap();
    let load = Load::start(&format!("{}/", proxy.url()), 8, None);
    let live = Color::Green;
    let idle = live.other();
    let (mut cutovers, mut rollbacks) = (0, 0);
    for round in 0..20 {
        // Cutover: traffic moves to the idle color in steps.
        for percent in [10, 50] {
            proxy
                .set_split(TrafficSplit::with_percent(idle, percent))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        proxy.set_split(TrafficSplit::all_on(idle)).await.unwrap();
        assert_eq!(
            proxy.current_split().await.unwrap(),
            TrafficSplit::all_on(idle)
        );
        cutovers += 1;
        // Keep-alive connections are not pinned: once requests in flight at
        // the switch are answered, the drained color gets no more requests.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = load.tally();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = load.tally();
        assert_eq!(
            count(&after, live),
            count(&before, live),
            "round {round}: {live} got requests after all traffic moved to {idle}"
        );
        assert!(
            count(&after, idle) > count(&before, idle),
            "round {round}: {idle} serves"
        );

        // Rollback: everything back on the live color at once.
        proxy.set_split(TrafficSplit::all_on(live)).await.unwrap();
        assert_eq!(
            proxy.current_split().await.unwrap(),
            TrafficSplit::all_on(live)
        );
        rollbacks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;

        // Every fifth round, redeploy the idle color (its instances are
        // stopped with SIGTERM while the last requests may still be on them).
        if round % 5 == 4 {
            let next = release(&format!("2.{round}.0"), 0.0);
            compute.prepare(idle, &next).await.unwrap();
            compute.scale(idle, 2).await.unwrap();
            wait_stable(&compute, idle, 2).await;
            assert_eq!(
                compute.status(idle).await.unwrap().version.as_deref(),
                Some(next.version.as_str())
            );
        }
    }
    let tally = load.stop().await;
    println!("zero-downtime: {cutovers} cutovers, {rollbacks} rollbacks, {tally:?}");
    assert_eq!((cutovers, rollbacks), (20, 20));
    assert_eq!(
        tally.connection_errors, 0,
        "connection errors: {:?}",
        tally.failures
    );
    assert_eq!(
        tally.proxy_errors, 0,
        "5xx the app did not produce: {:?}",
        tally.failures
    );
    assert_eq!(tally.app_errors, 0, "the app's failure rate is 0");
    assert!(tally.ok > 1000, "enough load to mean something: {tally:?}");
    assert!(
        count(&tally, Color::Blue) > 0 && count(&tally, Color::Green) > 0,
        "{tally:?}"
    );
    assert_eq!(
        count(&tally, Color::Blue) + count(&tally, Color::Green),
        tally.total()
    );
    // The proxy's own counts agree with what the clients saw.
    let m = proxy.metrics();
    assert_eq!(m.total(Color::Blue).requests, count(&tally, Color::Blue));
    assert_eq!(m.total(Color::Green).requests, count(&tally, Color::Green));
    assert_eq!(
        m.total(Color::Blue).errors + m.total(Color::Green).errors,
        0
    );
    compute.shutdown().await;
}
