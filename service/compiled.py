"""The compiled per-row passes of a round (numba): how each is compiled, and its types.

A round's normalization, surprise, likelihood and alert rule are each one compiled loop over
the round's rows, called once a round; as numpy they were hundreds of array operations, each
a microsecond or more before any arithmetic, whatever the round's size. Each pass is compiled
at import for one signature of "any layout" arrays, so strided views of the arena's records
and contiguous arrays both take it, and cached on disk (`NUMBA_CACHE_DIR`, else beside the
source): a server's first round never waits for a compiler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F8, F4, I8, I4 = numba.float64, numba.float32, numba.int64, numba.int32
U4, U2, U1, B1 = numba.uint32, numba.uint16, numba.uint8, numba.boolean

_F = TypeVar("_F", bound=Callable[..., None])
_G = TypeVar("_G", bound=Callable[..., Any])


def array(dtype: numba.types.Type, ndim: int) -> numba.types.Array:
    """An array argument of any layout."""
    return numba.types.Array(dtype, ndim, "A")


def kernel(*arg_types: Any) -> Callable[[_F], _F]:
    """Compile a pass that writes its results into arrays it is given (it returns nothing).

    Division by zero and invalid operations give inf and NaN, as numpy does, not exceptions:
    each caller refuses non-finite results where numpy's code did.
    """
    compile_ = numba.njit(numba.void(*arg_types), cache=True, nogil=True, error_model="numpy")
    return compile_


def inline(function: _G) -> _G:
    """A helper of passes, compiled into each (also callable from Python, compiled apart)."""
    return cast(_G, numba.njit(cache=True, inline="always")(function))
