"""The public API: every name in ``tfmmrec.__all__`` resolves, and stays callable after the
subpackages behind it have been imported (a function must not be shadowed by a submodule)."""

from __future__ import annotations

import importlib

import tfmmrec


def test_every_public_name_resolves():
    for name in tfmmrec.__all__:
        assert getattr(tfmmrec, name) is not None, name


def test_export_model_is_not_shadowed_by_the_export_subpackage():
    importlib.import_module("tfmmrec.export.index")  # sets tfmmrec.export to the subpackage
    assert callable(tfmmrec.export_model)
    assert callable(tfmmrec.train) and callable(tfmmrec.evaluate)
