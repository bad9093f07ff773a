"""The exactly-once flush: an invocation's counts into the Redis wallet.

Counts move to Redis as flushes, each one Lua script call that does INCRBY hashes,
HSET wallet for the coins, pushes the newest coins to `coins:recent`, updates
the counter's history `hashes:history` and adds the interval's telemetry to
`brkcoin:stats`. A flush carries a marker key, set by the same script, so sending
it again (after a reply lost to a timeout or a restart) is answered from the
marker instead of counting twice. Each flush ends in one of three states, and
the summary keeps them apart:

- recorded: Redis answered; the marker holds its result;
- unrecorded: certainly not in Redis (never sent, or refused before any write);
- in doubt: sent, but no answer came; Redis may still run it. `GET <marker>`
  settles it: the key exists if and only if the flush was recorded.

Beside DockerCoins' keys (`hashes`, `wallet`), for the web UI:
- `coins:recent`: list, newest first, capped at 100: {"digest", "time"} JSON;
- `hashes:history`: list, newest first, capped at 600: "[epoch second, hashes]",
  the counter at most once a second (Redis' clock), so a page opened now can
  draw the last ten minutes;
- `brkcoin:stats`: sorted set scored by Redis' clock, the last 60 s of flushes'
  telemetry (see telemetry.py);
- `brkcoin:totals`: hash, the telemetry added up since the wallet began, for
  Prometheus' counters: `flushes`, and for each upstream (rng, hasher)
  `NAME:calls`, `NAME:errors`, `NAME:sum_ms` and `NAME:le:I` (timed calls in
  latency bucket I; `bounds_ms` holds the buckets' bounds as JSON), and
  `redis:errors` (flushes Redis did not confirm, told by the next that landed).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from telemetry import Telemetry

if TYPE_CHECKING:
    import redis.asyncio

RECENT_COINS = 100
HISTORY_POINTS = 600
STATS_SECONDS = 60
RECORD = 96  # a coin on its way: 64 bytes of hex digest, then its 32 random bytes
MARKER_TTL = 3600  # seconds a marker (and so the chance to settle a doubt) lasts
KEYS = ("hashes", "wallet", "coins:recent", "hashes:history", "brkcoin:stats", "brkcoin:totals")

# Redis does not roll a script back when a command fails halfway, so every key's
# type (and the counter's value) is checked before the first write: a script that
# fails has written nothing. The marker is read first, so a retry of a recorded
# flush is answered even if a key has gone bad since. The coins come as one
# string of 96-byte records (64 hex digest + 32 random bytes) and go in with a
# few multi-field HSETs: per-coin arguments and commands cost Redis and the
# worker several times more at large batches. Times are Redis' own (TIME), one
# clock for every worker instance and the web UI.
# The telemetry line is our own JSON, decoded (pcall: never an error halfway)
# before the first write.
# KEYS: hashes, wallet, recent, history, stats, totals, marker.
# ARGV: hashes, coins, stats line ('' for none), recent cap, history cap,
#       stats seconds, marker ttl
FLUSH_SCRIPT = """
local function bad(key, holds, wanted)
  return redis.error_reply('BADKEY key ' .. key .. ' holds ' .. holds .. ', not ' .. wanted)
end
local marker = redis.call('TYPE', KEYS[7])['ok']
if marker ~= 'none' and marker ~= 'string' then
  return bad(KEYS[7], 'a ' .. marker, 'a string')
end
local done = redis.call('GET', KEYS[7])
if done then return tonumber(done) end
local wanted = {'string', 'hash', 'list', 'list', 'zset', 'hash'}
for i = 1, 6 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= wanted[i] then
    return bad(KEYS[i], 'a ' .. kind, 'a ' .. wanted[i])
  end
