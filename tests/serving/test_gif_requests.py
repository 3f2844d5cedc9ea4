"""GIFs against the running server: a bomb of many full frames decodes its first frame in
bounded memory; a frame larger than its header says, or a block chain too fragmented to walk,
is INVALID_ARGUMENT. (The graph-level cases are in tests/export/test_limits.py.)"""

from __future__ import annotations

import pytest

from tests.data.test_media_limits import animated_gif, fragmented_gif, gif_with_screen
from tests.serving.conftest import MODEL
from tests.serving.test_bad_requests import grpc_predict
from tests.serving.test_hostile import (
    LIMITS,
    RSS_BOUND_MIB,
    K,
    assert_refused_in_bounded_memory,
    rss_mib,
    strings,
)
from tfmmrec.data.media import GIF_MAX_STEPS
from tfmmrec.export.warmup import predict_request


@pytest.mark.usefixtures("still_serving")
def test_a_gif_bomb_is_answered_from_its_first_frame_with_bounded_memory(server):
    bomb = animated_gif(120, 1024)  # ~150 KB; decoding all 120 frames took over 120 MB
    request = predict_request(MODEL, "query_image", {"image": strings(bomb), "k": K})
    before = rss_mib()
    response = grpc_predict(server, request)
    growth = rss_mib() - before
    assert [d.size for d in response.outputs["item_ids"].tensor_shape.dim] == [1, K]
    assert growth < RSS_BOUND_MIB, f"RSS grew {growth:.0f} MiB"


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(("make", "fragment"), [
    # 196 KB; decoding its 25 M pixels took 75 MB as uint8 (and 4x that as float32).
    (lambda: gif_with_screen(frame=5000, screen=16),
     f"max_image_pixels={LIMITS.max_image_pixels}, the first GIF frame declares"),
    (lambda: fragmented_gif(GIF_MAX_STEPS), "GIF too fragmented"),
], ids=["frame-over-the-limit-behind-a-small-header", "fragmented"])
def test_a_hostile_gif_is_invalid_argument_with_bounded_memory(server, make, fragment):
    request = predict_request(MODEL, "query_image", {"image": strings(make()), "k": K})
    assert_refused_in_bounded_memory(server, request, fragment)
