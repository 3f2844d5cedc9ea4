"""Users the vocabulary holds without a training interaction (here: a given split's test-only
users) are scored with the unknown user's id row: they were scored from their own id rows,
random and never trained, unlike any unknown user (and unlike what the README promises)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd

from tests.conftest import derive_config
from tfmmrec import pipeline


def test_test_only_users_are_embedded_as_unknown_users(tiny_config, tiny_demo_dir, tmp_path,
                                                        caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_demo_dir, data)
    interactions = pd.read_csv(data / "interactions.csv", dtype={"user_id": str})
    users = sorted(interactions["user_id"].unique())
    test_only = users[:2]
    rng = np.random.default_rng(0)
    interactions["split"] = np.where(rng.random(len(interactions)) < 0.2, "test", "train")
    interactions.loc[interactions["user_id"].isin(test_only), "split"] = "test"
    interactions.to_csv(data / "interactions.csv", index=False)
    config = derive_config(tiny_config, tmp_path, f"data.path={data}", "data.split=given",
                           "train.epochs=1", "model.user_features=false")
    result = pipeline.train(config, progress=False)
    assert set(test_only) <= set(result.workspace.user_ids)  # in the vocabulary
    for model in (result.model, pipeline.restore(config.train.output_dir)[0]):
        queries = pipeline.embed_users(model, [*test_only, "nobody", users[2]])
        np.testing.assert_array_equal(queries[0], queries[2])
        np.testing.assert_array_equal(queries[1], queries[2])
        assert not np.allclose(queries[3], queries[2])  # a trained user keeps its own
    run_file = tmp_path / "run" / "run.json"
    assert json.loads(run_file.read_text())["untrained_users"] == 2
    with caplog.at_level("WARNING", logger="tfmmrec"):
        pipeline.restore(config.train.output_dir)
    assert "trained before users" not in caplog.text
    record = json.loads(run_file.read_text())
    del record["untrained_users"]  # a run trained before the rule
    run_file.write_text(json.dumps(record))
    with caplog.at_level("WARNING", logger="tfmmrec"):
        pipeline.restore(config.train.output_dir)
    assert (f"was trained before users without a training interaction were scored as unknown "
            f"users: its 2 such user(s) (e.g. {test_only[0]!r}) now get") in caplog.text
