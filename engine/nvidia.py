"""What the TensorRT paths (engine build and runtime) need to know about the machine, without a CUDA
toolkit or PyTorch: whether TensorRT imports, which GPU the driver reports, and the fuller plugins
registered."""
from __future__ import annotations

import ctypes
import sys

from fuller.errors import UserInputError
from fuller.plugins import register_tensorrt_plugins

TENSORRT_MISSING = ("TensorRT is not installed; install it from NVIDIA's index: pip install tensorrt-cu12 "
                    "(fuller's vehicle extra pins the version; needs an NVIDIA GPU, CUDA 12)")


def import_tensorrt():
    """The ``tensorrt`` module, or a `UserInputError` saying how to install it (an install without its
    CUDA libraries raises OSError, not ImportError)."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise UserInputError(TENSORRT_MISSING) from exc
    return tensorrt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except UserInputError:
        return False
    return True


def current_gpu() -> tuple[str, str]:
    """(name, compute capability 'major.minor') of the first visible NVIDIA GPU, from the driver
    library itself."""
    try:
        cuda = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError as exc:
        raise UserInputError(f"no NVIDIA driver found ({exc}); TensorRT engines need an NVIDIA GPU") from exc
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    for call in (lambda: cuda.cuInit(0), lambda: cuda.cuDeviceGet(ctypes.byref(device), 0),
                 lambda: cuda.cuDeviceGetName(name, len(name), device),
                 lambda: cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device),  # COMPUTE_CAPABILITY_MAJOR
                 lambda: cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)):  # COMPUTE_CAPABILITY_MINOR
        status = call()
        if status != 0:
            raise UserInputError(f"the NVIDIA driver reports CUDA error {status} for the first GPU; TensorRT "
                                 "engines need a working NVIDIA GPU")
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


def register_plugins() -> None:
    """The fuller TensorRT plugins, registered for an engine build (a built engine runs without
    them: they are ahead-of-time); an import failure is one `UserInputError` that says what is missing."""
    try:
        register_tensorrt_plugins()
    except ImportError as exc:
        raise UserInputError(str(exc)) from exc
