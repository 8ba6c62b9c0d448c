"""showtell: Show-and-Tell image captioning (Vinyals et al., CVPR 2015).

    from showtell import caption
    caption("photo.jpg")

The names below are imported on first use, so that ``showtell --help`` and
the config classes do not pay for importing torch.
"""
import importlib

# name -> the module that defines it
_LAZY = {"caption": "captioner", "Captioner": "captioner", "ScoredCaption": "captioner",
         "BUNDLED_MODEL": "captioner", "ImageError": "images"}

__all__ = ["caption", "Captioner", "ScoredCaption", "ImageError", "BUNDLED_MODEL"]
__version__ = "0.3.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
