"""The suite's process launcher: every barmaid it starts runs the working tree's code and keeps
its data in the test's own folder, never in the user's data directory or another test's."""

from __future__ import annotations

import os

from support import processes


def test_a_barmaid_subprocess_gets_the_tests_own_data_dir_and_the_working_tree_first(data_dir, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", str(processes.ROOT)]))
    env = processes.environment()
    assert env["BARMAID_DATA_DIR"] == str(data_dir)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(processes.ROOT), "/elsewhere"]
