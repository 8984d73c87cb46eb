"""Scores, pure functions of tensors and label maps: `image` (PSNR, SSIM), `instances` (Gaga's 2D instance
protocol: mIoU, precision, recall), `objects3d` (the same scores over Gaussians)."""
