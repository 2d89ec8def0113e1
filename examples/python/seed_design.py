#!/usr/bin/env python3
"""The hybrid of design note 000, as written: a Pub/Sub connection and listener thread per
waiter, a deadline that sums poll intervals, no unsubscribe, and an event that is never
cleared. Run by hybrid-chaos to show what the harness finds in it:

    hybrid-chaos run --implementation seed="python3 examples/python/seed_design.py"

It declares no expected verdicts: whatever the harness finds is a finding.
"""

import threading

import redis

from hc_protocol import Refused, serve


class SeedFeedbackManager:
    def __init__(self, init):
        self.prefix = init.get("prefix", "")
        self.poll_interval = init.get("poll_interval_ms", 500) / 1000.0
        self.ttl = init.get("response_ttl_s", 86400)
        self._redis_client = redis.Redis.from_url(init["redis_url"], decode_responses=True)
        self._sub_client = redis.Redis.from_url(init.get("subscriber_url") or init["redis_url"])
        self._lock = threading.Lock()
        self._waiters = 0
        self._listeners = []  # every pubsub the listener threads made; nothing removes them

    def _get_response_from_storage(self, feedback_id):
        data = self._redis_client.hgetall(f"{self.prefix}feedback:response:{feedback_id}")
        return data or None

    # The seed's _poll_for_response, with its flaws kept.
    def wait(self, feedback_id, timeout, cancelled):
        with self._lock:
            self._waiters += 1
        try:
            response = self._get_response_from_storage(feedback_id)
            if response:
                return response, "immediate"
            notification_event = threading.Event()

            def pubsub_listener():
                try:
                    pubsub = self._sub_client.pubsub()
                    with self._lock:
                        self._listeners.append(pubsub)
                    pubsub.subscribe(f"{self.prefix}feedback:{feedback_id}")
                    for message in pubsub.listen():
                        if message["type"] == "message":
                            notification_event.set()
                            break
                    # Never unsubscribed, never closed: the seed does neither.
                except Exception as e:
                    print(f"[Pub/Sub] Listener error: {e}", file=__import__("sys").stderr)

            threading.Thread(target=pubsub_listener, daemon=True).start()
            poll_interval = self.poll_interval
            elapsed = 0.0
            while elapsed < timeout:
                woke = notification_event.wait(timeout=poll_interval)
                response = self._get_response_from_storage(feedback_id)
                if response:
                    return response, "notified" if woke else "polled"
                elapsed += poll_interval  # the time the reads took is not counted
            return None
        finally:
            with self._lock:
                self._waiters -= 1

    def respond(self, feedback_id, fields):
        key = f"{self.prefix}feedback:response:{feedback_id}"
        try:
            self._redis_client.hset(key, mapping=fields)
            self._redis_client.expire(key, self.ttl)
        except redis.ResponseError as e:
            raise Refused(str(e))
        n = self._redis_client.publish(f"{self.prefix}feedback:{feedback_id}", "completed")
        return {"status": "notified" if n else "unheard", "subscribers": n}

    def stats(self):
        with self._lock:
            alive = sum(1 for p in self._listeners if p.subscribed)
            return {"waiters": self._waiters, "channels": alive, "pending_polls": 0, "reconnects": 0}

    def close(self):
        pass


if __name__ == "__main__":
    serve(SeedFeedbackManager, {"name": "seed 000 as written", "notifies": True, "polls": True})
