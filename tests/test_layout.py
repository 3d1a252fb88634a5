"""Keys are built and parsed back in one module: every key it builds parses back to
what it was built from, and a key it never builds parses to nothing."""

from __future__ import annotations

import logging

import pytest

from s3queue.core import layout
from s3queue.core.layout import SegmentRef

REFS = [
    SegmentRef.log(0),
    SegmentRef.log(42),
    SegmentRef.high(7),
    SegmentRef.timer(1_732_480_020, 0),
    SegmentRef.timer(1_732_480_020, 999_999),
]


@pytest.mark.parametrize("ref", REFS, ids=str)
def test_a_segment_key_parses_back_to_its_shard_and_segment(ref: SegmentRef) -> None:
    key = ref.key("emails", 3)
    assert layout.segment_of("emails", key) == (3, ref)
    assert layout.parse_segment_key("emails", 3, key) == ref
    assert key.startswith(layout.lane_prefix("emails", 3, ref.bucket))


@pytest.mark.parametrize(
    "key",
    [
        "emails/shards/0003/log/notes.txt",
        "emails/shards/0003/log/00000000042",  # too short
        "emails/shards/0003/log/000000000042\n",
        "emails/shards/0003/log/00000000004\u0662",  # a digit of another script
        "emails/shards/0003/timers/readme",
        "emails/shards/0003/timers/0001732480020/000007/x",
        "emails/shards/0003/cursor",
        "other/shards/0003/log/000000000042",
    ],
)
def test_a_key_s3queue_never_writes_is_no_segment(key: str) -> None:
    assert layout.segment_of("emails", key) is None
    assert layout.classify("emails", key) in (None, "cursor")


def test_a_foreign_key_in_a_listing_is_skipped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "emails/shards/0003/log/notes-for-the-parser.txt"
    layout._warned.discard(key)
    with caplog.at_level(logging.WARNING, "s3queue.layout"):
        assert layout.parse_segment_key("emails", 3, key) is None
        assert layout.parse_segment_key("emails", 3, key) is None
    assert caplog.text.count("notes-for-the-parser.txt") == 1


def test_a_segment_of_another_shard_is_not_taken_for_this_one() -> None:
    key = SegmentRef.log(1).key("emails", 2)
    assert layout.parse_segment_key("emails", 3, key) is None


def test_the_shard_of_any_key_under_shards() -> None:
    assert layout.shard_of("emails", layout.cursor_key("emails", 12)) == 12
    assert layout.shard_of("emails", SegmentRef.high(1).key("emails", 5)) == 5
    assert layout.shard_of("emails", "emails/shards/readme") is None
    assert layout.shard_of("emails", layout.settings_key("emails")) is None


def test_the_queue_of_a_key() -> None:
    assert layout.queue_of(layout.dead_key("emails", "3-L42-7")) == "emails"
    assert layout.queue_of("stray-file") is None


def test_a_dead_letter_key_gives_its_message_id() -> None:
    key = layout.dead_key("emails", "3-T1732480020.5-7")
    assert layout.dead_letter_id("emails", key) == "3-T1732480020.5-7"


def test_copies_kept_under_quarantine_are_told_from_records() -> None:
    ref = SegmentRef.log(42)
    copy = layout.quarantine_copy_key("emails", 3, ref)
    assert layout.is_quarantine_copy(copy)
    assert not layout.is_quarantine_copy(layout.quarantine_key("emails", 3, ref))
    assert layout.is_quarantine_copy(layout.quarantined_cursor_key("emails", 3))
    assert layout.is_quarantine_copy(layout.quarantined_settings_key("emails"))
    assert layout.classify("emails", copy) == "quarantine"


def test_blob_keys_are_classified_and_parsed() -> None:
    payload = layout.payload_blob_key("emails")
    result = layout.result_blob_key("emails", "3-L42-7")
    assert payload.startswith("emails/blobs/p-")
    assert len(payload.removeprefix("emails/blobs/p-")) == 32
    assert result.startswith("emails/blobs/r-3-L42-7-")
    assert layout.classify("emails", payload) == "blob"
    assert layout.classify("emails", result) == "blob"
    assert layout.blob_of("emails", payload) == ("payload", None)
    assert layout.blob_of("emails", result) == ("result", "3-L42-7")
    timer = "emails/blobs/r-0-T1732480020.3-12-0123456789abcdef"
    assert layout.blob_of("emails", timer) == ("result", "0-T1732480020.3-12")
    # Two keys made for the same thing never collide.
    assert layout.payload_blob_key("emails") != payload
    assert layout.result_blob_key("emails", "3-L42-7") != result


@pytest.mark.parametrize(
    "key",
    [
        "emails/blobs/p-" + "0" * 31,
        "emails/blobs/p-" + "A" * 32,
        "emails/blobs/p-" + "0" * 32 + ".data",
        "emails/blobs/r-3-L42-7",
        "emails/blobs/r-3-L42-" + "0" * 16,
        "emails/blobs/r-3-X42-7-" + "0" * 16,
        "emails/blobs/x-" + "0" * 32,
        "other/blobs/p-" + "0" * 32,
        "emails/results/3-L42-7",
        "emails/blobs/p-" + "٣" * 32,
    ],
)
def test_other_keys_are_not_blobs(key: str) -> None:
    assert layout.blob_of("emails", key) is None
    assert layout.classify("emails", key) != "blob"
