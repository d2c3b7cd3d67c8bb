//! Link faults without root or `tc netem`: a userspace TCP proxy between a
//! client and one server that can cut the link (a partition: open connections
//! are closed and new ones hang, unanswered) and delay each client→server
//! chunk (a slow link).
//!
//! Point the client at [`Proxy::addr`] instead of the server; one proxy per
//! link, so a partition can separate one client from one server only.
//!
//! ```no_run
//! # async fn demo(server_port: u16) -> std::io::Result<()> {
//! use std::time::Duration;
//! use leasehold_conformance::proxy::Proxy;
//!
//! let link = Proxy::start(server_port).await?;
//! let url = format!("redis://{}", link.addr());
//! // ... connect a client to `url` ...
//! link.set_delay(Duration::from_millis(20)); // a slow link
//! link.set_cut(true); // a partition
//! link.set_cut(false); // healed
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One proxied link, forwarding until dropped (needs a Tokio runtime).
pub struct Proxy {
    /// The port clients connect to on 127.0.0.1.
    pub port: u16,
    cut: Arc<AtomicBool>,
    delay_micros: Arc<AtomicU64>,
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding 127.0.0.1:`port` (a free port, see [`Proxy::port`])
    /// to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let delay_micros = Arc::new(AtomicU64::new(0));
        let cuts = watch::Sender::new(0u64);
        let task = {
            let (cut, delay_micros, cuts) = (cut.clone(), delay_micros.clone(), cuts.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (cut, delay_micros) = (cut.clone(), delay_micros.clone());
                    let mut cut_signal = cuts.subscribe();
                    tokio::spawn(async move {
                        // A partitioned link accepts and then never answers.
                        while cut.load(Ordering::SeqCst) {
                            if cut_signal.changed().await.is_err() {
                                return;
                            }
                        }
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                            return;
                        };
                        tokio::select! {
                            () = pipe(client, server, delay_micros) => {}
                            _ = cut_signal.wait_for(|_| cut.load(Ordering::SeqCst)) => {}
                        }
                    });
                }
            })
        };
        Ok(Proxy {
            port,
            cut,
            delay_micros,
            cuts,
            task,
        })
    }

    /// Cuts the link (closes its connections; new ones hang) or heals it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        self.cuts.send_modify(|generation| *generation += 1);
    }

    /// Delays every client→server chunk by `delay` (`Duration::ZERO`: none).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_micros
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, delay_micros: Arc<AtomicU64>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = delay_micros.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_micros(delay)).await;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
