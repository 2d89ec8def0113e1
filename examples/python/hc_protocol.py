"""The hybrid-chaos process protocol (harness/PROTOCOL.md), for Python implementations.

One JSON object per line on stdin (requests) and stdout (answers). Requests are handled
concurrently, each wait and respond on its own thread, and answered as they complete.
An implementation is a class with:

    __init__(self, init)                  init: the `init` request (redis_url, prefix, ...)
    wait(self, id, timeout_s, cancelled)  -> (fields, via) or None on timeout; timeout_s is
                                             what is left of the request's timeout_ms,
                                             counted from when the request was read;
                                             `cancelled` is a threading.Event set by `cancel`
    respond(self, id, fields)             -> {"status": "notified" | "unheard" | "stored"}
                                             raise Refused when certainly not stored
    stats(self)                           -> {"waiters", "channels", "pending_polls", "reconnects"}
    close(self)

Any other exception from wait or respond is answered `info` (outcome unknown).
When stdin closes the harness is gone: exit at once.
"""

import json
import os
import queue
import sys
import threading
import time
import traceback


class Refused(Exception):
    """The write certainly did not happen (answered `fail`)."""


def serve(factory, hello):
    out_lock = threading.Lock()
    cancels = {}
    cancels_lock = threading.Lock()
    impl = None

    def answer(req, outcome, value=None, error=None):
        msg = {"req": req, "outcome": outcome}
        if value is not None:
            msg["value"] = value
        if error is not None:
            msg["error"] = error
        line = json.dumps(msg)
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def run_wait(req, msg, cancelled, received):
        try:
            # The harness times a wait from when it sent the request: the timeout counts from
            # when it was read here, not from when this thread got to run.
            left = max(0.0, msg.get("timeout_ms", 0) / 1000.0 - (time.monotonic() - received))
            got = impl.wait(msg["id"], left, cancelled)
            if cancelled.is_set():
                answer(req, "info", error="cancelled")
            elif got is None:
                answer(req, "timeout")
            else:
                fields, via = got
                answer(req, "ok", value={"fields": fields, "via": via})
        except Exception as e:  # unknown outcome: say so
            traceback.print_exc(file=sys.stderr)
            answer(req, "info", error=f"{type(e).__name__}: {e}")
        finally:
            with cancels_lock:
                cancels.pop(req, None)

    def run_respond(req, msg):
        try:
            answer(req, "ok", value=impl.respond(msg["id"], msg.get("fields", {})))
        except Refused as e:
            answer(req, "fail", error=str(e))
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            answer(req, "info", error=f"{type(e).__name__}: {e}")

    # Requests are taken in by a thread that does nothing else. Starting a thread per wait
    # blocks until that thread runs, which on a busy machine is milliseconds each: read in the
    # same loop, the 40th of 40 waits sent together was read 90-260 ms after the harness sent
    # it (beside `stress-ng --cpu 2`), and every wait ended that much past its timeout, since
    # the harness times a wait from the send. Stamped here on arrival, a wait's deadline is
    # counted from when it reached the program, however long its thread takes to start.
    inbox = queue.SimpleQueue()

    def intake():
        for line in sys.stdin:
            inbox.put((time.monotonic(), line))
        inbox.put(None)

    threading.Thread(target=intake, daemon=True).start()
    while True:
        item = inbox.get()
        if item is None:
            break
        received, line = item
        if not line.strip():
            continue
        msg = json.loads(line)
        req, op = msg.get("req", 0), msg.get("op")
        if op == "hello":
            answer(req, "ok", value=hello)
        elif op == "init":
            try:
                impl = factory(msg)
                answer(req, "ok", value={})
            except Exception as e:
                answer(req, "fail", error=f"{type(e).__name__}: {e}")
        elif impl is None:
            answer(req, "fail", error="init first")
        elif op == "wait":
            cancelled = threading.Event()
            with cancels_lock:
                cancels[req] = cancelled
            threading.Thread(target=run_wait, args=(req, msg, cancelled, received), daemon=True).start()
        elif op == "respond":
            threading.Thread(target=run_respond, args=(req, msg), daemon=True).start()
        elif op == "cancel":
            with cancels_lock:
                ev = cancels.get(msg.get("target"))
            if ev is not None:
                ev.set()
            answer(req, "ok", value={})
        elif op == "stats":
            answer(req, "ok", value=impl.stats())
        elif op == "shutdown":
            impl.close()
            answer(req, "ok", value={})
            break
        else:
            answer(req, "fail", error=f"unknown op {op!r}")
    # stdin closed or shutdown: leave now, whatever threads are still waiting.
    sys.stdout.flush()
    os._exit(0)
