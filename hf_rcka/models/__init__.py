"""Image classifiers from Hub names, folders, timm names and configs; their labels and processors."""
