"""Checkpoints: exact round trips, corruption always detected, atomic writes, the store."""

from __future__ import annotations

import enum
import itertools
import json
import math
import os
import pickle
import re
import struct
import warnings
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from safetensors.torch import save_file as safetensors_save_file

import ewc.experiment.storage.checkpoint
from ewc.experiment.storage.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointStore,
    CheckpointWarning,
    load_checkpoint,
    save_checkpoint,
)


def assert_same(loaded: Any, expected: Any, where: str = "state") -> None:
    """Equal values of identical types; tensors equal bit for bit (NaN included); same key order."""
    assert type(loaded) is type(expected) or (
        isinstance(expected, torch.Tensor) and type(loaded) is torch.Tensor
    ), f"{where}: {type(loaded)} != {type(expected)}"
    if isinstance(expected, torch.Tensor):
        assert loaded.dtype == expected.dtype, where
        assert loaded.shape == expected.shape, where
        assert torch.equal(_bits(loaded), _bits(expected)), where
    elif isinstance(expected, dict):
        assert list(loaded) == list(expected), where
        assert [type(k) for k in loaded] == [type(k) for k in expected], where
        for key in expected:
            assert_same(loaded[key], expected[key], f"{where}[{key!r}]")
        if hasattr(expected, "_metadata"):
            assert_same(loaded._metadata, expected._metadata, f"{where}._metadata")
    elif isinstance(expected, list | tuple):
        assert len(loaded) == len(expected), where
        for i, (a, b) in enumerate(zip(loaded, expected, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(loaded), where
    elif isinstance(expected, float):
        assert (loaded, math.copysign(1, loaded)) == (expected, math.copysign(1, expected)), where
    else:
        assert loaded == expected, where


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    dense = tensor.detach().resolve_conj().resolve_neg().contiguous()
    flat = dense.as_strided((dense.numel(),), (1,))
    return flat.view(torch.uint8) if flat.dtype != torch.bool else flat


def round_trip(tmp_path: Path, state: Any) -> Any:
    path = tmp_path / "state.safetensors"
    save_checkpoint(path, state)
    return load_checkpoint(path)


def training_state(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    """A small model and Adam after two steps, and a checkpoint state holding both."""
    with torch.random.fork_rng(devices=[]):  # leave the global generator as it was
        torch.manual_seed(seed)
        model = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(2):
            _step(model, optimizer)
        rng = torch.get_rng_state()
    generator = torch.Generator().manual_seed(seed + 1)
    torch.rand(3, generator=generator)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng,
        "generator": generator.get_state(),
        "results": [{"task": 1, "accuracy": [0.91, 0.12]}, {"task": 2, "accuracy": [0.85, 0.9]}],
        "config_hash": "3f2a9c",
        "step": 1234,
    }
    return model, optimizer, state


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.arange(16) % 3)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


# Round trips


def test_training_state_round_trips_exactly(tmp_path: Path) -> None:
    _, _, state = training_state()
    loaded = round_trip(tmp_path, state)
    assert_same(loaded, state)
    assert all(type(key) is int for key in loaded["optimizer"]["state"])
    assert loaded["optimizer"]["state"][0]["step"].shape == ()
    assert loaded["rng"].dtype == torch.uint8
    assert isinstance(loaded["model"], OrderedDict)


def test_restored_training_continues_bit_for_bit(tmp_path: Path) -> None:
    model, optimizer, state = training_state()
    save_checkpoint(tmp_path / "c.safetensors", state)
    twin, twin_optimizer, _ = training_state(seed=7)  # different weights and moments
    loaded = load_checkpoint(tmp_path / "c.safetensors")
    twin.load_state_dict(loaded["model"])
    twin_optimizer.load_state_dict(loaded["optimizer"])
    for net, opt in ((model, optimizer), (twin, twin_optimizer)):
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(loaded["rng"])
            _step(net, opt)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_scalars_and_nested_containers_round_trip(tmp_path: Path) -> None:
    state = {
        "none": None,
        "bools": [True, False],
        "ints": (0, -1, 2**80, -(2**70)),
        "floats": [0.1, -0.0, 0.0, 1e308, 5e-324, math.nan, math.inf, -math.inf],
        "strings": ["", "naïve θ λ Σ 🙂", 'quote " backslash \\ nul \x00', '{"list": []}'],
        "int and str keys": {0: "int", "0": "str", -5: "neg", 10**30: "big"},
        "nested": [(1, [2, (3, {"four": (4.0,)})]), [], (), {}, OrderedDict()],
        "tuple of one": ("only",),
        "looks like a node": {"tensor": "t0", "dict": [], "float": "nan"},
        7: {"float": "inf"},
    }
    assert_same(round_trip(tmp_path, state), state)


@pytest.mark.parametrize("state", [None, 3, "text", 1.5, math.nan, [], (), {}, torch.ones(2)])
def test_a_state_need_not_be_a_dict(tmp_path: Path, state: Any) -> None:
    assert_same(round_trip(tmp_path, state), state)


DTYPES = [
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
    torch.complex64,
    torch.complex128,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (5,), (3, 4)], ids=str)
