"""The text modality's request checks read text as training does: what ``str.strip`` (applied
to every catalogue text) empties is refused as whitespace, and bytes that are not UTF-8 (which
training never sees: tables are decoded) are refused rather than tokenised as no word."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfmmrec import modalities
from tfmmrec.config import ServingLimitsConfig
from tfmmrec.modalities.text import WHITESPACE_ONLY

SPEC = modalities.get("text")


def decode(texts: list[bytes]) -> np.ndarray:
    return SPEC.decode_request(tf.constant(texts), modalities.resolve_settings({}),
                               ServingLimitsConfig()).numpy()


def test_the_whitespace_pattern_is_pythons_whitespace():
    """RE2's ``\\s`` is ASCII's five: NBSP, U+3000 or a vertical tab passed ``\\s+``."""
    chars = [chr(c) for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    matched = tf.strings.regex_full_match([c.encode() for c in chars], WHITESPACE_ONLY).numpy()
    assert [c for c, m in zip(chars, matched, strict=True) if m != c.isspace()] == []


@pytest.mark.parametrize("text", ["\u00a0", "\u3000\u2003", "\x0b", " \x85\t", "\u2028"],
                         ids=["nbsp", "ideographic_em", "vertical_tab", "next_line", "line_sep"])
def test_unicode_whitespace_is_refused(text):
    assert text.strip() == ""  # what training reads as no text
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="text: a string in the batch is only whitespace"):
        decode([b"a film", text.encode()])


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"\x80\x80\x80", b"caf\xe9", b"ok \xc3"],
                         ids=["bom_bytes", "continuations", "latin1", "truncated"])
def test_bytes_that_are_not_utf8_are_refused(raw):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="text: a string in the batch is not valid UTF-8"):
        decode([raw])


def test_real_text_passes_unchanged():
    texts = ["a calm garden at dusk", "café \u00e9t\u00e9 \u3000 東京", "\ufffd replacement"]
    assert decode([t.encode() for t in texts]).tolist() == [t.encode() for t in texts]
