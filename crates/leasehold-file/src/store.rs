//! The files behind one key and the operations on them: the guard lock, the
//! state file (replaced atomically, fsync'd), the holder's alive file, and
//! the host's monotonic clock.
//!
//! For a key whose file stem is `S` (see [`file_stem`](crate::file_stem)),
//! the directory holds:
//! - `S.lock`: empty; an exclusive `flock` on it guards every
//!   read-modify-write of the state, held for microseconds and never while
//!   waiting for anything else;
//! - `S.state`: the key's state, written to `S.state.tmp`, fsync'd and
//!   renamed over it, so a reader (or a crash) sees the old state or the new
//!   one, never a torn one;
//! - `S.<owner>.alive`: one per acquisition; its holder keeps an exclusive
//!   `flock` on it while it holds the lease, so the OS frees it the moment
//!   the holder process dies (or drops the lease).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant as StdInstant, SystemTime};

use leasehold_core::{FencingToken, LockError, LockInfo, LockKind, OwnerToken};
use rustix::fs::{FlockOperation, flock};

use crate::error::{io_error, unavailable};
use crate::keys::{hex, unhex};

/// The first line of every state file (the format's version).
const MAGIC: &str = "leasehold-file 1";

/// The host's monotonic clock (`CLOCK_MONOTONIC`) in nanoseconds: the same
/// clock in every process of the host (and the one tokio's `Instant` reads),
/// so a deadline one process writes means the same to every other.
pub(crate) fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0))
}

/// This boot's id (Linux's `/proc/sys/kernel/random/boot_id`), so a
/// monotonic deadline written before a reboot is never compared with the
/// clock after it. Empty where the system has none.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// A key's recorded state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// The key (the file name may be a hash of it).
    pub(crate) key: String,
    /// The highest fencing token granted for the key; never goes back.
    pub(crate) counter: u64,
    /// The holder, if the key was granted and not released since (the
    /// mutex's state only).
    pub(crate) holder: Option<Holder>,
    /// The holders of a reader–writer lock or a semaphore (their state
    /// files only), in grant order; dead ones are pruned at the next write.
    pub(crate) sharers: Vec<Sharer>,
    /// The writers waiting for a reader–writer lock (they keep new readers
    /// out while they live).
    pub(crate) waiters: Vec<Holder>,
}

/// One holder of a reader–writer lock or a semaphore: what it holds, its
/// token, and the same liveness record as the mutex's holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sharer {
    pub(crate) kind: LockKind,
    pub(crate) token: u64,
    pub(crate) holder: Holder,
}

/// The holder recorded in a state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) owner: OwnerToken,
    /// The lease's end on the host's monotonic clock, in ns.
    pub(crate) expires_ns: u64,
    /// The boot the deadline belongs to.
    pub(crate) boot: String,
    /// Wall-clock grant time, metadata only.
    pub(crate) acquired_ms: u64,
    /// The holder label.
    pub(crate) label: String,
}

impl Holder {
    /// The holder as the space-separated fields of one state file line.
    fn fields(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.owner.to_hex(),
            self.expires_ns,
            hex(self.boot.as_bytes()),
            self.acquired_ms,
            hex(self.label.as_bytes())
        )
    }

    /// The holder from the fields [`Holder::fields`] wrote.
    fn parse<'a>(mut fields: impl Iterator<Item = &'a str>) -> Option<Holder> {
        let holder = Holder {
            owner: OwnerToken::from_hex(fields.next()?)?,
            expires_ns: fields.next()?.parse().ok()?,
            boot: unhex_text(fields.next()?)?,
            acquired_ms: fields.next()?.parse().ok()?,
            label: unhex_text(fields.next()?)?,
        };
        fields.next().is_none().then_some(holder)
    }
}

/// Hex-encoded UTF-8 text back to a string.
fn unhex_text(hex: &str) -> Option<String> {
    String::from_utf8(unhex(hex)?).ok()
}

/// A sharer's kind in a state file: `read`, `write`, `permit-<N>`.
fn kind_name(kind: LockKind) -> String {
    match kind.permits() {
        Some(permits) => format!("permit-{permits}"),
        None => kind.as_str().to_owned(),
    }
}

