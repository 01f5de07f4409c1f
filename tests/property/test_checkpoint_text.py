"""The checkpoint file: every checkpoint survives its text, and no damaged text passes for one."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmledger.eventstore.catalogue import MAX_POSITION
from vmledger.eventstore.errors import InvalidRequestError
from vmledger import Checkpoint

SETTINGS = settings(database=None, deadline=None, max_examples=100)
_hex = st.text("0123456789abcdef", min_size=64, max_size=64)
checkpoints = st.builds(Checkpoint, position=st.integers(0, MAX_POSITION), hash=_hex,
                        domains=st.dictionaries(st.text(min_size=1, max_size=40), _hex, max_size=20),
                        rules=st.none() | st.integers(1, 2**31))


@SETTINGS
@given(checkpoints)
def test_from_text_inverts_to_text(checkpoint: Checkpoint) -> None:
    """A checkpoint read back from its text equals the checkpoint, on one line."""
    text = checkpoint.to_text()
    assert (Checkpoint.from_text(text), text.count("\n")) == (checkpoint, 1)


@SETTINGS
@given(checkpoints, st.data())
def test_a_cut_text_is_refused(checkpoint: Checkpoint, data: st.DataObject) -> None:
    """A checkpoint text cut short anywhere is refused, never read as another checkpoint."""
    text = checkpoint.to_text().strip()
    cut = data.draw(st.integers(0, len(text) - 1))
    with pytest.raises(InvalidRequestError):
        Checkpoint.from_text(text[:cut])


_TEXT = ('{"domains":{"d":"%s"},"format":"vmledger-checkpoint/1","hash":"%s","position":3%s}'
         % ("a" * 64, "b" * 64, "%s"))


def test_a_checkpoint_of_an_older_vmledger_names_no_rules() -> None:
    """A checkpoint text without `rules`, as an older vmledger wrote it, reads as one whose rules are unknown."""
    assert Checkpoint.from_text(_TEXT % "") == Checkpoint(position=3, hash="b" * 64, domains={"d": "a" * 64})


@pytest.mark.parametrize("rules", ["0", "-1", "true", '"5"', "5.0", "[5]", str(2**31 + 1)])
def test_malformed_rules_are_refused(rules: str) -> None:
    """Rules that are no whole number from 1 to 2**31 make the text no checkpoint."""
    with pytest.raises(InvalidRequestError, match="rules malformed"):
        Checkpoint.from_text(_TEXT % f',"rules":{rules}')


@pytest.mark.parametrize("change", [
    {"position": -5}, {"position": True}, {"position": MAX_POSITION + 1}, {"position": "3"},
    {"hash": "zz"}, {"hash": "B" * 64}, {"hash": "b" * 63}, {"hash": None},
    {"domains": {"d": 5}}, {"domains": {5: "a" * 64}}, {"rules": 0}, {"rules": True},
])
def test_a_checkpoint_verify_never_made_cannot_be_made_or_read(change: dict) -> None:
    """A malformed field makes no checkpoint, so none reaches `checkpoint()` to be reported as damage; nor its text."""
    fields = {"position": 3, "hash": "b" * 64, "domains": {"d": "a" * 64}, **change}
    with pytest.raises((TypeError, ValueError)):
        Checkpoint(**fields)
    text = json.dumps({"format": "vmledger-checkpoint/1", **fields})
    if change != {"domains": {5: "a" * 64}}:  # a JSON key is text: that one reads as a valid map
        with pytest.raises(InvalidRequestError, match="damaged vmledger checkpoint"):
            Checkpoint.from_text(text)
