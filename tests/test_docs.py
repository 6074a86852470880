"""The README's promises: its diagram is `barmaid diagram`, its test command is what CI runs."""

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
