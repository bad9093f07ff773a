"""The exactly-once flush: an invocation's counts into the Redis wallet.

Counts move to Redis as flushes, each one Lua script call that does INCRBY hashes,
HSET wallet for the coins and pushes the newest coins to `coins:recent`. A flush
carries a marker key, set by the same script, so sending it again (after a reply
lost to a timeout or a restart) is answered from the marker instead of counting
twice. Each flush ends in one of three states, and the summary keeps them apart:

- recorded: Redis answered; the marker holds its result;
- unrecorded: certainly not in Redis (never sent, or refused before any write);
- in doubt: sent, but no answer came; Redis may still run it. `GET <marker>`
  settles it: the key exists if and only if the flush was recorded.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio

RECENT_COINS = 100  # `coins:recent`, newest first, for the web UI
RECORD = 96  # a coin on its way: 64 bytes of hex digest, then its 32 random bytes
MARKER_TTL = 3600  # seconds a marker (and so the chance to settle a doubt) lasts
KEYS = ("hashes", "wallet", "coins:recent")

# Redis does not roll a script back when a command fails halfway, so every key's
# type (and the counter's value) is checked before the first write: a script that
# fails has written nothing. The marker is read first, so a retry of a recorded
# flush is answered even if a key has gone bad since. The coins come as one
# string of 96-byte records (64 hex digest + 32 random bytes) and go in with a
# few multi-field HSETs: per-coin arguments and commands cost Redis and the
# worker several times more at large batches.
# KEYS: hashes, wallet, recent, marker. ARGV: now, hashes, cap, ttl, coins
FLUSH_SCRIPT = """
local function bad(key, holds, wanted)
  return redis.error_reply('BADKEY key ' .. key .. ' holds ' .. holds .. ', not ' .. wanted)
end
local marker = redis.call('TYPE', KEYS[4])['ok']
if marker ~= 'none' and marker ~= 'string' then
  return bad(KEYS[4], 'a ' .. marker, 'a string')
end
local done = redis.call('GET', KEYS[4])
if done then return tonumber(done) end
local wanted = {'string', 'hash', 'list'}
for i = 1, 3 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= wanted[i] then
    return bad(KEYS[i], 'a ' .. kind, 'a ' .. wanted[i])
  end
end
local count = redis.call('GET', KEYS[1])
if count and not (string.match(count, '^%-?%d+$') and #count <= 18) then
  return bad(KEYS[1], string.format('%q', string.sub(count, 1, 24)), 'an integer')
end
redis.call('INCRBY', KEYS[1], ARGV[2])
local coins, n, new, fields = ARGV[5], #ARGV[5] / 96, 0, {}
for i = 0, n - 1 do
  fields[#fields + 1] = string.sub(coins, i * 96 + 1, i * 96 + 64)
  fields[#fields + 1] = string.sub(coins, i * 96 + 65, i * 96 + 96)
  if #fields == 2000 or i == n - 1 then
    new = new + redis.call('HSET', KEYS[2], unpack(fields))
    fields = {}
  end
end
local cap = tonumber(ARGV[3])
for i = math.max(0, n - cap), n - 1 do
  local digest = string.sub(coins, i * 96 + 1, i * 96 + 64)
  redis.call('LPUSH', KEYS[3], cjson.encode({digest = digest, time = tonumber(ARGV[1])}))
end
if n > 0 then redis.call('LTRIM', KEYS[3], 0, cap - 1) end
redis.call('SET', KEYS[4], new, 'EX', tonumber(ARGV[4]))
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
        args = (time.time(), flush.hashes, RECENT_COINS, MARKER_TTL, flush.coins)
        try:
            await self._connection.send_command(
                "EVAL", FLUSH_SCRIPT, 4, *KEYS, flush.marker, *args
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

    def __init__(self, wallet: Wallet) -> None:
        self.wallet = wallet
        self.pending_hashes = 0
        self.pending_coins = bytearray()  # 96-byte records, see Flush
        self.inflight: Flush | None = None
        self.new_coins = 0  # coins this invocation added to the wallet

    def add(self, hashes: int, coins: bytes) -> None:
        self.pending_hashes += hashes
        self.pending_coins += coins

    @property
    def held_coins(self) -> int:
        held = len(self.pending_coins) + (len(self.inflight.coins) if self.inflight else 0)
        return held // RECORD

    async def flush(self) -> None:
        """Record the flush in flight, then what is pending; NotRecorded if Redis won't."""
        while self.inflight is not None or self.pending_hashes or self.pending_coins:
            if self.inflight is None:
                self.inflight = Flush(self.pending_hashes, bytes(self.pending_coins))
                self.pending_hashes, self.pending_coins = 0, bytearray()
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
