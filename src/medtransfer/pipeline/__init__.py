"""The pipelines: transfer, pretrain, shift (each a straight line over one typed request), and
evaluate / predict on a saved run. The API and the CLI are thin doors onto these."""

from .pretrain import methods as pretrain_methods
from .pretrain import pretrain
from .request import (DataOptions, Output, PretrainRequest, ShiftRequest, SSLOptions, TrainOptions,
                      TransferRequest)
from .reuse import evaluate, predict
from .run_folder import SELF_SUPERVISED_TASK, RunResult
from .shift import shift
from .transfer import transfer

__all__ = ["transfer", "pretrain", "shift", "evaluate", "predict", "pretrain_methods", "RunResult",
           "TransferRequest", "PretrainRequest", "ShiftRequest", "DataOptions", "TrainOptions", "Output",
           "SSLOptions", "SELF_SUPERVISED_TASK"]
