"""Atomic, pickle-free checkpoints: one safetensors file with the tensors and a JSON description.

A checkpoint holds a *state*: a tree of dicts (str or int keys), OrderedDicts, lists, tuples,
tensors (any dtype, any shape including 0-dim), bools, ints, floats (nan and ±inf included), None
and strings, e.g. ``{"model": model.state_dict(), "optimizer": opt.state_dict(), "rng":
torch.get_rng_state(), "config_hash": "..."}``. :func:`load_checkpoint` returns an equal tree with
the same types: tuples stay tuples, int keys stay ints, tensors keep dtype, shape and bits.

File format (version 1), a standard safetensors file (readable with ``safetensors.safe_open``):

- every tensor of the state is stored under a generated name ``t0``, ``t1``, ... in the order met;
  dtypes that safetensors has no code for (complex128, float8, ...) are stored as their raw bytes
  (uint8) and the description records their dtype and shape;
- the safetensors ``__metadata__`` holds three strings: ``ewc.format`` (``"1"``), ``ewc.state``
  (the JSON description of the tree, with a reference in place of each tensor) and
  ``ewc.sha256``, a SHA-256 over the format, the description and each tensor's name, dtype,
  shape and bytes. safetensors checks that the header is consistent but has no checksum: the
  digest is what turns a flipped bit or a truncation into a :class:`CheckpointError` instead of
  wrong numbers.

In the description, None, bools, ints, strings and finite floats are themselves; everything else
is a one-key object: ``{"dict": [[key, value], ...]}``, ``{"odict": [...], "metadata": ...}``
(an OrderedDict and the ``_metadata`` module versions that ``nn.Module.state_dict`` attaches),
``{"list": [...]}``, ``{"tuple": [...]}``, ``{"float": "nan" | "inf" | "-inf"}`` and
``{"tensor": "t0"}``. Loading parses JSON and copies raw bytes: nothing is ever unpickled.

Tensors come back as plain CPU tensors without ``requires_grad`` (``load_state_dict`` copies
them to the model's device); tensors or containers that appeared twice come back as separate
equal copies.

Writing is atomic: the bytes go to a temporary file in the destination directory, which is
flushed and fsynced, renamed over the destination with ``os.replace``, and the directory is
fsynced. A crash leaves either the old file or the new one, never a mix.

:meth:`CheckpointStore.save_in_background` lets training go on while a checkpoint is written:
the state is encoded and its tensors copied to CPU memory at once (the snapshot; what training
changes next cannot reach it), and one writer thread per store serialises, hashes and writes the
snapshots in order, with the content :func:`save_checkpoint` writes. At most one write is pending:
the next save, :meth:`CheckpointStore.wait` and :meth:`CheckpointStore.close` wait for it, and a
write that failed raises its error there.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save

from ewc._atomic import write_bytes_atomic

FORMAT_VERSION = 1
"""The file format that :func:`save_checkpoint` writes and :func:`load_checkpoint` reads."""

_FORMAT_KEY = "ewc.format"
_STATE_KEY = "ewc.state"
_DIGEST_KEY = "ewc.sha256"
# Dtypes every safetensors release since 0.3 stores natively; others travel as raw bytes.
_NATIVE_DTYPES = frozenset(
    {
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    }
)
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_STEP_FILE = re.compile(r"step-([0-9]{12,})\.safetensors")


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, truncated, corrupted or not a checkpoint.

    Attributes:
        path: the file.
        reason: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        """The checkpoint at ``path`` cannot be used because of ``reason``."""
        super().__init__(path, reason)
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        """``<path>: <reason>``."""
        return f"{self.path}: {self.reason}"


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped by :meth:`CheckpointStore.load_latest` (the message says why)."""


