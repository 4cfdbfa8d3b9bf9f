"""Triton kernels for ltxdist (imported as `ltxdist_kernels`; see docs/kernels.md).

Modules (imported explicitly, so that `import ltxdist_kernels` never pulls in Triton):
  fused_lora_linear  fused_lora_linear(x, W, b, A, B, scaling, dropout_p, seed) + autograd
  qk_norm_rope       qk_norm_rope(x, weight, eps, cos, sin): RMSNorm over all heads + split RoPE
  attention          patch_attention_modules(model, backend): ltx-core Attention on these kernels
  reference          plain PyTorch versions (torch backend, float64 test references, dropout mask)
"""
