"""Version discovery, policies, hot swap and unloading in the registry (fake loader, no TF)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tfmmrec.errors import ServingError
from tfmmrec.serving.registry import (
    ModelRegistry,
    ServedModel,
    State,
    VersionPolicy,
    format_model_config,
    list_versions,
    read_model_config,
)
from tfmmrec.serving.status import RequestStatus

REPO = Path(__file__).resolve().parents[2]


class FakeServable:
    """Stands in for a loaded SavedModel; counts in-flight requests like the real one."""

    def __init__(self, name: str, version: int, path: Path):
        self.name, self.version, self.path = name, version, path
        self.released = False
        self._inflight = 0
        self._idle = threading.Condition()

    def enter(self):
        with self._idle:
            self._inflight += 1

    def exit(self):
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout):
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def release(self):
        self.released = True


def fake_loader(broken: set[int] = frozenset()):
    def load(name, version, path):
        if version in broken:
            raise ValueError(f"cannot load {path}")
        return FakeServable(name, version, path)
    return load


def make_versions(base: Path, *versions: int) -> None:
    for version in versions:
        (base / str(version)).mkdir(parents=True)


def registry_for(base: Path, policy: VersionPolicy | None = None, **kwargs) -> ModelRegistry:
    return ModelRegistry([ServedModel("m", base, policy or VersionPolicy())], poll_seconds=0,
                         loader=kwargs.pop("loader", fake_loader()), **kwargs)


def test_only_integer_directories_are_versions(tmp_path):
    make_versions(tmp_path, 1, 10, 2)
    (tmp_path / ".tmp-3-123-456").mkdir()
    (tmp_path / "4.bak").mkdir()
    (tmp_path / "5").write_text("a file, not a version")
    assert list_versions(tmp_path) == [1, 2, 10]
    assert list_versions(tmp_path / "missing") == []


@pytest.mark.parametrize(("text", "on_disk", "expected"), [
    ("latest", [1, 2, 3], {3}),
    ("latest:2", [1, 2, 3], {2, 3}),
    ("all", [1, 2, 3], {1, 2, 3}),
    ("specific:1,3", [1, 2, 3], {1, 3}),
    ("specific:7", [1, 2], set()),
])
def test_version_policy_selects_like_tf_serving(text, on_disk, expected):
    assert VersionPolicy.parse(text).select(on_disk) == expected


@pytest.mark.parametrize("text", ["newest", "latest:0", "specific", "all:3", "latest:x"])
def test_bad_version_policy_is_rejected_with_the_fix(text):
    with pytest.raises(ServingError, match="--version-policy"):
        VersionPolicy.parse(text)


def test_model_config_round_trips(tmp_path):
    models = [ServedModel("a", tmp_path / "a", VersionPolicy("latest", 2)),
              ServedModel("b", tmp_path / "b", VersionPolicy("specific", versions=(1, 4))),
              ServedModel("c", tmp_path / "c", VersionPolicy("all"))]
    path = tmp_path / "models.config"
    path.write_text(format_model_config(models))
    assert read_model_config(path) == models


def test_repository_models_config_parses():
    models = read_model_config(REPO / "serving" / "models.config")
    assert [m.name for m in models] == ["tfmmrec"]
    assert str(models[0].base_path) == "/models/tfmmrec"


def test_invalid_model_config_says_where(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("model_config_list { config { name: 'x' base_path: }")
    with pytest.raises(ServingError, match="ModelServerConfig text proto"):
        read_model_config(path)


def test_newest_version_is_served_and_older_ones_on_request(tmp_path):
    make_versions(tmp_path, 1, 2)
    registry = registry_for(tmp_path, VersionPolicy("all"))
    registry.start()
    with registry.handle("m") as servable:
        assert servable.version == 2
    with registry.handle("m", 1) as servable:
        assert servable.version == 1
    with pytest.raises(RequestStatus, match=r"Servable not found for request: Specific\(m, 3\)"):
        registry.handle("m", 3).__enter__()
    with pytest.raises(RequestStatus, match=r"Servable not found for request: Latest\(x\)"):
        registry.handle("x").__enter__()


def test_new_version_replaces_old_after_its_requests_finish(tmp_path):
    make_versions(tmp_path, 1)
    registry = registry_for(tmp_path)
    registry.start()
    held = registry.handle("m")
    old = held.__enter__()
    make_versions(tmp_path, 2)
    unloader = threading.Thread(target=registry.poll_once)
    unloader.start()
    # New requests go to version 2 while version 1 still finishes its request.
    deadline = time.monotonic() + 10
    while registry.available_versions("m") != [2]:
        assert time.monotonic() < deadline, "version 2 was never swapped in"
        unloader.join(0.01)
    with registry.handle("m") as servable:
        assert servable.version == 2
    assert not old.released
    assert dict(registry.status("m"))[1].state == State.UNLOADING
    held.__exit__(None, None, None)
    unloader.join(timeout=10)
    assert old.released
    assert [(v, r.state) for v, r in registry.status("m")] == [(1, State.END),
                                                               (2, State.AVAILABLE)]


def test_broken_new_version_keeps_the_old_one_serving(tmp_path):
    make_versions(tmp_path, 1, 2)
    registry = registry_for(tmp_path, loader=fake_loader(broken={2}), retry_seconds=0)
    registry.start()
    registry.poll_once()
    registry.poll_once()
    assert registry.available_versions("m") == [1]
    status = dict(registry.status("m"))
    assert status[2].state == State.END and status[2].failures == 3
    assert "cannot load" in status[2].error_message and status[2].error_code == "UNKNOWN"


def test_incomplete_version_is_retried_with_back_off_until_it_loads(tmp_path):
    """A version copied in non-atomically fails while incomplete and is served once complete,
    however many attempts that takes (no permanent give-up); retries back off exponentially."""
    make_versions(tmp_path, 1)
    broken = {1}
    attempts = []

    def loader(name, version, path):
        attempts.append(version)
        if version in broken:
            raise ValueError(f"{path}/saved_model.pb is incomplete")
        return fake_loader()(name, version, path)

    registry = registry_for(tmp_path, loader=loader, retry_seconds=0.05, max_retry_seconds=0.2)
    registry.start()
    for _ in range(6):  # more attempts than any fixed limit used to allow
        record = dict(registry.status("m"))[1]
        time.sleep(max(0.0, record.retry_at - time.monotonic()) + 0.01)
        registry.poll_once()
    assert registry.available_versions("m") == []
    assert dict(registry.status("m"))[1].failures == 7
    registry.poll_once()  # inside the back-off window: no new attempt
    assert len(attempts) == 7
    broken.clear()
    time.sleep(0.25)
    registry.poll_once()
    assert registry.available_versions("m") == [1]
    assert dict(registry.status("m"))[1].state == State.AVAILABLE


def test_deleted_version_is_unloaded(tmp_path):
    make_versions(tmp_path, 1, 2)
    registry = registry_for(tmp_path, VersionPolicy("all"))
    registry.start()
    (tmp_path / "2").rmdir()
    registry.poll_once()
    assert registry.available_versions("m") == [1]


def test_status_not_found_texts_match_tf_serving(tmp_path):
    registry = registry_for(tmp_path)
    registry.start()
    with pytest.raises(RequestStatus, match="Could not find any versions of model m"):
        registry.status("m")
    make_versions(tmp_path, 1)
    registry.poll_once()
    with pytest.raises(RequestStatus, match="Could not find version 5 of model m"):
        registry.status("m", 5)


def test_poller_thread_picks_up_new_versions(tmp_path):
    make_versions(tmp_path, 1)
    registry = ModelRegistry([ServedModel("m", tmp_path)], poll_seconds=0.05,
                             loader=fake_loader())
    registry.start()
    try:
        make_versions(tmp_path, 2)
        done = threading.Event()
        for _ in range(400):
            if registry.available_versions("m") == [2]:
                done.set()
                break
            done.wait(0.025)
        assert done.is_set(), registry.available_versions("m")
    finally:
        registry.stop()