def test_tensors_of_every_dtype_and_shape_round_trip_bitwise(
    tmp_path: Path, dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    generator = torch.Generator().manual_seed(0)
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (*shape, size), dtype=torch.uint8, generator=generator)
    tensor = raw.view(dtype).reshape(shape) if dtype != torch.bool else raw[..., 0] % 2 == 1
    state = {"x": tensor, "same dtype again": tensor.clone()}
    assert_same(round_trip(tmp_path, state), state)


def test_float_specials_survive_in_tensors(tmp_path: Path) -> None:
    values = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1e308]
    state = [torch.tensor(values, dtype=torch.float64), torch.tensor(values, dtype=torch.float32)]
    assert_same(round_trip(tmp_path, state), state)


def test_views_shared_storage_and_non_contiguous_tensors_round_trip(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "base": base,
        "same object again": base,
        "row": base[1],  # contiguous view of the same storage
        "transpose": base.t(),
        "strided": base[:, ::2],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),  # stride 0
        "scalar view": base[2, 3],
        "conj": torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64).conj(),
        "neg": torch.tensor([1 + 2j], dtype=torch.complex128).conj().imag,
        "one element, stride 2": torch.arange(4.0).to(torch.complex128)[::2][:1],
        "raw dtype, strided": torch.arange(12.0).to(torch.complex128).reshape(3, 4).t(),
        "parameter": torch.nn.Parameter(torch.ones(2, 2)),
        "requires grad": torch.ones(3, requires_grad=True) * 2,
    }
    loaded = round_trip(tmp_path, state)
    assert_same(loaded, state)
    assert not any(t.requires_grad for t in loaded.values())
    loaded["base"][0, 0] = -1.0  # loaded tensors do not alias each other
    assert loaded["same object again"][0, 0] == 0.0
    assert loaded["row"][0] == 6.0


def test_saving_leaves_the_state_unchanged(tmp_path: Path) -> None:
    model, _, state = training_state()
    before = {name: tensor.clone() for name, tensor in state["model"].items()}
    save_checkpoint(tmp_path / "c.safetensors", state)
    for name, tensor in state["model"].items():
        assert torch.equal(tensor, before[name]), name
    assert state["model"]["0.weight"].data_ptr() == model[0].weight.data_ptr()


def test_saving_replaces_an_existing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"version": 1})
    save_checkpoint(str(path), {"version": 2})
    assert load_checkpoint(str(path)) == {"version": 2}
    assert os.listdir(tmp_path) == ["c.safetensors"]


# The file format


