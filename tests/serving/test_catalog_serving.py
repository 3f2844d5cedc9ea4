"""Catalogue updates on a running ``tfmmrec serve``: add / update / remove round trips over gRPC
and REST, with a concurrent load that must see zero failed requests while versions swap."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.serving.conftest import MODEL, install_version
from tfmmrec.export import catalog
from tfmmrec.serving.client import ServingClient, ServingRequestError
from tfmmrec.serving.registry import ServedModel
from tfmmrec.serving.server import ModelServer, ServerOptions

pytestmark = pytest.mark.slow


def wait_for_version(server: ModelServer, version: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while server.registry.available_versions(MODEL) != [version]:
        if time.monotonic() > deadline:
            pytest.fail(f"version {version} never became the only available one: "
                        f"{server.registry.available_versions(MODEL)}")
        time.sleep(0.05)


def ids(result) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else str(i) for i in result["item_ids"][0]]


def test_add_update_remove_round_trips_under_load(tiny_exports, tiny_demo_dir, tmp_path):
    base = tmp_path / MODEL
    install_version(tiny_exports.brute_force, base, 1)
    items = pd.read_csv(tiny_demo_dir / "items.csv", dtype=str, keep_default_na=False)
    options = ServerOptions(port=0, rest_port=0, num_threads=2, poll_seconds=0.2, warmup=True)
    user = tiny_exports.user_ids[0]
    failures: list[str] = []
    served = Counter()
    stop = threading.Event()

    def load(port: int, rest: bool) -> None:
        with ServingClient(f"127.0.0.1:{port}", MODEL, rest=rest, timeout=60) as client:
            while not stop.is_set():
                try:
                    client.predict("recommend", {"user_id": np.array([user]),
                                                 "k": np.int32(5)})
                    client.predict("recommend_session", {
                        "session_item_ids": np.array([["i0001", "i0002"]]),
                        "k": np.int32(5)})
                    served["ok"] += 1
                except ServingRequestError as error:
                    failures.append(str(error))

    with ModelServer([ServedModel(MODEL, base)], options) as server:
        clients = {"grpc": ServingClient(f"127.0.0.1:{server.port}", MODEL, timeout=60),
                   "rest": ServingClient(f"127.0.0.1:{server.rest_port}", MODEL, rest=True,
                                         timeout=60)}
        threads = [threading.Thread(target=load, args=(server.port, False)),
                   threading.Thread(target=load, args=(server.rest_port, True))]
        for thread in threads:
            thread.start()
        try:
            top = ids(clients["grpc"].recommend([user], k=1))[0]
            # add: a new id with the top item's content ranks beside it, on both protocols
            clone = items[items["item_id"] == top].assign(item_id="served-new")
            clone.to_csv(tiny_demo_dir / "served-new.csv", index=False)
            catalog.add(base, tiny_demo_dir / "served-new.csv")
            wait_for_version(server, 2)
            for name, client in clients.items():
                assert "served-new" in ids(client.recommend([user], k=2)), name
                excluded = client.predict("recommend", {
                    "user_id": np.array([user]), "k": np.int32(2),
                    "exclude_item_ids": np.array([["served-new"]])})
                assert "served-new" not in ids(excluded), name
            # update: the new item takes another item's content and leaves the top two
            other = items[items["item_id"] != top].iloc[[0]].assign(item_id="served-new")
            other.to_csv(tiny_demo_dir / "served-update.csv", index=False)
            catalog.update(base, tiny_demo_dir / "served-update.csv")
            wait_for_version(server, 3)
            for name, client in clients.items():
                embedding = client.predict("embed_items", {"item_id": np.array(
                    ["served-new", str(other["item_id"].iloc[0])])})
                assert embedding["found"].all(), name
            # remove: the top item and the new one are never returned again
            catalog.remove(base, item_ids=[top, "served-new"])
            wait_for_version(server, 4)
            for name, client in clients.items():
                returned = ids(client.recommend([user], k=tiny_exports.max_k))
                returned += ids(client.predict("recommend_session", {
                    "session_item_ids": np.array([[top]]), "k": np.int32(tiny_exports.max_k)}))
                assert not {top, "served-new"} & set(returned), name
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            for client in clients.values():
                client.close()
    assert failures == []
    assert served["ok"] > 0


def test_catalog_update_leaves_a_hidden_directory_only_while_writing(tiny_exports, tmp_path):
    """Nothing but integer versions (and no ``.tmp-*``) remains after an update."""
    base = tmp_path / MODEL
    install_version(tiny_exports.brute_force, base, 1)
    catalog.remove(base, item_ids=["i0000"])
    assert sorted(p.name for p in Path(base).iterdir()) == ["1", "2"]
