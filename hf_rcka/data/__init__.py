"""Image-classification data: datasets (the digits demo among them), image folders and paths on disk,
decoding, transforms, augmentation, sampling, splits."""
