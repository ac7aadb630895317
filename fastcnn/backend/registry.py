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
which picks among the variants allowed).

Each variant also states the element types it takes (``dtypes``): ('float32',) for most,
('bfloat16',) for the bfloat16 tensor-core variants ('bf16' precision), both for kernels
templated over the element type.  The GPU backend's dispatcher asks for the element type of
the call's first array: a bfloat16 call runs the selected variant if it takes bfloat16, else
the op's bfloat16 default.

Which variant is an op's default, per kind of call (float32 under "highest", float32 under
"high", bfloat16), is declared in one table, ``fastcnn.backend.preferences``; ``default``
reads it.  Variants register themselves when their module is imported; this module imports
none of them (``fastcnn.kernels`` imports them all).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

from .. import config
from .preferences import PREFERRED

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


def register(op: str, name: str, fn: Callable, source: str, note: str = "",
             precision: str = "fp32", dtypes: tuple = ("float32",)) -> Callable:
    """Add a variant (whether it is a default is ``fastcnn.backend.preferences``'s to say)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} for variant {name!r} of {op!r}; "
                         f"choose one of {PRECISIONS}")
    if not dtypes or any(d not in DTYPES for d in dtypes):
        raise ValueError(f"element types {dtypes!r} of variant {name!r} of {op!r}: choose among {DTYPES}")
    _variants.setdefault(op, {})[name] = Variant(op, name, fn, source, note, precision, tuple(dtypes))
    return fn


def allowed(variant: Variant) -> bool:
    """Whether ``variant`` may run at the precision configured now."""
    return variant.precision != "tf32" or config.tf32_allowed()


# The kinds of call PREFERRED has a column for: the element type and precisions a variant needs.
_KINDS = {"highest": ("float32", ("fp32", "any")),
          "high": ("float32", ("fp32", "tf32", "any")),
          "bfloat16": ("bfloat16", PRECISIONS)}


def _fits(variant: Variant, kind: str) -> bool:
    dtype, precisions = _KINDS[kind]
    return dtype in variant.dtypes and variant.precision in precisions


def default(op: str, dtype: str = "float32") -> str:
    """The variant ``op`` runs for ``dtype`` arrays at the precision configured now when none
    is selected: the one PREFERRED (fastcnn.backend.preferences) names where it is registered
    and fits the kind of call, else the first CUDA C variant that fits (under "high" a 'tf32'
    or 'any' one first, else the "highest" choice).  Numba variants run only when picked by
    name (they pay ~3x more host time per launch), or for float32 calls of an op that has no
    CUDA C variant (its module failed to import)."""
    if dtype == "bfloat16":
        kind = "bfloat16"
    elif dtype == "float32":
        kind = "high" if config.tf32_allowed() else "highest"
    else:
        raise ValueError(f"unsupported element type {dtype!r} for {op}; fastcnn computes in {' or '.join(DTYPES)}")
    return _choice(op, _of(op), kind)


def _choice(op: str, table: dict[str, Variant], kind: str) -> str:
    preferred = PREFERRED.get(op)
    name = getattr(preferred, kind) if preferred else None
    if name in table and _fits(table[name], kind):  # the usual case: on every kernel call's path
        return name
    cuda = [v for v in table.values() if v.source == "cuda" and _fits(v, kind)]
    if kind == "high":
        tf32 = [v for v in cuda if v.precision != "fp32"]
        return tf32[0].name if tf32 else _choice(op, table, "highest")
    if cuda:
        return cuda[0].name
    if kind == "bfloat16":
        raise ValueError(f"no kernel variant of {op} takes bfloat16 arrays")
    return next(iter(table))


def ops() -> list[str]:
    return sorted(_variants)


def _of(op: str) -> dict[str, Variant]:
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
    wanted = name or _selected.get(op) or default(op, dtype)
    variant = _variants.get(op, {}).get(wanted)
    if variant is None:  # an unknown op or name: lookup says why
        variant = lookup(op, wanted)
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
    return _variants[op][default(op, dtype)]


def use(op: str, name: str | None) -> None:
    """Select variant ``name`` for ``op`` (None goes back to the default).  The selection runs
    the calls of the element types the variant takes; the others keep their default."""
    if name is None:
        _selected.pop(op, None)
        return
    get(op, name, dtype=lookup(op, name).dtypes[0])  # validates (a bfloat16-only variant too)
    _selected[op] = name


def selected(op: str, dtype: str = "float32") -> str:
    """The variant that a call of ``op`` on ``dtype`` arrays runs now."""
    return get(op, dtype=dtype).name


@contextlib.contextmanager
def using(op: str, name: str):
    """``with fastcnn.kernels.using('matmul', 'naive'): ...``"""
    previous = _selected.get(op)
    use(op, name)
    try:
        yield
    finally:
        use(op, previous)
