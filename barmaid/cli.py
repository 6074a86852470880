"""The `barmaid` command: `serve` the pumps over a WebSocket, or draw the state `diagram`.

On every way out of `serve` (Ctrl-C, SIGTERM, an exception) the pumps are switched off first.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .config import load_config
from .drivers import make_driver
from .errors import BarmaidError, ConfigError
from .server import BarmaidServer

log = logging.getLogger("barmaid")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barmaid", description="Backend of a home-built cocktail machine.")
    parser.add_argument("--version", action="version", version=f"barmaid {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the pumps over a WebSocket (simulated pumps by default)")
    serve.add_argument("--config", type=Path, help="YAML configuration file (every key optional)")
    serve.add_argument("--host", help="address to listen on, IPv4 or IPv6 (default 0.0.0.0; :: or ::1 for IPv6)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8765; 0: a free one, logged)")
    serve.add_argument("--driver", choices=("sim", "pigpio"), help="pump driver (default sim)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log debug details too")

    diagram = commands.add_parser("diagram", help="print the state diagram drawn from states.yaml")
    diagram.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    diagram.add_argument("--output", type=Path, help="write to this file instead of standard output")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "diagram":
            return _diagram(args)
        return _serve(args)
    except ConfigError as exc:
        print(f"barmaid: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BarmaidError as exc:
        print(f"barmaid: {exc}", file=sys.stderr)
        return 1


def _diagram(args: argparse.Namespace) -> int:
    from .diagram import draw  # transitions' diagram support is heavy; serve does not need it

    text = draw(args.format)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where} (port in use); is another barmaid running? choose another --port"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where} (permission denied); ports below 1024 need root: choose --port 8765"
    reason = exc.strerror or str(exc)
    return f"cannot listen on {where} ({reason}); give --host an address of this machine, like 0.0.0.0, :: or ::1"


def _serve(args: argparse.Namespace) -> int:
    # force=True: websocket_server calls logging.basicConfig() when imported (W11).
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("transitions").setLevel(logging.WARNING)  # it logs every callback at INFO
    config = load_config(
        args.config,
        {"server": {"host": args.host, "port": args.port}, "driver": {"kind": args.driver}},
    )
    driver = make_driver(config)
    atexit.register(driver.close)  # last resort if something below escapes
    try:
        server = BarmaidServer(config, driver)
    except OSError as exc:
        driver.close()
        raise BarmaidError(_cannot_listen(config.server.host, config.server.port, exc)) from None
    except BaseException:
        driver.close()
        raise
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
        while not stop.wait(1.0):
            pass
    finally:
        server.close()
        log.info("stopped: every pump off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
