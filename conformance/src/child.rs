//! A lock holder in a child process, so cases can kill it (SIGKILL) or pause
//! it (SIGSTOP) for real. The child is the same test binary, started with
//! `LEASEHOLD_CONFORMANCE_CHILD=1` and the suite's child environment (the
//! store's URL); it speaks a line protocol on stdin/stdout.
//!
//! Commands: `acquire <key> <ttl_ms> [mutex|read|write|permit:<n>]` →
//! `acquired <token>`; `status` → `held`
//! or `lost`; `release` → `released`. Failures answer `error <kind> <message>`.

use std::process::Stdio;
use std::time::Duration;

use leasehold_core::{Key, LockGuard, LockKind, Locker, TtlPolicy, WaitPolicy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::hooks::Factory;

/// The environment variable that makes a test binary serve as a child holder.
pub const CHILD_ENV: &str = "LEASEHOLD_CONFORMANCE_CHILD";

/// Serves the child protocol until stdin closes.
pub(crate) async fn serve(factory: Factory) -> Result<(), String> {
    let backend = factory()
        .await
        .map_err(|e| format!("child could not connect: {e}"))?;
    let mut guard: Option<LockGuard> = None;
    let mut stdout = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        let words: Vec<&str> = line.split(' ').collect();
        let answer = match words.as_slice() {
            ["acquire", key, ttl_ms, kind @ ..] => {
                let ttl = Duration::from_millis(ttl_ms.parse().map_err(|_| "bad ttl")?);
                let key = Key::new(unhex(key)?).map_err(|e| e.to_string())?;
                let locker = Locker::builder_from_arc(backend.clone())
                    .ttl(TtlPolicy::Fixed(ttl))
                    .wait(WaitPolicy::new(Duration::from_secs(30)))
                    .build();
                let granted = match kind {
                    [] | ["mutex"] => locker.lock(&key).await,
                    ["read"] => {
                        locker
                            .rw_lock(&key)
                            .map_err(|e| e.to_string())?
                            .read()
                            .await
                    }
                    ["write"] => {
                        locker
                            .rw_lock(&key)
                            .map_err(|e| e.to_string())?
                            .write()
                            .await
                    }
                    [permit] => match permit.strip_prefix("permit:").map(str::parse) {
                        Some(Ok(permits)) => {
                            let semaphore =
                                locker.semaphore(&key, permits).map_err(|e| e.to_string())?;
                            semaphore.acquire().await
                        }
                        _ => return Err(format!("bad lock kind {permit:?}")),
                    },
                    _ => return Err(format!("bad command {line:?}")),
                };
                match granted {
                    Ok(g) => {
                        let answer = format!("acquired {}", g.fencing_token());
                        guard = Some(g);
                        answer
                    }
                    Err(e) => format!("error {} {e}", e.kind()),
                }
            }
            ["status"] => match &guard {
                Some(g) if g.is_lost() => "lost".to_owned(),
                Some(_) => "held".to_owned(),
                None => "error none no lock".to_owned(),
            },
            ["release"] => match guard.take() {
                Some(g) => match g.release().await {
                    Ok(()) => "released".to_owned(),
                    Err(e) => format!("error {} {e}", e.kind()),
                },
                None => "error none no lock".to_owned(),
            },
            _ => format!("error protocol unknown command {line:?}"),
        };
        stdout
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stdout.flush().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn unhex(hex: &str) -> Result<String, String> {
    let bytes: Result<Vec<u8>, _> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect();
    String::from_utf8(bytes.map_err(|_| "bad hex key")?).map_err(|_| "key is not utf-8".to_owned())
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A child process holding (or trying to hold) a lock.
#[derive(Debug)]
pub struct ChildHolder {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl ChildHolder {
    /// Starts this test binary as a child holder with `env`.
    pub(crate) fn spawn(env: &[(String, String)]) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .env(CHILD_ENV, "1")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("could not start the child holder: {e}"))?;
        let stdin = child.stdin.take().ok_or("no child stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no child stdout")?).lines();
        Ok(ChildHolder {
            child,
            stdin,
            stdout,
        })
    }

    async fn ask(&mut self, command: &str) -> Result<String, String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        self.stdin.flush().await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => Err("the child holder exited".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the child holder did not answer {command:?} within 60 s"
            )),
        }
    }

    /// Acquires `key` in the child (with auto-extend); returns its fencing token.
    pub async fn acquire(&mut self, key: &Key, ttl: Duration) -> Result<u64, String> {
        self.acquire_kind(key, LockKind::Exclusive, ttl).await
    }

    /// Acquires `key` as `kind` in the child (with auto-extend); returns its
    /// fencing token.
    pub async fn acquire_kind(
        &mut self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<u64, String> {
        let kind = match kind {
            LockKind::Permit { permits } => format!("permit:{permits}"),
            kind => kind.as_str().to_owned(),
        };
        let answer = self
            .ask(&format!(
                "acquire {} {} {kind}",
                hex(key.as_str()),
                ttl.as_millis()
            ))
            .await?;
        answer
            .strip_prefix("acquired ")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("the child could not acquire: {answer}"))
    }

    /// `held` or `lost` (or an error line).
    pub async fn status(&mut self) -> Result<String, String> {
        self.ask("status").await
    }

    /// Releases in the child; returns its answer line.
    pub async fn release(&mut self) -> Result<String, String> {
        self.ask("release").await
    }

    fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self.child.id().ok_or("the child has exited")?;
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill {signal} {pid} failed"))
        }
    }

    /// SIGKILL: the holder dies without releasing.
    pub async fn kill(mut self) -> Result<(), String> {
        self.signal("-KILL")?;
        self.child.wait().await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// SIGSTOP: the holder freezes mid-work (no renewals, no I/O).
    pub fn pause(&self) -> Result<(), String> {
        self.signal("-STOP")
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<(), String> {
        self.signal("-CONT")
    }
}