def test_the_file_is_plain_safetensors_with_json_metadata(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    _, _, state = training_state()
    save_checkpoint(path, state)
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    metadata = header.pop("__metadata__")
    assert set(metadata) == {"ewc.format", "ewc.state", "ewc.sha256"}
    assert metadata["ewc.format"] == str(FORMAT_VERSION)
    json.loads(metadata["ewc.state"])
    # Nothing but the header and the tensors' bytes: no room for a pickle anywhere.
    spans = sorted(entry["data_offsets"] for entry in header.values())
    assert spans[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert 8 + header_size + spans[-1][1] == len(data)
    with safe_open(path, framework="pt") as reader:
        assert reader.metadata() == metadata
        assert set(reader.keys()) == set(header)


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a checkpoint must never be unpickled")

    for module, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (torch.serialization, "load"),
    ]:
        monkeypatch.setattr(module, name, refuse)
    _, _, state = training_state()
    assert_same(round_trip(tmp_path, state), state)


def test_the_module_source_never_uses_pickle_or_torch_load() -> None:
    source = Path(ewc.experiment.storage.checkpoint.__file__).read_text(encoding="utf-8")
    for forbidden in ("import pickle", "torch.load(", "torch.save(", "weights_only"):
        assert forbidden not in source


# What a checkpoint refuses to store


class _Color(enum.Enum):
    RED = "red"


class _Kind(str, enum.Enum):
    EXACT = "exact"


class _MyFloat(float):
    pass


_Pair = namedtuple("_Pair", "a b")


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"a": {1, 2}}, r"state\['a'\] is a builtins.set"),
        ({"a": [b"bytes"]}, r"state\['a'\]\[0\] is a builtins.bytes"),
        ({"k": _Kind.EXACT}, r"state\['k'\] is a .*_Kind"),
        ({"c": _Color.RED}, r"state\['c'\] is a .*_Color"),
        ({"f": _MyFloat(1.0)}, r"state\['f'\] is a .*_MyFloat"),
        ({"p": _Pair(1, 2)}, r"state\['p'\] is a .*_Pair"),
        ({"s": torch.Size([2, 3])}, r"state\['s'\] is a torch.Size"),
        ({"d": torch.float32}, r"state\['d'\] is a torch.dtype"),
        ({"o": object()}, r"state\['o'\] is a builtins.object"),
        ({"x": {(1, 2): 3}}, r"state\['x'\] has the key \(1, 2\) of type tuple"),
        ({"x": {True: 3}}, r"state\['x'\] has the key True of type bool"),
        ({"x": {1.5: 3}}, r"state\['x'\] has the key 1.5 of type float"),
        ({"x": torch.eye(2).to_sparse()}, r"state\['x'\] is a torch.sparse_coo tensor"),
        ({"x": torch.empty(2, device="meta")}, r"state\['x'\] is a .* tensor on meta"),
    ],
)
def test_unsupported_values_are_type_errors_naming_their_place(
    tmp_path: Path, state: Any, where: str
) -> None:
    with pytest.raises(TypeError, match=where):
        save_checkpoint(tmp_path / "c.safetensors", state)
    assert os.listdir(tmp_path) == []


def test_a_quantized_tensor_is_a_type_error(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized dtypes are deprecated in torch
        quantized = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    with pytest.raises(TypeError, match=r"state\['q'\] .*quantized: True.*dequantize"):
        save_checkpoint(tmp_path / "c.safetensors", {"q": quantized})


def test_a_cycle_is_a_value_error(tmp_path: Path) -> None:
    loop: list[Any] = [1]
    loop.append({"back": loop})
    with pytest.raises(ValueError, match=r"state\[1\]\['back'\] contains itself"):
        save_checkpoint(tmp_path / "c.safetensors", loop)
    assert os.listdir(tmp_path) == []


def test_a_shared_but_acyclic_container_is_stored_twice(tmp_path: Path) -> None:
    shared = [1, 2]
    loaded = round_trip(tmp_path, {"a": shared, "b": shared})
    assert loaded == {"a": [1, 2], "b": [1, 2]}
    assert loaded["a"] is not loaded["b"]


# Loading bad files


def test_a_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    with pytest.raises(CheckpointError, match=r"absent\.safetensors: cannot read") as caught:
        load_checkpoint(path)
    assert caught.value.path == path
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_a_directory_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "only 0 bytes"),
        (b"\x10\x00\x00", "only 3 bytes"),
        (b"\xff" * 8 + b"{}", "the header should be .* truncated"),
        (b"\x04\x00\x00\x00\x00\x00\x00\x00{{{{", "not valid JSON"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "not an ewc checkpoint"),
        (b"PK\x03\x04 a zip file, e.g. from torch.save", "not valid JSON|header should be"),
        (pickle.dumps({"a": 1}), "not valid JSON|header should be|only"),
    ],
)
def test_files_that_are_not_checkpoints_are_checkpoint_errors(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"bad.safetensors: .*({message})"):
        load_checkpoint(path)


