"""Shared fixtures for the onnxruntime integration tests: models generated with onnx.helper.

onnxruntime is imported here, at collection, so the constructor hook (installed
by the first snapshot of the process) finds its classes.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ort = pytest.importorskip("onnxruntime", reason="the onnxruntime extra is not installed")
np = pytest.importorskip("numpy")
onnx = pytest.importorskip("onnx", reason="onnx (used to generate test models) is not installed")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nativeguard.integrations import onnxruntime as ngo  # noqa: E402

MB = 1 << 20


def matmul_model(rows: int = 16, cols: int = 8, *, seed: int = 0) -> bytes:
    """``y = x @ w`` with ``w`` a float32 initializer of rows x cols (16 MiB: 1024 x 4096)."""
    weights = np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture(scope="session")
def small_model() -> bytes:
    return matmul_model()


@pytest.fixture(scope="session")
def big_model() -> bytes:
    """16 MiB of initializer: only where memory is measured."""
    return matmul_model(1024, 4096)


@pytest.fixture
def model_file(tmp_path: Path, small_model: bytes) -> Path:
    path = tmp_path / "small.onnx"
    path.write_bytes(small_model)
    return path


@pytest.fixture
def feeds() -> Callable[..., dict[str, object]]:
    def make(batch: int = 2, rows: int = 16) -> dict[str, object]:
        return {"x": np.ones((batch, rows), np.float32)}

    return make


@pytest.fixture
def no_sessions() -> Iterator[None]:
    """The test starts and must end with no native session alive."""
    assert ngo.live_sessions() == 0
    yield
    assert ngo.live_sessions() == 0


@pytest.fixture(scope="module", autouse=True)
def _collect_what_the_module_left_in_cycles() -> Iterator[None]:
    """Some tests leave objects in reference cycles on purpose (the naive pattern);
    collected at the end of the module, so other subsystems' tests do not count them."""
    yield
    gc.collect()
