"""The per-type caches on the release path stay bounded and let classes go.

Every release asks each integration whether it knows the object's type, and
the answers are cached by type (gRPC's kinds, onnxruntime's wrappers, the
async-close probe). A program that makes classes at run time (a class per
request, say) must not grow those caches, or keep its classes alive, for good:
a leak in the library meant to stop leaks.
"""

from __future__ import annotations

import gc
import weakref

import pytest

import nativeguard
from nativeguard._core import _adapters

grpc_kinds = pytest.importorskip("nativeguard.integrations.grpc._kinds")
ort_sdk = pytest.importorskip("nativeguard.integrations.onnxruntime._sdk")
pytest.importorskip("grpc")


def test_classes_made_at_run_time_do_not_grow_the_caches_for_good():
    import grpc  # noqa: F401 - the gRPC predicates answer only once grpc is loaded

    limit = _adapters._CACHE_LIMIT
    assert limit == grpc_kinds._CACHE_LIMIT
    assert limit == ort_sdk._CACHE_LIMIT
    first: weakref.ref[type] | None = None
    for index in range(limit + 50):
        cls = type(f"Made{index}", (), {})
        if first is None:
            first = weakref.ref(cls)
        with nativeguard.managed(cls(), release="inline"):
            pass
        ort_sdk.kind(cls)
        del cls
    assert len(_adapters._async_close_by_type) <= limit
    assert len(grpc_kinds._by_type) <= limit
    assert len(ort_sdk._kinds) <= limit
    gc.collect()
    assert first is not None
    assert first() is None  # the first class is not kept by any cache
