"""Kernel variants: several implementations of one GPU primitive, registered by name.

CUDA C variants (``fastcnn.backend.cuda``) and Numba variants
(``fastcnn.backend.numba_cuda``) register here under the primitive names of
``fastcnn.backend.PRIMITIVES``.  The GPU backend calls the selected variant of
each primitive; tests run every registered variant against the reference and
the benchmark times every one.  Public as ``fastcnn.kernels``.

    >>> import fastcnn
    >>> fastcnn.kernels.variants("conv2d_forward")      # doctest: +SKIP
    ['im2col', 'implicit_gemm', 'numba_direct']
    >>> fastcnn.kernels.use("conv2d_forward", "im2col")  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable


class NotApplicable(ValueError):
    """A variant that handles only some shapes (e.g. Winograd: 3x3, stride 1) refuses the
    others with this; `auto` and the test table then use or test the other variants."""


@dataclass(frozen=True)
class Variant:
    op: str            # primitive name, e.g. 'conv2d_forward'
    name: str          # variant name, e.g. 'implicit_gemm'
    fn: Callable       # same signature as the primitive
    source: str        # 'cuda' (CUDA C through CuPy) or 'numba'
    note: str = ""     # one line: algorithm, and why it exists


_variants: dict[str, dict[str, Variant]] = {}
_selected: dict[str, str] = {}
_defaults: dict[str, str] = {}


def register(op: str, name: str, fn: Callable, source: str, note: str = "",
             default: bool = False) -> Callable:
    """Add a variant; ``default=True`` makes it the one used unless a user picks another."""
    _variants.setdefault(op, {})[name] = Variant(op, name, fn, source, note)
    # The implicit default is the first CUDA C variant: Numba ones are picked only by name
    # (they pay ~3x more host time per launch), whatever the import order.
    if default or (op not in _defaults and source != "numba"):
        _defaults[op] = name
    return fn


_load_errors: dict[str, str] = {}
_loaded = [False]


def _ensure_loaded() -> None:
    if not _loaded[0]:  # once: this sits on every kernel call's path
        _loaded[0] = True
        _load_variant_modules()


def _load_variant_modules() -> None:
    # Importing the GPU modules registers their variants; neither needs a GPU to import.
    # One that fails to import (numba missing, or broken) leaves the other's variants usable;
    # the reason is kept for `fastcnn info` and said once as a warning.
    import importlib
    import warnings
    for module in ("fastcnn.backend.cuda", "fastcnn.backend.numba_cuda"):
        if module in _load_errors:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:
            _load_errors[module] = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, ImportError):
                warnings.warn(f"kernel variants of {module} are unavailable: {_load_errors[module]}")


def load_errors() -> dict[str, str]:
    """{module: why} for the variant modules that could not be imported."""
    _ensure_loaded()
    return dict(_load_errors)


def ops() -> list[str]:
    _ensure_loaded()
    return sorted(_variants)


def variants(op: str, source: str | None = None) -> list[str]:
    """Names of the registered variants of ``op`` (optionally only 'cuda' or 'numba' ones)."""
    _ensure_loaded()
    if op not in _variants:
        raise ValueError(f"no kernel variants registered for {op!r}; ops with variants: {sorted(_variants)}")
    return [v.name for v in _variants[op].values() if source in (None, v.source)]


def get(op: str, name: str | None = None) -> Variant:
    """The variant called ``name``, or the one selected now."""
    _ensure_loaded()
    if op not in _variants:
        raise ValueError(f"no kernel variants registered for {op!r}; ops with variants: {sorted(_variants)}")
    name = name or _selected.get(op) or _defaults.get(op) or next(iter(_variants[op]))
    if name not in _variants[op]:
        raise ValueError(f"unknown variant {name!r} of {op!r}; registered: {list(_variants[op])}")
    return _variants[op][name]


def use(op: str, name: str | None) -> None:
    """Select variant ``name`` for ``op`` (None goes back to the default)."""
    if name is None:
        _selected.pop(op, None)
        return
    get(op, name)  # validates
    _selected[op] = name


def selected(op: str) -> str:
    return get(op).name


@contextlib.contextmanager
def using(op: str, name: str):
    """``with fastcnn.kernels.using('matmul', 'naive'): ...``"""
    previous = _selected.get(op)
    use(op, name)
    try:
        yield
    finally:
        use(op, previous)
