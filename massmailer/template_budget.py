"""A render budget enforced inside Jinja2: loop steps, calls, built strings and CPU time.

Jinja2's sandbox only sees the operators it intercepts and the calls it makes through
`environment.call`. A `~` compiles to a plain string join, a loop to a Python `for`, a
`{% set %}…{% endset %}` block to a join of its output, and filters are called directly: none of
them pass through the sandbox. This module hooks each of them:

- the code generator routes `~` through `budget_join`, which checks the size before joining;
- the parser wraps every loop's iterable in `budget_loop`, which charges the loop body's size
  (in template nodes) for each item, filtered-out items included;
- macros charge their body's size on each call;
- every call, filter result and captured block counts toward the strings built.

The budget lives in a context variable set for the duration of one part's render, so the hooks
need no argument from the template and concurrent renders (threads) never share one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame

# A loop over 3,000 items with a short body costs ~30,000 steps; nested over the same items,
# ~10^8. A million steps are ~0.2 s of CPU on this kind of machine.
DEFAULT_MAX_STEPS = 1_000_000
DEFAULT_MAX_BUILT_CHARS = 10_000_000  # every string built during one render, summed
# A backstop for what steps cannot see (large straight-line bodies between them), counted from a
# part's first step.
DEFAULT_MAX_CPU_SECONDS = 0.5
CPU_CHECK_EVERY = 20_000  # steps between two reads of the thread's CPU clock (~0.3 µs each)


class BudgetExceeded(Exception):
    """A render went over its budget; templates.py turns it into TemplateBudgetError."""


@dataclass
class RenderBudget:
    """What one part's render may spend; counters start at zero for each render."""

    max_value_chars: int
    max_steps: int = DEFAULT_MAX_STEPS
    max_built_chars: int = DEFAULT_MAX_BUILT_CHARS
    max_cpu_seconds: float = DEFAULT_MAX_CPU_SECONDS
    steps: int = 0
    built_chars: int = 0
    _cpu_deadline: float | None = None
    _next_cpu_check: int = 1

    def start(self) -> None:
        # The CPU clock is read at the first step, not here: most parts (plain substitutions)
        # take no step at all, and that read is a system call made holding the GIL, which under
        # load cost 9 % of a worker's GIL samples when it ran at every render.
        self.steps = self.built_chars = 0
        self._next_cpu_check = 1
        self._cpu_deadline = None

    def step(self, weight: int = 1) -> None:
        """Charge loop iterations or calls; check the CPU clock now and then."""
        self.steps += weight
        if self.steps > self.max_steps:
            raise BudgetExceeded(f"more than {self.max_steps} loop steps and calls")
        if self.steps >= self._next_cpu_check:
            self._next_cpu_check = self.steps + CPU_CHECK_EVERY
            self.check_cpu()

    def check_cpu(self) -> None:
        now = time.thread_time()
        if self._cpu_deadline is None:
            self._cpu_deadline = now + self.max_cpu_seconds
        elif now > self._cpu_deadline:
            raise BudgetExceeded(f"more than {self.max_cpu_seconds:g} s of CPU")

    def size(self, size: int, limit: int | None = None) -> None:
        """Charge a value about to be built (or just built) of this many characters or items."""
        limit = self.max_value_chars if limit is None else limit
        if size > limit:
            raise BudgetExceeded(f"a value of more than {limit} characters")
        self.built_chars += size
        if self.built_chars > self.max_built_chars:
            raise BudgetExceeded(f"more than {self.max_built_chars} characters built in all")
        self.step()


_CURRENT: ContextVar[RenderBudget | None] = ContextVar("massmailer_render_budget", default=None)


@contextmanager
def active(budget: RenderBudget) -> Iterator[RenderBudget]:
    """Make budget the one the hooks charge while the block runs."""
    budget.start()
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def current() -> RenderBudget | None:
    """The budget of the render in progress on this thread, if any."""
    return _CURRENT.get()


def charge_size(value: object, limit: int | None = None) -> None:
    """Charge a value's size (strings in characters, lists and dicts in items)."""
    budget = _CURRENT.get()
    if budget is not None and isinstance(value, str | list | tuple | dict):
        budget.size(len(value), limit)


def charge_chars(size: int) -> None:
    """Charge a string of this many characters about to be built."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.size(size)


def charge_step(weight: int = 1) -> None:
    """Charge loop steps or calls to the current budget."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.step(weight)


def budget_loop(iterable: Iterable, weight: int) -> Iterator:
    """Yield the loop's items, charging the body's weight for each."""
    for item in iterable:
        charge_step(weight)
        yield item


class BudgetCodeGenerator(CodeGenerator):
    """Jinja's code generator with `~` routed through environment.budget_join."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.budget_join(context.eval_ctx, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def instrument(tree: nodes.Template) -> nodes.Template:
    """Wrap loops' iterables and prefix macro bodies with charges of their body's size."""
    for loop in tree.find_all(nodes.For):
        if loop.recursive:
            # loop(…) restarts iteration outside the wrapped iterable; email needs no recursion.
            raise BudgetExceeded("recursive loops are not allowed")
        weight = _weight(loop.body) + _weight([loop.test] if loop.test else [])
        loop.iter = _hook("budget_loop", [loop.iter, nodes.Const(weight)], loop.iter.lineno)
    for macro in (*tree.find_all(nodes.Macro), *tree.find_all(nodes.CallBlock)):
        lineno = macro.lineno
        charge = nodes.ExprStmt(_hook("budget_step", [nodes.Const(_weight(macro.body))], lineno))
        charge.set_lineno(lineno)
        macro.body = [charge, *macro.body]
    return tree


def _hook(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    call = nodes.Call(nodes.EnvironmentAttribute(name), args, [], None, None)
    call.set_lineno(lineno)
    return call


def _weight(body: list[nodes.Node]) -> int:
    """A body's cost per run: its node count (at least 1)."""
    return max(1, sum(1 + sum(1 for _ in node.find_all(nodes.Node)) for node in body))
