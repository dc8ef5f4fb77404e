"""Safe checkpoint I/O: restricted unpicklers and a torch-free ``.pth`` reader/writer (atomic writes: film.common.atomic).

Nothing here executes code from a file. PyTorch ``.pth`` (zip) and Jittor ``.pkl`` files are
pickles; we parse them with :class:`pickle.Unpickler` subclasses whose ``find_class`` only hands
out a fixed allow-list of harmless constructors (tensors are rebuilt as numpy arrays by our own
functions). Anything else — ``os.system``, ``builtins.eval``, an arbitrary class — is refused
before it is looked up, so a malicious payload never runs.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from film.common.atomic import atomic_path, atomic_write_bytes
from film.errors import FilmError

JITTOR_TRAILER = b"HCAJSLHD"  # jt.save appends sha1(pickle) + this magic


class UnsafePickleError(FilmError):
    """A pickle asked for a global outside the allow-list (it would run code)."""


# --------------------------------------------------------------------------- torch .pth (zip) reading

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _TORCH_STORAGE_DTYPES[name]


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    if not isinstance(storage, np.ndarray):
        raise UnsafePickleError("tensor without a storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    n = int(np.prod(size)) if size else 1
    if n == 0:
        return np.zeros(size, dtype=storage.dtype)
    last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
    if storage_offset < 0 or last >= storage.size or any(st < 0 for st in stride):
        raise FilmError("tensor extends past its storage (file truncated or corrupt)")
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(st * storage.itemsize for st in stride)
    )
    return np.array(view, copy=True)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _ordered_dict(*args):
    return OrderedDict(*args)


class _TorchZipUnpickler(pickle.Unpickler):
    _ALLOWED: dict[tuple[str, str], object] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): _ordered_dict,
    }

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._zf = zf
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load global {module}.{name} (it could run code)") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise UnsafePickleError("storage of unknown type")
        key = str(key)
        if key not in self._storages:
            try:
                raw = self._zf.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise FilmError(f"storage {key} is missing from the archive (file truncated?)") from None
            if stype.dtype == "bfloat16":
                u16 = np.frombuffer(raw, dtype="<u2")
                arr = (u16.astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=np.dtype(stype.dtype).newbyteorder("<"))
            if arr.size < int(numel):
                raise FilmError(f"storage {key} is shorter than declared (file truncated?)")
            self._storages[key] = arr
        return self._storages[key]


def read_torch_zip(path: str) -> object:
    """Read a PyTorch zip checkpoint (torch >= 1.6 format) into numpy, without torch and without running code."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise FilmError(f"{path}: not a readable PyTorch zip checkpoint ({e})") from None
    with zf:
        names = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if not names:
            raise FilmError(f"{path}: zip file without data.pkl — not a PyTorch checkpoint")
        pkl = min(names, key=len)
        prefix = pkl[: -len("data.pkl")]
        try:
            byteorder = (
                zf.read(prefix + "byteorder").decode().strip()
                if prefix + "byteorder" in zf.namelist()
                else "little"
            )
            if byteorder != "little":
                raise FilmError(f"{path}: big-endian checkpoints are not supported")
            return _TorchZipUnpickler(zf.read(pkl), zf, prefix).load()
        except FilmError as e:
            raise type(e)(f"{path}: {e}") from None
        except Exception as e:  # a corrupt pickle/zip raises anything from IndexError to zlib.error
            raise FilmError(f"{path}: corrupt PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


# --------------------------------------------------------------------------- Jittor .pkl reading


def _np_reconstruct(cls, *args):
    if cls is not np.ndarray:
        raise UnsafePickleError("numpy reconstruct of a non-ndarray class")
    return np.ndarray.__new__(np.ndarray, *args)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("numpy scalar of an object dtype")
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


def _np_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafePickleError("object dtype (could unpickle arbitrary objects)")
    return dt


def _jittor_var(data=None):
    # jittor pickles a Var as (Var, (ndarray,)); we keep the array.
    if not isinstance(data, np.ndarray):
        raise UnsafePickleError("jittor Var without array data")
    return data


class _NumpyUnpickler(pickle.Unpickler):
    _ALLOWED: dict[tuple[str, str], object] = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy.core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _np_dtype,
        ("collections", "OrderedDict"): _ordered_dict,
        ("jittor_core", "Var"): _jittor_var,
        ("jittor_core.jittor_core", "Var"): _jittor_var,
        ("jittor", "Var"): _jittor_var,
        ("jittor", "jittor_core.Var"): _jittor_var,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load global {module}.{name} (it could run code)") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("persistent ids are not allowed in a .pkl checkpoint")


def read_jittor_pkl(path: str) -> object:
    """Read a ``jt.save`` pickle (with or without its sha1 trailer) with an allow-list unpickler."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise FilmError(f"{path}: empty file")
    if data.endswith(JITTOR_TRAILER):
        body, checksum = data[:-28], data[-28:-8]
        if hashlib.sha1(body).digest() != checksum:
            raise FilmError(f"{path}: checksum mismatch — the file is truncated or corrupt")
        data = body
    try:
        return _NumpyUnpickler(io.BytesIO(data)).load()
    except FilmError as e:
        raise type(e)(f"{path}: {e}") from None
    except Exception as e:  # a corrupt pickle raises anything from IndexError to RecursionError
        raise FilmError(f"{path}: not a readable pickle checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


def write_jittor_pkl(path: str, obj: object) -> None:
    """Write ``obj`` exactly as ``jt.save(obj, path)`` does: pickle protocol 4 + sha1 + magic."""
    body = pickle.dumps(obj, 4)
    atomic_write_bytes(path, body + hashlib.sha1(body).digest() + JITTOR_TRAILER)


# --------------------------------------------------------------------------- torch .pth writing (no torch needed)

_DTYPE_TO_STORAGE = {np.dtype(v): k for k, v in _TORCH_STORAGE_DTYPES.items() if v != "bfloat16"}


class _TorchPickleEmitter:
    """Emits the pickle that ``torch.save`` writes for nested dicts/lists of tensors and scalars.

    Only plain data is supported (dict, OrderedDict, list, tuple, str, int, float, bool, None,
    numpy arrays as tensors), which is what checkpoints are made of. The result loads with
    ``torch.load(weights_only=True)`` and with :func:`read_torch_zip`.
    """

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.storages: list[np.ndarray] = []

    def _w(self, b: bytes) -> None:
        self.out.write(b)

    def _global(self, module: str, name: str) -> None:
        self._w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def _str(self, s: str) -> None:
        b = s.encode("utf-8")
        self._w(b"X" + struct.pack("<I", len(b)) + b)

    def _int(self, v: int) -> None:
        if -(2**31) <= v < 2**31:
            self._w(b"J" + struct.pack("<i", v))
        else:
            n = (v.bit_length() + 8) // 8
            self._w(b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True))

    def _tuple(self, items) -> None:
        self._w(b"(")
        for it in items:
            self.emit(it)
        self._w(b"t")

    def _tensor(self, arr: np.ndarray) -> None:
        arr = np.array(arr, order="C", copy=False)  # keeps 0-d tensors 0-d (ascontiguousarray would not)
        if arr.dtype not in _DTYPE_TO_STORAGE:
            raise FilmError(f"cannot store dtype {arr.dtype} in a .pth")
        key = str(len(self.storages))
        self.storages.append(arr)
        stride, acc = [], 1
        for s in reversed(arr.shape):
            stride.append(acc)
            acc *= s
        self._global("torch._utils", "_rebuild_tensor_v2")
        self._w(b"(")
        # persistent id ('storage', torch.XStorage, key, 'cpu', numel)
        self._w(b"(")
        self._str("storage")
        self._global("torch", _DTYPE_TO_STORAGE[arr.dtype])
        self._str(key)
        self._str("cpu")
        self._int(int(arr.size))
        self._w(b"tQ")
        self._int(0)
        self._tuple(tuple(int(s) for s in arr.shape))
        self._tuple(tuple(reversed(stride)))
        self._w(b"\x89")  # requires_grad False
        self._global("collections", "OrderedDict")
        self._w(b")R")
        self._w(b"tR")

    def emit(self, obj) -> None:
        if isinstance(obj, np.ndarray):
            self._tensor(obj)
        elif isinstance(obj, np.generic):
            self.emit(obj.item())
        elif obj is None:
            self._w(b"N")
        elif obj is True:
            self._w(b"\x88")
        elif obj is False:
            self._w(b"\x89")
        elif isinstance(obj, int):
            self._int(obj)
        elif isinstance(obj, float):
            self._w(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            self._str(obj)
        elif isinstance(obj, dict):
            if isinstance(obj, OrderedDict):
                self._global("collections", "OrderedDict")
                self._w(b")R")
            else:
                self._w(b"}")
            if obj:
                self._w(b"(")
                for k, v in obj.items():
                    self.emit(k)
                    self.emit(v)
                self._w(b"u")
        elif isinstance(obj, list):
            self._w(b"]")
            if obj:
                self._w(b"(")
                for v in obj:
                    self.emit(v)
                self._w(b"e")
        elif isinstance(obj, tuple):
            self._tuple(obj)
        else:
            raise FilmError(f"cannot store {type(obj).__name__} in a .pth")


def write_torch_zip(path: str, obj: object, archive_name: str = "archive") -> None:
    """Write ``obj`` (plain data + numpy arrays) in PyTorch's zip checkpoint format, atomically."""
    em = _TorchPickleEmitter()
    em._w(b"\x80\x02")
    em.emit(obj)
    em._w(b".")
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(f"{archive_name}/data.pkl", em.out.getvalue())
            zf.writestr(f"{archive_name}/byteorder", "little")
            for i, arr in enumerate(em.storages):
                zf.writestr(
                    f"{archive_name}/data/{i}", arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
                )
            zf.writestr(f"{archive_name}/version", "3\n")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
