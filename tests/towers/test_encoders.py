"""tfmmrec.towers.encoders: a tower's missing local weights are named before any work."""

from __future__ import annotations

import pytest

from tfmmrec import cli
from tfmmrec.config import load_config
from tfmmrec.errors import ConfigError
from tfmmrec.towers.encoders import build_encoder, check_local_weights


@pytest.mark.parametrize(("overrides", "field"), [
    (["text.preset=/nonexistent/minilm"], "text.preset='/nonexistent/minilm'"),
    (["image.backbone=hub", "image.handle=./no/efficientnet"], "image.handle='./no/efficientnet'"),
    (["audio.backbone=yamnet", "audio.handle=~/no-yamnet"], "audio.handle='~/no-yamnet'"),
], ids=["text_preset", "image_handle", "audio_handle"])
def test_a_missing_local_weights_path_is_named(overrides, field):
    config = load_config(None, overrides)
    with pytest.raises(ConfigError) as error:
        check_local_weights(config, ["text", "image", "audio"])
    assert str(error.value) == (f"{field}: no such file or directory (a local preset or "
                                "SavedModel directory must exist; a name or URL is downloaded "
                                "instead)")


def test_names_urls_and_unused_handles_are_not_checked():
    config = load_config(None, ["text.preset=bert_tiny_en_uncased",
                                "image.handle=/nonexistent/unused"])  # small_cnn: unused
    check_local_weights(config, ["text", "image", "audio"])  # audio: the default URL


def test_keras_nlps_preset_help_is_cut_to_one_line():
    """KerasNLP's message for a preset it does not know ran to 8 lines of preset help."""
    from tfmmrec.config import TextTowerConfig

    with pytest.raises(ConfigError) as error:
        build_encoder("text", TextTowerConfig(preset="no_such_preset_name"))
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("cannot load KerasNLP BERT preset text.preset="
                                       "'no_such_preset_name': Unknown preset identifier")


def test_validate_names_missing_weights_before_reading_media(tiny_config, capsys):
    assert cli.main(["validate", "--set", f"data.path={tiny_config.data.path}",
                     "--set", "text.preset=/nonexistent/minilm"]) == 2
    assert "text.preset='/nonexistent/minilm': no such file or directory" in \
        capsys.readouterr().err