end
local count = redis.call('GET', KEYS[1])
if count and not (string.match(count, '^%-?%d+$') and #count <= 18) then
  return bad(KEYS[1], string.format('%q', string.sub(count, 1, 24)), 'an integer')
end
local decoded, stats = false, nil
if #ARGV[3] > 0 then decoded, stats = pcall(cjson.decode, ARGV[3]) end
local clock = redis.call('TIME')
local second = tonumber(clock[1])
local now = second + tonumber(clock[2]) / 1e6
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
local coins, new, fields = ARGV[2], 0, {}
local n = #coins / 96
for i = 0, n - 1 do
  fields[#fields + 1] = string.sub(coins, i * 96 + 1, i * 96 + 64)
  fields[#fields + 1] = string.sub(coins, i * 96 + 65, i * 96 + 96)
  if #fields == 2000 or i == n - 1 then
    new = new + redis.call('HSET', KEYS[2], unpack(fields))
    fields = {}
  end
end
local cap = tonumber(ARGV[4])
for i = math.max(0, n - cap), n - 1 do
  local digest = string.sub(coins, i * 96 + 1, i * 96 + 64)
  redis.call('LPUSH', KEYS[3], cjson.encode({digest = digest, time = now}))
end
if n > 0 then redis.call('LTRIM', KEYS[3], 0, cap - 1) end
local point = '[' .. second .. ',' .. total .. ']'
local last = redis.call('LINDEX', KEYS[4], 0)
if last and string.match(last, '^%[(%d+),') == tostring(second) then
  redis.call('LSET', KEYS[4], 0, point)
else
  redis.call('LPUSH', KEYS[4], point)
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
end
if #ARGV[3] > 0 then
  redis.call('ZADD', KEYS[5], now, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[6]))
end
-- Totals are telemetry: a bad field (redis.pcall) costs its count, never the flush.
local function add(field, n)
  n = tonumber(n)
  if n and n ~= 0 then redis.pcall('HINCRBY', KEYS[6], field, n) end
end
add('flushes', 1)
if decoded and type(stats) == 'table' then
  for _, name in ipairs({'rng', 'hasher'}) do
    local calls = stats[name]
    if type(calls) == 'table' and type(calls.buckets) == 'table' then
      add(name .. ':calls', calls.calls)
      add(name .. ':errors', calls.errors)
      if tonumber(calls.sum_ms) then
        redis.pcall('HINCRBYFLOAT', KEYS[6], name .. ':sum_ms', calls.sum_ms)
      end
      for i, n in ipairs(calls.buckets) do add(name .. ':le:' .. (i - 1), n) end
    end
  end
  if type(stats.redis) == 'table' then add('redis:errors', stats.redis.errors) end
  if type(stats.bounds_ms) == 'table' then
    redis.pcall('HSET', KEYS[6], 'bounds_ms', cjson.encode(stats.bounds_ms))
  end
end
redis.call('SET', KEYS[7], new, 'EX', tonumber(ARGV[7]))
return new
"""


class NotRecorded(Exception):
    """Redis did not confirm a flush (whether it may still land: `Flush.in_doubt`)."""


def coin_records(records: bytes) -> dict[str, str]:
    """Coins as the summary shows them: {hex digest: hex of the random bytes}."""
    return {
        records[i : i + 64].decode(): records[i + 64 : i + RECORD].hex()
        for i in range(0, len(records), RECORD)
    }


@dataclass
class Flush:
    """Counts on their way to Redis under one marker."""

    hashes: int
    coins: bytes  # 96-byte records: the form the flush script takes, built as mined
    marker: str = field(default_factory=lambda: f"brkcoin:flush:{uuid.uuid4().hex}")
    stats: str = ""  # the interval's telemetry line
    in_doubt: bool = False  # an attempt was sent and not answered: it may land

    def as_json(self) -> dict[str, object]:
        return {
            "marker": self.marker,
            "hashes": self.hashes,
            "coins": coin_records(self.coins),
        }


class Wallet:
    """One Redis connection, used by one invocation for its flushes, one at a time.

    A raw connection rather than a pool, so that a failure to connect (nothing
    sent) can be told from a failure after sending (in doubt).
    """

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        # Imported here, not at the top: redis is the worker's heaviest import
        # (~0.1 s) and only recording needs it, so a cold start answers sooner.
        import redis.asyncio

        self._pool = redis.asyncio.ConnectionPool.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._connection: redis.asyncio.connection.AbstractConnection | None = None

    async def record(self, flush: Flush) -> int:
        """Send `flush`; the number of its coins new to the wallet, or NotRecorded."""
        import redis  # loaded by __init__ already; see there
        try:
            if self._connection is None:
                self._connection = self._pool.connection_class(**self._pool.connection_kwargs)
            await self._connection.connect()  # type: ignore[no-untyped-call]
        except (redis.RedisError, OSError) as e:
            await self.close()
            raise NotRecorded(f"redis unreachable: {e}") from e
        args = (flush.hashes, flush.coins, flush.stats, RECENT_COINS, HISTORY_POINTS,
                STATS_SECONDS, MARKER_TTL)
        try:
            await self._connection.send_command(
                "EVAL", FLUSH_SCRIPT, len(KEYS) + 1, *KEYS, flush.marker, *args
            )
            new = await self._connection.read_response()
        except redis.ResponseError as e:  # the script refused: this attempt wrote nothing
            raise NotRecorded(f"redis refused the flush: {e}") from e
        except (redis.RedisError, OSError) as e:
            flush.in_doubt = True
            await self.close()
            raise NotRecorded(f"redis did not answer: {e}") from e
        except BaseException:  # cancelled mid-call: the flush may still land
            flush.in_doubt = True
            await self.close()
            raise
        return int(new)

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.disconnect(nowait=True)


class Ledger:
    """What one invocation has counted and Redis has not confirmed yet.

    Counts wait in `pending` until a flush takes them; one flush is in flight at a
    time and is sent again, under its marker, until Redis confirms it.
    """

    def __init__(self, wallet: Wallet, telemetry: Telemetry) -> None:
        self.wallet = wallet
        self.telemetry = telemetry
        self.pending_hashes = 0
        self.pending_coins = bytearray()  # 96-byte records, see Flush
        self.inflight: Flush | None = None
        self.new_coins = 0  # coins this invocation added to the wallet

    def add(self, hashes: int, coins: bytes) -> None:
        self.pending_hashes += hashes
        self.pending_coins += coins

    def holds_counts(self) -> bool:
        """Hashes or coins that Redis has not confirmed (telemetry aside: it is
        best effort, and never a reason to answer 503)."""
        inflight = self.inflight is not None and bool(self.inflight.hashes or self.inflight.coins)
        return inflight or bool(self.pending_hashes or self.pending_coins)

    @property
    def held_coins(self) -> int:
        held = len(self.pending_coins) + (len(self.inflight.coins) if self.inflight else 0)
        return held // RECORD

    async def flush(self) -> None:
        """Record the flush in flight, then what was pending when called: two sends
        at most, however fast the loops add more meanwhile (that waits for the
        next call, a second later). NotRecorded if Redis won't."""
        if self.inflight is not None:
            await self._send()
        if self.pending_hashes or self.pending_coins or self.telemetry.has_news():
            self.inflight = Flush(self.pending_hashes, bytes(self.pending_coins))
            self.inflight.stats = self.telemetry.take(self.inflight.marker)
            self.pending_hashes, self.pending_coins = 0, bytearray()
            await self._send()

    async def _send(self) -> None:
        assert self.inflight is not None
        self.new_coins += await self.wallet.record(self.inflight)
        self.inflight = None

    def unrecorded(self) -> dict[str, object]:
        """What is certainly not in Redis."""
        hashes, coins = self.pending_hashes, bytes(self.pending_coins)
        if self.inflight is not None and not self.inflight.in_doubt:
            hashes += self.inflight.hashes
            coins = self.inflight.coins + coins
        return {"hashes": hashes, "coins": coin_records(coins)}

    def in_doubt(self) -> dict[str, object] | None:
        """The flush that was sent and not answered, with the marker that settles it."""
        if self.inflight is not None and self.inflight.in_doubt:
            return self.inflight.as_json()
        return None
