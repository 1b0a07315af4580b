"""Helpers for tests that build PyTorch modules."""
import torch


def randomize_batchnorm(bn, seed):
    """Give a BatchNorm1d random running statistics (and affine parameters): a fresh one is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        if bn.affine:
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
    return bn
