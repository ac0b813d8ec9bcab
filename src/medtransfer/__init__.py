"""medtransfer: transfer learning on medical data, from source model to clinical evaluation."""

__version__ = "0.1.0"
__all__ = ["pretrain", "transfer", "evaluate", "predict", "explain", "export", "shift", "rank", "federated",
           "create_app"]
SERVED = ("create_app",)  # from serve.py, which sits above the API (mt.serve is that module)


def __getattr__(name):  # keep `import medtransfer` light; torch loads on first use
    if name in __all__:
        import importlib
        return getattr(importlib.import_module(".serve" if name in SERVED else ".api", __name__), name)
    raise AttributeError(f"module 'medtransfer' has no attribute {name!r}")
