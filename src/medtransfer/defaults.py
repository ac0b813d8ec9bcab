"""Every default in one table: training per modality, self-supervised pretraining, input sizes,
backbones, the logistic-regression C grid, bootstrap and inference batch sizes. Each can be
overridden by the caller; nothing else in the package restates these numbers."""

from __future__ import annotations

# Training settings per modality (TrainConfig fields); self-supervised pretraining has its own row.
# SSL: no early stopping, the k-NN monitor picks the checkpoint and every planned epoch runs.
# layer_decay (full, lp-ft, l2-sp; None: the flat rule, the whole backbone at 0.1 x the head's rate) was
# chosen on validation by benchmarks/recipes.py, `full` from an in-domain source, seed-mean validation AUC
# flat -> 0.7: PneumoniaMNIST 10% 0.988 -> 0.990 (2 seeds), BreastMNIST 10% 0.784 -> 0.802, ECG200 100%
# (cnn1d) 0.798 -> 0.853 (3 seeds). Not measured for 3D volumes, tables or text: they keep the flat rule.
TRAINING = {
    "image2d": dict(epochs=15, batch_size=64, lr=1e-3, patience=5, augment=True, min_steps_per_epoch=10,
                    layer_decay=0.7),
    "image3d": dict(epochs=20, batch_size=16, lr=1e-3, patience=5, augment=True, min_steps_per_epoch=10),
    "tabular": dict(epochs=100, batch_size=32, lr=3e-3, patience=20, augment=False),
    # Signals: small data (ECG200 has 100 beats), so epochs are cheap; epochs and lr set, not yet tuned on validation.
    "signal": dict(epochs=100, batch_size=32, lr=1e-3, patience=20, augment=True, min_steps_per_epoch=10,
                   layer_decay=0.7),
    # Text: a pretrained encoder (MiniLM) fine-tuned for a few epochs; lr is the head's (backbone 0.1x in full).
    "text": dict(epochs=6, batch_size=16, lr=3e-4, patience=3, augment=False, min_steps_per_epoch=10),
    "ssl": dict(epochs=50, batch_size=256, lr=1e-3, weight_decay=1e-4, patience=10**9, augment=True,
                min_steps_per_epoch=1),
}

BACKBONES = {"image2d": "resnet18", "image3d": "monai:resnet10", "tabular": "mlp", "signal": "cnn1d", "text": "minilm"}
IMAGE_SIZE = 64  # 2D images are resized to this: large enough for ResNet stems, small enough for CPUs
MIN_IMAGE_SIZE = 8  # smaller is refused: a 2D backbone keeps no spatial map (and 0 once meant the default)
IMAGENET_IMAGE_SIZE = 128  # ImageNet features need objects larger than 28 px; 128 px stays CPU-cheap

# Logistic-regression inverse regularisation, chosen on validation. 1e-4 and 1e-3 were added for linear
# probes on 1280+ pretrained features with tens of labels: BreastMNIST at 10% (55 labels), EfficientNet-Lite0
# at 224 px, 3 seeds: test AUC 0.790 -> 0.801 (Lite2: 0.749 -> 0.763); unchanged with all labels.
C_GRID = (1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0)
# A linear probe's features are standardised with the mean and std of up to this many of the target's training
# inputs (labels unused), not of its few labelled ones: per-feature statistics of 55 examples are noise. Chosen on
# validation (EfficientNet-Lite0 at 224 px, 3 seeds; benchmarks/probe_scaling.py): BreastMNIST 10% val AUC 0.810
# -> 0.847, PneumoniaMNIST 1% 0.929 -> 0.936, 10% 0.965 -> 0.964; with all labels nothing changes.
PROBE_SCALING_MAX = 2000
# TF-IDF rows are L2-normalised and not standardised: they need weaker regularisation (larger C).
TFIDF_C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
TFIDF_MAX_TERMS = 20000  # WordPiece unigrams and bigrams kept by the TF-IDF baseline (most frequent first)
N_BOOT = 1000  # bootstrap resamples behind every 95% CI
EVAL_BATCH_SIZE = 512  # batched inference
TEXT_MAX_TOKENS = 128  # texts are truncated to this many WordPiece tokens (MiniLM was trained on 128-256)
