//! Operations tooling: listing the held keys of a lock directory.

use std::sync::Arc;

use leasehold_core::{HeldLock, ListPage, ListQuery, LockError};

use crate::error::io_error;
use crate::keys::decode_stem;
use crate::lease::Shared;
use crate::store::{KeyFiles, info, live, monotonic_ns, read_state};

/// One page of held keys under `query.prefix`, in key order after the
/// cursor (the last key shown). Reads the directory's names once per page
/// (a local directory listing; no lock is taken, nothing waits on it), then
/// the state files in key order until the page is full; a hashed name's key
/// is read from its state file. A key changing hands meanwhile may be missed
/// or shown twice, as on every store.
pub(crate) fn list(shared: &Arc<Shared>, query: &ListQuery) -> Result<ListPage, LockError> {
    let name = shared.name;
    let dir = &shared.settings.dir;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ListPage::default()),
        Err(e) => return Err(io_error(name, "list", dir, e)),
    };
    let mut candidates = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(name, "list", dir, e))?;
        let file_name = entry.file_name();
        let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".state")) else {
            continue;
        };
        // A readable name tells its key without opening the file.
        let (key, state) = match decode_stem(stem) {
            Some(key) => (key, None),
            None if stem.starts_with("h-") => match read_state(name, &entry.path())? {
                Some(state) => (state.key.clone(), Some(state)),
                None => continue,
            },
            None => continue,
        };
        let after_cursor = query.cursor.as_deref().is_none_or(|c| key.as_str() > c);
        if key.starts_with(&query.prefix) && after_cursor {
            candidates.push((key, stem.to_owned(), state));
        }
    }
    candidates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let limit = query.limit.max(1);
    let mut locks = Vec::new();
    let mut more = false;
    for (key, stem, state) in candidates {
        let files = KeyFiles::new(dir, stem);
        let state = match state {
            Some(state) => Some(state),
            None => read_state(name, &files.state_path())?,
        };
        let now = monotonic_ns();
        let Some(state) = state else { continue };
        let Some(holder) = state
            .holder
            .as_ref()
            .filter(|h| live(&files, h, now, &shared.boot))
        else {
            continue;
        };
        if locks.len() == limit {
            more = true;
            break;
        }
        locks.push(HeldLock {
            key,
            info: info(state.counter, holder, now),
        });
    }
    let next = more
        .then(|| locks.last().map(|l: &HeldLock| l.key.clone()))
        .flatten();
    Ok(ListPage { locks, next })
}
