"""Reading pickles that a process running hostile input wrote: only allowed globals are rebuilt.

`pickle.loads` calls whatever callable a pickle names (os.system among them). A compile worker
parses client circuits, and a parser bug that ran code in it would, through an unrestricted
`pickle.loads` of its output, run that code in whatever reads it: the gateway (which holds every
tenant's jobs and keys) or a simulator worker (which runs every tenant's jobs). So what crosses
back from a worker is read by an Unpickler whose `find_class` admits only what a policy allows:
the "Restricting Globals" recipe of the pickle documentation. The module is checked before it
is imported: importing a module can itself run code.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Builtins that pickles name and that build only plain values.
_BUILTINS = frozenset(
    ("builtins", name)
    for name in ("bytearray", "complex", "frozenset", "range", "set", "slice", "object")
)
# NumPy's own reconstructors of arrays, dtypes and scalars (their contents go through the same
# find_class): the module moved from numpy.core to numpy._core in NumPy 2.
_NUMPY = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}
PLAIN_GLOBALS: frozenset[tuple[str, str]] = _BUILTINS | _NUMPY


class RefusedPickle(pickle.UnpicklingError):
    """The pickle named a global its policy does not allow."""


@dataclass(frozen=True)
class PicklePolicy:
    """What one kind of pickle may name.

    Args:
        what: What the pickle is, for the refusal's message ("a worker's reply").
        globals: (module, name) pairs allowed as they are.
        class_modules: Module prefixes whose globals are allowed when they are classes that
            `is_allowed_class` accepts (checked after the import, which the prefix allows).
        is_allowed_class: Decides on a class from `class_modules`.
        class_attributes: What `getattr` may fetch, and only from an allowed class (Qiskit
            pickles a bit as `getattr(Qubit, "_from_owned")(...)`). An unrestricted getattr
            reaches any module through a function's `__globals__`.
    """

    what: str
    globals: frozenset[tuple[str, str]]
    class_modules: tuple[str, ...] = ()
    is_allowed_class: Callable[[type], bool] = lambda cls: True
    class_attributes: frozenset[str] = frozenset()

    def allows_class(self, found: object) -> bool:
        return (
            isinstance(found, type)
            and _under(found.__module__, self.class_modules)
            and self.is_allowed_class(found)
        )


def loads(data: bytes, policy: PicklePolicy) -> Any:
    """Unpickles `data`, refusing (RefusedPickle) any global the policy does not allow."""
    return _Unpickler(io.BytesIO(data), policy).load()


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, policy: PicklePolicy) -> None:
        super().__init__(file)
        self._policy = policy

    def find_class(self, module: str, name: str) -> Any:
        policy = self._policy
        if (module, name) in policy.globals:
            return super().find_class(module, name)
        if (module, name) == ("builtins", "getattr") and policy.class_attributes:
            return self._class_attribute
        if _under(module, policy.class_modules):
            # A dotted name (protocol 4) is an attribute path, as of a nested class (Unary.Op).
            # It is walked here one class at a time: a private or dunder step (a function's
            # __globals__) or a step through anything but an allowed class is refused.
            first, *rest = name.split(".")
            if not any(part.startswith("_") for part in rest):
                found = super().find_class(module, first)
                for part in rest:
                    if not policy.allows_class(found):
                        break
                    found = getattr(found, part, None)
                if policy.allows_class(found):
                    return found
        raise RefusedPickle(f"{policy.what} named {module}.{name}, which it may not hold")

    def _class_attribute(self, owner: object, name: str) -> Any:
        policy = self._policy
        if name in policy.class_attributes and policy.allows_class(owner):
            return getattr(owner, name)
        raise RefusedPickle(f"{policy.what} asked for an attribute {name!r} it may not use")


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def is_plain_data_class(cls: type) -> bool:
    """A dataclass, an enum or an exception: building one runs no code of consequence."""
    return dataclasses.is_dataclass(cls) or issubclass(cls, (enum.Enum, Exception))


WORKER_REPLY = PicklePolicy(
    what="a worker's reply",
    # A sampler result's counts pickle through their own constructor (bitarray.Counts).
    globals=PLAIN_GLOBALS | {("gateway.domain.bitarray", "_counts_from_bytes")},
    class_modules=("gateway",),
    is_allowed_class=is_plain_data_class,
)
