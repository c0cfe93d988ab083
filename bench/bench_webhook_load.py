"""The sending rate with a webhook endpoint that takes 15 s per request, against none (issue 12, 6).

The Procfile's processes as a platform runs them (gunicorn, `worker`, `webhooks`, `beat`) send
through fast local providers (Postfix's `smtp-sink`, as in bench_delivery.py). Each round has two
phases on the same processes: N emails with no webhook endpoint, then N emails with an endpoint
subscribed to email.sent whose receiver (127.0.0.1, a thread per request) answers each request
after 15 s. Each phase is timed from the first batch POST until its N jobs are SENT. The endpoint
is deleted at the end of its phase (its backlog goes with it).

    python bench/bench_webhook_load.py --count 3000
    python bench/bench_webhook_load.py --count 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_migrate import upgrade  # noqa: E402

from bench.bench_delivery import (  # noqa: E402
    call,
    count_sent,
    free_port,
    outbox_waiting,
    post_batches,
    procfile_process,
    providers,
    start,
    stop,
    wait_listening,
    wait_worker_ready,
    webhook_env,
)
from massmailer import apikeys, create_app  # noqa: E402
from massmailer.config import load_settings  # noqa: E402
from massmailer.extensions import db  # noqa: E402
from tests import infra  # noqa: E402
from tests.processes import Receiver  # noqa: E402

SLOW_SECONDS = 15.0


def send_and_time(web_port: int, key: str, count: int) -> float:
    """POST count emails in batches; seconds from the first POST until all of them are SENT."""
    before = count_sent()
    started = time.perf_counter()
    post_batches(web_port, key, count, (0,))
    infra.wait_until(lambda: count_sent() >= before + count, 1800, interval=0.1, message="all SENT")
    return time.perf_counter() - started


def phase(web_port: int, key: str, count: int, receiver: Receiver | None) -> dict:
    endpoint = None
    if receiver is not None:
        payload = {"url": receiver.url, "events": ["email.sent"]}
        endpoint = call(web_port, key, "POST", "/v1/webhooks", payload)
    requests_before = len(receiver.requests) if receiver else 0
    seconds = send_and_time(web_port, key, count)
    result = {
        "webhook_endpoint": "15 s per request" if receiver else "none",
        "emails": count,
        "seconds": round(seconds, 2),
        "emails_per_second": round(count / seconds, 1),
    }
    if endpoint is not None:
        result["receiver_requests_during_phase"] = len(receiver.requests) - requests_before
        result["outbox_waiting_at_end"] = outbox_waiting()
        call(web_port, key, "DELETE", f"/v1/webhooks/{endpoint['id']}")
    print(json.dumps(result), flush=True)
    return result


def run(env: dict, key: str, count: int, rounds: int, warmup: int) -> list[tuple[dict, dict]]:
    receiver = Receiver(delay_seconds=SLOW_SECONDS)
    web_port = free_port()
    web = start(
        ["gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{web_port}", "--workers", "2"], env, "web"
    )
    processes = [
        web,
        procfile_process("worker", env),
        procfile_process("webhooks", env),
        procfile_process("beat", env),
    ]
    try:
        wait_listening(web_port, "gunicorn")
        wait_worker_ready("worker")
        wait_worker_ready("webhooks")
        if warmup:
            send_and_time(web_port, key, warmup)
        return [
            (phase(web_port, key, count, None), phase(web_port, key, count, receiver))
            for _ in range(rounds)
        ]
    finally:
        for proc in processes:
            stop(proc)
        receiver.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="emails per phase")
    parser.add_argument("--rounds", type=int, default=1, help="(without, with) pairs")
    parser.add_argument("--warmup", type=int, default=500, help="emails sent before timing")
    parser.add_argument("--providers", type=int, default=3)
    args = parser.parse_args(argv)
    # A SIGTERM runs the finally blocks below, which stop the processes this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    infra.OUTPUT_DIR.mkdir(exist_ok=True)

    with (
        infra.throwaway_services() as own,
        providers(0, args.providers) as (entries, _sinks),
    ):
        env = own.service_env(entries, **webhook_env(own.run))
        app = create_app(load_settings(env))
        with app.app_context():
            with contextlib.redirect_stderr(io.StringIO()):
                upgrade()
            key = apikeys.create(db.session, "bench")
            results = run(env, key, args.count, args.rounds, args.warmup)
            db.session.remove()

    without = statistics.median(w["emails_per_second"] for w, _ in results)
    with_slow = statistics.median(s["emails_per_second"] for _, s in results)
    ratio = with_slow / without
    print(f"\n{args.count} emails per phase, {args.rounds} round(s), medians:")
    print(f"no webhook endpoint:           {without}/s")
    print(f"endpoint taking 15 s/request:  {with_slow}/s")
    print(f"ratio:                         {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
