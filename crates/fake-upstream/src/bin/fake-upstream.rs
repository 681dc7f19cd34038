//! `fake-upstream --addr 127.0.0.1:9000 --tokens 64 --delay-ms 5`: the test
//! fake as a process, for benchmarks and manual runs.

use std::time::Duration;

use clap::Parser;
use fake_upstream::FakeUpstream;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: std::net::SocketAddr,
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    #[arg(long, default_value_t = 5)]
    delay_ms: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let fake = FakeUpstream::start_on(args.addr, false).await;
    fake.behavior().set_tokens(args.tokens);
    fake.behavior()
        .set_delay(Duration::from_millis(args.delay_ms));
    println!("fake-upstream listening on {}", fake.base_url());
    std::future::pending::<()>().await;
}
