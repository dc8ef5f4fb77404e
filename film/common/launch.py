"""Framework-free facts about the process and the machine: GPUs, and the multi-process launchers (torchrun's
and OpenMPI's environment variables). Used by both backends, film bench and the CLI; imports no framework."""

from __future__ import annotations

import glob
import os
import shutil

MPI_INSTALL_HINT = "install OpenMPI: apt-get install openmpi-bin libopenmpi-dev (Debian/Ubuntu)"


def has_nvidia_gpu() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*")) and shutil.which("nvidia-smi") is not None


def mpi_world_size() -> int:
    """Processes in this mpirun job (1 when not started by OpenMPI's mpirun)."""
    try:
        return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    except ValueError:
        return 1


def torchrun_world_size() -> int:
    """Processes in this torchrun job (1 when not started by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def in_multiprocess_job() -> bool:
    """Whether this process is one rank of several (torchrun or mpirun)."""
    return mpi_world_size() > 1 or torchrun_world_size() > 1


def rank() -> int:
    for k in ("RANK", "OMPI_COMM_WORLD_RANK"):
        if k in os.environ:
            try:
                return int(os.environ[k])
            except ValueError:
                return 0
    return 0


def mpicc() -> str | None:
    """The mpicc Jittor compiles its MPI ops with (its ``mpicc_path`` variable, else PATH), or None."""
    path = os.environ.get("mpicc_path")
    if path is not None:
        return path if path and os.path.exists(path) else None
    return shutil.which("mpicc")
