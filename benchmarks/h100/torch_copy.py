"""A PyTorch program copying to the GPU, for 'restoreprof trace -- python torch_copy.py'."""

import torch

GIB = 1 << 30
pageable = torch.empty(2 * GIB, dtype=torch.uint8).random_()
pinned = torch.empty(2 * GIB, dtype=torch.uint8).pin_memory()
pinned.copy_(pageable)
for source in (pageable, pinned):
    device = source.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(device[:4096].cpu(), source[:4096])
print("copied 2 GiB pageable and 2 GiB pinned to the GPU")
