"""Sampling defaults that `ltxdist-sample --help` shows (no heavy imports here: the help stays fast)."""

# The classic LTX-Video negative prompt; ltx-pipelines ships a much longer one (pass it with
# --negative-prompt if wanted).
DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"
# LoRA strengths of the evaluation grid: under-, mid- and full-strength
DEFAULT_STRENGTHS = (0.5, 0.75, 1.0)
# ID-LoRA-2.3's identity guidance scale (its one-stage inference script's default)
ID_LORA_IDENTITY_GUIDANCE = 3.0
# STG block: ltx-pipelines' LTX_2_3_PARAMS perturb block 28 (block 29 is LTX-2's); ID-LoRA-2.3's own
# inference script keeps 29, and an ID run (a reference voice) follows it.
LTX_2_3_STG_BLOCK = 28
ID_LORA_STG_BLOCK = 29
# H.264 CRF a first-frame image is re-compressed at before the VAE encodes it: ltx-pipelines'
# DEFAULT_IMAGE_CRF, its value for LTX-2.0 and LTX-2.3 (the model learnt first frames from compressed
# video). 0 turns the re-compression off, as in ltx-pipelines.
IMAGE_CONDITIONING_CRF = 33
