#!/usr/bin/env python3
"""Regenerates what the docs hold of the code: the README's state diagram (from states.yaml)
and docs/protocol.schema.json (from the message models). tests/test_docs.py checks both."""

import json
import re
from pathlib import Path

from barmaid.diagram import draw
from barmaid.protocol import schema

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    diagram = draw("mermaid").rstrip("\n") + "\n"
    readme.write_text(re.sub(r"```mermaid\n.*?```", lambda m: f"```mermaid\n{diagram}```", text, count=1, flags=re.S))
    (ROOT / "docs" / "protocol.schema.json").write_text(json.dumps(schema(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
