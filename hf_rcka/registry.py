"""Name -> class registries for what a recipe can name (losses, adapters).

Recipes are plain YAML, so every loss or adapter a user can select needs a short, stable key. A
registry maps those keys to classes and turns typos into errors that list the closest valid names
*before* any model or data is loaded.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def close_matches(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    """Format a 'did you mean' hint for error messages, or list every candidate.

    Names the word begins, in the candidates' order, come first: difflib's similarity put
    ``grokadamw`` and ``adalomo`` before ``adamw_torch`` for ``optim: adamw``.
    """
    hits = [name for name in candidates if word and name.startswith(word + "_")][:3] \
        or difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    if hits:
        return "did you mean " + " or ".join(repr(h) for h in hits) + "?"
    return "valid names: " + ", ".join(sorted(candidates))


class Registry:
    """A named collection of classes, built by key with validated keyword options.

    ``base``, once the package sets it, is the class every registered one must derive from (a
    plain module registered as a loss would fail at the first step, not here).
    """

    def __init__(self, kind: str, reserved: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.base: type | None = None
        self._classes: dict[str, type] = {}
        self.reserved = reserved  # names recipes give another meaning: a class under one would never be built

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            self._check_new(name, cls)
            self._classes[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def _check_new(self, name: str, cls: type) -> None:
        if name in self.reserved:
            raise ValueError(f"{self.kind} {name!r}: the name is reserved (a recipe's {name!r} chooses among the "
                             f"built-in {self.kind}s); choose another name")
        if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.kind} {name!r}: {getattr(cls, '__name__', cls)!r} must subclass "
                            f"{self.base.__module__}.{self.base.__name__}")
        own = cls.__dict__.get("registry_name")
        if own is not None and own != name:
            # one class under two names would answer to the last one only (its modules, terms and
            # saved state are keyed by it)
            raise ValueError(f"{self.kind} {name!r}: {cls.__name__} is already registered as {own!r}; register a "
                             f"subclass under the new name")
        previous = self._classes.get(name)
        if previous is not None and _same_definition(previous, cls):
            return  # the same class defined again (a notebook cell run twice) replaces the old one
        if previous is not None:
            raise ValueError(f"{self.kind} {name!r} is already registered (by {previous.__module__}."
                             f"{previous.__qualname__}); choose another name")

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise KeyError(f"unknown {self.kind} {name!r}: {close_matches(str(name), self.names())}")
        return self._classes[name]

    def option_names(self, name: str) -> list[str]:
        """Keyword options the class's constructor accepts (what a recipe may set), with those a
        ``**kwargs`` passes on to a base class's constructor."""
        return list(self.parameters(name))

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """Each option's constructor parameter (its default), as ``option_names`` finds them."""
        return _init_parameters(self.get(name))

    def passed_on(self, name: str) -> list[str]:
        """The options the class takes only through ``**kwargs``, for its bases."""
        own = inspect.signature(self.get(name).__init__).parameters
        return [option for option in self.parameters(name) if option not in own]

    def option_types(self, name: str) -> dict[str, Any]:
        """The annotated type of each option (what a recipe's text value is converted to)."""
        return _init_types(self.get(name))

    def default(self, name: str, option: str) -> Any:
        """The constructor's default for ``option``, so a recipe that omits it gets what the class says."""
        param = self.parameters(name).get(option)
        if param is None or param.default is inspect.Parameter.empty:
            raise KeyError(f"{self.kind} {name!r} has no default for {option!r}")
        return param.default

    def check_options(self, name: str, options: dict[str, Any], reserved: tuple[str, ...] = ()) -> None:
        """Raise a ValueError naming any option the class does not take."""
        valid = [o for o in self.option_names(name) if o not in reserved]
        for key in options:
            if key not in valid:
                raise ValueError(
                    f"{self.kind} {name!r} has no option {key!r}: {close_matches(key, valid)}"
                    if valid else f"{self.kind} {name!r} takes no options (got {key!r})"
                )

    def build(self, name: str, **options: Any) -> Any:
        self.check_options(name, options)
        return self.get(name)(**options)


def _same_definition(a: type, b: type) -> bool:
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _init_chain(cls: type) -> list[Callable]:
    """``cls.__init__`` and, while each passes ``**kwargs`` on, its bases' constructors."""
    chain = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        chain.append(init)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    return chain


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The named keyword parameters of ``cls.__init__``, following ``**kwargs`` up the bases.

    A subclass that adds one option and passes the rest on (``def __init__(self, scale=2.0,
    **kwargs)``) still takes its base's ``weight``; the first definition of a name wins.
    """
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    found: dict[str, inspect.Parameter] = {}
    for init in _init_chain(cls):
        for p in inspect.signature(init).parameters.values():
            if p.name != "self" and p.kind in named:
                found.setdefault(p.name, p)
    return found


def _init_types(cls: type) -> dict[str, Any]:
    """The options' annotated types, as ``_init_parameters`` finds them; an annotation that cannot be
    resolved (a name only imported under TYPE_CHECKING) counts as untyped."""
    found: dict[str, Any] = {}
    for init in _init_chain(cls):
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # NameError, or a TypeError from a malformed annotation
            hints = {}
        for key, value in hints.items():
            if key != "return":
                found.setdefault(key, value)
    return found


LOSSES = Registry("loss")
ADAPTERS = Registry("adapter", reserved=("auto",))
