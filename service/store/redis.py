"""Redis: the stream state and the alert log in one Redis, so several replicas share them.

Keys, all under the configured prefix:

    s:<stream_id>    one stream: model fingerprint (8 bytes) | arena record | alert memory (JSON)
    alerts:seq       the last alert event number (INCR)
    alerts:events    a Redis Stream of every event, entry id `<seq>-0`: XRANGE after an id resumes
    alerts:latest    hash: alert id -> its latest version (JSON)
    alerts:order     sorted set: alert id -> seq of its last event (history, newest first)
    alerts:open      set: ids of open alerts

A round reads its streams with one MGET and writes them back with one MSET. A record whose
fingerprint (model name, ONNX sha256, record layout) is not one of this server's models is
never loaded: that stream starts clean here. A round's alert events are one Lua script call.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import orjson
import redis

from service.alerts import Alert, AlertEvent, AlertLog, AlertQuery, EventKind
from service.engine import Engine
from service.errors import StoreUnavailableError
from service.results import AlertRef
from service.settings import StoreSettings
from service.store._codec import alert_from_dict, alert_from_json, alert_to_json
from service.store.base import RestoreReport
from service.stream_batch import StreamBatch

log = logging.getLogger(__name__)

_FINGERPRINT = 8
_SCAN_CHUNK = 1000
_APPEND = """
local seqs = {}
for i = 3, #ARGV, 3 do
  local seq = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-0',
             'kind', ARGV[i + 1], 'alert', ARGV[i + 2])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
  redis.call('ZADD', KEYS[4], seq, ARGV[i])
  if ARGV[i + 1] == 'opened' then
    redis.call('SADD', KEYS[5], ARGV[i])
  else
    redis.call('SREM', KEYS[5], ARGV[i])
  end
  seqs[#seqs + 1] = seq
end
local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[2])
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, excess - 1)) do
    redis.call('HDEL', KEYS[3], id)
    redis.call('SREM', KEYS[5], id)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, excess - 1)
end
return seqs
"""


def connect(settings: StoreSettings) -> redis.Redis:
    """A client for `settings.redis_url`; StoreUnavailableError if the server does not answer."""
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    _ping(client)
    return client


class RecordFormat:
    """How one model's streams are stored: its record dtype, under a fingerprint."""

    def __init__(self, model: str, sha256: str, dtype: np.dtype) -> None:
        self.model = model
        self.dtype = dtype
        identity = f"{model}\0{sha256}\0{dtype.descr}".encode()
        self.fingerprint = hashlib.sha256(identity).digest()[:_FINGERPRINT]


