//! The leasehold conformance suite against the file backend, in a fresh
//! temporary directory per run (removed at the end). Child holders (the
//! killed and paused holder cases) are this binary started again with
//! `LEASEHOLD_TEST_FILE_DIR` naming the same directory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use leasehold_conformance::{Skipped, Suite};
use leasehold_core::{LockBackend, OwnerToken};
use leasehold_file::{FileBackend, FileConfig};

/// Names the run's directory for child holders.
const DIR_ENV: &str = "LEASEHOLD_TEST_FILE_DIR";

/// Removes the run's directory when the suite ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup() -> Result<Suite, Skipped> {
    let (dir, owned) = match std::env::var_os(DIR_ENV) {
        Some(dir) => (PathBuf::from(dir), false),
        None => {
            let dir = std::env::temp_dir().join(format!(
                "leasehold-file-conformance-{}",
                OwnerToken::generate().short()
            ));
            std::fs::create_dir_all(&dir)
                .map_err(|e| Skipped(format!("cannot create {}: {e}", dir.display())))?;
            (dir, true)
        }
    };
    let connect_to = dir.clone();
    let suite = Suite::new("file", move || {
        let config = FileConfig::new(connect_to.clone());
        async move { Ok(Arc::new(FileBackend::connect_with(config).await?) as Arc<dyn LockBackend>) }
    })
    .with_child_env(vec![(DIR_ENV.to_owned(), dir.to_string_lossy().into_owned())]);
    Ok(if owned {
        suite.keep(RemoveOnDrop(dir))
    } else {
        suite
    })
}

fn main() -> ExitCode {
    leasehold_conformance::run_main(setup)
}
