"""The container tests' one shared fixture: the images, made once (podman caches
them). Run by `make test-containers`, never by plain `pytest` (whose default path
is tests/)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import engine
import pytest


@pytest.fixture(scope="session")
def images() -> Iterator[dict[str, str]]:
    """The four function images, built from infra/container/Dockerfile on base
    images that are present, pulled or made locally. At the end, nothing the tests
    started is left (images aside)."""
    engine.cleanup()  # what a run killed earlier may have left
    started = time.monotonic()
    engine.ensure_base_images()
    engine.build_function_images()
    engine.log(f"images ready in {time.monotonic() - started:.0f} s")
    yield {name: engine.image(name) for name in engine.FUNCTIONS}
    left = engine.cleanup()
    assert not any(left.values()), f"the tests left {left}"
