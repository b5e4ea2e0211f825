"""Name -> class registries for what a recipe can name (losses, adapters).

Recipes are plain YAML, so every loss or adapter a user can select needs a short, stable key. A
registry maps those keys to classes and turns typos into errors that list the closest valid names
*before* any model or data is loaded.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def close_matches(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    """Format a 'did you mean' hint for error messages, or list every candidate."""
    hits = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    if hits:
        return "did you mean " + " or ".join(repr(h) for h in hits) + "?"
    return "valid names: " + ", ".join(sorted(candidates))


class Registry:
    """A named collection of classes, built by key with validated keyword options."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._classes[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise KeyError(f"unknown {self.kind} {name!r}: {close_matches(str(name), self.names())}")
        return self._classes[name]

    def option_names(self, name: str) -> list[str]:
        """Keyword options the class's constructor accepts (what a recipe may set)."""
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = inspect.signature(self.get(name).__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind in named]

    def default(self, name: str, option: str) -> Any:
        """The constructor's default for ``option``, so a recipe that omits it gets what the class says."""
        param = inspect.signature(self.get(name).__init__).parameters.get(option)
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


LOSSES = Registry("loss")
ADAPTERS = Registry("adapter")
