//! The Lua scripts, one atomic server step per operation.
//!
//! Each `*_SRC` constant is the script text; the functions return the shared
//! [`redis::Script`] (sent as `EVALSHA`, reloaded with `SCRIPT LOAD` when the
//! server answers `NOSCRIPT`, e.g. after a restart or `SCRIPT FLUSH`). Names
//! come in as `KEYS` and values as `ARGV`, never spliced into the source, so
//! any key is safe. [`RedisNode`](crate::RedisNode) calls them; a multi-node
//! algorithm (Redlock) reuses them through it.
//!
//! A lock key's value is `<owner token> <acquired ms> <holder label>`: the
//! owner token (32 hex digits, compared by every ownership check), the
//! server's `TIME` at the grant in milliseconds, and the holder label (may
//! hold spaces). A bare owner token (written by an older version) still
//! counts as that owner's lock, with no time or label.
//!
//! Compare results are integers: `1` the owner matched, `0` the key is free
//! (missing or expired), `-1` someone else holds it.

use std::sync::LazyLock;

use redis::Script;

/// The Lua helpers that read a lock value, spliced in front of the scripts
/// that need them: `owner_of(value)` is the owner token; `holder_of(value)`
/// is `{owner_prefix, acquired_ms, label}` (`acquired_ms` -1 when unknown).
macro_rules! value_helpers {
    () => {
        r#"
local function owner_of(value)
  return string.match(value, '^%S*')
end
local function holder_of(value)
  local owner, since, label = string.match(value, '^(%S*) ?(%d*) ?(.*)$')
  return {string.sub(owner, 1, 8), tonumber(since) or -1, label}
end
"#
    };
}

/// Acquire: `SET lock value NX PX ttl` (the value: owner, the server's
/// `TIME` and the holder label), and on success `INCR` of the fencing
/// counter. `KEYS = [lock, fence]`, `ARGV = [owner, ttl_ms, holder]`
/// (`holder` may be left out: no label).
///
/// Returns `{1, token, -1, ""}` on success, or `{0, counter, pttl,
/// owner_prefix}` when held: the counter is the holder's token (every
/// successful `SET` is paired with exactly one `INCR`), `pttl` its remaining
/// milliseconds and the prefix the first 8 hex digits of its owner token.
pub const ACQUIRE_SRC: &str = r#"
-- Servers before 5.0 refuse writes after TIME unless effects are replicated.
if redis.replicate_commands then redis.replicate_commands() end
local now = redis.call('TIME')
local value = ARGV[1] .. ' ' .. now[1] .. string.format('%03d', math.floor(now[2] / 1000)) .. ' ' .. (ARGV[3] or '')
if redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2]), -1, ''}
end
local holder = redis.call('GET', KEYS[1]) or ''
local counter = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
return {0, counter, redis.call('PTTL', KEYS[1]), string.sub(holder, 1, 8)}
"#;

/// Release: compare-and-delete, then `PUBLISH channel lock` so waiters wake.
/// `KEYS = [lock]`, `ARGV = [owner, channel]`. Returns 1 / 0 / -1.
pub const RELEASE_SRC: &str = concat!(
    value_helpers!(),
    r#"
local holder = redis.call('GET', KEYS[1])
if not holder then return 0 end
if owner_of(holder) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 1
"#
);

/// Extend: compare-and-`PEXPIRE`. `KEYS = [lock]`, `ARGV = [owner, ttl_ms]`.
/// Returns 1 / 0 / -1. A key that expired is never re-created.
pub const EXTEND_SRC: &str = concat!(
    value_helpers!(),
    r#"
local holder = redis.call('GET', KEYS[1])
if not holder then return 0 end
if owner_of(holder) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#
);

/// Extend many: [`EXTEND_SRC`] over `KEYS[i]` with `ARGV[2i-1]` (owner) and
/// `ARGV[2i]` (ttl_ms). Returns one 1 / 0 / -1 per key, in order. All keys
/// must live on the one server (single instance, or one cluster slot).
pub const EXTEND_MANY_SRC: &str = concat!(
    value_helpers!(),
    r#"
local results = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if not holder then
    results[i] = 0
  elseif owner_of(holder) ~= ARGV[2 * i - 1] then
    results[i] = -1
  else
    redis.call('PEXPIRE', key, ARGV[2 * i])
    results[i] = 1
  end
end
return results
"#
);

/// Inspect many: `KEYS = [lock1, fence1, lock2, fence2, ...]`. Returns
/// one entry per pair, in order: false when free, else `{owner_prefix,
/// acquired_ms, label, pttl, counter}` (`acquired_ms` -1 when unknown).
pub const INSPECT_SRC: &str = concat!(
    value_helpers!(),
    r#"
local found = {}
for i = 1, #KEYS, 2 do
  local value = redis.call('GET', KEYS[i])
  local entry = false
  if value then
    entry = holder_of(value)
    entry[4] = redis.call('PTTL', KEYS[i])
    entry[5] = tonumber(redis.call('GET', KEYS[i + 1]) or '0') or 0
  end
  found[(i + 1) / 2] = entry
end
return found
"#
);

/// Force release: deletes the lock whoever holds it, `INCR`s the fencing
/// counter past the evicted holder's token, publishes the release like
/// [`RELEASE_SRC`] and writes `reason` to the server's log. `KEYS = [lock,
/// fence]`, `ARGV = [channel, reason]`. Returns false when the key was free
/// (nothing changes), else the evicted holder as one [`INSPECT_SRC`] entry.
pub const FORCE_RELEASE_SRC: &str = concat!(
    value_helpers!(),
    r#"
local value = redis.call('GET', KEYS[1])
if not value then return false end
local evicted = holder_of(value)
evicted[4] = redis.call('PTTL', KEYS[1])
evicted[5] = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
redis.call('DEL', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], KEYS[1])
redis.log(redis.LOG_WARNING, 'leasehold force release of ' .. KEYS[1] .. ': ' .. ARGV[2])
return evicted
"#
);

/// Raise: lifts a fencing counter to at least `ARGV[1]`, never lowering it.
/// `KEYS = [fence]`. Returns 1 if it was raised, 0 if it was already there.
/// Redlock raises the servers that answered below a grant's token, so any
/// later quorum counts past it.
pub const RAISE_SRC: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

macro_rules! shared_script {
    ($(#[$doc:meta])* $name:ident, $src:ident) => {
        $(#[$doc])*
        pub fn $name() -> &'static Script {
            static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new($src));
            &SCRIPT
        }
    };
}

shared_script!(
    /// The [`ACQUIRE_SRC`] script.
    acquire,
    ACQUIRE_SRC
);
shared_script!(
    /// The [`RELEASE_SRC`] script.
    release,
    RELEASE_SRC
);
shared_script!(
    /// The [`EXTEND_SRC`] script.
    extend,
    EXTEND_SRC
);
shared_script!(
    /// The [`EXTEND_MANY_SRC`] script.
    extend_many,
    EXTEND_MANY_SRC
);
shared_script!(
    /// The [`INSPECT_SRC`] script.
    inspect,
    INSPECT_SRC
);
shared_script!(
    /// The [`FORCE_RELEASE_SRC`] script.
    force_release,
    FORCE_RELEASE_SRC
);
shared_script!(
    /// The [`RAISE_SRC`] script.
    raise,
    RAISE_SRC
);
