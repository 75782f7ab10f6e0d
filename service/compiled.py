"""The compiled per-row passes of a round (numba): how each is compiled, and its types.

A round's normalization, surprise, likelihood and alert rule are each one compiled loop over
the round's rows, called once a round; as numpy they were hundreds of array operations, each
a microsecond or more before any arithmetic, whatever the round's size. Each pass is compiled
at import for one signature of "any layout" arrays, so strided views of the arena's records
and contiguous arrays both take it, and cached on disk (`NUMBA_CACHE_DIR`, else beside the
source): a server's first round never waits for a compiler. (The passes over the arena's
records, `service.passes`, depend on the model's record layout: they compile when a stepper
is made, into the same cache.)
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

F8, F4, I8, I4 = numba.float64, numba.float32, numba.int64, numba.int32
U4, U2, U1, B1 = numba.uint32, numba.uint16, numba.uint8, numba.boolean

_F = TypeVar("_F", bound=Callable[..., Any])


def array(dtype: numba.types.Type, ndim: int) -> numba.types.Array:
    """An array argument of any layout."""
    return numba.types.Array(dtype, ndim, "A")


def kernel(*arg_types: Any) -> Callable[[_F], _F]:
    """Compile a pass that writes its results into arrays it is given (returning at most a
    few counts of them, each of which spares its caller a numpy call): at import, for the one
    signature `arg_types` (returning nothing); with none, at its first call for each
    signature it meets (the passes over the records, whose dtype is the model's).

    Division by zero and invalid operations give inf and NaN, as numpy does, not exceptions:
    each caller refuses non-finite results where numpy's code did.
    """
    options: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy"}
    if not arg_types:
        return cast(Callable[[_F], _F], numba.njit(**options))
    return cast(Callable[[_F], _F], numba.njit(numba.void(*arg_types), **options))


def inline(function: _F) -> _F:
    """A helper of passes, compiled into each (also callable from Python, compiled apart)."""
    return cast(_F, numba.njit(cache=True, inline="always")(function))


def _prefetch_intrinsic(typingctx: Any, address: Any) -> Any:
    """Ask the CPU to bring the cache line at `address` (an integer) in: llvm.prefetch."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        bytes_ = ir.IntType(8).as_pointer()
        function = _get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [bytes_, ir.IntType(32), ir.IntType(32), ir.IntType(32)]
        ), "llvm.prefetch.p0i8")
        read, keep, data = (ir.Constant(ir.IntType(32), v) for v in (0, 3, 1))
        builder.call(function, [builder.inttoptr(args[0], bytes_), read, keep, data])
        return context.get_dummy_value()

    return numba.types.void(numba.types.intp), codegen


_get_or_insert_function: Any = cgutils.get_or_insert_function
_prefetch: Any = intrinsic(_prefetch_intrinsic)


# Rows ahead that a pass asks for the row it will need (measured in `passes.gather`: 2 to 8
# alike).
PREFETCH_AHEAD = 4


@inline
def _row_start(array: Any, index: int) -> int:
    """The address of `array[index]`."""
    return array.ctypes.data + index * array.strides[0]


@inline
def prefetch_row(array: Any, index: int) -> None:
    """Start loading every cache line of `array[index]` (whose own axes are contiguous: a
    record, or a field's view of one). A random slot of a big arena is a trip to memory:
    issued a few rows ahead of their use, the trips overlap."""
    size = array.itemsize * (array.size // array.shape[0])
    start = _row_start(array, index)
    for line in range(start & ~63, start + size, 64):
        _prefetch(line)


def _float32_pointer_intrinsic(typingctx: Any, address: Any) -> Any:
    """The integer `address` as a float32 pointer, for `numba.carray`."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], ir.FloatType().as_pointer())

    pointer: Any = numba.types.CPointer
    return pointer(numba.float32)(numba.types.intp), codegen


_carray: Any = numba.carray  # type: ignore[attr-defined]
_float32_pointer: Any = intrinsic(_float32_pointer_intrinsic)


@inline
def float32_row(array: Any, index: int) -> Any:
    """`array[index]` (float32, whose own axes are contiguous: a record's field) flattened,
    as a C array: the compiler then knows its elements are adjacent and copies them many at
    a time, which it cannot over an array of any layout."""
    return _carray(_float32_pointer(_row_start(array, index)), array.size // array.shape[0])


def _half_to_double_intrinsic(typingctx: Any, bits: Any) -> Any:
    """IEEE half-precision `bits` (uint16) as a float64: one instruction (x86's F16C)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.DoubleType())

    return numba.float64(numba.uint16), codegen


def _single_to_half_intrinsic(typingctx: Any, value: Any) -> Any:
    """A float32 rounded to half precision (to nearest, ties to even: numpy's cast), as its
    uint16 bits: one instruction (x86's F16C)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return numba.uint16(numba.float32), codegen


# Whether the CPU converts half precision itself: every x86 server since 2012 (F16C), and
# 64-bit ARM. Where not, `service.likelihood` converts with integer steps.
_MACHINE = platform.machine().lower()
HARDWARE_HALF = _MACHINE in ("aarch64", "arm64") or (
    _MACHINE in ("x86_64", "amd64") and bool(llvm.get_host_cpu_features().get("f16c"))
)
half_to_double: Any = intrinsic(_half_to_double_intrinsic)
single_to_half: Any = intrinsic(_single_to_half_intrinsic)
