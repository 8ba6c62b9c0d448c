"""Defaults that several parts of showtell share, each stated once.

``DecodeOptions``, ``caption()``, the web page, the command line's flags and
their ``--help`` read them from here. This module imports nothing, so that
``showtell --help`` can quote them without importing torch.
"""

BEAM_SIZE = 3  # hypotheses kept at each step of beam search; 1 = greedy
MAX_LEN = 20  # the longest caption, in words (not counting <end>)
# Rank hypotheses by logprob / length ** LENGTH_PENALTY. 1.0 (the mean per-word
# logprob) was chosen on Flickr8k val over 0, 0.4 and 0.7 (CIDEr-D 46.1 -> 47.5)
# and raises every metric on test and on coco-mini (README, Results); 0 = the plain sum.
LENGTH_PENALTY = 1.0
# Guided captioning's default: a caption must name an ImageNet tag whose summed
# probability is at least this. Measured with benchmarks/bench_guidance.py
# (figures in docs/guided-captioning.md): on Flickr8k val no threshold from 0.3
# to 0.9 raises CIDEr-D (the model already names the dogs and bikes it knows);
# from 0.8 up it costs under 0.1 and the tag's word is in a reference caption of
# 91% of the guided val photos. (0.7, picked first from val and coco-mini's
# precision, cost Flickr8k test 0.51 CIDEr-D: over the 0.5 allowed.)
GUIDANCE_THRESHOLD = 0.8
BOOTSTRAP_RESAMPLES = 1000  # draws of the paired bootstrap (showtell compare, showtell.significance)
# What may run the encoder (showtell.onnx_encoder): auto picks ONNX Runtime on a
# CPU where it is installed, else PyTorch.
ENCODER_RUNTIMES = ("auto", "torch", "onnxruntime")
