"""Kernel variants: several implementations of one GPU primitive, registered by name.

CUDA C variants (``fastcnn.backend.cuda``) and Numba variants
(``fastcnn.backend.numba``) register here under the primitive names of
``fastcnn.backend.PRIMITIVES``.  The GPU backend calls the selected variant of
each primitive; tests run every registered variant against the reference and
the benchmark times every one.  Public as ``fastcnn.kernels``.

    >>> import fastcnn
    >>> fastcnn.kernels.variants("conv2d_forward")      # doctest: +SKIP
    ['im2col', 'implicit_gemm', 'numba_direct']
    >>> fastcnn.kernels.use("conv2d_forward", "im2col")  # doctest: +SKIP

Each variant states its precision.  'fp32' ones compute in float32.  'tf32' ones
round their float32 inputs to TF32 (tensor cores): they run only while
``fastcnn.config.get_float32_matmul_precision()`` is "high", and asking for one
under "highest" (``use``, ``get`` by name, a selection made earlier) is a
ValueError that names it.  'any' follows the configured precision (``auto``,
which picks among the variants allowed).  The implicit default of an op is its
'fp32' default under "highest"; under "high" its 'tf32' default where the op has
one (the 'tf32' or 'any' variant registered with ``default=True``, else the first
CUDA C 'tf32' variant), else the same 'fp32' default.

Each variant also states the element types it takes (``dtypes``): ('float32',) for most,
('bfloat16',) for the bfloat16 tensor-core variants ('bf16' precision), both for kernels
templated over the element type.  The GPU backend's dispatcher asks for the element type of
the call's first array: a bfloat16 call runs the selected variant if it takes bfloat16, else
the op's bfloat16 default (the variant registered with ``default=True`` among those taking
bfloat16, else the first CUDA C one).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

from .. import config

PRECISIONS = ("fp32", "tf32", "any", "bf16")
DTYPES = ("float32", "bfloat16")


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
    precision: str = "fp32"  # 'fp32', 'tf32' (needs precision "high"), 'any' (follows it) or 'bf16'
    dtypes: tuple = ("float32",)  # element types of the arrays it takes ('float32', 'bfloat16')


_variants: dict[str, dict[str, Variant]] = {}
_selected: dict[str, str] = {}
_defaults: dict[str, str] = {}       # op -> variant used under precision "highest"
_tf32_defaults: dict[str, str] = {}  # op -> variant used under "high", where the op has one
_bf16_defaults: dict[str, str] = {}  # op -> variant that bfloat16 calls use, where the op has one


def register(op: str, name: str, fn: Callable, source: str, note: str = "",
             default: bool = False, precision: str = "fp32", dtypes: tuple = ("float32",)) -> Callable:
    """Add a variant; ``default=True`` makes it the one used (at its precision and for its
    element types, see the module notes) unless a user picks another."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} for variant {name!r} of {op!r}; "
                         f"choose one of {PRECISIONS}")
    if not dtypes or any(d not in DTYPES for d in dtypes):
        raise ValueError(f"element types {dtypes!r} of variant {name!r} of {op!r}: choose among {DTYPES}")
    _variants.setdefault(op, {})[name] = Variant(op, name, fn, source, note, precision, tuple(dtypes))
    # The implicit default is the first CUDA C variant: Numba ones are picked only by name
    # (they pay ~3x more host time per launch), whatever the import order.
    tables = [(_defaults, ("fp32", "any")), (_tf32_defaults, ("tf32", "any"))] if "float32" in dtypes else []
    if "bfloat16" in dtypes:
        tables.append((_bf16_defaults, PRECISIONS))
    for table, kinds in tables:
        if precision in kinds and (default or (op not in table and source != "numba")):
            table[op] = name
    return fn


def allowed(variant: Variant) -> bool:
    """Whether ``variant`` may run at the precision configured now."""
    return variant.precision != "tf32" or config.tf32_allowed()


def default(op: str) -> str:
    """The variant an op uses at the precision configured now when none is selected."""
    if config.tf32_allowed() and op in _tf32_defaults:
        return _tf32_defaults[op]
    return _defaults.get(op) or next(iter(_of(op)))


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
    for module in ("fastcnn.backend.cuda", "fastcnn.backend.numba"):
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


def _of(op: str) -> dict[str, Variant]:
    _ensure_loaded()
    if op not in _variants:
        raise ValueError(f"no kernel variants registered for {op!r}; ops with variants: {sorted(_variants)}")
    return _variants[op]


def variants(op: str, source: str | None = None, precision: str | None = None,
             dtype: str | None = None) -> list[str]:
    """Names of the registered variants of ``op`` (optionally only 'cuda' or 'numba' ones, only
    'fp32', 'tf32', 'any' or 'bf16' ones, only those taking ``dtype`` arrays), whatever the
    precision configured now."""
    return [v.name for v in _of(op).values() if source in (None, v.source) and precision in (None, v.precision)
            and (dtype is None or dtype in v.dtypes)]


def lookup(op: str, name: str) -> Variant:
    """The variant called ``name``, whether or not it may run at this precision (listings)."""
    if name not in _of(op):
        raise ValueError(f"unknown variant {name!r} of {op!r}; registered: {list(_variants[op])}")
    return _variants[op][name]


def get(op: str, name: str | None = None, dtype: str = "float32") -> Variant:
    """The variant called ``name``, or the one selected now, for arrays of element type
    ``dtype`` (a ValueError for a 'tf32' variant while the precision is "highest", and for a
    variant that does not take ``dtype``)."""
    # On every kernel call's path: the usual case costs a few dictionary look-ups.
    table = _variants.get(op) if _loaded[0] else None
    variant = table.get(name or _selected.get(op) or default(op)) if table else None
    if variant is None:  # not loaded yet, or an unknown op or name: lookup loads or says why
        variant = lookup(op, name or _selected.get(op) or default(op))
    if dtype not in variant.dtypes:
        variant = _for_dtype(op, variant, dtype, explicit=name is not None)
    if variant.precision == "tf32" and not config.tf32_allowed():
        raise ValueError(f"kernel variant {variant.name!r} of {op} computes in TF32, which the float32 matmul "
                         f"precision {config.get_float32_matmul_precision()!r} does not allow; allow it "
                         f"with fastcnn.config.set_float32_matmul_precision('high') "
                         f"(command line: --precision tf32)")
    return variant


def _for_dtype(op: str, variant: Variant, dtype: str, explicit: bool) -> Variant:
    """The variant that runs a ``dtype`` call of ``op`` when ``variant`` does not take ``dtype``."""
    if explicit:
        raise ValueError(f"kernel variant {variant.name!r} of {op} takes {' and '.join(variant.dtypes)} "
                         f"arrays, not {dtype}; variants that take {dtype}: {variants(op, dtype=dtype) or 'none'}")
    if dtype not in DTYPES:
        raise ValueError(f"unsupported element type {dtype!r} for {op}; fastcnn computes in {' or '.join(DTYPES)}")
    fallback = _bf16_defaults.get(op) if dtype == "bfloat16" else _defaults.get(op)
    if fallback is None:
        raise ValueError(f"no kernel variant of {op} takes {dtype} arrays")
    return _variants[op][fallback]


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
