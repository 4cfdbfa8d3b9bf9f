"""Sampling defaults that `ltxdist-sample --help` shows (no heavy imports here: the help stays fast)."""

# The classic LTX-Video negative prompt; ltx-pipelines ships a much longer one (pass it with
# --negative-prompt if wanted).
DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"
# LoRA strengths of the evaluation grid: under-, mid- and full-strength
DEFAULT_STRENGTHS = (0.5, 0.75, 1.0)
