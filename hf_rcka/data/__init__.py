"""Image-classification data: datasets, decoding, transforms, augmentation, sampling, splits."""
