#!/usr/bin/env python3
"""The hybrid of design note 000, corrected. Run by hybrid-chaos:

    hybrid-chaos run --implementation fixed="python3 examples/python/fixed_design.py"

What changed from the seed, and why:
- One subscriber connection and thread per process for every waiter (not one per waiter),
  with reference-counted channels: UNSUBSCRIBE when a channel's last waiter leaves, on every
  exit path (found, timed out, cancelled, failed).
- Subscribe, wait for the confirmation (bounded), then read storage again: a response stored
  between the first read and the subscription is found at once, not at the next poll.
- The deadline is a clock (time.monotonic), not a sum of poll intervals: slow reads do not
  stretch a timeout.
- Each waiter has its own event, cleared after every wake.
- The subscriber checks its connection with PING (a blackholed connection reports nothing by
  itself), reconnects with backoff and full jitter, resubscribes, and wakes every waiter to
  read storage: a hint published while it was down is in storage, not in Pub/Sub.
- A failed storage read does not end a wait: it reads again at the next wake or tick.
- The response is stored with its TTL in one transaction (the commit point), then the hint
  is published; a connection error is retried, a refusal is reported as not stored.
It declares the hybrid's expected verdicts.
"""

import random
import sys
import threading
import time

import redis

from hc_protocol import Refused, serve


class Waiter:
    def __init__(self):
        self.event = threading.Event()
        self.confirmed = threading.Event()
        self.woken_by = None


class Subscriber(threading.Thread):
    """One Pub/Sub connection for the process. Only this thread touches it."""

    def __init__(self, url, cfg):
        super().__init__(daemon=True)
        self.url = url
        self.check_every = cfg.get("health_check_interval_ms", 1000) / 1000.0
        self.check_within = cfg.get("health_check_timeout_ms", 1000) / 1000.0
        self.backoff_max = cfg.get("reconnect_delay_ms_max", 5000) / 1000.0
        self.timeout = cfg.get("command_timeout_ms", 2000) / 1000.0
        self.lock = threading.Lock()
        self.channels = {}  # channel -> set of Waiter
        self.confirmed = set()
        self.changed = threading.Event()
        self.stopping = False
        self.reconnects = 0

    def add(self, channel, waiter):
        with self.lock:
            self.channels.setdefault(channel, set()).add(waiter)
            if channel in self.confirmed:
                waiter.confirmed.set()
        self.changed.set()

    def remove(self, channel, waiter):
        with self.lock:
            ws = self.channels.get(channel)
            if ws is not None:
                ws.discard(waiter)
                if not ws:
                    del self.channels[channel]
        self.changed.set()

    def wake_all(self, how):
        with self.lock:
            waiters = [w for ws in self.channels.values() for w in ws]
        for w in waiters:
            w.woken_by = how
            w.event.set()

    def count(self):
        with self.lock:
            return len(self.channels)

    def run(self):
        attempt = 0
        while not self.stopping:
            try:
                self.session()
                attempt = 0
            except Exception as e:
                print(f"subscriber: {type(e).__name__}: {e}; reconnecting", file=sys.stderr)
            if self.stopping:
                return
            with self.lock:
                self.confirmed.clear()
            self.reconnects += 1
            attempt += 1
            time.sleep(random.uniform(0, min(self.backoff_max, 0.05 * 2 ** min(attempt, 10))))

    def session(self):
        client = redis.Redis.from_url(self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout)
        ps = client.pubsub()
        try:
            subscribed = set()
            ps.subscribe("__hc_control__")
            resynced = False
            last_check = time.monotonic()
            ping_sent = None
            while not self.stopping:
                with self.lock:
                    wanted = set(self.channels)
                self.changed.clear()
                add, drop = wanted - subscribed, subscribed - wanted
                if add:
                    ps.subscribe(*add)
                    subscribed |= add
                if drop:
                    ps.unsubscribe(*drop)
                    subscribed -= drop
                    with self.lock:
                        self.confirmed -= drop
                msg = ps.get_message(timeout=0.02)
                now = time.monotonic()
                if msg is not None:
                    kind = msg["type"]
                    ch = msg["channel"].decode() if isinstance(msg.get("channel"), bytes) else msg.get("channel")
                    if kind == "subscribe":
                        with self.lock:
                            self.confirmed.add(ch)
                            for w in self.channels.get(ch, ()):
                                w.confirmed.set()
                        if ch == "__hc_control__" and not resynced:
                            resynced = True
                            # After a (re)connect: whatever was published meanwhile is in
                            # storage only. Every waiter reads again.
                            if self.reconnects:
                                self.wake_all("resync")
                    elif kind == "message":
                        with self.lock:
                            waiters = list(self.channels.get(ch, ()))
                        for w in waiters:
                            w.woken_by = "notified"
                            w.event.set()
                    elif kind == "pong":
                        ping_sent = None
                if ping_sent is not None and now - ping_sent > self.check_within:
                    raise ConnectionError("no PONG in time")
                if ping_sent is None and now - last_check >= self.check_every:
                    ps.ping()
                    ping_sent = last_check = now
        finally:
            try:
                ps.close()
                client.close()
            except Exception:
                pass


