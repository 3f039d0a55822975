"""Whether a stage may be skipped: the versions its last run left, against the versions now (no Spark)."""

from __future__ import annotations

from realsyn.contracts import BRONZE_TEXTS, SILVER_SENTENCE_REJECTS, SILVER_SENTENCES
from realsyn.runs import LastRun, Stage, last_written, unchanged_since

EXTRACT = Stage("extract", (), print, reads=(BRONZE_TEXTS,), writes=(SILVER_SENTENCES, SILVER_SENTENCE_REJECTS))
DEDUP = Stage("dedup", ("extract",), print, reads=(SILVER_SENTENCES,), writes=(SILVER_SENTENCES,))


def _last(versions: dict[str, int], config: str = "c1", code: str = "v1") -> LastRun:
    return LastRun("r1", config, code, versions, {})


def test_the_later_stage_that_writes_a_table_sets_the_version_it_was_left_at() -> None:
    last = {
        "extract": _last({"bronze.texts": 3, "silver.sentences": 7, "silver.sentence_rejects": 2}),
        "dedup": _last({"silver.sentences": 8}),
    }
    assert last_written(last, [EXTRACT, DEDUP]) == {"silver.sentences": 8, "silver.sentence_rejects": 2}


def test_a_stage_is_skipped_only_when_its_inputs_outputs_config_and_code_are_as_it_left_them() -> None:
    last = _last({"bronze.texts": 3, "silver.sentences": 7, "silver.sentence_rejects": 2})
    written = {"silver.sentences": 8, "silver.sentence_rejects": 2}  # a later stage rewrote silver.sentences
    now = {"bronze.texts": 3, "silver.sentences": 8, "silver.sentence_rejects": 2}
    assert unchanged_since(EXTRACT, last, written, now, "c1", "v1")
    assert not unchanged_since(EXTRACT, last, written, {**now, "bronze.texts": 4}, "c1", "v1")  # new input
    assert not unchanged_since(EXTRACT, last, written, {**now, "silver.sentences": 9}, "c1", "v1")  # written since
    assert not unchanged_since(EXTRACT, last, written, now, "c2", "v1")  # another config
    assert not unchanged_since(EXTRACT, last, written, now, "c1", "v2")  # other code
    assert not unchanged_since(EXTRACT, None, written, now, "c1", "v1")  # never ran
