"""The train stage's seams: each implementation has every member its Protocol names, with the same parameters
(a type checker says the same; this holds where none runs, and for the TrainRun a callback reads)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from clipdpo.tracking import TrackingCallback
from clipdpo.train.backends import Backend, DDPBackend, DeepSpeedBackend
from clipdpo.train.callbacks import Callback, CheckpointCallback, MetricsCallback, Run
from clipdpo.train.layouts import Concatenated, Layout, SharedPrefix
from clipdpo.train.recipe import TrainRun


def protocol_members(protocol: type) -> tuple[set[str], set[str]]:
    """(methods, attributes) the Protocol declares (properties count as attributes)."""
    methods = {name for name, value in vars(protocol).items() if not name.startswith("_") and callable(value)}
    attributes = set(getattr(protocol, "__annotations__", {}))
    attributes |= {name for name, value in vars(protocol).items() if isinstance(value, property)}
    return methods, attributes


def parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


@pytest.mark.parametrize(
    "protocol, implementation",
    [
        (Backend, DDPBackend),
        (Backend, DeepSpeedBackend),
        (Layout, Concatenated),
        (Layout, SharedPrefix),
        (Callback, MetricsCallback),
        (Callback, CheckpointCallback),
        (Callback, TrackingCallback),
    ],
)
def test_each_implementation_has_what_its_protocol_names(protocol, implementation):
    methods, attributes = protocol_members(protocol)
    assert methods, protocol  # the Protocol declares something to check
    for name in methods:
        assert parameters(getattr(implementation, name)) == parameters(getattr(protocol, name)), (implementation, name)
    if dataclasses.is_dataclass(implementation):
        set_in_init = {field.name for field in dataclasses.fields(implementation)}
    else:
        source = inspect.getsource(implementation.__init__)
        set_in_init = {name for name in attributes if f"self.{name} =" in source}
    for name in attributes:  # a class attribute, or one __init__ sets
        assert hasattr(implementation, name) or name in set_in_init, (implementation, name)


def test_the_train_run_is_what_a_callback_reads():
    _, attributes = protocol_members(Run)
    fields = {field.name: field.type for field in dataclasses.fields(TrainRun)}
    assert attributes <= fields.keys(), attributes - fields.keys()
    assert fields["backend"] == "Backend"  # typed by the seam, not Any