def save_checkpoint(path: str | os.PathLike[str], state: Any) -> None:
    """Write ``state`` to ``path`` atomically as one pickle-free safetensors file.

    Args:
        path: the destination file (conventionally ``*.safetensors``); its directory must exist.
            An existing file is replaced only once the new one is complete on disk.
        state: the tree to store (see the module docstring for the types it may contain).

    Raises:
        TypeError: ``state`` holds a type a checkpoint cannot store exactly (the message gives
            its place in the tree, e.g. ``state['optimizer']['param_groups'][0]['betas']``).
        ValueError: ``state`` contains a reference cycle.
        CheckpointError: the file could not be written (the OS error is chained); no temporary
            file is left behind and an existing checkpoint at ``path`` is untouched.
    """
    _write_encoded(Path(path), _encode(state, copy=False))


@dataclass(frozen=True)
class _Encoded:
    """A state as the file stores it: the JSON description and the named tensors."""

    description: str
    tensors: dict[str, torch.Tensor]


def _encode(state: Any, *, copy: bool) -> _Encoded:
    """Describe ``state``; with ``copy``, its tensors are copies that training cannot change."""
    encoder = _Encoder(copy=copy)
    tree = encoder.encode(state, "state")
    description = json.dumps(tree, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return _Encoded(description, encoder.tensors)


def _write_encoded(path: Path, encoded: _Encoded) -> None:
    """Serialise, hash and write ``encoded`` atomically to ``path``."""
    metadata = {
        _FORMAT_KEY: str(FORMAT_VERSION),
        _STATE_KEY: encoded.description,
        _DIGEST_KEY: _digest(encoded.description, encoded.tensors),
    }
    data = _safetensors_save(encoded.tensors, metadata=metadata)
    try:
        write_bytes_atomic(path, data)
    except OSError as error:
        raise CheckpointError(path, f"could not write the checkpoint ({error})") from error


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read the state that :func:`save_checkpoint` wrote to ``path``, after verifying its digest.

    Args:
        path: the checkpoint file.

    Returns:
        The state, with the same structure, types and tensor bits as when it was saved.

    Raises:
        CheckpointError: the file is missing or unreadable (the OS error is chained), truncated,
            corrupted (digest mismatch), not a safetensors file, not an ewc checkpoint, or of
            another format version. No other exception escapes for a bad file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(path, f"cannot read the checkpoint ({error})") from error
    description, digest = _read_metadata(data, path)
    try:
        tensors = _safetensors_load(data)
    except (SafetensorError, KeyError, ValueError, RuntimeError) as error:
        reason = f"the tensor data is not valid safetensors ({error}); truncated or corrupted?"
        raise CheckpointError(path, reason) from error
    if _digest(description, tensors) != digest:
        reason = "the SHA-256 digest does not match the content: the file is corrupted"
        raise CheckpointError(path, reason)
    try:
        return _decode(json.loads(description), tensors)
    except (ValueError, TypeError, KeyError, RecursionError) as error:
        raise CheckpointError(path, f"the state description is malformed ({error})") from error


class CheckpointStore:
    """Step-numbered checkpoints in one directory, keeping the newest few.

    Files are named ``step-000000001234.safetensors``. :meth:`save` writes atomically and only
    then deletes checkpoints beyond the newest ``keep``, so a crash never leaves fewer good
    checkpoints than before. :meth:`load_latest` falls back to an older checkpoint when the newest
    is corrupted, and renames the bad file to ``*.corrupt`` (never deletes it) so that a later save
    of the same step cannot overwrite the evidence.

    Args:
        directory: where the checkpoints live; created on the first save.
        keep: how many of the newest checkpoints to keep (at least 1; 2 leaves a fallback).

    Raises:
        ValueError: ``keep`` is not an int >= 1.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 2) -> None:
        """Keep the newest ``keep`` checkpoints in ``directory``."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1 (checkpoints to keep); got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[Path] | None = None

    def path(self, step: int) -> Path:
        """The file of the checkpoint of ``step`` (a non-negative int)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0; got {step!r}")
        return self.directory / f"step-{step:012d}.safetensors"

    def steps(self) -> list[int]:
        """The steps that have a checkpoint file, oldest first (``*.corrupt`` files excluded)."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in os.scandir(self.directory):
            match = _STEP_FILE.fullmatch(entry.name)
            step = int(match[1]) if match else None
            if step is not None and entry.is_file() and self.path(step).name == entry.name:
                found.append(step)
        return sorted(found)

    def save(self, state: Any, step: int) -> Path:
        """Save ``state`` as the checkpoint of ``step``, then delete all but the newest ``keep``.

        Args:
            state: the tree to store (see :func:`save_checkpoint`).
            step: the training step; not older than the newest checkpoint (saving the same step
                again replaces it atomically).

        Returns:
            The file written.

        Raises:
            ValueError: ``step`` is negative, not an int, or older than the newest checkpoint.
            TypeError, CheckpointError: as :func:`save_checkpoint`; nothing is deleted then.
        """
        self.wait()
        return self._save_encoded(_encode(state, copy=False), step)

    def save_in_background(
        self, state: Any, step: int, *, before: Callable[[], None] | None = None
    ) -> None:
        """Snapshot ``state`` now and write it as the checkpoint of ``step`` in a writer thread.

        Waits for the previous write first. ``before`` runs in the writer thread just before
        the write (e.g. making a log durable up to the length the state records).

        Raises:
            TypeError, ValueError: ``state`` cannot be stored (at once, nothing is written).
            CheckpointError: the previous write failed (its checkpoint was not written).
        """
        self.wait()
        encoded = _encode(state, copy=True)
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="ewc-checkpoint")
        self._pending = self._writer.submit(self._write_job, encoded, step, before)

    def wait(self) -> None:
        """Wait for the pending background write; raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the pending write (raising its error) and end the writer thread."""
        try:
            self.wait()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def _write_job(self, encoded: _Encoded, step: int, before: Callable[[], None] | None) -> Path:
        if before is not None:
            before()
        return self._save_encoded(encoded, step)

    def _save_encoded(self, encoded: _Encoded, step: int) -> Path:
        """Write ``encoded`` as the checkpoint of ``step``, then delete all but the newest."""
        path = self.path(step)
        existing = self.steps()
        if existing and step < existing[-1]:
            newest = self.path(existing[-1])
            raise ValueError(f"step {step} is older than the newest checkpoint {newest}")
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_encoded(path, encoded)
        for old in sorted({*existing, step})[: -self.keep]:
            self.path(old).unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[int, Any] | None:
        """The newest checkpoint that loads cleanly, as ``(step, state)``; None if there is none.

        A checkpoint that fails to load is skipped with a :class:`CheckpointWarning` naming the
        file and the reason: a corrupted or truncated one is renamed to ``<name>.corrupt`` (or
        ``<name>.corrupt-2``, ...), an unreadable one (an OS error) is left in place. A pending
        background write is waited for first.
        """
        self.wait()
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                return step, load_checkpoint(path)
            except CheckpointError as error:
                self._set_aside(error)
        return None

    def _set_aside(self, error: CheckpointError) -> None:
        """Warn about a checkpoint that failed to load; move it out of the way if it is corrupt."""
        path = error.path
        if isinstance(error.__cause__, OSError):
            note = "left in place"
        else:
            target = _free_name(path.with_name(path.name + ".corrupt"))
            try:
                path.rename(target)
                note = f"renamed to {target.name}"
            except OSError as rename_error:
                note = f"left in place, renaming it failed ({rename_error})"
        message = f"skipping checkpoint {path}: {error.reason}; {note}; trying an older one"
        warnings.warn(message, CheckpointWarning, stacklevel=3)


