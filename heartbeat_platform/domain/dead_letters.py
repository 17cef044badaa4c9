"""Why a message became a dead letter, in a few classes (README, "Metrics for Prometheus").

The reason stored with a dead letter is a sentence for a person and may change wording;
the class travels beside it as data (the last item of a dead-letter row), so a metric
label never has to parse a reason back.
"""

from __future__ import annotations

import enum

__all__ = ["DeadLetterClass"]


class DeadLetterClass(enum.StrEnum):
    """A label with few values; a ``str``, so it is its own label text."""

    INVALID = "invalid"  # not a reading (events.validate_message)
    OUT_OF_WINDOW = "out_of_window"  # a reading the retention window refuses (retention)
    OVERSIZED = "oversized"  # over HEARTBEAT_MAX_MESSAGE_BYTES
    REFUSED = "refused"  # the database refused the message's content
