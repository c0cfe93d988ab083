"""The summary as text for people."""

from __future__ import annotations

from massmailer.demo.summary import Latency, Summary
from massmailer.demo.traffic import HIGH_PRIORITY, LOW_PRIORITY

_PRIORITY_NAMES = {str(HIGH_PRIORITY): "high", str(LOW_PRIORITY): "low"}


def render_text(summary: Summary) -> str:
    """Return the summary as a few aligned lines."""
    s = summary
    lines = [
        f"messages      {s.messages} accepted through POST /v1/batches and /v1/emails",
        "status        " + "  ".join(f"{k} {v}" for k, v in s.status.items()),
        "sent by       " + _per_provider(s),
        f"retried       {s.retried_jobs} jobs met a temporary failure; {s.retried_then_sent} "
        "of them were sent after waiting in a delay tier",
        "failed        " + (_counts(s.failed_by_kind) or "none") + f"  (suppressed {s.suppressed})",
        "attempts      "
        + "; ".join(f"{p}: {_counts(o)}" for p, o in s.attempts_by_provider.items()),
    ]
    lines.append("latency       accept-to-sent     median     p95     max   sent")
    for priority, latency in s.latency_by_priority.items():
        name = f"{_PRIORITY_NAMES.get(priority, 'priority')} ({priority})"
        lines.append(_latency_line(f"{name}, first try", latency.first_try))
        lines.append(_latency_line(f"{name}, all", latency.overall))
    lines += [
        f"first pass    every message tried once within {s.first_pass_seconds:.1f}s "
        f"({_rate(s.messages, s.first_pass_seconds)} msg/s)",
        f"rate          {s.rate_per_second:.0f} msg/s: {s.status['SENT']} sent in "
        f"{s.elapsed_seconds:.1f}s from the first POST to the last message out",
        f"database      {s.database}"
        + ("" if s.database_kept else " (removed at exit; keep it with --db PATH)"),
    ]
    return "\n".join(lines)


def _per_provider(s: Summary) -> str:
    parts = []
    for name, counted in s.accepted_by_server.items():
        sent = s.sent_by_provider.get(name, 0)
        server = "" if counted is None else f" (its server counted {counted})"
        parts.append(f"{name} {sent}{server}")
    return "  ".join(parts)


def _latency_line(label: str, latency: Latency | None) -> str:
    if latency is None:
        return f"  {label:<30} -"
    return (
        f"  {label:<30} {latency.median:6.2f}s {latency.p95:6.2f}s {latency.max:6.2f}s "
        f"{latency.count:6d}"
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.0f}" if seconds > 0 else "-"
