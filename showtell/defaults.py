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
# Guided captioning's defaults, for a model whose checkpoint holds none of its
# own (a model's calibration, written by benchmarks/bench_guidance.py --store,
# takes precedence: showtell.captioner.default_options). A caption must name an
# ImageNet tag whose summed probability is at least GUIDANCE_THRESHOLD, unless
# its log-probability per word falls more than GUIDANCE_FALLBACK below the
# unguided caption's: then the unguided caption is given. Both were chosen on
# the val splits of Flickr8k and coco-2733 (mean CIDEr-D 57.2 at 0.2's 0.8
# without a fallback -> 58.4; docs/guided-captioning.md). Flickr8k alone had
# chosen 0.8, with no fallback to catch a wrong tag.
GUIDANCE_THRESHOLD = 0.5
GUIDANCE_FALLBACK = 0.5  # mean log-probability per word
BOOTSTRAP_RESAMPLES = 1000  # draws of the paired bootstrap (showtell compare, showtell.significance)
# What may run the encoder (showtell.onnx_encoder): auto picks ONNX Runtime on a
# CPU where it is installed, else PyTorch.
ENCODER_RUNTIMES = ("auto", "torch", "onnxruntime")
# The decoder's arithmetic at inference (showtell.decoders): float32 (exact: the
# decoder's own numbers) or int8 (on a CPU its matrix products read a quarter of
# the bytes; captions may differ, see tests/test_int8.py for how much). auto,
# the default, is int8 where it runs (a CPU, the encoder in float32, a decoder
# with int8 steps: not an ensemble), else float32: int8 loses no caption quality
# beyond chance in the three worlds (docs/speed.md) and the decoder is ~2x faster.
DECODER_PRECISIONS = ("auto", "float32", "int8")
DECODER_PRECISION = "auto"