class RedisState:
    """Streams' state in Redis, read and written a round at a time (`SharedState`)."""

    def __init__(self, client: redis.Redis, prefix: str, formats: Sequence[RecordFormat]) -> None:
        self._client = client
        self._prefix = prefix
        self._formats = {f.model: f for f in formats}
        self._by_fingerprint = {f.fingerprint: f for f in formats}
        self.unknown = 0  # records seen that no model of this server can read

    def load(self, stream_ids: Sequence[str]) -> list[StreamBatch]:
        if not stream_ids:
            return []
        try:
            values = self._client.mget([self._key(sid) for sid in stream_ids])
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"redis: cannot read stream state: {exc}") from exc
        return self._decode(list(stream_ids), cast(list[bytes | None], values))

    def save(self, batches: Sequence[StreamBatch]) -> None:
        mapping: dict[str, bytes] = {}
        for batch in batches:
            fmt = self._formats[batch.model]
            blob, n = batch.records.tobytes(), fmt.dtype.itemsize
            for j, sid in enumerate(batch.stream_ids):
                memo = _memo(batch.open_alerts.get(sid), batch.last_alerts.get(sid))
                mapping[self._key(sid)] = fmt.fingerprint + blob[j * n : (j + 1) * n] + memo
        if not mapping:
            return
        try:
            self._client.mset(mapping)
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"redis: cannot write stream state: {exc}") from exc

    def delete(self, stream_id: str) -> None:
        try:
            self._client.delete(self._key(stream_id))
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"redis: cannot delete stream state: {exc}") from exc

    def scan(self) -> Iterator[list[StreamBatch]]:
        """Every stored stream, a chunk of batches at a time (SCAN + MGET)."""
        match = _escape_glob(self._prefix) + "s:*"
        keys: list[bytes] = []
        try:
            for key in self._client.scan_iter(match=match, count=_SCAN_CHUNK):
                keys.append(cast(bytes, key))
                if len(keys) == _SCAN_CHUNK:
                    yield self._load_keys(keys)
                    keys = []
            if keys:
                yield self._load_keys(keys)
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"redis: cannot scan stream state: {exc}") from exc

    def _load_keys(self, keys: list[bytes]) -> list[StreamBatch]:
        start = len(self._prefix.encode()) + 2
        return self.load(list(dict.fromkeys(key[start:].decode() for key in keys)))

    def _key(self, stream_id: str) -> str:
        return f"{self._prefix}s:{stream_id}"

    def _decode(self, stream_ids: list[str], values: list[bytes | None]) -> list[StreamBatch]:
        groups: dict[bytes, tuple[list[str], list[bytes], dict[str, Alert], dict[str, AlertRef]]]
        groups = {}
        for sid, value in zip(stream_ids, values, strict=True):
            if value is None:
                continue
            fmt = self._by_fingerprint.get(value[:_FINGERPRINT])
            end = _FINGERPRINT + (0 if fmt is None else fmt.dtype.itemsize)
            try:
                if fmt is None or len(value) < end:
                    raise ValueError("a model or layout this server does not have")
                open_alert, last_alert = _unmemo(value[end:])
            except (ValueError, TypeError, KeyError) as exc:
                self.unknown += 1
                log.warning("redis: state of stream %r not loaded (%s); it starts clean", sid, exc)
                continue
            ids, chunks, opens, lasts = groups.setdefault(fmt.fingerprint, ([], [], {}, {}))
            ids.append(sid)
            chunks.append(value[_FINGERPRINT:end])
            if open_alert is not None:
                opens[sid] = open_alert
            if last_alert is not None:
                lasts[sid] = last_alert
        batches = []
        for fingerprint, (ids, chunks, opens, lasts) in groups.items():
            fmt = self._by_fingerprint[fingerprint]
            records = np.frombuffer(b"".join(chunks), fmt.dtype)  # (streams,)
            batches.append(StreamBatch(fmt.model, ids, records, opens, lasts))
        return batches


