//! The link-fault proxy against a local echo server: it forwards, delays
//! and cuts.

use std::time::{Duration, Instant};

use leasehold_conformance::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    port
}

/// Sends `ping` and reads the echo; `None` if none came within `within`.
async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let exchange = async {
        stream.write_all(b"ping").await.ok()?;
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await.ok()?;
        (&answer == b"ping").then_some(())
    };
    tokio::time::timeout(within, exchange)
        .await
        .ok()
        .flatten()?;
    Some(started.elapsed())
}

#[tokio::test]
async fn forwards_delays_and_cuts_a_link() {
    let proxy = Proxy::start(echo_server().await).await.expect("proxy");
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let second = Duration::from_secs(1);
    round_trip(&mut client, second).await.expect("forwards");

    proxy.set_delay(Duration::from_millis(200));
    let slow = round_trip(&mut client, second)
        .await
        .expect("still forwards");
    assert!(slow >= Duration::from_millis(200), "not delayed: {slow:?}");
    proxy.set_delay(Duration::ZERO);

    proxy.set_cut(true);
    assert_eq!(
        round_trip(&mut client, Duration::from_millis(300)).await,
        None,
        "a cut link closes its connections"
    );
    let mut during_cut = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(
        round_trip(&mut during_cut, Duration::from_millis(300)).await,
        None,
        "a new connection over a cut link hangs"
    );
    proxy.set_cut(false);
    let mut healed = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut healed, second)
        .await
        .expect("a healed link forwards");
}