def test_a_plain_safetensors_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    safetensors_save_file({"w": torch.ones(2)}, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"not an ewc checkpoint: no 'ewc\.format'"):
        load_checkpoint(path)
    safetensors_save_file({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not an ewc checkpoint"):
        load_checkpoint(path)


def _forge(path: Path, description: str, tensors: dict[str, torch.Tensor], **metadata: str) -> None:
    """A file with a *valid* digest over a hand-written description (tests the decoder alone)."""
    fields = {
        "ewc.format": str(FORMAT_VERSION),
        "ewc.state": description,
        "ewc.sha256": ewc.experiment.storage.checkpoint._digest(description, tensors),
        **metadata,
    }
    path.write_bytes(safetensors_save(tensors, metadata=fields))


def test_another_format_version_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    _forge(path, "1", {}, **{"ewc.format": "2"})
    with pytest.raises(
        CheckpointError, match="checkpoint format '2'; this version of ewc reads format '1' only"
    ):
        load_checkpoint(path)


def test_missing_metadata_fields_are_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "partial.safetensors"
    path.write_bytes(safetensors_save({}, metadata={"ewc.format": "1", "ewc.state": "1"}))
    with pytest.raises(CheckpointError, match=r"lacks the strings 'ewc\.state' and 'ewc\.sha256'"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "description",
    [
        '{"set": [1]}',
        "[1, 2]",
        "{}",
        '{"list": 3}',
        '{"float": "1.5"}',
        '{"dict": [[1.5, 2]]}',
        '{"dict": [[true, 2]]}',
        '{"dict": [["a"]]}',
        '{"dict": [], "extra": 1}',
        '{"odict": [], "other": 1}',
        '{"tensor": "t9"}',
        '{"tensor": "t0", "dtype": "no_such_dtype", "shape": [2]}',
        '{"tensor": "t0", "dtype": "Tensor", "shape": [2]}',
        '{"tensor": "t0", "dtype": "float64", "shape": [3]}',
        '{"tensor": "t0", "dtype": "float64", "shape": [-2]}',
        '{"tensor": "t0", "dtype": "float64"}',
        '{"tensor": ["t0"]}',
        "not json",
    ],
)
def test_a_malformed_description_is_a_checkpoint_error(tmp_path: Path, description: str) -> None:
    path = tmp_path / "forged.safetensors"
    _forge(path, description, {"t0": torch.zeros(16, dtype=torch.uint8)})
    with pytest.raises(CheckpointError, match="the state description is malformed"):
        load_checkpoint(path)


def test_a_changed_tensor_byte_is_a_digest_error(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.zeros(100)})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c\.safetensors: the SHA-256 digest does not match"):
        load_checkpoint(path)


def test_a_non_ascii_digest_is_a_digest_error(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.zeros(3)})
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    digest = header["__metadata__"]["ewc.sha256"]
    damaged = data.replace(digest.encode(), ("\u0080" + digest[2:]).encode())  # same length
    assert len(damaged) == len(data)
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="digest does not match"):
        load_checkpoint(path)


# Corruption, explored by hypothesis: any damage is a CheckpointError or changes nothing.

_STATE = training_state()[2] | {"floats": [math.nan, -0.0, 2.5], "pair": (1, "two")}


class Saved:
    """A saved checkpoint's bytes, and where to write damaged copies."""

    def __init__(self, damaged: Path, data: bytes) -> None:
        self.damaged = damaged
        self.data = data

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"Saved({len(self.data)} bytes)"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    directory = tmp_path_factory.mktemp("corruption")
    save_checkpoint(directory / "good.safetensors", _STATE)
    return Saved(directory / "damaged.safetensors", (directory / "good.safetensors").read_bytes())


