"""cuda-python, imported lazily, and the one way visionflow checks its calls.

cuda-python mirrors the C APIs: every call returns ``(error, *values)``.  :func:`check` raises
:class:`~visionflow.errors.EngineError` naming the call and the error enum, and returns the
values, so callers read ``pointer = check(rt.cudaMalloc(n), "cudaMalloc")``.
"""

from __future__ import annotations

from typing import Any

from visionflow.errors import EngineError, EngineUnavailableError

_HINT = "pip install cuda-python nvidia-cuda-nvrtc"


def runtime() -> Any:
    """``cuda.bindings.runtime`` (``cuda.cudart`` before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        try:
            from cuda import cudart as rt
        except ImportError as exc:
            raise EngineUnavailableError(f"cuda-python is not installed ({_HINT}): {exc}") from exc
    return rt


def driver() -> Any:
    """``cuda.bindings.driver``."""
    try:
        from cuda.bindings import driver as drv
    except ImportError as exc:
        raise EngineUnavailableError(f"cuda-python is not installed ({_HINT}): {exc}") from exc
    return drv


def nvrtc() -> Any:
    """``cuda.bindings.nvrtc`` (needs the ``nvidia-cuda-nvrtc`` wheel or a CUDA toolkit)."""
    try:
        from cuda.bindings import nvrtc as rtc
    except ImportError as exc:
        raise EngineUnavailableError(f"NVRTC from cuda-python is missing ({_HINT}): {exc}") from exc
    return rtc


def check(result: Any, what: str) -> Any:
    """Raise when a cuda-python ``(error, *values)`` result is an error; return the values
    (one value alone, several as a tuple, None when there are none)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineError(f"{what} failed: {err!r}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
