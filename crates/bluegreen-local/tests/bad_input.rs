//! Bad input and failures: each gives a clear error (or answer) and leaves
//! nothing running.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::{
    Color, ComputeProvider, ErrorKind, Release, Rollout, TrafficRouter, TrafficSplit,
};
use bluegreen_local::{LocalCompute, LocalProxy, PROXY_ERROR_HEADER};
use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_command_that_does_not_exist_is_a_not_found_error_naming_it() {
    let e = LocalCompute::builder()
        .command(["/no/such/dir/app-server"])
        .build()
        .expect_err("a missing program is refused at build");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!e.is_temporary());
    assert!(e.to_string().contains("/no/such/dir/app-server"), "{e}");

    // Without a fixed command the release's image is the command line.
    let compute = LocalCompute::builder().build().unwrap();
    let e = compute
        .prepare(
            Color::Blue,
            &Release::new("1.0.0", "no-such-program-bluegreen --port 1"),
        )
        .await
        .expect_err("a missing program is refused at prepare");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!((e.provider(), e.operation()), ("local", "prepare"));
    assert!(
        e.to_string()
            .contains("\"no-such-program-bluegreen\" does not exist on PATH"),
        "{e}"
    );
    let e = compute
        .scale(Color::Blue, 1)
        .await
        .expect_err("nothing prepared");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(compute.instances(Color::Blue).is_empty(), "nothing started");
    assert_eq!(compute.status(Color::Blue).await.unwrap().running, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_already_in_use_is_a_conflict_naming_it_and_stops_what_the_call_started() {
    // Two consecutive free ports; the second is taken by someone else.
    let (base, _taken) = loop {
        let base = free_port();
        if base < u16::MAX {
            if let Ok(l) = TcpListener::bind(("127.0.0.1", base + 1)) {
                break (base, l);
            }
        }
    };
    let compute = LocalCompute::builder()
        .command([DEMO_APP])
        .base_port(Color::Blue, base)
        .build()
        .unwrap();
    compute
        .prepare(Color::Blue, &release("1.0.0", 0.0))
        .await
        .unwrap();
    let e = compute
        .scale(Color::Blue, 2)
        .await
        .expect_err("port in use");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(
        e.to_string().contains(&format!(
            "port {} for blue instance 1 is already in use",
            base + 1
        )),
        "{e}"
    );
    assert!(
        compute.instances(Color::Blue).is_empty(),
        "instance 0 was stopped again"
    );
    let s = compute.status(Color::Blue).await.unwrap();
    assert_eq!((s.running, s.pending), (0, 0), "{s:?}");
    // Instance 0's port is free again: its process is gone.
    for _ in 0..50 {
        if TcpListener::bind(("127.0.0.1", base)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    TcpListener::bind(("127.0.0.1", base)).expect("nothing left listening on instance 0's port");

    // The proxy's own listen address in use.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let e = LocalProxy::builder(Arc::new(compute.clone()))
        .listen(taken.local_addr().unwrap())
        .start()
        .await
        .expect_err("listen address in use");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(
        e.to_string()
            .contains(&taken.local_addr().unwrap().to_string()),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_that_never_passes_keeps_the_color_pending_never_serving() {
    let compute = demo_compute();
    let mut bad = release("9.9.9", 0.0);
    bad.env.insert("HEALTH_FAIL".into(), "1".into());
    compute.prepare(Color::Blue, &bad).await.unwrap();
    compute.scale(Color::Blue, 2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = compute.status(Color::Blue).await.unwrap();
    assert_eq!(
        (s.desired, s.running, s.pending, s.healthy),
        (2, 0, 2, Some(0)),
        "{s:?}"
    );
    assert_eq!(s.rollout, Rollout::InProgress);
    assert!(!s.is_stable_at(2));
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .start()
        .await
        .unwrap();
    let h = proxy.target_health(Color::Blue).await.unwrap();
    assert_eq!((h.healthy, h.total), (0, 2));
    // Nothing is sent to instances that never became ready.
    let (status, _, body) = get(&client(), &format!("{}/", proxy.url())).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("blue has no serving instance"), "{body}");
    let pids: Vec<u32> = compute
        .instances(Color::Blue)
        .iter()
        .filter_map(|i| i.pid)
        .collect();
    compute.scale(Color::Blue, 0).await.unwrap();
    assert!(pids.iter().all(|p| !alive(*p)), "stopped: {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_dies_mid_request_gives_a_502_to_that_client_only_and_is_not_restarted() {
    let compute = demo_compute();
    deploy(&compute, Color::Green, &release("1.0.0", 0.0), 2).await;
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .initial_split(TrafficSplit::all_on(Color::Green))
        .start()
        .await
        .unwrap();
    let url = proxy.url();
    let bystander = client();
    let (status, _, _) = get(&bystander, &format!("{url}/")).await.unwrap();
    assert_eq!(status, 200);

    let victim = client();
    let resp = victim
        .get(format!("{url}/crash").parse().unwrap())
        .await
        .expect("the proxy answers even though the backend died");
    assert_eq!(resp.status().as_u16(), 502);
    assert!(resp.headers().contains_key(PROXY_ERROR_HEADER));

    // The bystander's keep-alive connection and everyone after get answers
    // from the surviving instance.
    for _ in 0..50 {
        let (status, color, body) = get(&bystander, &format!("{url}/")).await.unwrap();
        assert_eq!((status, color.as_deref()), (200, Some("green")), "{body}");
    }
    let s = compute.status(Color::Green).await.unwrap();
    assert_eq!((s.desired, s.running, s.failed), (2, 1, 1), "{s:?}");
    assert_eq!(s.rollout, Rollout::Failed);
    let h = proxy.target_health(Color::Green).await.unwrap();
    assert_eq!(
        (h.healthy, h.total),
        (1, 2),
        "the crashed instance is unhealthy"
    );
    // Never restarted behind the engine's back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let crashed: Vec<_> = compute
        .instances(Color::Green)
        .into_iter()
        .filter(|i| i.exited.is_some())
        .collect();
    assert_eq!(crashed.len(), 1);
    assert_eq!(compute.status(Color::Green).await.unwrap().running, 1);
    let log = std::fs::read_to_string(&crashed[0].log).unwrap();
    assert!(
        log.contains("/crash requested"),
        "the crash is in the instance's log: {log}"
    );
    assert_eq!(
        proxy.metrics().total(Color::Green).errors,
        1,
        "the 502 counts as green's 5xx"
    );
    // An explicit scale replaces it.
    compute.scale(Color::Green, 2).await.unwrap();
    wait_stable(&compute, Color::Green, 2).await;
    compute.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_ignoring_sigterm_is_killed_after_the_grace_period() {
    let compute = LocalCompute::builder()
        .command(["sh", "-c", "trap '' TERM; sleep 60 & wait; sleep 60"])
        .grace(Duration::from_millis(300))
        .drain(Duration::ZERO)
        .build()
        .unwrap();
    compute
        .prepare(Color::Blue, &Release::new("1", "sh"))
        .await
        .unwrap();
    compute.scale(Color::Blue, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = compute.instances(Color::Blue)[0].pid.unwrap();
    assert!(alive(pid));
    compute.scale(Color::Blue, 0).await.unwrap();
    assert!(!alive(pid), "killed after the grace period");
    assert!(compute.instances(Color::Blue).is_empty());
}
