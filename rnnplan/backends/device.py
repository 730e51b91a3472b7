"""Is there a usable GPU, and what is it: read through CuPy, imported only when asked."""

from __future__ import annotations

import functools

from rnnplan.spec import DeviceShape


def cupy_unavailable_reason() -> str | None:
    """None when CuPy imports and sees a usable GPU, else why not."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        return f"CuPy is not installed ({type(e).__name__}: {e}); install rnnplan[cuda12] or rnnplan[cuda13]"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as e:
        return f"CuPy cannot use a CUDA device: {e}"
    return None


def describe_device(device: int = 0) -> DeviceShape:
    """A DeviceShape of a CUDA device, read through CuPy, for PlanOptions(device=...)."""
    reason = cupy_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot describe a GPU: {reason}")
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(device)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    clusters = props["major"] >= 9  # thread-block clusters, 16 blocks where non-portable sizes are allowed
    # Resident clusters of 16 at one block an SM: one a GPC, of up to 18 SMs on Hopper (7 on an H200's
    # 132, as cuOccupancyMaxActiveClusters says); the launch asks the driver again for its own kernel.
    return DeviceShape(name=name, sms=props["multiProcessorCount"], smem_per_block=props["sharedMemPerBlockOptin"],
                       cooperative_launch=bool(props.get("cooperativeLaunch", 1)),
                       cluster_blocks=16 if clusters else 0, max_clusters=props["multiProcessorCount"] // 18 if clusters else 0)


@functools.cache
def local_device() -> DeviceShape | None:
    """The first CUDA device CuPy sees, described once per process; None where there is none."""
    return describe_device() if cupy_unavailable_reason() is None else None
