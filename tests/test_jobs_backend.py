"""jobs.backend: both queue backends and both engines implement the declared Protocols in
full, with the same signatures (a missing or drifted method fails here, not in a route)."""
from __future__ import annotations

import inspect

import pytest

from engine import Engine
from jobs import JobQueue
from jobs.backend import EngineView, ImageEngine, QueueBackend
from jobs.redis_engine import RemoteEngine
from jobs.redis_queue import RedisJobQueue


def members(protocol) -> dict[str, object]:
    """The methods and properties a Protocol declares (its own and its bases')."""
    out = {}
    for klass in reversed(protocol.__mro__):
        if klass in (object,) or not getattr(klass, "_is_protocol", False):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and (callable(value) or isinstance(value, property)):
                out[name] = value
    return out


def parameters(function) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("implementation, protocol", [
    (JobQueue, QueueBackend), (RedisJobQueue, QueueBackend),
    (Engine, ImageEngine), (RemoteEngine, EngineView)])
def test_each_backend_implements_its_protocol_in_full(implementation, protocol):
    declared = members(protocol)
    assert declared, "the protocol declares nothing?"
    for name, member in declared.items():
        if isinstance(member, property) and not hasattr(implementation, name):
            # A plain attribute satisfies a property too: it must be set in __init__.
            assert name in implementation.__init__.__code__.co_names, (
                f"{implementation.__name__} lacks {name}")
            continue
        assert hasattr(implementation, name), f"{implementation.__name__} lacks {name}"
        mine = inspect.getattr_static(implementation, name)
        if isinstance(member, property):
            continue
        assert callable(mine), f"{implementation.__name__}.{name} is not a method"
        assert parameters(mine) == parameters(member), (
            f"{implementation.__name__}.{name}{inspect.signature(mine)} differs from "
            f"{protocol.__name__}.{name}{inspect.signature(member)}")


def test_the_remote_engine_is_no_image_engine():
    """The web's stand-in under Redis renders nothing: it does not claim to (previews and
    images come from the workers), so nothing can call a method that would raise."""
    for name in ("load", "generate", "switch_model", "preview_png"):
        assert not hasattr(RemoteEngine, name)