fn parse_kind(name: &str) -> Option<LockKind> {
    match name {
        "read" => Some(LockKind::Read),
        "write" => Some(LockKind::Write),
        _ => LockKind::permit(name.strip_prefix("permit-")?.parse().ok()?),
    }
}

impl State {
    /// The text of a state file. A mutex state is written exactly as the
    /// first version wrote it (no `sharer` or `waiter` line), so processes
    /// of both versions can share a directory; the other families' states
    /// add one `sharer` or `waiter` line per entry.
    fn encode(&self) -> String {
        let mut out = format!(
            "{MAGIC}\nkey {}\ncounter {}\n",
            hex(self.key.as_bytes()),
            self.counter
        );
        if let Some(h) = &self.holder {
            out.push_str(&format!(
                "owner {}\nexpires_ns {}\nboot {}\nacquired_ms {}\nholder {}\n",
                h.owner.to_hex(),
                h.expires_ns,
                hex(h.boot.as_bytes()),
                h.acquired_ms,
                hex(h.label.as_bytes())
            ));
        }
        for sharer in &self.sharers {
            out.push_str(&format!(
                "sharer {} {} {}\n",
                kind_name(sharer.kind),
                sharer.token,
                sharer.holder.fields()
            ));
        }
        for waiter in &self.waiters {
            out.push_str(&format!("waiter {}\n", waiter.fields()));
        }
        out
    }

    fn decode(text: &str) -> Option<State> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut fields = std::collections::HashMap::new();
        let (mut sharers, mut waiters) = (Vec::new(), Vec::new());
        for line in lines {
            let (name, value) = line.split_once(' ')?;
            match name {
                "sharer" => {
                    let mut parts = value.split(' ');
                    sharers.push(Sharer {
                        kind: parse_kind(parts.next()?)?,
                        token: parts.next()?.parse().ok()?,
                        holder: Holder::parse(parts)?,
                    });
                }
                "waiter" => waiters.push(Holder::parse(value.split(' '))?),
                _ => {
                    fields.insert(name, value);
                }
            }
        }
        let text_of = |name: &str| unhex_text(fields.get(name)?);
        let key = text_of("key")?;
        let counter = fields.get("counter")?.parse().ok()?;
        let holder = match fields.get("owner") {
            None => None,
            Some(owner) => Some(Holder {
                owner: OwnerToken::from_hex(owner)?,
                expires_ns: fields.get("expires_ns")?.parse().ok()?,
                boot: text_of("boot")?,
                acquired_ms: fields.get("acquired_ms")?.parse().ok()?,
                label: text_of("holder")?,
            }),
        };
        Some(State {
            key,
            counter,
            holder,
            sharers,
            waiters,
        })
    }
}

impl State {
    /// The record of `owner`'s grant of `kind`: the mutex's holder, or one
    /// of the sharers.
    pub(crate) fn entry_mut(&mut self, kind: LockKind, owner: &OwnerToken) -> Option<&mut Holder> {
        match kind {
            LockKind::Exclusive => self.holder.as_mut().filter(|h| h.owner == *owner),
            _ => self
                .sharers
                .iter_mut()
                .find(|s| s.holder.owner == *owner)
                .map(|s| &mut s.holder),
        }
    }

    /// Removes `owner`'s grant of `kind` and returns its record.
    pub(crate) fn remove_entry(&mut self, kind: LockKind, owner: &OwnerToken) -> Option<Holder> {
        match kind {
            LockKind::Exclusive => self.holder.take_if(|h| h.owner == *owner),
            _ => {
                let at = self.sharers.iter().position(|s| s.holder.owner == *owner)?;
                Some(self.sharers.remove(at).holder)
            }
        }
    }
}

/// The files of one key in a lock directory.
#[derive(Clone, Debug)]
pub(crate) struct KeyFiles {
    dir: PathBuf,
    stem: String,
}

impl KeyFiles {
    pub(crate) fn new(dir: &Path, stem: String) -> Self {
        KeyFiles {
            dir: dir.to_owned(),
            stem,
        }
    }