def _free_name(path: Path) -> Path:
    """``path`` if no file has that name, else the first free ``<path>-2``, ``<path>-3``, ..."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


class _Encoder:
    """Turns a state into its JSON description, collecting its tensors under generated names.

    With ``copy``, every tensor is collected as a copy, never as a view of the state's memory.
    """

    def __init__(self, *, copy: bool = False) -> None:
        self.copy = copy
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[int] = set()
        self._open: set[int] = set()  # containers being encoded: meeting one again is a cycle

    def encode(self, value: Any, path: str) -> Any:
        kind = type(value)
        if value is None or kind in (bool, int, str):
            return value
        if kind is float:
            return value if math.isfinite(value) else {"float": repr(value)}
        if isinstance(value, torch.Tensor):
            return self._tensor(value, path)
        if kind in (list, tuple, dict, OrderedDict):
            if id(value) in self._open:
                raise ValueError(f"{path} contains itself; a checkpoint stores a tree, not a cycle")
            self._open.add(id(value))
            try:
                return self._container(value, path)
            finally:
                self._open.discard(id(value))
        raise TypeError(
            f"{path} is a {kind.__module__}.{kind.__qualname__}, which a checkpoint cannot store "
            "exactly; it holds dicts (str or int keys), OrderedDicts, lists, tuples, tensors, "
            "None, and bool, int, float and str (not subclasses: convert e.g. numpy numbers with "
            "float() or int(), enums with .value)"
        )

    def _container(self, value: list | tuple | dict, path: str) -> dict[str, Any]:
        if isinstance(value, list | tuple):
            items = [self.encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
            return {"list" if type(value) is list else "tuple": items}
        pairs = []
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(
                    f"{path} has the key {key!r} of type {type(key).__name__}; checkpoint dict "
                    "keys must be str or int"
                )
            pairs.append([key, self.encode(item, f"{path}[{key!r}]")])
        if type(value) is dict:
            return {"dict": pairs}
        node: dict[str, Any] = {"odict": pairs}
        module_versions = getattr(value, "_metadata", None)
        if module_versions is not None:
            node["metadata"] = self.encode(module_versions, f"{path}._metadata")
        return node

    def _tensor(self, tensor: torch.Tensor, path: str) -> dict[str, Any]:
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
            raise TypeError(
                f"{path} is a {tensor.layout} tensor on {tensor.device} (quantized: "
                f"{tensor.is_quantized}); a checkpoint stores dense, unquantized tensors with "
                "values: convert it with .to_dense() or .dequantize() first"
            )
        data = tensor.detach().resolve_conj().resolve_neg().cpu().contiguous()
        storage = data.untyped_storage().data_ptr()
        if self.copy and storage == tensor.untyped_storage().data_ptr():
            data = data.clone()  # a snapshot: the state's own memory goes on changing
        elif storage in self._storages or storage == 0:
            data = data.clone()  # safetensors refuses tensors that share memory
        self._storages.add(data.untyped_storage().data_ptr())
        name = f"t{len(self.tensors)}"
        if data.dtype in _NATIVE_DTYPES:
            self.tensors[name] = data
            return {"tensor": name}
        flat = data.as_strided((data.numel(),), (1,))  # reshape may keep odd strides of size-1 dims
        self.tensors[name] = flat.view(torch.uint8)
        dtype = str(data.dtype).removeprefix("torch.")
        return {"tensor": name, "dtype": dtype, "shape": list(data.shape)}


def _decode(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The value that ``node`` of a description stands for (the inverse of ``_Encoder.encode``)."""
    if node is None or isinstance(node, bool | int | float | str):
        return node
    if not isinstance(node, dict) or not node:
        raise ValueError(f"unexpected node {node!r}")
    if "tensor" in node:
        return _decode_tensor(node, tensors)
    (tag, body), *rest = node.items()
    if tag == "float" and body in _NON_FINITE and not rest:
        return _NON_FINITE[body]
    if tag in ("list", "tuple") and isinstance(body, list) and not rest:
        items = [_decode(item, tensors) for item in body]
        return items if tag == "list" else tuple(items)
    if tag in ("dict", "odict") and isinstance(body, list):
        pairs = [_decode_pair(pair, tensors) for pair in body]
        if tag == "dict" and not rest:
            return dict(pairs)
        if tag == "odict" and {key for key, _ in rest} <= {"metadata"}:
            result = OrderedDict(pairs)
            if rest:
                result._metadata = _decode(rest[0][1], tensors)  # type: ignore[attr-defined]
            return result
    raise ValueError(f"unexpected node with keys {sorted(node)}")


