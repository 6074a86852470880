"""Fault drills: a client that vanishes mid-pour, a data directory that fills up.

(Signals mid-pour and the pigpio daemon lost and back are drilled in test_pigpio.py.)
"""

from __future__ import annotations

import logging
import socket

import pytest
from support.messages import is_final_status
from support.timeline import assert_countdown, status_times
from support.timing import TOLERANCE
from support.waiting import eventually

BLEND = {"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 0.5, "1": 0.5}}}  # 50 ml at 400 ml/s


def pump_on_times(driver) -> dict[int, float]:
    ons: dict[int, float] = {}
    times: dict[int, float] = {}
    for t, pump, on in driver.timeline:
        if on:
            ons[pump] = t
        else:
            times[pump] = t - ons.pop(pump)
    return times


def test_a_client_gone_mid_pour_changes_nothing_for_the_pour_or_the_others(server, connect):
    watcher, leaver = connect(), connect()
    leaver.send(BLEND)
    leaver.recv_until(lambda m: m["type"] == "status")
    # Vanish without a close frame: the socket is reset under the server's feet.
    leaver.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    leaver.ws.sock.close()
    assert_countdown(status_times(watcher.recv_until(is_final_status)), 0.125)
    assert pump_on_times(server.controller.driver) == {0: pytest.approx(0.125, abs=TOLERANCE), 1: pytest.approx(0.125, abs=TOLERANCE)}
    assert eventually(lambda: len(server.transport.clients()) == 1)
    assert server.controller.state == "idle"
    watcher.echo("still here")


def fill_up(store) -> None:
    """The database may not grow by a single page: what a full SD card looks like to SQLite."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_data_directory_refuses_the_pour_before_anything_moves(server, connect):
    store = server.controller.store
    client = connect()
    for _ in range(3):  # fill the pages the history already has
        client.send(BLEND)
        client.recv_until(is_final_status)
    server.controller.driver.timeline.clear()
    fill_up(store)
    big = {"type": "blend", "data": {"cup_size": 0.1, "ratios": {str(p): 0.125 for p in range(8)}}}
    refused = 0
    for _ in range(200):  # until the pages run out
        client.send(big)
        reply = client.recv_until(lambda m: m["type"] == "error" or is_final_status(m))[-1]
        if reply["type"] == "error":
            refused += 1
            break
    assert refused, "the database never filled up"
    assert "cannot write" in reply["data"]["msg"] and "barmaid.db" in reply["data"]["msg"]
    assert "full" in reply["data"]["msg"]
    assert server.controller.state == "idle"
    timeline = server.controller.driver.timeline
    assert len(timeline) % 2 == 0 and not any(server.controller.driver.is_on(p) for p in range(8))
    assert store._db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    # Room again (the card was cleaned up): the next pour goes through.
    store._db.execute("PRAGMA max_page_count = 1073741823")
    client.send(BLEND)
    assert status_times(client.recv_until(is_final_status))[-1] == 0


def test_a_pour_that_cannot_be_recorded_at_its_end_still_ends_with_every_pump_off(server, connect, caplog):
    store = server.controller.store
    client = connect()
    client.send(BLEND)
    client.recv_until(lambda m: m["type"] == "status")
    # The disk goes away between the start record and the end record.
    store._db.execute("PRAGMA query_only = 1")
    caplog.set_level(logging.ERROR, logger="barmaid.machine")
    try:
        assert_countdown(status_times(client.recv_until(is_final_status)), 0.125)
        assert server.controller.state == "idle"
        assert not any(server.controller.driver.is_on(p) for p in range(8))
        assert any("could not be recorded" in r.getMessage() for r in caplog.records)
    finally:
        store._db.execute("PRAGMA query_only = 0")
    assert store._db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    client.echo("served")


def test_a_client_that_never_finishes_its_handshake_does_not_hold_up_a_pour(server, connect):
    half_open = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    half_open.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    try:
        client = connect()
        client.send(BLEND)
        assert_countdown(status_times(client.recv_until(is_final_status)), 0.125)
    finally:
        half_open.close()