class RedisAlertLog(AlertLog):
    """The alert log in Redis: a Stream of events plus the latest version of each alert."""

    def __init__(self, client: redis.Redis, prefix: str, limit: int) -> None:
        self._client = client
        self._limit = limit
        self._keys = [f"{prefix}alerts:{name}" for name in ("seq", "events", "latest", "order",
                                                            "open")]
        self._append = client.register_script(_APPEND)

    def extend(self, events: Sequence[tuple[EventKind, Alert]]) -> list[AlertEvent]:
        if not events:
            return []
        args: list[Any] = [2 * self._limit, self._limit]
        for kind, alert in events:
            args += [alert.id, kind, alert_to_json(alert)]
        try:
            seqs = cast(list[int], self._append(keys=self._keys, args=args))
        except redis.RedisError as exc:
            log.error("redis: alert events not written: %s", exc)
            raise StoreUnavailableError(f"redis: the alert log cannot be written: {exc}") from exc
        return [AlertEvent(int(seq), kind, alert)
                for seq, (kind, alert) in zip(seqs, events, strict=True)]

    def events_after(self, seq: int) -> Iterator[AlertEvent]:
        entries = self._call(
            lambda: self._client.xrange(self._keys[1], min=f"({seq}-0", count=2 * self._limit)
        )
        return (
            AlertEvent(
                int(entry_id.split(b"-")[0]),
                fields[b"kind"].decode(),
                alert_from_json(fields[b"alert"]),
            )
            for entry_id, fields in entries
        )

    def page(self, query: AlertQuery) -> tuple[list[Alert], str | None]:
        top = "+inf"
        if query.before_id is not None:
            score = self._call(lambda: self._client.zscore(self._keys[3], query.before_id))
            if score is None:
                return [], None
            top = f"({score}"
        found: list[Alert] = []
        while len(found) <= query.limit:
            chunk = self._call(lambda t=top: self._client.zrevrangebyscore(
                self._keys[3], t, "-inf", start=0, num=max(query.limit + 1, 100), withscores=True
            ))
            if not chunk:
                break
            bodies = self._call(lambda c=chunk: self._client.hmget(
                self._keys[2], [alert_id for alert_id, _ in c]
            ))
            for body in bodies:
                if body is None:
                    continue
                alert = alert_from_json(body)
                if query.matches(alert):
                    found.append(alert)
            top = f"({chunk[-1][1]}"
        page = found[:query.limit]
        return page, (page[-1].id if len(found) > query.limit else None)

    def open_alerts(self) -> list[Alert]:
        ids = self._call(lambda: self._client.smembers(self._keys[4]))
        if not ids:
            return []
        bodies = self._call(lambda: self._client.hmget(self._keys[2], list(ids)))
        return [alert_from_json(body) for body in bodies if body is not None]

    def close(self) -> None:
        """The client belongs to the store, which closes it."""

    def _call(self, command: Any) -> Any:
        try:
            return command()
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"redis: the alert log cannot be read: {exc}") from exc


class RedisStore:
    """State and alerts in Redis; nothing on local disk. Restoring loads every stored stream."""

    backend = "redis"

    def __init__(
        self, settings: StoreSettings, history_limit: int, formats: Sequence[RecordFormat]
    ) -> None:
        self._client = connect(settings)
        kwargs = self._client.connection_pool.connection_kwargs
        self._where = f"redis {kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db')}"
        self.alert_log = RedisAlertLog(self._client, settings.redis_prefix, history_limit)
        self.shared = RedisState(self._client, settings.redis_prefix, formats)
        self.report: RestoreReport | None = None

    def restore(self, engine: Engine) -> RestoreReport:
        streams = 0
        for batches in self.shared.scan():
            engine.adopt(batches)
            streams += sum(len(b.stream_ids) for b in batches)
        unknown = self.shared.unknown
        skipped = f"; {unknown} of another model or layout left alone" if unknown else ""
        log.info("loaded %d stream(s) from %s%s", streams, self._where, skipped)
        self.report = RestoreReport("shared", streams, f"loaded from {self._where}{skipped}")
        return self.report

    async def start(self, engine: Engine) -> None:
        """State is written every round: nothing runs in the background."""

    async def stop(self) -> None:
        """Nothing is pending: every round's state was written before it was acknowledged."""

    def ping(self) -> None:
        _ping(self._client)

    def status(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "where": self._where,
            "restore": None if self.report is None else self.report.to_json(),
            "unknown_records": self.shared.unknown,
        }

    def close(self) -> None:
        self._client.close()


def _ping(client: redis.Redis) -> None:
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StoreUnavailableError(f"redis does not answer: {exc}") from exc


def _memo(open_alert: Alert | None, last_alert: AlertRef | None) -> bytes:
    memo: dict[str, Any] = {}
    if open_alert is not None:
        memo["open"] = open_alert
    if last_alert is not None:
        memo["last"] = [last_alert.id, last_alert.event]
    return orjson.dumps(memo) if memo else b""


def _unmemo(raw: bytes) -> tuple[Alert | None, AlertRef | None]:
    if not raw:
        return None, None
    memo: Mapping[str, Any] = orjson.loads(raw)
    last = memo.get("last")
    return (
        None if "open" not in memo else alert_from_dict(memo["open"]),
        None if last is None else AlertRef(str(last[0]), str(last[1])),
    )


def _escape_glob(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
