"""Every supervision signal, by the name the config uses. The order is the order the Supervisor calls their
hooks in: a failure's erroneous samples go into the failure buffer before its reflection."""

from __future__ import annotations

from supervision.erroneous import Erroneous
from supervision.expert import Expert
from supervision.hint import Hint
from supervision.off_policy import OffPolicy
from supervision.reflection import Reflection
from supervision.signal import Signal

SIGNALS: dict[str, type[Signal]] = {signal.name: signal for signal in (
    Hint,
    OffPolicy,
    Expert,
    Erroneous,
    Reflection,
)}