    fn path(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}{suffix}", self.stem))
    }

    pub(crate) fn state_path(&self) -> PathBuf {
        self.path(".state")
    }

    fn alive_path(&self, owner: &OwnerToken) -> PathBuf {
        self.path(&format!(".{}.alive", owner.to_hex()))
    }

    /// Takes the key's guard lock, polling a non-blocking `flock` (so a
    /// process stopped inside its few-microsecond critical section delays
    /// others only until `deadline`, then they get `Unavailable`).
    pub(crate) fn guard(
        &self,
        backend: &'static str,
        deadline: StdInstant,
    ) -> Result<Guard, LockError> {
        let path = self.path(".lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(backend, "open the guard file", &path, e))?;
        let mut pause = Duration::from_micros(200);
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Guard { _file: file }),
                Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io_error(backend, "lock the guard file", &path, e.into())),
            }
            if StdInstant::now() >= deadline {
                return Err(unavailable(
                    backend,
                    format!(
                        "the guard lock {} stayed taken past the operation timeout \
                         (a process stopped inside its critical section?)",
                        path.display()
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// The recorded state; the default (counter 0, free) when the key was
    /// never locked. A state file that does not parse is an error, never a
    /// fresh start: that would reset the fencing counter.
    pub(crate) fn read(&self, backend: &'static str) -> Result<Option<State>, LockError> {
        read_state(backend, &self.state_path())
    }

    /// Replaces the state atomically: write a temporary file, fsync it,
    /// rename it over the state file; with `durable`, fsync the directory
    /// too, so the rename (a new fencing counter) survives a power loss
    /// before the grant is answered. Only under the guard.
    pub(crate) fn write(
        &self,
        backend: &'static str,
        state: &State,
        durable: bool,
    ) -> Result<(), LockError> {
        let tmp = self.path(".state.tmp");
        let mut file = File::create(&tmp).map_err(|e| io_error(backend, "create", &tmp, e))?;
        file.write_all(state.encode().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(backend, "write", &tmp, e))?;
        let path = self.state_path();
        std::fs::rename(&tmp, &path).map_err(|e| io_error(backend, "rename over", &path, e))?;
        if durable {
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| io_error(backend, "fsync the directory", &self.dir, e))?;
        }
        Ok(())
    }

    /// Creates and locks a new alive file for `owner`.
    pub(crate) fn create_alive(
        &self,
        backend: &'static str,
        owner: &OwnerToken,
    ) -> Result<Alive, LockError> {
        let path = self.alive_path(owner);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error(backend, "create the alive file", &path, e))?;
        if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            let _ = std::fs::remove_file(&path);
            return Err(io_error(backend, "lock the alive file", &path, e.into()));
        }
        Ok(Alive {
            file: Mutex::new(Some(file)),
            path,
        })
    }

    /// Whether the process holding `owner`'s alive file still holds its
    /// lock: a shared non-blocking `flock` that fails means yes. A missing
    /// file, or one nobody locks, means the holder is gone (its process
    /// died, or it dropped the lease).
    pub(crate) fn holder_alive(&self, owner: &OwnerToken) -> bool {
        let Ok(file) = File::open(self.alive_path(owner)) else {
            return false;
        };
        // Only a granted probe proves the holder gone; any failure (the
        // holder's lock, or an odd error) counts as alive: false contention,
        // never a second grant.
        flock(&file, FlockOperation::NonBlockingLockShared).is_err()
    }

    /// Removes `owner`'s alive file (its lease ended); a missing one is fine.
    pub(crate) fn remove_alive(&self, owner: &OwnerToken) {
        let _ = std::fs::remove_file(self.alive_path(owner));
    }
}

/// Reads and parses a state file; `None` if it does not exist.
pub(crate) fn read_state(backend: &'static str, path: &Path) -> Result<Option<State>, LockError> {
    let mut text = String::new();
    match File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(backend, "read", path, e)),
    }
    State::decode(&text).map(Some).ok_or_else(|| {
        LockError::backend(
            backend,
            format!(
                "the state file {} is not a leasehold-file state; refusing to reset its \
                 fencing counter (move it away by hand if it is not ours)",
                path.display()
            ),
        )
    })
}

/// The key's guard lock, released when dropped (the file closes).
pub(crate) struct Guard {
    _file: File,
}

/// A held lease's alive file: its exclusive `flock` lives as long as the
/// open file, which lives in the lease's handle (shared by its clones) until
/// release. The OS drops the lock when the process dies.
#[derive(Debug)]
pub(crate) struct Alive {
    file: Mutex<Option<File>>,
    path: PathBuf,
}

