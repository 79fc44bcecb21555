"""Modules hidden from a block of code, as if they were not installed (``dbguard_without``)."""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Final

from pytest_dbguard.exceptions import GuardWarning

HIDDEN_MESSAGE: Final = (
    "No module named {name!r} (hidden by @pytest.mark.dbguard_without in {where})"
)


class HiddenModules:
    """While entered, ``names`` and their submodules cannot be imported, as if not installed.

    Hides them from ``sys.modules`` and from the packages that stay, refuses them with a
    ``sys.meta_path`` finder placed first, and makes ``importlib.util.find_spec`` answer None.
    On exit everything is put back. Modules first imported inside that saw a hidden module missing,
    directly or through another such module, are dropped so the next import sees the real
    package; modules reloaded inside are reloaded again. Other new modules stay: dropping them
    would leave two copies of their classes.
    """

    def __init__(self, names: Iterable[str], *, where: str = "this block") -> None:
        self.names = tuple(names)
        self.where = where
        self._prefixes = tuple(name + "." for name in self.names)
        self._before: dict[str, types.ModuleType] = {}
        self._hidden: dict[str, types.ModuleType] = {}
        self._detached: list[tuple[types.ModuleType, str, types.ModuleType]] = []
        self._tainted: set[str] = set()  # new modules that saw a hidden module missing
        self._reloaded: dict[str, types.ModuleType] = {}
        self._find_spec: Callable[..., Any] = importlib.util.find_spec
        self._import: Callable[..., Any] = builtins.__import__

    def hides(self, fullname: str) -> bool:
        """Whether ``fullname`` is one of the hidden modules or below one."""
        return fullname in self.names or fullname.startswith(self._prefixes)

    def __enter__(self) -> HiddenModules:
        self._before = dict(sys.modules)
        self._hidden = {name: sys.modules.pop(name) for name in self._before if self.hides(name)}
        for name, module in self._hidden.items():
            parent_name, _, child = name.rpartition(".")
            parent = sys.modules.get(parent_name)
            if parent is not None and getattr(parent, child, None) is module:
                delattr(parent, child)
                self._detached.append((parent, child, module))
        self._find_spec, importlib.util.find_spec = importlib.util.find_spec, self._util_find_spec
        self._import, builtins.__import__ = builtins.__import__, self._tracking_import
        sys.meta_path.insert(0, self)
        return self

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        """Meta path hook: refuse hidden modules, let every other import through."""
        __tracebackhide__ = True  # the failure is the user's import, not this hook
        if self.hides(fullname):
            self._note_dependants()
            message = HIDDEN_MESSAGE.format(name=fullname, where=self.where)
            raise ModuleNotFoundError(message, name=fullname)

    def _util_find_spec(self, name: str, package: str | None = None) -> Any:
        __tracebackhide__ = True
        fullname = importlib.util.resolve_name(name, package) if name.startswith(".") else name
        if self.hides(fullname):
            self._note_dependants()
            return None
        return self._find_spec(name, package)

    def _tracking_import(
        self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        __tracebackhide__ = True  # every import in the test passes here while modules are hidden
        module = self._import(name, globals, locals, fromlist, level)
        importer = str(globals.get("__name__")) if isinstance(globals, dict) else ""
        if (self._tainted or self._reloaded) and self._is_new(importer):
            if level:  # relative imports always have a fromlist: ``module`` is the one named
                name = getattr(module, "__name__", name)
            targets = [name] + [f"{name}.{item}" for item in fromlist or ()]
            if any(target in self._tainted or target in self._reloaded for target in targets):
                self._tainted.add(importer)
        return module

    def _is_new(self, name: str) -> bool:
        return self._before.get(name) is not sys.modules.get(name)

    def _note_dependants(self) -> None:
        """Remember the modules being imported or reloaded now: they saw a hidden module missing."""
        frame: types.FrameType | None = sys._getframe(2)
        while frame is not None:
            if frame.f_code is importlib.reload.__code__:
                module = frame.f_locals.get("module")
                if isinstance(module, types.ModuleType) and not self._is_new(module.__name__):
                    self._reloaded[module.__name__] = module
            elif frame.f_code.co_name == "<module>":
                name = str(frame.f_globals.get("__name__"))
                module = sys.modules.get(name)
                if self._is_new(name) and getattr(module, "__dict__", None) is frame.f_globals:
                    self._tainted.add(name)
            frame = frame.f_back

    def __exit__(self, *exc_info: object) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        importlib.util.find_spec, builtins.__import__ = self._find_spec, self._import
        for name in [name for name in sys.modules if self.hides(name)]:
            del sys.modules[name]
        sys.modules.update(self._hidden)
        for parent, child, module in self._detached:
            setattr(parent, child, module)
        for name in self._tainted:
            self._restore(name)
        failures = []
        for module in self._reloaded.values():
            try:
                importlib.reload(module)
            except Exception as error:
                failures.append(f"{module.__name__}: {type(error).__name__}: {error}")
        self._hidden, self._detached, self._tainted, self._reloaded = {}, [], set(), {}
        if failures:
            warnings.warn(
                GuardWarning(
                    f"dbguard_without in {self.where}: reloading these modules with the hidden "
                    f"ones back failed; they keep the state they had inside: {'; '.join(failures)}"
                ),
                stacklevel=2,
            )

    def _restore(self, name: str) -> None:
        """Put back what ``sys.modules`` and the parent package held for ``name`` before."""
        new, old = sys.modules.pop(name, None), self._before.get(name)
        if old is not None:
            sys.modules[name] = old
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name)
        if parent is not None and new is not None and getattr(parent, child, None) is new:
            if old is not None:
                setattr(parent, child, old)
            else:
                delattr(parent, child)
