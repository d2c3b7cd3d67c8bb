//! The Lua scripts, one atomic server step per operation.
//!
//! Each `*_SRC` constant is the script text; the functions return the shared
//! [`redis::Script`] (sent as `EVALSHA`, reloaded with `SCRIPT LOAD` when the
//! server answers `NOSCRIPT`, e.g. after a restart or `SCRIPT FLUSH`). Names
//! come in as `KEYS` and values as `ARGV`, never spliced into the source, so
//! any key is safe. [`RedisNode`](crate::RedisNode) calls them; a multi-node
//! algorithm (Redlock) reuses them through it.
//!
//! Compare results are integers: `1` the owner matched, `0` the key is free
//! (missing or expired), `-1` someone else holds it.

use std::sync::LazyLock;

use redis::Script;

/// Acquire: `SET lock owner NX PX ttl`, and on success `INCR` of the fencing
/// counter. `KEYS = [lock, fence]`, `ARGV = [owner, ttl_ms]`.
///
/// Returns `{1, token, -1, ""}` on success, or `{0, counter, pttl,
/// owner_prefix}` when held: the counter is the holder's token (every
/// successful `SET` is paired with exactly one `INCR`), `pttl` its remaining
/// milliseconds and the prefix the first 8 hex digits of its owner token.
pub const ACQUIRE_SRC: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2]), -1, ''}
end
local holder = redis.call('GET', KEYS[1]) or ''
local counter = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
return {0, counter, redis.call('PTTL', KEYS[1]), string.sub(holder, 1, 8)}
"#;

/// Release: compare-and-delete, then `PUBLISH channel lock` so waiters wake.
/// `KEYS = [lock]`, `ARGV = [owner, channel]`. Returns 1 / 0 / -1.
pub const RELEASE_SRC: &str = r#"
local holder = redis.call('GET', KEYS[1])
if not holder then return 0 end
if holder ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 1
"#;

/// Extend: compare-and-`PEXPIRE`. `KEYS = [lock]`, `ARGV = [owner, ttl_ms]`.
/// Returns 1 / 0 / -1. A key that expired is never re-created.
pub const EXTEND_SRC: &str = r#"
local holder = redis.call('GET', KEYS[1])
if not holder then return 0 end
if holder ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Extend many: [`EXTEND_SRC`] over `KEYS[i]` with `ARGV[2i-1]` (owner) and
/// `ARGV[2i]` (ttl_ms). Returns one 1 / 0 / -1 per key, in order. All keys
/// must live on the one server (single instance, or one cluster slot).
pub const EXTEND_MANY_SRC: &str = r#"
local results = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if not holder then
    results[i] = 0
  elseif holder ~= ARGV[2 * i - 1] then
    results[i] = -1
  else
    redis.call('PEXPIRE', key, ARGV[2 * i])
    results[i] = 1
  end
end
return results
"#;

/// Inspect: `KEYS = [lock, fence]`. Returns nil when free, else
/// `{owner_prefix, pttl, counter}`.
pub const INSPECT_SRC: &str = r#"
local holder = redis.call('GET', KEYS[1])
if not holder then return false end
local counter = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
return {string.sub(holder, 1, 8), redis.call('PTTL', KEYS[1]), counter}
"#;

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
    /// The [`RAISE_SRC`] script.
    raise,
    RAISE_SRC
);
