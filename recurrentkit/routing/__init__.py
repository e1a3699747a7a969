"""Routing policies: how recurrent state moves between the layers of a :class:`~recurrentkit.Stack`.

Built in: :class:`Independent`, :class:`Shared`, :class:`Residual`,
:class:`CrossLayer`, :class:`Handoff`. The strings ``"independent"``, ``"shared"``,
``"residual"``, ``"cross_layer"`` and ``"handoff"`` stand for their defaults.
"""

from __future__ import annotations

from recurrentkit._validation import describe
from recurrentkit.errors import ConfigError, InputTypeError
from recurrentkit.routing.base import Executor, RoutingPolicy, state_h, with_state_h
from recurrentkit.routing.cross_layer import CrossLayer
from recurrentkit.routing.handoff import CarriedStateWarning, Handoff, LeakWarning
from recurrentkit.routing.independent import Independent
from recurrentkit.routing.residual import Residual
from recurrentkit.routing.shared import Shared

__all__ = [
    "POLICIES",
    "CrossLayer",
    "Handoff",
    "Independent",
    "Executor",
    "CarriedStateWarning",
    "LeakWarning",
    "Residual",
    "RoutingPolicy",
    "Shared",
    "resolve",
    "state_h",
    "with_state_h",
]

POLICIES: dict[str, type[RoutingPolicy]] = {
    "independent": Independent,
    "shared": Shared,
    "residual": Residual,
    "cross_layer": CrossLayer,
    "handoff": Handoff,
}


def resolve(routing: str | RoutingPolicy) -> RoutingPolicy:
    """A policy object for a name or an instance.

    Raises:
        ConfigError: an unknown name (the message lists the valid ones).
        InputTypeError: neither a string nor a :class:`RoutingPolicy`.
    """
    if isinstance(routing, RoutingPolicy):
        return routing
    if isinstance(routing, str):
        if routing not in POLICIES:
            raise ConfigError("routing", f"one of {', '.join(map(repr, POLICIES))}", repr(routing))
        return POLICIES[routing]()
    raise InputTypeError("routing", "a policy name or a RoutingPolicy instance", describe(routing))
