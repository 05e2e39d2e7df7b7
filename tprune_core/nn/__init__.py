"""Layer 2, models: the AST-/AudioMAE-style ViTs, token pruning on a stock timm ViT, and analytic MAC counts."""
