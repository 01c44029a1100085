"""The tiny linear multi-label model several test files check attacks on (closed-form answers)."""
import torch


class Linear(torch.nn.Module):
    """``logits = x.flatten(1) @ W.T + b``: ``W`` ``(L, d)``, ``b`` ``(L,)`` nested lists or tensors."""

    def __init__(self, W, b):
        super().__init__()
        self.W = torch.nn.Parameter(torch.as_tensor(W, dtype=torch.float32))
        self.b = torch.nn.Parameter(torch.as_tensor(b, dtype=torch.float32))

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.b
