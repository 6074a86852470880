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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from . import __version__
from .config import load_config
from .errors import BarmaidError, ConfigError, StoreError

if TYPE_CHECKING:
    from .lock import DataDirLock

log = logging.getLogger("barmaid")

EXIT_CONFIG = 2
#: The commands this module runs itself. Any other is a client of a running barmaid
#: (barmaid.commands), whose imports (rich, websocket-client) would add about a third to the
#: start-up of `serve` and `off`, so they are loaded only for a client command or the full --help.
OWN_COMMANDS = ("serve", "off", "service", "diagram")


def _parser(with_client_commands: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barmaid", description="Backend of a home-built cocktail machine.")
    parser.add_argument("--version", action="version", version=f"barmaid {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the pumps over a WebSocket (simulated pumps by default)")
    serve.add_argument("--config", type=Path, help="YAML configuration file (every key optional)")
    serve.add_argument("--host", help="address to listen on, IPv4 or IPv6 (default 0.0.0.0; :: or ::1 for IPv6)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8765; 0: a free one, logged)")
    serve.add_argument("--driver", choices=("sim", "pigpio", "rgpio"), help="pump driver (default sim)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log debug details too")

    off = commands.add_parser("off", help="switch every pump off through the daemon (for systemd, or by hand)")
    off.add_argument("--config", type=Path, help="the same YAML configuration file as serve")
    off.add_argument(
        "--after-pour",
        action="store_true",
        help="first let a pour still playing end by itself (at most limits.max_pump_seconds)",
    )

    service = commands.add_parser("service", help="print (or --install) the systemd units for this config")
    service.add_argument("--config", type=Path, required=True, help="the config file the service will run with")
    service.add_argument("--install", action="store_true", help="write them under --unit-dir (as root)")
    service.add_argument("--unit-dir", type=Path, help=argparse.SUPPRESS)  # tests: instead of /etc/systemd/system

    diagram = commands.add_parser("diagram", help="print the state diagram drawn from states.yaml")
    diagram.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    diagram.add_argument("--output", type=Path, help="write to this file instead of standard output")
    if with_client_commands:
        from . import commands as client_commands

        client_commands.add_commands(commands)  # state, watch, blend, ...: a client of a running barmaid
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top level has no option but --help and --version: a command, if any, comes first.
    args = _parser(with_client_commands=not argv or argv[0] not in OWN_COMMANDS).parse_args(argv)
    if hasattr(args, "client_command"):
        from . import commands as client_commands

        return client_commands.run(args)
    try:
        if args.command == "diagram":
            return _diagram(args)
        if args.command == "off":
            return _off(args)
        if args.command == "service":
            return _service(args)
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


def _off(args: argparse.Namespace) -> int:
    from .off import switch_off

    print(f"barmaid off: {switch_off(load_config(args.config), wait_for_pour=args.after_pour)}")
    return 0


def _service(args: argparse.Namespace) -> int:
    from .service import UNIT_DIR, install, units

    made = units(load_config(args.config), args.config)
    unit_dir = args.unit_dir or UNIT_DIR
    if not args.install:
        for unit in made:
            print(f"# {unit_dir / unit.path}\n{unit.text}")
        return 0
    try:
        for path in install(made, unit_dir):
            print(f"wrote {path}")
    except OSError as exc:
        raise BarmaidError(f"cannot write {exc.filename} ({exc.strerror}); run it with sudo") from None
    print("then: sudo systemctl daemon-reload && sudo systemctl enable --now barmaid")
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
    # Imported here: the client commands, off and service start faster without the server's modules.
    from .drivers import make_driver
    from .lock import DataDirLock
    from .server import BarmaidServer
    from .store import Store

    # The config first: a bad one stops here, before logging is set up for serving.
    config = load_config(
        args.config,
        {"server": {"host": args.host, "port": args.port}, "driver": {"kind": args.driver}},
    )
    # force=True: websocket_server calls logging.basicConfig() when imported
    # (docs/dependencies.md, "websocket-server").
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("transitions").setLevel(logging.WARNING)  # it logs every callback at INFO
    # The order matters: a barmaid that cannot serve (the data directory in use or unusable, the
    # port taken) must stop before it reaches the pump daemon, or it could cut another's pour.
    lock: Optional[DataDirLock] = None
    try:
        lock = DataDirLock(config.data_dir)
        store = Store(config.data_dir)
    except StoreError as exc:  # a second barmaid, a full, locked or read-only disk: say which
        if lock is not None:
            lock.release()
        print(f"barmaid: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        server = BarmaidServer(config, lambda: make_driver(config), store=store)
    except BaseException as exc:
        store.close()
        lock.release()
        if isinstance(exc, OSError):
            raise BarmaidError(_cannot_listen(config.server.host, config.server.port, exc)) from None
        raise
    atexit.register(server.controller.driver.close)  # last resort if something below escapes
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
        lock.release()
        log.info("stopped: every pump off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
