"""The stages of a run, by name, in the order ``selfcorrect run`` takes them.

Each stage is one ``Stage`` (``cluster.stages.base``) that carries all of itself: its checks and plan,
its run, what it needs of the cluster, how its progress is read and the line it prints. The measurement
before training is in ``calibrate`` (run by name only), the offline data stages in ``data``, the train
stage in ``train``, the eval and the report in ``evaluate``.
"""

from cluster.stages.base import STAGES, Plan, Stage, check_run_dir, register
from cluster.stages.calibrate import CALIBRATE
from cluster.stages.data import BUILD, EXPORT, GENERATE, JUDGE
from cluster.stages.evaluate import EVAL, REPORT
from cluster.stages.train import TRAIN

for _stage in (CALIBRATE, GENERATE, JUDGE, BUILD, EXPORT, TRAIN, EVAL, REPORT):
    register(_stage)

RUN_STAGES = [name for name, stage in STAGES.items() if stage.in_run]  # what `run` takes, in order

__all__ = ["RUN_STAGES", "STAGES", "Plan", "Stage", "check_run_dir", "register"]
