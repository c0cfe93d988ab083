"""The LatencyRelay's own cost: smtp-source -> relay (its CLI, a subprocess) -> smtp-sink.

    python bench/bench_relay.py --sessions 200 --messages 6000

Prints the rate smtp-source reached and the relay process's CPU time per message. smtp-source
writes a message in many small writes and does not pipeline, so this is a heavier load per
message than MassMailer's client puts on it.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    args = parser.parse_args()
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"])
    target = f"127.0.0.1:{sink_port}"
    relay = subprocess.Popen(
        [sys.executable, "-m", "massmailer.testing.relay", target, "--rtt-ms", str(args.rtt_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None
        port = int(relay.stdout.readline().rsplit(":", 1)[1])
        time.sleep(0.5)
        cpu_before, started = cpu_seconds(relay.pid), time.monotonic()
        source = ["smtp-source", "-d", "-s", str(args.sessions), "-m", str(args.messages)]
        subprocess.run([*source, "-l", "2000", f"127.0.0.1:{port}"], check=True, timeout=600)
        elapsed, cpu = time.monotonic() - started, cpu_seconds(relay.pid) - cpu_before
        print(
            f"sessions={args.sessions} messages={args.messages} rtt={args.rtt_ms:g}ms "
            f"elapsed={elapsed:.1f}s rate={args.messages / elapsed:.0f}/s relay_cpu={cpu:.1f}s "
            f"({cpu / elapsed * 100:.0f}% of a core, {cpu / args.messages * 1e6:.0f} us a message)"
        )
    finally:
        relay.terminate()
        sink.terminate()
        relay.wait()
        sink.wait()


if __name__ == "__main__":
    main()
