"""The state diagram, drawn by transitions from states.yaml, for the docs.

Mermaid needs nothing installed; dot needs the `graphviz` package, svg also Graphviz's `dot`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from transitions.extensions import GraphMachine

from .errors import BarmaidError

FORMATS = ("mermaid", "dot", "svg")


class _Drawing:
    """A model with no behaviour: the diagram needs only the machine's data."""


def draw(fmt: str = "mermaid", definition: Optional[dict[str, Any]] = None) -> str:
    """The diagram as text (mermaid stateDiagram-v2, Graphviz dot, or SVG).

    Raises:
        BarmaidError: dot/svg asked for but Graphviz is missing, saying what to install.
    """
    from .definition import load_definition

    if fmt not in FORMATS:
        raise BarmaidError(f"unknown diagram format {fmt!r}; use one of {', '.join(FORMATS)}")
    definition = definition or load_definition()
    engine: Literal["mermaid", "graphviz"] = "mermaid" if fmt == "mermaid" else "graphviz"
    if engine == "graphviz":
        try:
            import graphviz  # noqa: F401  (transitions silently falls back to mermaid without it)
        except ImportError:
            raise BarmaidError(
                f"--format {fmt} needs the graphviz package: pip install graphviz (in barmaid's venv)"
            ) from None
    machine = GraphMachine(
        model=_Drawing(), title="barmaid", graph_engine=engine, auto_transitions=False, **definition
    )
    graph = machine.get_graph()
    if fmt == "mermaid":
        return graph.draw(None)
    if fmt == "dot":
        return graph.source
    try:
        return graph.pipe(format="svg").decode()
    except Exception as exc:  # graphviz.ExecutableNotFound, without importing it at module level
        raise BarmaidError(
            f"--format svg needs Graphviz's dot program ({exc.__class__.__name__}); "
            "install it (apt install graphviz) or use --format mermaid"
        ) from None