def _load_damaged(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as error:
        caught = error
    else:
        assert_same(loaded, _STATE)  # only harmless damage (e.g. a space turned into a tab) loads
        return
    assert caught.path == path
    assert str(caught).startswith(f"{path}: ")


_SETTINGS = settings(max_examples=300, deadline=None)
# Positions are drawn independently of the file's size and reduced modulo it, so that the
# strategies do not depend on a fixture.
_POSITIONS = st.integers(min_value=0, max_value=2**24)
_BITS = st.integers(min_value=0, max_value=7)


@_SETTINGS
@given(cut=_POSITIONS)
def test_any_truncation_is_detected(saved: Saved, cut: int) -> None:
    path, data = saved.damaged, saved.data
    path.write_bytes(data[: cut % len(data)])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@_SETTINGS
@given(position=_POSITIONS, bit=_BITS)
def test_any_bit_flip_is_detected_or_harmless(saved: Saved, position: int, bit: int) -> None:
    path, data = saved.damaged, saved.data
    damaged = bytearray(data)
    damaged[position % len(data)] ^= 1 << bit
    _load_damaged(path, bytes(damaged))


@_SETTINGS
@given(position=_POSITIONS, bit=_BITS)
def test_any_bit_flip_in_the_header_is_detected_or_harmless(
    saved: Saved, position: int, bit: int
) -> None:
    path, data = saved.damaged, saved.data
    header_end = 8 + int.from_bytes(data[:8], "little")
    damaged = bytearray(data)
    damaged[position % header_end] ^= 1 << bit
    _load_damaged(path, bytes(damaged))


@_SETTINGS
@given(start=_POSITIONS, junk=st.binary(min_size=1, max_size=64))
def test_any_overwritten_or_appended_bytes_are_detected_or_harmless(
    saved: Saved, start: int, junk: bytes
) -> None:
    path, data = saved.damaged, saved.data
    start %= len(data) + 1
    _load_damaged(path, data[:start] + junk + data[start + len(junk) :])


# Atomic writes


def _temporary_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_writes_fsync_the_file_then_rename_then_fsync_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append("fsync")
        real_fsync(descriptor)

    def replace(source: str | Path, target: str | Path) -> None:
        events.append("replace")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "c.safetensors", {"x": torch.ones(3)})
    assert events == ["fsync", "replace", "fsync"]
    assert os.listdir(tmp_path) == ["c.safetensors"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
@pytest.mark.parametrize("where", ["replace", "fsync", "write"])
def test_a_failed_write_leaves_no_temporary_file_and_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException, where: str
) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"version": 1, "w": torch.zeros(4)})

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise failure

    if where == "write":
        real_fdopen = os.fdopen

        class FailingFile:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.file = real_fdopen(*args, **kwargs)

            def __enter__(self) -> FailingFile:
                return self

            def __exit__(self, *exc: object) -> None:
                self.file.close()

            def write(self, data: bytes) -> None:
                self.file.write(data[: len(data) // 2])  # half the bytes reach the file
                raise failure

        monkeypatch.setattr(os, "fdopen", FailingFile)
    else:
        monkeypatch.setattr(os, where, fail)
    expected = CheckpointError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        save_checkpoint(path, {"version": 2, "w": torch.ones(4)})
    monkeypatch.undo()
    assert _temporary_files(tmp_path) == []
    assert os.listdir(tmp_path) == ["c.safetensors"]
    assert_same(load_checkpoint(path), {"version": 1, "w": torch.zeros(4)})


def test_a_write_into_a_missing_directory_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "c.safetensors"
    with pytest.raises(CheckpointError, match=r"c\.safetensors: could not write the checkpoint"):
        save_checkpoint(path, {"x": 1})


# The directory store


def test_the_store_keeps_the_newest_checkpoints(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    assert store.steps() == []
    assert store.load_latest() is None
    for step in (0, 10, 20, 30):
        written = store.save({"step": step, "w": torch.full((2,), float(step))}, step)
        assert written == store.path(step)
    assert store.steps() == [20, 30]
    assert sorted(os.listdir(store.directory)) == [store.path(20).name, store.path(30).name]
    step, state = store.load_latest()
    assert step == 30
    assert_same(state, {"step": 30, "w": torch.full((2,), 30.0)})


def test_the_store_with_keep_one_and_the_same_step_saved_twice(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    store.save({"v": 1}, 5)
    store.save({"v": 2}, 5)
    assert store.steps() == [5]
    assert store.load_latest() == (5, {"v": 2})
    store.save({"v": 3}, 6)
    assert store.steps() == [6]


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = b"\x00" * (len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


def test_load_latest_falls_back_when_the_newest_is_corrupted(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    for step in (1, 2, 3):
        store.save({"step": step, "w": torch.arange(500.0) * step}, step)
    _corrupt(store.path(3))
    bad = re.escape(store.path(3).name)
    with pytest.warns(CheckpointWarning, match=rf"{bad}: .*digest.*renamed to {bad}\.corrupt;"):
        step, state = store.load_latest()
    assert step == 2
    assert_same(state, {"step": 2, "w": torch.arange(500.0) * 2})
    set_aside = tmp_path / f"{store.path(3).name}.corrupt"
    assert set_aside.is_file()
    assert store.steps() == [1, 2]
    store.save({"step": 3}, 3)  # the resumed run saves step 3 again: the evidence survives
    assert set_aside.is_file()


def test_load_latest_falls_back_over_a_truncated_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"step": 1}, 1)
    store.save({"step": 2, "w": torch.ones(100)}, 2)
    data = store.path(2).read_bytes()
    store.path(2).write_bytes(data[: len(data) - 10])
    with pytest.warns(CheckpointWarning, match="truncated"):
        assert store.load_latest() == (1, {"step": 1})


def test_load_latest_with_only_corrupt_checkpoints_returns_none_and_keeps_them(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"w": torch.ones(40)}, 1)
    store.save({"w": torch.ones(40)}, 2)
    _corrupt(store.path(1))
    _corrupt(store.path(2))
    with pytest.warns(CheckpointWarning) as caught:
        assert store.load_latest() is None
    assert len(caught) == 2
    assert sorted(os.listdir(tmp_path)) == [
        store.path(1).name + ".corrupt",
        store.path(2).name + ".corrupt",
    ]


def test_a_second_corruption_of_the_same_step_gets_its_own_name(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for _ in range(2):
        store.save({"w": torch.ones(40)}, 4)
        _corrupt(store.path(4))
        with pytest.warns(CheckpointWarning):
            assert store.load_latest() is None
    name = store.path(4).name
    assert sorted(os.listdir(tmp_path)) == [f"{name}.corrupt", f"{name}.corrupt-2"]


def test_an_unreadable_checkpoint_is_skipped_and_left_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"step": 1}, 1)
    store.save({"step": 2}, 2)
    unreadable, read_bytes = store.path(2), Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self == unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.warns(CheckpointWarning, match="Permission denied.*left in place"):
        assert store.load_latest() == (1, {"step": 1})
    assert store.steps() == [1, 2]


def test_a_failed_save_deletes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"step": 1}, 1)
    store.save({"step": 2}, 2)

    def fail(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(CheckpointError, match="disk full"):
        store.save({"step": 3}, 3)
    monkeypatch.undo()
    assert store.steps() == [1, 2]
    assert _temporary_files(tmp_path) == []
    assert store.load_latest() == (2, {"step": 2})
    with pytest.raises(TypeError):
        store.save({"bad": {1, 2}}, 3)
    assert store.steps() == [1, 2]


def test_the_store_ignores_files_that_are_not_its_checkpoints(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    store.save({"step": 7}, 7)
    for name in (
        "step-1.safetensors",  # not the store's spelling of step 1
        "step-000000000009.safetensors.corrupt",
        ".step-000000000009.safetensors.0123abcd.tmp",
        "step-00000000000x.safetensors",
        "step-٠٠٠٠٠٠٠٠٠٠٠٩.safetensors",  # Arabic-Indic digits
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"junk")
    (tmp_path / "step-000000000008.safetensors").mkdir()
    assert store.steps() == [7]
    assert store.load_latest() == (7, {"step": 7})


def test_the_store_refuses_to_go_back_in_steps(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save({}, 10)
    with pytest.raises(ValueError, match=r"step 9 is older than the newest checkpoint .*10"):
        store.save({}, 9)


@pytest.mark.parametrize("keep", [0, -1, 1.5, True, "2", None])
def test_the_store_refuses_a_bad_keep(tmp_path: Path, keep: Any) -> None:
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        CheckpointStore(tmp_path, keep=keep)


@pytest.mark.parametrize("step", [-1, 2.0, True, "3", None])
def test_the_store_refuses_a_bad_step(tmp_path: Path, step: Any) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        store.save({}, step)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        store.path(step)
    assert not any(tmp_path.iterdir())


def test_checkpoint_error_names_the_file_and_the_reason() -> None:
    error = CheckpointError("dir/step-1.safetensors", "the SHA-256 digest does not match")
    assert str(error) == f"{Path('dir/step-1.safetensors')}: the SHA-256 digest does not match"
    assert error.path == Path("dir/step-1.safetensors")
    assert error.reason == "the SHA-256 digest does not match"
    assert isinstance(error, Exception)
    assert not isinstance(error, ValueError)
