"""The reference study, "Shared vs layer-wise memory in stacked GRUs", as package code.

Everything the names study (``examples/names_memory_ablation.py``) runs on, and nothing
the rest of recurrentkit needs: ``import recurrentkit`` does not import this subpackage,
and no module outside it imports it. It uses the library (``Stack``, the cells,
``recurrentkit.analysis``) like any user would.

- [`data`][recurrentkit.study.data]: the names data set shipped with the package, its
  vocabulary, the two encoding protocols (``"seed"``, ``"fixed"``) and a seeded split;
- [`lm`][recurrentkit.study.lm]: [`CharLM`][recurrentkit.study.lm.CharLM], a character
  language model over any ``Stack``;
- [`train`][recurrentkit.study.train]: [`fit`][recurrentkit.study.train.fit], a seeded,
  resumable trainer with safe checkpoints;
- [`sample`][recurrentkit.study.sample]: the sampler and the step-wise validation loss;
- [`metrics`][recurrentkit.study.metrics]: measures of generated names, mean ± 95% CI;
- [`cells`][recurrentkit.study.cells]: [`StudyGRUCell`][recurrentkit.study.cells.StudyGRUCell],
  the original study's GRU cell, written as a user cell;
- [`report`][recurrentkit.study.report]: run records → summary, ``results.md``,
  conclusions, figures;
- [`ablation`][recurrentkit.study.ablation]: the study itself: its models, presets and
  run plans, one run trained and measured, the run loop that writes the results.

The modules ``data``, ``metrics`` and ``ablation`` are re-exported as they are
(``study.data.encode``, ``study.metrics.novelty``, ``study.ablation.PRESETS``); the public
names of the others are re-exported here.
"""

from recurrentkit.study import ablation, data, metrics
from recurrentkit.study.cells import StudyGRUCell
from recurrentkit.study.lm import CharLM, count_parameters
from recurrentkit.study.report import (
    COMPARE,
    OPTIONAL_METRICS,
    PAIRED_METRICS,
    SUMMARY_METRICS,
    ModelInfo,
    StudyReport,
    compare_reach,
    difference_verdict,
    format_stat,
    summarize_runs,
    upgrade_results,
)
from recurrentkit.study.sample import (
    MODES,
    SAMPLERS,
    Sample,
    generate,
    stepwise_loss,
    teacher_forced_loss,
)
from recurrentkit.study.train import (
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    evaluate,
    fit,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "COMPARE",
    "MODES",
    "OPTIONAL_METRICS",
    "PAIRED_METRICS",
    "SAMPLERS",
    "SUMMARY_METRICS",
    "CharLM",
    "ModelInfo",
    "Sample",
    "StudyGRUCell",
    "StudyReport",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "ablation",
    "compare_reach",
    "count_parameters",
    "data",
    "difference_verdict",
    "evaluate",
    "fit",
    "format_stat",
    "generate",
    "load_checkpoint",
    "metrics",
    "save_checkpoint",
    "stepwise_loss",
    "summarize_runs",
    "teacher_forced_loss",
    "upgrade_results",
]
