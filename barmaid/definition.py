"""The state machine's definition: states.yaml, read and checked against its model at start-up,
and the `transitions` machine built from it.

`transitions` takes a misspelled state or callback as given and fails only when it fires; here
every key, state, trigger and callback is checked first, and an error names the one at fault.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml
from transitions import Machine

from .action import Action
from .errors import ConfigError
from .outcomes import Outcome


def _not_skipped_binding(record: logging.LogRecord) -> bool:
    """transitions warns of each helper (may_*, is_*, trigger) that model_override leaves unbound:
    here that is the point, so those warnings are dropped; every other one stays."""
    return "Skip binding of" not in record.getMessage()


logging.getLogger("transitions.core").addFilter(_not_skipped_binding)


class Triggers:
    """The triggers states.yaml must declare, as methods of the model so that type checkers see
    them: the machine replaces each with its trigger (model_override, docs/dependencies.md
    "transitions"). blend ... clean start an action, adopt takes over one a crash left playing,
    finish / stop / abort end it (its time is over, a client asked, shut down or hardware lost).
    """

    def blend(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def refill(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def prime(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def calibrate(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def clean(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def adopt(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def finish(self, *, outcome: Outcome) -> bool:
        raise NotImplementedError("bound by the machine")

    def stop(self, *, outcome: Outcome) -> bool:
        raise NotImplementedError("bound by the machine")

    def abort(self, *, outcome: Outcome) -> bool:
        raise NotImplementedError("bound by the machine")


#: Triggers and states the controller fires or relies on; states.yaml must declare them.
REQUIRED_TRIGGERS = tuple(name for name in vars(Triggers) if not name.startswith("_"))
REQUIRED_STATES = ("idle",)
_STATE_KEYS = {"name", "on_enter", "on_exit"}
_TRANSITION_KEYS = {"trigger", "source", "dest", "before", "after", "prepare", "conditions", "unless"}
_CALLBACK_KEYS = ("on_enter", "on_exit", "before", "after", "prepare", "conditions", "unless", "after_state_change")
_TOP_KEYS = {"initial", "states", "transitions", "after_state_change"}


def states_file() -> Path:
    """states.yaml: inside the installed package, else at the top of the source checkout."""
    packaged = resources.files("barmaid") / "states.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "states.yaml"


def load_definition(path: Optional[Path] = None, model: Optional[type] = None) -> dict[str, Any]:
    """Reads states.yaml and checks it against the model class, so mistakes stop start-up.

    Args:
        path: the file; default states_file().
        model: the class whose methods the callbacks and triggers must be; default the Controller.

    Raises:
        ConfigError: naming the file and the offending state, transition or callback.
    """
    path = path or states_file()
    if model is None:
        from .machine import Controller  # the model imports this module to build its machine

        model = Controller
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot load state machine {path}: {exc}") from exc

    def fail(what: str) -> ConfigError:
        return ConfigError(f"{path}: {what}")

    if not isinstance(spec, dict):
        raise fail("must be a mapping with the keys initial, states and transitions")
    for key in set(spec) - _TOP_KEYS:
        raise fail(f"unknown top-level key {key!r}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    for key in {"initial", "states", "transitions"} - set(spec):
        raise fail(f"missing top-level key {key!r}")
    states = [{"name": s} if isinstance(s, str) else s for s in spec["states"] or []]
    names = []
    for state in states:
        if not isinstance(state, dict) or "name" not in state or not set(state) <= _STATE_KEYS:
            raise fail(f"state {state!r}: give a name and optionally {', '.join(sorted(_STATE_KEYS - {'name'}))}")
        names.append(state["name"])
    for name in REQUIRED_STATES:
        if name not in names:
            raise fail(f"missing state {name!r}: barmaid returns there after every action")
    if spec["initial"] not in names:
        raise fail(f"initial state {spec['initial']!r} is not one of the states {names}")
    triggers = set()
    for number, transition in enumerate(spec["transitions"] or []):
        trigger = transition.get("trigger", "?") if isinstance(transition, dict) else transition
        where = f"transition {number} ({trigger})"
        if not isinstance(transition, dict) or not {"trigger", "source", "dest"} <= set(transition):
            raise fail(f"{where}: needs trigger, source and dest")
        unknown = set(transition) - _TRANSITION_KEYS
        if unknown:
            raise fail(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(_TRANSITION_KEYS))}")
        sources = transition["source"] if isinstance(transition["source"], list) else [transition["source"]]
        for state in [*sources, transition["dest"]]:
            if state not in names and state != "*":
                raise fail(f"{where}: unknown state {state!r}; states are {', '.join(names)}")
        triggers.add(transition["trigger"])
        if not callable(getattr(model, transition["trigger"], None)):
            raise fail(f"{where}: trigger {transition['trigger']!r} is not declared on {model.__name__}")
    for trigger in REQUIRED_TRIGGERS:
        if trigger not in triggers:
            raise fail(f"missing trigger {trigger!r}: barmaid fires it")
    for owner in [*states, *spec["transitions"], {k: v for k, v in spec.items() if k == "after_state_change"}]:
        for key in _CALLBACK_KEYS:
            callbacks = owner.get(key) or []
            for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
                if not callable(getattr(model, callback, None)):
                    raise fail(f"{key} callback {callback!r} is not a method of {model.__name__}")
    return {**spec, "states": states}


def build_machine(model: object, definition: Optional[dict[str, Any]] = None) -> Machine:
    """The `transitions` machine that drives `model` by `definition` (default: states.yaml,
    checked against the model's class). Its triggers replace the model's declared methods of
    the same name (model_override); callbacks get one EventData (send_event); there are no
    `to_*` triggers (auto_transitions off), so an invalid trigger raises MachineError."""
    return Machine(
        model=model,
        **(definition or load_definition(model=type(model))),
        auto_transitions=False,
        send_event=True,
        model_override=True,
    )
