"""Attributions on tensors: which parts of an input a classifier's output rests on.

Why here, under the model: every method is a computation on a `Classifier` and its inputs, whatever the
data came from. Images get Grad-CAM / Grad-CAM++ (MONAI's, 2D and 3D alike) on a backbone stage; tables,
signals and texts get integrated gradients (Captum) of a class probability; the sanity check of Adebayo
et al. 2018 compares maps of the trained model with those of the same architecture at random weights.
Tables: the encoded features are summed back to the columns they came from, and permutation importance
permutes a whole column's block at once, so both speak of "cp", never "cp=2".
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.tabular import TabularEncoder
from ..errors import MedTransferError
from .inference import device_of, eval_mode, predict_proba, probabilities

CAM_METHODS = ("gradcam", "gradcam++")
IG_STEPS = 32


def cam_classes():
    """MONAI's GradCAM and GradCAMpp, returning the signed class-activation map: MONAI's own formulas
    (monai.visualize.class_activation_maps) without their final ReLU, which is applied afterwards for the
    map shown. The sanity check ranks the signed map: a randomised model often has no positive evidence
    anywhere, and an all-zero map has no ranks."""
    import torch.nn.functional as F  # noqa: N812
    from monai.visualize import GradCAM, GradCAMpp

    class SignedGradCAM(GradCAM):
        def compute_map(self, x, class_idx=None, retain_graph=False, layer_idx=-1, **kwargs):
            _, acti, grad = self.nn_module(x, class_idx=class_idx, retain_graph=retain_graph, **kwargs)
            acti, grad = acti[layer_idx], grad[layer_idx]
            b, c, *spatial = grad.shape
            weights = grad.view(b, c, -1).mean(2).view(b, c, *[1] * len(spatial))
            return (weights * acti).sum(1, keepdim=True)

    class SignedGradCAMpp(GradCAMpp):
        def compute_map(self, x, class_idx=None, retain_graph=False, layer_idx=-1, **kwargs):
            _, acti, grad = self.nn_module(x, class_idx=class_idx, retain_graph=retain_graph, **kwargs)
            acti, grad = acti[layer_idx], grad[layer_idx]
            b, c, *spatial = grad.shape
            alpha_nr = grad.pow(2)
            alpha_dr = alpha_nr.mul(2) + acti.mul(grad.pow(3)).view(b, c, -1).sum(-1).view(b, c, *[1] * len(spatial))
            alpha_dr = torch.where(alpha_dr != 0.0, alpha_dr, torch.ones_like(alpha_dr))
            alpha = alpha_nr.div(alpha_dr + 1e-7)
            score = self.nn_module.score.exp().reshape(b, *[1] * (grad.ndim - 1))  # MONAI's (b,) would broadcast
            relu_grad = F.relu(score * grad)  # over the last axis; one score per input
            weights = (alpha * relu_grad).view(b, c, -1).sum(-1).view(b, c, *[1] * len(spatial))
            return (weights * acti).sum(1, keepdim=True)

    return {"gradcam": SignedGradCAM, "gradcam++": SignedGradCAMpp}


def gradcam(model: nn.Module, x: torch.Tensor, layer: str, targets: np.ndarray, method: str = "gradcam",
            batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(maps, signed maps), each (N, *spatial) at the input's size. Maps: Grad-CAM / Grad-CAM++ as MONAI
    computes them (ReLU, then upsampled), each scaled to [0, 1] by its maximum (an all-zero map, no positive
    evidence, stays 0); signed maps: the class-activation map before the ReLU, upsampled. `layer`: a module
    name of `model` (e.g. "backbone.layer4"); `targets`: the class explained per input. Inputs are grouped
    by class (MONAI scores one class per call). The weights are made trainable: hooks need gradients."""
    if method not in CAM_METHODS:
        raise MedTransferError(f"unknown class-activation method {method!r}; choose {', '.join(CAM_METHODS)}")
    model.requires_grad_(True)  # a frozen backbone (linear probe) has no gradient to hook otherwise
    cam = cam_classes()[method](nn_module=model, target_layers=layer, postprocessing=lambda m: m)
    device = device_of(model)
    maps = np.zeros((len(x), *x.shape[2:]), np.float32)
    signed = np.zeros_like(maps)
    with eval_mode(model):
        for cls in np.unique(targets):
            rows = np.flatnonzero(targets == cls)
            for chunk in np.array_split(rows, math.ceil(len(rows) / batch_size)):
                xb = x[chunk].float().to(device)
                low = cam.compute_map(xb, class_idx=int(cls)).detach()
                upsample = cam.upsampler(xb.shape[2:])
                maps[chunk] = upsample(torch.relu(low))[:, 0].float().cpu().numpy()
                signed[chunk] = upsample(low)[:, 0].float().cpu().numpy()
    return scaled(maps), signed


