"""Source-model pretraining: supervised (the transfer pipeline with `scratch` and every label) or
self-supervised (SimCLR / MoCo v2 on pooled images, labels ignored), both written as run folders that
any transfer takes as --source."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from ..errors import MedTransferError
from ..progress import SILENT
from ..ssl import METHODS, pretrain_ssl, split_specs
from ..training import distributed
from .parallel import check_data_parallel_method, launching, run_parallel
from .request import PretrainRequest, TransferRequest
from .run_folder import RunResult, output_dir, versions, write_pretrain_run
from .transfer import transfer

SUPERVISED = "supervised"


def methods() -> list[str]:
    return [SUPERVISED, *METHODS]


def pretrain(request: PretrainRequest) -> RunResult:
    if request.method not in methods():
        raise MedTransferError(f"unknown pretraining method {request.method!r}; choose one of: {', '.join(methods())}")
    if request.method == SUPERVISED:
        return supervised(request)  # --devices: the transfer pipeline launches the processes
    check_data_parallel_method(METHODS.lookup(request.method), request.training)
    if launching(request.training):
        return run_parallel(pretrain, request, ssl_output(request))
    return self_supervised(request)


def ssl_output(request: PretrainRequest) -> Path | None:
    """A self-supervised run's folder (checked writable), or None when nothing is saved."""
    return output_dir(request.output, "+".join(split_specs(request.data)), request.method, f"s{request.seed}")


def supervised(request: PretrainRequest) -> RunResult:
    """A scratch run with every label of one dataset."""
    specs = split_specs(request.data)
    if len(specs) > 1:
        raise MedTransferError(f"supervised pretraining takes one dataset, got {len(specs)}; pooling several "
                               "(unlabelled) datasets needs --method simclr or moco")
    return transfer(TransferRequest(specs[0], "scratch", seed=request.seed, backbone=request.backbone,
                                    image_size=request.image_size, loading=request.loading, training=request.training,
                                    output=request.output, accelerator=request.accelerator, n_boot=request.n_boot,
                                    progress=request.progress))


def self_supervised(request: PretrainRequest) -> RunResult:
    """SimCLR / MoCo v2 on the images of the datasets; the monitor is k-NN AUC on the first dataset's
    labelled val split when it has one (the best epoch is kept; else the last)."""
    specs, method, ssl = split_specs(request.data), request.method, request.ssl
    if request.loading.target or request.loading.group:
        raise MedTransferError(f"--method {method} takes image datasets; --target/--group are for csv: tables")
    out = ssl_output(request)
    started = time.perf_counter()
    config = request.training.config("ssl", request.seed, request.accelerator,
                                     progress=request.progress is not SILENT)
    config = replace(config, warmup_epochs=min(5.0, 0.1 * config.epochs))
    data_root = request.loading.data_root
    result = pretrain_ssl(specs, method, backbone=request.backbone, seed=request.seed, config=config,
                          image_size=request.image_size, data_root=data_root, temperature=ssl.temperature,
                          queue_size=ssl.queue_size, momentum=ssl.momentum, views=ssl.views,
                          monitor=ssl.monitor is not False, limit=ssl.limit, progress=request.progress)
    fit = result.fit
    model = result.encoder.cpu().eval()
    monitor = dict(result.monitor, best=fit.best_score, best_epoch=fit.best_epoch) if result.monitor else None
    metrics = {"monitor": monitor,
               "fit": {"best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run, "monitor_score": fit.best_score,
                       "seconds": round(fit.seconds, 3), "total_seconds": round(time.perf_counter() - started, 3)}}
    resolved = {
        "data": specs, "method": method, "strategy": f"pretrain-{method}", "seed": request.seed,
        "backbone": model.architecture.get("name"), "architecture": model.architecture, "input": model.spec.to_dict(),
        "n_images": result.n_images, "limit": ssl.limit, "train": asdict(config),
        "method_settings": result.method.settings(), "views": asdict(result.method.views), "monitor": result.monitor,
        "data_root": str(data_root) if data_root else None, "versions": versions(),
        **({"data_parallel": parallel} if (parallel := distributed.record(config.devices, config.num_nodes)) else {}),
    }
    run = RunResult(model, metrics, pd.DataFrame(), resolved, None, None)
    if out is not None:
        write_pretrain_run(run, Path(out), fit.history)
        run.out = out
    return run
