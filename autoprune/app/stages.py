"""One line per step of a long command (baseline, objective, search, apply, fine-tune, measure, export, MLflow).

``autoprune run`` and ``train`` work for minutes; when stdout is not a terminal (a log file, a CI
job, ``| tee``) nothing else says what they are doing. Each step logs one INFO record on the
``autoprune.stages`` logger; the CLI prints them to stderr as ``autoprune: stage: <step>: <detail>``
when stdout is not a terminal, and with ``-v`` otherwise (:func:`autoprune.cli.setup_logging`).
"""

from __future__ import annotations

import logging

#: The logger of the stage lines.
STAGES = logging.getLogger("autoprune.stages")


def stage(step: str, detail: str = "") -> None:
    """Log the start of ``step`` (one short word or two) with what it works on."""
    STAGES.info("%s%s", step, f": {detail}" if detail else "")


__all__ = ["STAGES", "stage"]