def scaled(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum (maps are >= 0 after Grad-CAM's ReLU); all-zero maps stay 0."""
    top = maps.reshape(len(maps), -1).max(axis=1)
    top = np.where(top > 0, top, 1.0).reshape(-1, *([1] * (maps.ndim - 1)))
    return (maps / top).astype(np.float32)


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture with every backbone and head weight re-initialised (each module's own
    `reset_parameters`, seeded): Adebayo et al.'s full model-parameter randomisation. The preprocess
    (resize, normalisation) and the calibration are kept, so only the learned weights differ."""
    twin = copy.deepcopy(model)
    reset = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part in (twin.backbone, twin.head):
            for module in part.modules():
                if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
                    module.reset_parameters()
                    reset += 1
    if reset == 0:
        raise MedTransferError("the model has no layer that can be re-initialised, so the randomisation sanity "
                               "check cannot run")
    return twin


def rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho between each pair of maps (flattened); nan where either map is constant (rank
    correlation is undefined there, e.g. a Grad-CAM map with no positive evidence)."""
    from scipy.stats import spearmanr

    rho = np.full(len(a), np.nan)
    for i, (u, v) in enumerate(zip(a.reshape(len(a), -1), b.reshape(len(b), -1))):
        if np.ptp(u) > 0 and np.ptp(v) > 0:
            rho[i] = float(spearmanr(u, v).statistic)
    return rho


def probability_of(model: nn.Module, task: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's class probabilities as a function of its input, what integrated gradients attribute."""
    return lambda inputs: probabilities(model(inputs), task)


def integrated_gradients(model: nn.Module, x: torch.Tensor, targets: np.ndarray, baseline: torch.Tensor,
                         task: str, steps: int = IG_STEPS, batch_size: int = 64) -> np.ndarray:
    """Integrated gradients (Sundararajan et al. 2017, Captum) of each input's target-class probability,
    from `baseline` (broadcast to one input) to the input: an array shaped like `x`, whose sum over an
    input is that probability minus the baseline's."""
    from captum.attr import IntegratedGradients

    model.requires_grad_(True)
    device = device_of(model)
    ig = IntegratedGradients(probability_of(model, task))
    parts = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].float().to(device)
            base = baseline.float().to(device).expand_as(xb).contiguous()
            target = torch.as_tensor(targets[i:i + batch_size], dtype=torch.long, device=device)
            out = ig.attribute(xb, baselines=base, target=target, n_steps=steps, internal_batch_size=batch_size * 8)
            parts.append(out.detach().float().cpu())
    return torch.cat(parts).numpy()


def embedding_layer(model: nn.Module) -> nn.Module:
    """The token-embedding layer of a text model (a Hugging Face encoder); refused for text models
    without one (TF-IDF)."""
    encoder = getattr(model.backbone, "model", None)
    if encoder is None or not hasattr(encoder, "get_input_embeddings"):
        raise MedTransferError(f"the {model.architecture.get('kind')} text model has no token embeddings to "
                               "attribute to; integrated gradients over tokens need a transformer run (e.g. minilm)")
    return encoder.get_input_embeddings()


def token_attributions(model: nn.Module, x: torch.Tensor, targets: np.ndarray, task: str, pad_id: int,
                       special_ids: list[int], steps: int = IG_STEPS, batch_size: int = 16) -> np.ndarray:
    """Layer integrated gradients over the token embeddings (N, L): each token's share of the target
    probability, from a baseline text where every ordinary token is the padding token (the special
    tokens and the attention mask are kept, so the baseline has the input's length and structure)."""
    from captum.attr import LayerIntegratedGradients

    model.requires_grad_(True)
    device = device_of(model)
    lig = LayerIntegratedGradients(probability_of(model, task), embedding_layer(model))
    out = np.zeros(x[:, 0].shape, np.float32)
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].long().to(device)
            ids = xb[:, 0]
            keep = torch.isin(ids, torch.tensor(special_ids, device=device)) | (xb[:, 1] == 0)
            base = xb.clone()
            base[:, 0] = torch.where(keep, ids, torch.full_like(ids, pad_id))
            target = torch.as_tensor(targets[i:i + batch_size], dtype=torch.long, device=device)
            attr = lig.attribute(xb, baselines=base, target=target, n_steps=steps, internal_batch_size=batch_size * 4)
            per_token = attr.sum(-1).detach().float().cpu().numpy()  # (n, L') L': the batch's unpadded length
            out[i:i + len(xb), :per_token.shape[1]] = per_token
    return out


def column_blocks(encoder: TabularEncoder) -> dict[str, list[int]]:
    """Original column -> the encoded feature indices it became (a numeric column: one; a categorical
    one: its indicator per level), in the encoder's feature order."""
    blocks, i = {}, 0
    for col in encoder.numeric:
        blocks[col], i = [i], i + 1
    for col, levels in encoder.categorical.items():
        blocks[col], i = list(range(i, i + len(levels))), i + len(levels)
    return blocks


def by_column(attributions: np.ndarray, blocks: dict[str, list[int]]) -> np.ndarray:
    """Encoded-feature attributions (N, F) summed per original column (N, columns): integrated
    gradients are additive, so a column's sum is its share of the probability change."""
    return np.stack([attributions[:, idx].sum(axis=1) for idx in blocks.values()], axis=1)


def permutation_importance(model: nn.Module, x: torch.Tensor, blocks: dict[str, list[int]], task: str,
                           score: Callable[[np.ndarray], float], repeats: int = 5,
                           seed: int = 0) -> tuple[float, dict[str, list[float]]]:
    """Permutation importance (Breiman 2001; scikit-learn's `permutation_importance`) by original column:
    each column's encoded block is permuted across rows as a whole, `repeats` times (seeded), and the
    drop of `score(probabilities)` from the unpermuted score is recorded. Returns (score, {column: drops})."""
    base = score(predict_proba(model, x, task))
    rng = np.random.default_rng(seed)
    drops = {}
    for col, idx in blocks.items():
        drops[col] = []
        for _ in range(repeats):
            shuffled = x.clone()
            shuffled[:, idx] = x[torch.from_numpy(rng.permutation(len(x)))][:, idx]
            drops[col].append(base - score(predict_proba(model, shuffled, task)))
    return base, drops
