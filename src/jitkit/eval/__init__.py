"""Evaluation: the sample-folder format, FID/IS/precision-recall, reference statistics, the shapes and
swissroll metrics, and evaluation during training.

Submodules are imported on demand: ``sample_folder`` (sample folders, labels.csv, npz, rank merging),
``sources`` (where images to evaluate come from), ``fid`` (distances and statistics on features),
``fidelity`` (Inception features through torch-fidelity, imported only when FID/IS are computed from
images), ``shapes_metric``, ``swissroll_metric`` and ``hooks`` (training callbacks).
"""
