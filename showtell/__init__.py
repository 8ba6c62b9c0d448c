"""showtell: Show-and-Tell image captioning (Vinyals et al., CVPR 2015).

    from showtell import caption
    caption("photo.jpg")
"""
from .captioner import BUNDLED_MODEL, Captioner, ScoredCaption, caption
from .images import ImageError

__all__ = ["caption", "Captioner", "ScoredCaption", "ImageError", "BUNDLED_MODEL"]
__version__ = "0.2.0"
