"""Texts in the release's writing: the examples are texts printed by the release's own check notebook
(deepglint/RealSyn, Check_RealSyn_data_Webdataset.ipynb), written back in ordinary case and spacing."""

from __future__ import annotations

import pandas as pd
import pytest

from udfs.release_text import realistic, realistic_series, synthetic


@pytest.mark.parametrize(
    ("plain", "released"),
    [
        (
            "There is also a figure of James the Apostle, a work created by the Villinger master, Metzger.",
            "there is also a figure of james the apostle , a work created by the villinger master , metzger .",
        ),
        (
            "While Epcot Center attractions such as Horizons, World of Motion, and CommuniCore have been lost over "
            "the years, there are references to them throughout the parks.",
            "while epcot center attractions such as horizons , world of motion , and communicore have been lost over "
            "the years , there are references to them throughout the parks .",
        ),
        (
            "It's the coolest \"edu-tainment\" theme park you'll ever find (good-bye World of Motion).",
            "it 's the coolest \" edu - tainment \" theme park you 'll ever find ( good - bye world of motion ) .",
        ),
        ("Nowadays, we call it outsider art.", "nowadays , we call it outsider art ."),
        ("  Two  spaces\tand a tab. ", "two spaces and a tab ."),
    ],
)
def test_realistic_texts_are_lower_cased_and_word_tokenised(plain: str, released: str) -> None:
    assert realistic(plain) == released


def test_synthetic_texts_are_lower_cased_only() -> None:
    text = 'Although the name has changed to Epcot, it still remains the coolest "edu-tainment" theme park.'
    assert synthetic(text) == text.lower()
    assert synthetic(None) is None


def test_a_batch_keeps_its_index_and_its_nulls() -> None:
    batch = pd.Series(["A cat's toy.", None], index=[7, 9])
    got = realistic_series(batch)
    assert list(got.index) == [7, 9] and got[7] == "a cat 's toy ." and got[9] is None
