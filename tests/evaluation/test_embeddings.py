"""tfmmrec.evaluation.embeddings: the catalogue's embeddings in batches, asked for sensibly."""

from __future__ import annotations

import numpy as np
import pytest

from tfmmrec.evaluation.embeddings import embed_items


@pytest.mark.parametrize("count", [0, -1, 81, 2.0, True, "80"], ids=repr)
def test_a_count_outside_the_catalogue_is_named(tiny_trained, count):
    """0 failed in a ConcatV2 kernel, more than the catalogue in a gather deep in TF."""
    size = tiny_trained.workspace.dataset.num_items
    assert size == 80
    with pytest.raises(ValueError, match=rf"^num_items must be an integer from 1 to the "
                                         rf"model's catalogue size \({size}\), got "):
        embed_items(tiny_trained.model, count)


def test_the_first_items_embed_as_in_the_whole_catalogue(tiny_trained):
    model = tiny_trained.model
    every = embed_items(model, 80, batch_size=32)
    np.testing.assert_allclose(embed_items(model, np.int64(5)), every[:5], atol=1e-6)
