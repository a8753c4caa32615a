"""The OpenVINO peer converts the tower it is given and times it: bf16 always (the package is a test
dependency), int8 weights where nncf is installed."""

from __future__ import annotations

import pytest

from omnivision.bench.workload import Workload
from omnivision.config import preset

openvino_peer = pytest.importorskip("omnivision.bench.openvino_peer")
pytest.importorskip("openvino")
pytest.importorskip("transformers")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_the_tower_is_converted_compiled_and_timed(precision) -> None:
    if precision == "int8":
        pytest.importorskip("nncf")
    row = openvino_peer.measure(preset("tiny"), precision, Workload(runs=1, threads=1))
    assert row["vision_ms"] > 0 and row["peak_rss_mb"] > 0
    # what OpenVINO computes in on this CPU: bf16 where it has native bf16, else fp32
    assert row["inference_precision"] in ("bf16", "f32")


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="OpenVINO precision"):
        openvino_peer.measure(preset("tiny"), "int4", Workload(runs=1))
