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

/// The Lua helper that announces a release, spliced in front of the
/// scripts that release: `announce(channel, lock)` `SPUBLISH`es on a shard
/// channel (a name starting with `{`: the key's hash tag, on a Redis
/// Cluster; see [`KeyLayout::shard_channel`](crate::KeyLayout::shard_channel))
/// and `PUBLISH`es on any other.
macro_rules! announce {
    () => {
        r#"
local function announce(channel, lock)
  if string.sub(channel, 1, 1) == '{' then
    redis.call('SPUBLISH', channel, lock)
  else
    redis.call('PUBLISH', channel, lock)
  end
end
"#
    };
}

/// The Lua helpers of a grant and a release, spliced in front of the
/// scripts that take or give back a mutex one by one ([`ACQUIRE_SRC`],
/// [`RELEASE_SRC`]) or many at once ([`BATCH_SRC`]), so both run the same
/// steps. `now_ms()` is the server's `TIME` in milliseconds;
/// `grant(lock, fence, value, ttl)` is [`ACQUIRE_SRC`]'s answer;
/// `release_lock(lock, owner, channel)` is [`RELEASE_SRC`]'s. Needs
/// `value_helpers!` and `announce!` before it.
macro_rules! step_helpers {
    () => {
        r#"
local function now_ms()
  local now = redis.call('TIME')
  return now[1] .. string.format('%03d', math.floor(now[2] / 1000))
end
local function grant(lock, fence, value, ttl)
  if redis.call('SET', lock, value, 'NX', 'PX', ttl) then
    return {1, redis.call('INCR', fence), -1, ''}
  end
  local holder = redis.call('GET', lock) or ''
  local counter = tonumber(redis.call('GET', fence) or '0') or 0
  return {0, counter, redis.call('PTTL', lock), string.sub(holder, 1, 8)}
end
local function release_lock(lock, owner, channel)
  local holder = redis.call('GET', lock)
  if not holder then return 0 end
  if owner_of(holder) ~= owner then return -1 end
  redis.call('DEL', lock)
  announce(channel, lock)
  return 1
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
pub const ACQUIRE_SRC: &str = concat!(
    announce!(),
    value_helpers!(),
    step_helpers!(),
    r#"
-- Servers before 5.0 refuse writes after TIME unless effects are replicated.
if redis.replicate_commands then redis.replicate_commands() end
return grant(KEYS[1], KEYS[2], ARGV[1] .. ' ' .. now_ms() .. ' ' .. (ARGV[3] or ''), ARGV[2])
"#
);

/// Release: compare-and-delete, then `PUBLISH channel lock` so waiters wake.
/// `KEYS = [lock]`, `ARGV = [owner, channel]`. Returns 1 / 0 / -1.
pub const RELEASE_SRC: &str = concat!(
    announce!(),
    value_helpers!(),
    step_helpers!(),
    r#"
return release_lock(KEYS[1], ARGV[1], ARGV[2])
"#
);

/// Group commit ([`crate::RedisNode`]'s batches): many acquisitions and
/// releases in one call, each run exactly as [`ACQUIRE_SRC`] or
/// [`RELEASE_SRC`] would run it (the same helpers), in order. `KEYS =
/// [lock_1, fence_1, lock_2, fence_2, ...]` (one pair per ask), `ARGV =
/// [holder, op_1, owner_1, arg_1, op_2, ...]`: op `a` acquires with `arg`
/// the TTL in milliseconds, op `r` releases and announces on channel `arg`.
/// Returns one string, a line `result counter pttl owner_prefix` per ask
/// (joined by `\n`): an acquisition's as [`ACQUIRE_SRC`]'s, a release's
/// `result` as [`RELEASE_SRC`]'s (1 / 0 / -1, the rest zero). One string,
/// not an array of arrays: the client's reply parser costs about as much
/// per value as the rest of a call's client work, and an array of four per
/// ask made a lone release parse five values where the release script
/// answers one. A prefix holds no blank (a stored value's blanks become
/// `?`), so it cannot split a line. Grants in one call share the server's
/// `TIME`.
pub const BATCH_SRC: &str = concat!(
    announce!(),
    value_helpers!(),
    step_helpers!(),
    r#"
if redis.replicate_commands then redis.replicate_commands() end
local stamp = ' ' .. now_ms() .. ' ' .. ARGV[1]
local results = {}
for i = 1, #KEYS / 2 do
  local lock, fence = KEYS[2 * i - 1], KEYS[2 * i]
  local op, owner, arg = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if op == 'a' then
    local r = grant(lock, fence, owner .. stamp, arg)
    results[i] = string.format('%d %d %d %s', r[1], r[2], r[3], (string.gsub(r[4], '%s', '?')))
  else
    results[i] = release_lock(lock, owner, arg) .. ' 0 0 '
  end
end
return table.concat(results, '\n')
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
    announce!(),
    value_helpers!(),
    r#"
local value = redis.call('GET', KEYS[1])
if not value then return false end
local evicted = holder_of(value)
evicted[4] = redis.call('PTTL', KEYS[1])
evicted[5] = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
redis.call('DEL', KEYS[1])
redis.call('INCR', KEYS[2])
announce(ARGV[1], KEYS[1])
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

/// The prelude of the reader–writer and semaphore scripts: `now` is the
/// server's `TIME` in milliseconds (so every expiry is on the server's
/// clock), `ms(n)` formats a score, `expire_with_last(set)` keeps a sorted
/// set of expiries alive exactly until its last member expires (so an
/// abandoned set frees its memory), and `first_left(set)` is the
/// milliseconds until its first member expires (-1 when empty).
macro_rules! shared_prelude {
    () => {
        r#"
-- Servers before 5.0 refuse writes after TIME unless effects are replicated.
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function ms(n)
  return string.format('%d', n)
end
local function expire_with_last(set)
  local last = redis.call('ZRANGE', set, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', set, last[2]) end
end
local function first_left(set)
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) - now end
  return -1
end
"#
    };
}

/// Reader–writer acquire. `KEYS = [writer, readers, waiting, fence]` (see
/// [`KeyLayout::shared_key`](crate::KeyLayout::shared_key)), `ARGV = [side
/// ('read' or 'write'), owner, ttl_ms, waiter ('' for none)]`.
///
/// Expired readers and waiting writers are pruned first (their score is
/// their expiry, server milliseconds). A writer is granted when there is
/// no writer and no reader; a reader when there is no writer and no
/// *waiting* writer (writer preference). A grant `INCR`s the lock's own
/// fencing counter, so a writer's token exceeds every earlier grant and a
/// reader's every earlier writer's. A refused attempt that names a
/// `waiter` registers it (or refreshes it) in `waiting` until `now + ttl`;
/// a writer granted removes its own registration.
///
/// Returns `{1, token}` on a grant, `{0, left, counter}` when refused
/// (`left`: ms until the writer, or the first reader, expires, -1
/// unknown; `counter`: the newest grant's token, which Redlock raises
/// lagging servers to).
pub const RW_ACQUIRE_SRC: &str = concat!(
    shared_prelude!(),
    r#"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local ttl = tonumber(ARGV[3])
local refused, left = false, -1
local writer = redis.call('PTTL', KEYS[1])
if writer ~= -2 then
  refused, left = true, writer
elseif ARGV[1] == 'write' then
  if redis.call('ZCARD', KEYS[2]) > 0 then refused, left = true, first_left(KEYS[2]) end
elseif redis.call('ZCARD', KEYS[3]) > 0 then
  refused = true
end
if refused then
  if ARGV[4] ~= '' then
    redis.call('ZADD', KEYS[3], ms(now + ttl), ARGV[4])
    expire_with_last(KEYS[3])
  end
  return {0, left, tonumber(redis.call('GET', KEYS[4]) or '0') or 0}
end
if ARGV[1] == 'write' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
  if ARGV[4] ~= '' then redis.call('ZREM', KEYS[3], ARGV[4]) end
else
  redis.call('ZADD', KEYS[2], ms(now + ttl), ARGV[2])
  expire_with_last(KEYS[2])
end
return {1, redis.call('INCR', KEYS[4])}
"#
);

/// Semaphore acquire. `KEYS = [holders, fence]`, `ARGV = [owner, ttl_ms,
/// permits]`. Expired holders are pruned; with fewer than `permits` left
/// the owner joins (scored `now + ttl`) and the semaphore's counter is
/// `INCR`ed. Returns `{1, token}` or `{0, left, counter}` (ms until the
/// first holder expires; the newest permit's token).
pub const SEM_ACQUIRE_SRC: &str = concat!(
    shared_prelude!(),
    r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return {0, first_left(KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0') or 0}
end
redis.call('ZADD', KEYS[1], ms(now + tonumber(ARGV[2])), ARGV[1])
expire_with_last(KEYS[1])
return {1, redis.call('INCR', KEYS[2])}
"#
);

/// Extend a writer, reader or permit. `KEYS = [name]`, `ARGV = [owner,
/// ttl_ms, shape ('string': the writer key, compare-and-`PEXPIRE`; 'set':
/// a sorted set member, re-scored to `now + ttl` only while unexpired)]`.
/// Returns 1 / 0 / -1 like [`EXTEND_SRC`]; an expired member is never
/// revived.
pub const SHARED_EXTEND_SRC: &str = concat!(
    shared_prelude!(),
    r#"
if ARGV[3] == 'string' then
  local holder = redis.call('GET', KEYS[1])
  if not holder then return 0 end
  if holder ~= ARGV[1] then return -1 end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ms(now + tonumber(ARGV[2])), ARGV[1])
expire_with_last(KEYS[1])
return 1
"#
);

/// Release a writer, reader or permit, then `PUBLISH channel lock` (the
/// key's mutex lock name, which every waiter of the key listens for).
/// `KEYS = [name]`, `ARGV = [owner, shape (as in [`SHARED_EXTEND_SRC`]),
/// channel, lock]`. Returns 1 / 0 / -1 like [`RELEASE_SRC`] (an expired
/// member is removed and answers 0).
pub const SHARED_RELEASE_SRC: &str = concat!(
    announce!(),
    shared_prelude!(),
    r#"
if ARGV[2] == 'string' then
  local holder = redis.call('GET', KEYS[1])
  if not holder then return 0 end
  if holder ~= ARGV[1] then return -1 end
  redis.call('DEL', KEYS[1])
else
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not score then return 0 end
  redis.call('ZREM', KEYS[1], ARGV[1])
  if tonumber(score) <= now then return 0 end
end
announce(ARGV[3], ARGV[4])
return 1
"#
);

/// A waiting writer's registration: refresh it to `now + ttl` while it
/// exists (never re-create one that was withdrawn or expired), or withdraw
/// it and `PUBLISH` so the readers it held back try again. `KEYS =
/// [waiting]`, `ARGV = [waiter, 'refresh', ttl_ms]` or `[waiter, 'withdraw',
/// channel, lock]`. Returns 1 when the registration was there, else 0.
pub const RW_WAITING_SRC: &str = concat!(
    announce!(),
    shared_prelude!(),
    r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then
  if score then redis.call('ZREM', KEYS[1], ARGV[1]) end
  return 0
end
if ARGV[2] == 'refresh' then
  redis.call('ZADD', KEYS[1], 'XX', ms(now + tonumber(ARGV[3])), ARGV[1])
  expire_with_last(KEYS[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  announce(ARGV[3], ARGV[4])
end
return 1
"#
);

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
    /// The [`BATCH_SRC`] script.
    batch,
    BATCH_SRC
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
shared_script!(
    /// The [`RW_ACQUIRE_SRC`] script.
    rw_acquire,
    RW_ACQUIRE_SRC
);
shared_script!(
    /// The [`SEM_ACQUIRE_SRC`] script.
    sem_acquire,
    SEM_ACQUIRE_SRC
);
shared_script!(
    /// The [`SHARED_EXTEND_SRC`] script.
    shared_extend,
    SHARED_EXTEND_SRC
);
shared_script!(
    /// The [`SHARED_RELEASE_SRC`] script.
    shared_release,
    SHARED_RELEASE_SRC
);
shared_script!(
    /// The [`RW_WAITING_SRC`] script.
    rw_waiting,
    RW_WAITING_SRC
);