def _decode_pair(pair: Any, tensors: Mapping[str, torch.Tensor]) -> tuple[str | int, Any]:
    if not isinstance(pair, list) or len(pair) != 2 or type(pair[0]) not in (str, int):
        raise ValueError(f"a dict entry must be [str or int key, value]; got {pair!r}")
    return pair[0], _decode(pair[1], tensors)


def _decode_tensor(node: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    stored = tensors[node["tensor"]]
    if set(node) == {"tensor"}:
        return stored
    dtype = getattr(torch, str(node.get("dtype")), None)
    shape = node.get("shape")
    if set(node) != {"tensor", "dtype", "shape"} or not isinstance(dtype, torch.dtype):
        raise ValueError(f"unexpected tensor node {node!r}")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"unexpected tensor shape {shape!r}")
    if stored.dtype != torch.uint8 or stored.numel() != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"tensor {node['tensor']} does not hold {shape} values of {dtype}")
    return stored.clone().view(dtype).reshape(shape)  # the clone aligns the bytes for the dtype


def _read_metadata(data: bytes, path: Path) -> tuple[str, str]:
    """The description and the digest from the safetensors header of ``data``."""
    if len(data) < 8:
        raise CheckpointError(path, f"only {len(data)} bytes, too short for a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        reason = f"the header should be {size} bytes but {len(data) - 8} follow: truncated?"
        raise CheckpointError(path, reason)
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, RecursionError) as error:
        reason = f"the header is not valid JSON ({error}): corrupted, or not a safetensors file?"
        raise CheckpointError(path, reason) from error
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or _FORMAT_KEY not in metadata:
        reason = f"not an ewc checkpoint: no {_FORMAT_KEY!r} in the safetensors metadata"
        raise CheckpointError(path, reason)
    if metadata[_FORMAT_KEY] != str(FORMAT_VERSION):
        found, known = metadata[_FORMAT_KEY], str(FORMAT_VERSION)
        reason = f"checkpoint format {found!r}; this version of ewc reads format {known!r} only"
        raise CheckpointError(path, reason)
    description, digest = metadata.get(_STATE_KEY), metadata.get(_DIGEST_KEY)
    if not isinstance(description, str) or not isinstance(digest, str):
        reason = f"the metadata lacks the strings {_STATE_KEY!r} and {_DIGEST_KEY!r}"
        raise CheckpointError(path, reason)
    return description, digest


def _digest(description: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the format, the description and each tensor's name, dtype, shape and bytes."""
    sha = hashlib.sha256()
    for chunk in (f"ewc-checkpoint/{FORMAT_VERSION}".encode(), description.encode()):
        _update(sha, chunk)
    for name in sorted(tensors):
        tensor = tensors[name]
        _update(sha, f"{name}|{tensor.dtype}|{list(tensor.shape)}".encode())
        _update(sha, _tensor_bytes(tensor))
    return sha.hexdigest()


def _update(sha: Any, chunk: bytes | memoryview) -> None:
    """Hash ``chunk`` prefixed by its length, so that no two sequences of chunks hash alike."""
    sha.update(memoryview(chunk).nbytes.to_bytes(8, "little"))
    sha.update(chunk)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (and without numpy)."""
    size = tensor.numel() * tensor.element_size()
    if size == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_ubyte * size).from_address(tensor.data_ptr()))