class FixedFeedbackManager:
    def __init__(self, init):
        self.prefix = init.get("prefix", "")
        self.poll_interval = init.get("poll_interval_ms", 500) / 1000.0
        self.ttl = init.get("response_ttl_s", 86400)
        timeout = init.get("command_timeout_ms", 2000) / 1000.0
        self.redis = redis.Redis.from_url(
            init["redis_url"], decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.subscribe_wait = min(1.0, timeout)
        self.sub = Subscriber(init.get("subscriber_url") or init["redis_url"], init)
        self.sub.start()
        self.lock = threading.Lock()
        self.waiters = 0

    def key(self, i):
        return f"{self.prefix}feedback:response:{i}"

    def read(self, i):
        # A failed read is "not yet", not the end of the wait: the waiter keeps its deadline
        # and reads again at the next wake or tick. (The first version let the error end the
        # wait; hybrid-chaos found it in redis-unreachable and publisher-outage as waiters
        # gone before the recovery probes.)
        try:
            return self.redis.hgetall(self.key(i)) or None
        except (redis.ConnectionError, redis.TimeoutError) as e:
            print(f"read {i}: {type(e).__name__}: {e}", file=sys.stderr)
            return None

    def wait(self, i, timeout, cancelled):
        deadline = time.monotonic() + timeout
        found = self.read(i)
        if found:
            return found, "immediate"
        channel = f"{self.prefix}feedback:{i}"
        w = Waiter()
        with self.lock:
            self.waiters += 1
        self.sub.add(channel, w)
        try:
            # Subscribe, then read again: a response stored in between is found now.
            w.confirmed.wait(timeout=max(0.0, min(deadline, time.monotonic() + self.subscribe_wait) - time.monotonic()))
            found = self.read(i)
            if found:
                return found, "after_subscribe"
            # Sleep until a hint, the next poll tick or the deadline; the 50 ms slices
            # only notice a cancel, they read nothing (a read per slice would be polling
            # every 50 ms and hide a dead wake-up path).
            next_poll = time.monotonic() + self.poll_interval
            while not cancelled.is_set():
                now = time.monotonic()
                if now >= deadline:
                    found = self.read(i)
                    return (found, "deadline") if found else None
                due = min(next_poll, deadline)
                woke = w.event.wait(timeout=max(0.0, min(due - now, 0.05)))
                if cancelled.is_set():
                    break
                if not woke and time.monotonic() < due:
                    continue
                w.event.clear()
                if not woke:
                    next_poll = time.monotonic() + self.poll_interval
                found = self.read(i)
                if found:
                    # A hint that arrived while the tick read is what would have woken it.
                    return found, (w.woken_by or "notified") if (woke or w.event.is_set()) else "polled"
            return None
        finally:
            self.sub.remove(channel, w)
            with self.lock:
                self.waiters -= 1

    def respond(self, i, fields):
        last = None
        for attempt in range(3):
            try:
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(self.key(i), mapping=fields)
                pipe.expire(self.key(i), self.ttl)
                pipe.execute()
                break
            except redis.ResponseError as e:
                raise Refused(str(e))
            except (redis.ConnectionError, redis.TimeoutError) as e:
                last = e
                time.sleep(0.05 * 2**attempt)
        else:
            raise last  # unknown: answered info
        try:
            n = self.redis.publish(f"{self.prefix}feedback:{i}", "completed")
        except redis.RedisError:
            return {"status": "stored_not_notified"}
        return {"status": "notified" if n else "unheard", "subscribers": n}

    def stats(self):
        with self.lock:
            return {"waiters": self.waiters, "channels": self.sub.count(), "pending_polls": 0, "reconnects": self.sub.reconnects}

    def close(self):
        self.sub.stopping = True
        self.sub.join(timeout=2)
        self.redis.close()


if __name__ == "__main__":
    serve(
        FixedFeedbackManager,
        {"name": "seed 000 corrected", "notifies": True, "polls": True, "expect": "hybrid"},
    )
