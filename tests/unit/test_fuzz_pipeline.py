"""A short run of the whole-path fuzzer (bench/fuzz.py runs a million messages and more)."""

from fuzzing import Fuzzer


def test_mutated_messages_through_every_stage_and_renderer() -> None:
    """20,000 mutated recorded messages: nothing raises or logs an error in decode, mirror,
    tunnel model, rules or any renderer, and every broken framing is a malformed event."""
    res = Fuzzer(seed=8).run(20_000)
    assert [] == res.failures
    assert 20_000 == res.messages
    assert res.malformed > 1000, "the mutations are meant to break many messages"
    assert res.events > res.malformed, "and to leave many decodable"
    assert set(res.by_kind) == {
        "truncate", "bad_length", "retype", "attr_length", "attr_type", "attr_payload",
        "nested", "drop_or_duplicate", "flip", "splice",
    }  # fmt: skip
