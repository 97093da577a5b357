"""The median pruner spares each trial's first ``--pruner-warmup-epochs`` epochs (epochs count from 1) and prunes
a trial worse than the median from the next epoch on."""

from __future__ import annotations

import optuna
import pytest

from convlstm.config import SweepSettings
from convlstm.tracking.sweep import make_pruner


@pytest.mark.parametrize("warmup", [0, 1, 2, 3])
def test_the_first_warmup_epochs_are_never_pruned(warmup: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=make_pruner(SweepSettings(pruner_startup_trials=1, pruner_warmup_epochs=warmup)))
    good = study.ask()
    for epoch in range(1, 6):
        good.report(1.0, epoch)
    study.tell(good, 1.0)
    bad = study.ask()
    pruned_at = None
    for epoch in range(1, 6):
        bad.report(9.0, epoch)  # worse than the finished trial at every epoch
        if bad.should_prune():
            pruned_at = epoch
            break
    assert pruned_at == warmup + 1
