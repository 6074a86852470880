"""What the pigpio and rgpio driver tests share: configs for a daemon on loopback, blend frames,
and a real barmaid process (support.processes.serving) killed mid-pour.
"""

from __future__ import annotations

from barmaid.config import Config, load_config
from support.peer import Peer
from support.processes import Process
from support.pumps import fast_pumps
from support.servers import free_port


def daemon_config(write_config, kind: str, port: int, active_low: bool = False, flow: float = 400.0, **server) -> Config:
    """A config for `kind`'s daemon on loopback `port`, with fast pumps and a server on a free port."""
    return load_config(
        write_config(
            {
                "server": {"host": "127.0.0.1", "port": free_port(), "status_interval": 0.05, **server},
                "driver": {"kind": kind, "host": "127.0.0.1", "port": port, "active_low": active_low},
                "pumps": fast_pumps(flow),
            }
        )
    )


def blend(ml_per_pump: float, pumps=(0, 1)) -> dict:
    """A blend frame pouring `ml_per_pump` from each of `pumps`."""
    cup = ml_per_pump * len(pumps) / 1000
    return {"type": "blend", "data": {"cup_size": cup, "ratios": {str(p): 1 / len(pumps) for p in pumps}}}


def sigkill_mid_pour(process: Process, server_port: int, ml_per_pump: float) -> None:
    """Starts a blend of pumps 0 and 1 on a barmaid process, then SIGKILLs it once it pours."""
    client = Peer.at(server_port)
    client.send(blend(ml_per_pump))
    client.recv_until(lambda m: m["type"] == "status")
    process.crash()
