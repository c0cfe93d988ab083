"""The render budget's CPU backstop: armed at a part's first step, then read every few steps."""

from __future__ import annotations

import time

import pytest

from massmailer import template_budget
from massmailer.template_budget import CPU_CHECK_EVERY, BudgetExceeded, RenderBudget
from massmailer.templates import TemplateSource, compile_template


def test_the_cpu_backstop_stops_a_render_that_spends_too_long_between_its_steps():
    budget = RenderBudget(max_value_chars=1_000, max_cpu_seconds=0.05)
    started = time.thread_time()
    with pytest.raises(BudgetExceeded, match="s of CPU"), template_budget.active(budget):
        for _ in range(100 * CPU_CHECK_EVERY):
            budget.step()
            sum(range(50))  # CPU that no step accounts for
    assert time.thread_time() - started < 1.0


def test_a_part_of_plain_substitutions_reads_no_cpu_clock(monkeypatch):
    reads = []
    real = time.thread_time
    monkeypatch.setattr(template_budget.time, "thread_time", lambda: reads.append(1) or real())
    plain = compile_template(TemplateSource("Hi {{ name }}", "Hello {{ name }}", None))
    looping = compile_template(
        TemplateSource("Hi", "{% for x in items %}{{ x }}{% endfor %}", None)
    )

    assert plain.render({"name": "Ada"}, ("text",)).text == "Hello Ada"
    assert reads == []  # the system call is the cost: a render that takes no step skips it
    assert looping.render({"items": [1, 2, 3]}, ("text",)).text == "123"
    assert len(reads) == 1  # armed at the first step
