"""Datasets (registry by name), class-balanced sampling, transforms, layout checks."""

from harness.data.registry import (
    ArrayImageDataset,
    DataBundle,
    DatasetParts,
    ImageFileDataset,
    LabeledDataset,
    RetrievalSplit,
    collate_skip_corrupt,
    create_datasets,
    get_dataset_info,
    list_datasets,
    read_dataset,
    register_dataset,
)
from harness.data.sampler import ClassBalancedBatchSampler

__all__ = [
    "ArrayImageDataset",
    "ClassBalancedBatchSampler",
    "DataBundle",
    "DatasetParts",
    "ImageFileDataset",
    "LabeledDataset",
    "RetrievalSplit",
    "collate_skip_corrupt",
    "create_datasets",
    "get_dataset_info",
    "list_datasets",
    "read_dataset",
    "register_dataset",
]
