"""The `barmaid` command: `serve` the pumps over a WebSocket, or draw the state `diagram`.

On every way out of `serve` (Ctrl-C, SIGTERM, an exception) the pumps are switched off first.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from . import commands as client_commands
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
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8765)")
    serve.add_argument("--driver", choices=("sim", "pigpio"), help="pump driver (default sim)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log debug details too")

    diagram = commands.add_parser("diagram", help="print the state diagram drawn from states.yaml")
    diagram.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    diagram.add_argument("--output", type=Path, help="write to this file instead of standard output")
    client_commands.add_commands(commands)  # state, watch, blend, ...: a client of a running barmaid
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if hasattr(args, "client_command"):
        return client_commands.run(args)
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
        raise BarmaidError(
            f"cannot listen on {config.server.host}:{config.server.port} ({exc.strerror});"
            " is another barmaid running? choose another --port"
        ) from None
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
