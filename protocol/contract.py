"""The facts the page must share with Python, as one JSON document: ``frontend/contract.json``.

The page cannot import Python, so what it needs of the protocol — the series-name grammar, the
tensor statistics, the strings that stand for NaN and ±Inf — is written to a JSON file that
``api.js`` loads. Regenerate it after changing the protocol::

    python -m trainvitals.protocol.contract > frontend/contract.json

A test fails while the committed file differs from ``contract()``, and another checks in
Chromium that the page parses series names exactly as ``parse_series`` does.
"""

from __future__ import annotations

import json
from typing import Any

from trainvitals.protocol import series
from trainvitals.protocol.codec import PROTOCOL_VERSION
from trainvitals.protocol.floats import NON_FINITE_STRINGS

__all__ = ["contract", "contract_json"]


def contract() -> dict[str, Any]:
    """The shared facts, as plain JSON data."""
    return {
        "protocol_version": PROTOCOL_VERSION,
        "top_level": list(series.TOP_LEVEL),
        "prefixes": {"component": series.COMPONENT, "scalar": series.SCALAR,
                     "tensor": series.TENSOR},
        "tensor_stats": list(series.TENSOR_STATS),
        "scalar_families": {"update": series.UPDATE, "dead_grads": series.DEAD_GRADS,
                            "trainable": series.TRAINABLE, "frozen": series.FROZEN,
                            "not_optimised": series.NOT_OPTIMISED,
                            "lr_group": series.LR_GROUP, "normalisation": series.NORMALISATION,
                            "backward_factor": series.BACKWARD_FACTOR,
                            "amp_skipped": series.AMP_SKIPPED, "amp_scale": series.AMP_SCALE,
                            "micro_batches": series.MICRO_BATCHES,
                            "first_bad_micro_batch": series.FIRST_BAD_MICRO_BATCH},
        "normalisation_stats": list(series.NORMALISATION_STATS),
        "non_finite_strings": sorted(NON_FINITE_STRINGS),
    }


def contract_json() -> str:
    """``contract()`` as the text of ``frontend/contract.json``."""
    return json.dumps(contract(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(contract_json(), end="")
