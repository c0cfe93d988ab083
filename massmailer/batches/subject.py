"""Render a batch's subject for each recipient at intake, cheaply when the template is simple.

Each job stores its rendered subject (short, a header, shown by GET /v1/emails/<id>). Most
subjects only substitute variables ("Hello {{ name }}"); for those, joining the literal pieces
with str() of each value gives what Jinja's plain environment prints (`soft_str` is `str` for
JSON values) in about a microsecond instead of a full render. Any other subject is rendered by
the sandbox as before.
"""

from __future__ import annotations

from collections.abc import Mapping

from jinja2 import Environment, nodes

from massmailer.templates import CompiledTemplate, TemplateError

_PARSER = Environment(keep_trailing_newline=True)
# Names Jinja resolves itself in some positions; a subject using them takes the full render.
_SPECIAL_NAMES = frozenset({"self", "loop", "super", "caller", "varargs", "kwargs"})


class SubjectRenderer:
    """Render one batch's subject; raise TemplateError like CompiledTemplate.render_part."""

    def __init__(self, compiled: CompiledTemplate) -> None:
        self._compiled = compiled
        self._pieces = _substitution_pieces(compiled.source.subject)

    @property
    def is_simple(self) -> bool:
        """Tell whether the subject is literal text and bare {{ name }} substitutions."""
        return self._pieces is not None

    def render(self, variables: Mapping[str, object]) -> str:
        """Return the subject for these variables."""
        if self._pieces is None:
            return self._compiled.render_part("subject", variables)
        out = []
        for literal, name in self._pieces:
            if name is None:
                out.append(literal)
                continue
            try:
                value = variables[name]
            except KeyError:
                raise TemplateError("subject", f"missing variable: '{name}' is undefined") from None
            out.append(value if isinstance(value, str) else str(value))
        return "".join(out)


def _substitution_pieces(source: str) -> list[tuple[str, str | None]] | None:
    """Return [(literal, None) | ("", name)] for a substitution-only template, else None."""
    tree = _PARSER.parse(source)
    pieces: list[tuple[str, str | None]] = []
    for stmt in tree.body:
        if not isinstance(stmt, nodes.Output):
            return None
        for node in stmt.nodes:
            if isinstance(node, nodes.TemplateData):
                pieces.append((node.data, None))
            elif isinstance(node, nodes.Name) and node.name not in _SPECIAL_NAMES:
                pieces.append(("", node.name))
            else:
                return None
    return pieces