impl Alive {
    /// Whether the file is still open (its lock held).
    pub(crate) fn is_open(&self) -> bool {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Closes the file (dropping the lock) and removes it.
    pub(crate) fn close(&self) {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner()).take();
        if file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether a recorded holder still holds the key at monotonic `now`: its
/// deadline has not passed (in this boot) and its process holds its alive
/// lock.
pub(crate) fn live(files: &KeyFiles, holder: &Holder, now_ns: u64, boot: &str) -> bool {
    holder.boot == boot && holder.expires_ns > now_ns && files.holder_alive(&holder.owner)
}

/// What `inspect`, `list` and `Contended` tell about a live holder.
pub(crate) fn info(counter: u64, holder: &Holder, now_ns: u64) -> LockInfo {
    LockInfo::new(
        Some(FencingToken(counter)),
        Some(Duration::from_nanos(
            holder.expires_ns.saturating_sub(now_ns),
        )),
    )
    .with_owner(&holder.owner)
    .with_metadata(Some(holder.label.clone()))
    .with_acquired_at(SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(holder.acquired_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let state = State {
            key: "a\nb c".into(),
            counter: 7,
            holder: Some(Holder {
                owner: OwnerToken::generate(),
                expires_ns: 42,
                boot: "b".into(),
                acquired_ms: 1,
                label: "host pid 1\n".into(),
            }),
            ..State::default()
        };
        assert_eq!(State::decode(&state.encode()), Some(state.clone()));
        let free = State {
            holder: None,
            ..state
        };
        assert_eq!(State::decode(&free.encode()), Some(free));
        assert_eq!(State::decode("garbage"), None);
        assert_eq!(State::decode(&format!("{MAGIC}\ncounter x\n")), None);
    }

    fn holder(expires_ns: u64, label: &str) -> Holder {
        Holder {
            owner: OwnerToken::generate(),
            expires_ns,
            boot: String::new(),
            acquired_ms: 5,
            label: label.into(),
        }
    }

    #[test]
    fn shared_states_round_trip_with_every_kind_and_empty_fields() {
        let state = State {
            key: "rw key".into(),
            counter: 12,
            holder: None,
            sharers: [
                LockKind::Read,
                LockKind::Write,
                LockKind::Permit { permits: 3 },
            ]
            .into_iter()
            .zip(10..)
            .map(|(kind, token)| Sharer {
                kind,
                token,
                holder: holder(token, ""),
            })
            .collect(),
            waiters: vec![holder(9, "w"), holder(8, "")],
        };
        let text = state.encode();
        assert_eq!(State::decode(&text), Some(state), "{text}");
        for bad in [
            "sharer permit-0 1",
            "sharer read 1 zz 1  1 ",
            "sharer read 1",
            "waiter",
        ] {
            let text = format!("{MAGIC}\nkey 61\ncounter 1\n{bad}\n");
            assert_eq!(State::decode(&text), None, "{bad:?} parsed");
        }
    }

    /// A mutex state file exactly as the first version wrote it (a held key)
    /// parses, and this version writes the same state back byte for byte, so
    /// processes of both versions can share a directory.
    #[test]
    fn mutex_state_of_the_first_version_parses_and_is_written_unchanged() {
        let owner = "00112233445566778899aabbccddeeff";
        let written_by_v1 = format!(
            "{MAGIC}\nkey 6a6f62733a6e696768746c79\ncounter 41\nowner {owner}\n\
             expires_ns 123456789\nboot 6233\nacquired_ms 1700000000000\n\
             holder 686f737420706964203132\n"
        );
        let state = State::decode(&written_by_v1).expect("the first version's state parses");
        assert_eq!(
            state,
            State {
                key: "jobs:nightly".into(),
                counter: 41,
                holder: Some(Holder {
                    owner: OwnerToken::from_hex(owner).unwrap(),
                    expires_ns: 123_456_789,
                    boot: "b3".into(),
                    acquired_ms: 1_700_000_000_000,
                    label: "host pid 12".into(),
                }),
                ..State::default()
            }
        );
        assert_eq!(state.encode(), written_by_v1);
        let free_v1 = format!("{MAGIC}\nkey 6a6f62733a6e696768746c79\ncounter 41\n");
        let free = State::decode(&free_v1).expect("a free v1 state parses");
        assert_eq!(free.encode(), free_v1);
    }
}
