"""Checkpoints: what one `verify` proved, kept so that the next one checks only what is new.

A checkpoint holds the verified head, the hash of the event there, and a digest
of each domain's projection rows.  The next verify recomputes the chain from
the head on, refolds only the domains that have events past it, and compares
every other domain's rows with its digest.  It is worth what the place it is
kept in is worth: keep it where whoever can write the database cannot.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Mapping

import attrs

from vmledger.eventstore.catalogue import MAX_POSITION
from vmledger.eventstore.errors import InvalidRequestError, StorageError

__all__ = ["Checkpoint", "read_checkpoint", "write_checkpoint"]

_FORMAT = "vmledger-checkpoint/1"


def _check_position(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POSITION:
        raise ValueError(f"position must be a whole number from 0 to {MAX_POSITION}, not {value!r}")


def _check_hash(instance: Any, attribute: Any, value: Any) -> None:
    if not (isinstance(value, str) and (value == "" or re.fullmatch(r"[0-9a-f]{64}", value))):
        raise ValueError(f"hash must be 64 lowercase hexadecimal digits (empty at position 0), not {value!r}")


def _check_domains(instance: Any, attribute: Any, value: Any) -> None:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("domains must map domain uuids to digests, both text")


def _check_rules(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31):
        raise ValueError(f"rules must be a whole number from 1 to 2**31, not {value!r}")


@attrs.frozen(kw_only=True)
class Checkpoint:
    """What a verify proved: the head position, its hash, and each domain's projection digest.

    `rules` names the fold rules the digests were made by (`projections.store.RULES`);
    None where the checkpoint names none, as those an older vmledger wrote.
    A malformed field raises `ValueError` (a non-mapping `domains`, `TypeError`):
    such a checkpoint was never made by `verify`, so it could only be
    reported as damage the ledger does not have.
    """

    position: int = attrs.field(validator=_check_position)
    hash: str = attrs.field(validator=_check_hash)
    domains: Mapping[str, str] = attrs.field(converter=lambda d: dict(sorted(d.items())), validator=_check_domains)
    rules: int | None = attrs.field(default=None, validator=_check_rules)

    def to_text(self) -> str:
        """Return the checkpoint as one line of JSON."""
        d: dict[str, Any] = {"format": _FORMAT, "position": self.position, "hash": self.hash, "domains": self.domains}
        if self.rules is not None:
            d["rules"] = self.rules
        return json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_text(cls, text: str) -> "Checkpoint":
        """Return the checkpoint a text holds.

        Raises:
            InvalidRequestError: the text is not a checkpoint.
        """
        try:
            d: Any = json.loads(text)
        except ValueError:
            d = None
        if not (isinstance(d, dict) and d.get("format") == _FORMAT):
            raise InvalidRequestError(f"not a vmledger checkpoint (format {_FORMAT})")
        position, hash_, domains, rules = d.get("position"), d.get("hash"), d.get("domains"), d.get("rules")
        try:
            _check_rules(None, None, rules)
        except ValueError:
            raise InvalidRequestError("damaged vmledger checkpoint: rules malformed") from None
        try:
            return cls(position=position, hash=hash_, domains=domains, rules=rules)
        except (TypeError, ValueError, AttributeError):
            raise InvalidRequestError("damaged vmledger checkpoint: position, hash or domains malformed") from None


def read_checkpoint(path: str) -> Checkpoint | None:
    """Return the checkpoint saved at `path`, or None if there is none yet.

    Raises:
        InvalidRequestError: the file cannot be read or holds no checkpoint.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidRequestError(f"cannot read checkpoint {path}: {getattr(e, 'strerror', None) or e}") from e
    try:
        return Checkpoint.from_text(text)
    except InvalidRequestError as e:
        raise InvalidRequestError(f"{path}: {e}") from None


def write_checkpoint(path: str, checkpoint: Checkpoint) -> None:
    """Save `checkpoint` at `path` durably, replacing the old one in one step.

    Raises:
        StorageError: the file cannot be written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(checkpoint.to_text())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise StorageError(f"cannot write checkpoint {path}: {e.strerror or e}") from e
