"""The README's promises: its diagram is `barmaid diagram`, its test command is what CI runs, its
layout table is the tree (and the tests keep the layout's rule: helpers in tests/support)."""

import json
import re
from pathlib import Path

from barmaid.diagram import draw

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_diagram_is_the_diagram_command_output():
    block = re.search(r"```mermaid\n(.*?)```", README, re.S)
    assert block, "README has no mermaid block"
    assert block.group(1) == draw("mermaid").rstrip("\n") + "\n", "run scripts/update_docs.py"


def test_the_protocol_schema_file_is_generated_from_the_models():
    from barmaid.protocol import schema

    on_disk = json.loads((ROOT / "docs" / "protocol.schema.json").read_text(encoding="utf-8"))
    assert on_disk == schema(), "run scripts/update_docs.py"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_ci_builds_a_fresh_virtual_environment_before_it_tests():
    """What an earlier run installed (an editable copy, older dependencies) must not be tested."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    removed = lines.index("rm -rf .venv")
    created = next(i for i, line in enumerate(lines) if line.startswith("python3 -m venv .venv"))
    assert removed < created


def test_the_example_config_for_the_pi_loads_and_keeps_its_data_where_the_service_can_write():
    from barmaid.config import load_config

    config = load_config(ROOT / "docs" / "config.example.yaml")
    assert config.driver.kind == "rgpio" and config.driver.active_low
    assert len(config.pumps) == 8
    assert config.data_dir == Path("/var/lib/barmaid")  # the unit's StateDirectory=barmaid


def test_the_pi_guide_tries_barmaid_as_the_service_will_run_it_and_installs_generated_units():
    guide = README[README.index("## On the Raspberry Pi") :]
    guide = guide[: guide.index("\n## ", 1)]
    config = "--config /etc/barmaid/config.yaml"
    assert f"sudo -u barmaid /opt/barmaid/.venv/bin/barmaid serve {config}" in guide
    assert f"sudo /opt/barmaid/.venv/bin/barmaid service {config} --install" in guide
    assert "scripts/barmaid.service" not in guide and "pigs w" not in guide
    for line in re.findall(r"```sh\n(.*?)```", guide, re.S):
        for command in line.splitlines():
            if re.match(r"(apt|systemctl|useradd|install|mkdir|cp) ", command):
                raise AssertionError(f"needs root, say sudo: {command}")


def test_the_protocol_reference_describes_every_message_both_ways():
    from barmaid.protocol import REPLIES, REQUESTS

    reference = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    for kind in [*REQUESTS, *(reply.type for reply in REPLIES)]:
        assert f"| `{kind}` |" in reference, f"docs/protocol.md has no table row for {kind}"


def _layout() -> dict[str, str]:
    """The README's layout table: each row's first cell (its paths, in backticks) -> its text."""
    table = README[README.index("## Layout") :].split("\n## ")[0]
    return dict(re.findall(r"^\| (`[^|]*`) \| (.*) \|$", table, re.M))


def test_every_path_in_the_layout_table_exists():
    for paths in _layout():
        for path in re.findall(r"`([^`]+)`", paths):
            pattern = re.sub(r"<[a-z]+>", "*", path)
            assert list(ROOT.glob(pattern.rstrip("/"))), f"README layout names {path}, which is not in the tree"


def test_every_test_file_is_named_after_its_module_or_in_the_layout_table():
    """A newcomer finds the tests of barmaid/X.py in tests/test_X.py; the others are listed."""
    modules = {path.stem for path in (ROOT / "barmaid").rglob("*.py")}
    listed = " ".join(_layout().values())
    for test_file in sorted((ROOT / "tests").glob("test_*.py")):
        name = test_file.name
        assert name[len("test_") : -len(".py")] in modules or f"`{name}`" in listed or name.startswith(
            "test_support_"
        ), f"{name} tests no module of barmaid and the README layout table does not say what it tests"


def test_every_support_module_is_in_the_layout_table():
    [support_row] = [text for paths, text in _layout().items() if "`tests/support/`" in paths]
    for module in sorted((ROOT / "tests" / "support").glob("*.py")):
        if module.stem != "__init__":
            assert f"`{module.stem}`" in support_row, f"README layout: tests/support/ does not name {module.stem}"


def test_no_test_module_imports_conftest_or_another_test_module():
    """Helpers live in tests/support; conftest holds fixtures, which pytest hands out by name."""
    import ast

    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name != "conftest" and not name.split(".")[-1].startswith("test_"), (
                    f"{path.relative_to(ROOT)} imports {name}: move what it needs into tests/support"
                )
