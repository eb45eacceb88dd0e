"""A tiny Tune trainable that records ``TrialMetrics``; used by tests/search/test_metrics.py.

It lives in the package because trainables defined in a test module cannot be unpickled on Ray workers.
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from nas_kd.search.metrics import TrialMetrics


def metrics_trainable(config: dict[str, Any]) -> None:
    """Reports ``epochs`` epochs with made-up but plausible numbers; with ``fail`` it raises in the second.

    Settings may sit in ``config["case"]`` too, so that one ``tune.grid_search`` over dicts varies them together.
    Every trial lives at least a second after its first record, so that Ray's 1 s metrics report sees it.
    """
    config = {**config, **config.get("case", {})}
    metrics = TrialMetrics.for_current_trial(config["study"])
    for epoch in range(1, config["epochs"] + 1):
        time.sleep(config.get("seconds_per_epoch", 1.0))
        if config.get("fail") and epoch > 1:
            raise RuntimeError("planned failure")
        val_accuracy = 0.5 + 0.1 * epoch
        metrics.record_epoch(epoch, val_accuracy, images_per_second=1000.0 * epoch)
        tune.report({"epoch": epoch, "val_accuracy": val_accuracy})
