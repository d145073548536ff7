//! Runs a `LocalProxy` with all traffic on one fixed backend, for
//! `benches/local_proxy.sh`: `proxy_bench LISTEN_PORT BACKEND_PORT`.

use std::net::SocketAddr;
use std::sync::Arc;

use bluegreen_core::{Color, TrafficSplit};
use bluegreen_local::{LocalProxy, StaticUpstreams};

#[tokio::main]
async fn main() {
    let args: Vec<u16> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a port number"))
        .collect();
    let [listen, backend] = args[..] else {
        eprintln!("usage: proxy_bench LISTEN_PORT BACKEND_PORT");
        std::process::exit(2);
    };
    let backend = SocketAddr::from(([127, 0, 0, 1], backend));
    let proxy = LocalProxy::builder(Arc::new(StaticUpstreams::new(vec![backend], vec![backend])))
        .listen(SocketAddr::from(([127, 0, 0, 1], listen)))
        .initial_split(TrafficSplit::all_on(Color::Blue))
        .start()
        .await
        .unwrap_or_else(|e| {
            eprintln!("proxy_bench: {e}");
            std::process::exit(1)
        });
    println!("proxy_bench: {} -> {backend}", proxy.url());
    let _ = tokio::signal::ctrl_c().await;
}
