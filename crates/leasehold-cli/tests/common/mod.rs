//! Running the `leasehold` binary from the end-to-end tests.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// What one run of the binary printed, and how it ended.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `leasehold args...` with `LEASEHOLD_URL` set to `url` (or unset),
/// stdin closed, and gives it 60 s to end (a hang fails the test).
pub async fn leasehold(url: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    command
        .env_remove("LEASEHOLD_URL")
        .args(args)
        .stdin(Stdio::null());
    if let Some(url) = url {
        command.env("LEASEHOLD_URL", url);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("leasehold {args:?} did not end within 60 s"))
        .expect("run the leasehold binary");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
