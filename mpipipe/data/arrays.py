"""Token arrays prepared by another tokenizer: a 1-D integer `.npy` file or HDF5 dataset.

Both are memory-mapped when their layout allows it (an .npy file always; an
HDF5 dataset when it is stored contiguously, unchunked and uncompressed), so
a corpus larger than memory costs only the pages the batches touch.
"""

from __future__ import annotations

import numpy as np

from mpipipe.errors import UsageError
from mpipipe.paths import require_file


def npy_tokens(path: str) -> np.ndarray:
    """The 1-D integer array saved with numpy.save at `path`, memory-mapped read-only."""
    _check_path(path, "npy", "tokens.npy")
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"data.path {path!r} is not a readable .npy file ({reason}); save the "
                         "tokens with numpy.save") from None
    if not isinstance(tokens, np.ndarray):
        tokens.close()
        raise UsageError(f"data.path {path!r} is an .npz archive; data.source = 'npy' reads one "
                         "array saved with numpy.save")
    _check_token_array(tokens, f"data.path {path!r}")
    return tokens


def hdf5_tokens(path: str, dataset_name: str) -> np.ndarray:
    """The 1-D integer dataset `dataset_name` of the HDF5 file at `path`."""
    import h5py

    _check_path(path, "hdf5", "tokens.h5")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise UsageError(f"data.path {path!r} is not a readable HDF5 file ({error})") from None
    with file:
        dataset = file.get(dataset_name)
        if not isinstance(dataset, h5py.Dataset):
            present = _dataset_names(file)
            listing = f"its datasets are {', '.join(present)}" if present else "it has no datasets"
            raise UsageError(f"data.dataset {dataset_name!r} is not a dataset of data.path "
                             f"{path!r}: {listing}; set data.dataset to one of them")
        _check_token_array(dataset, f"data.dataset {dataset_name!r} of data.path {path!r}")
        offset = dataset.id.get_offset()
        if offset is None or dataset.chunks is not None or dataset.external:
            return dataset[()]
        return np.memmap(path, dtype=dataset.dtype, mode="r", offset=offset, shape=dataset.shape)


def token_vocab_size(tokens: np.ndarray, where: str) -> int:
    """max token + 1, after checking that no token id is negative."""
    smallest = int(tokens.min())
    if smallest < 0:
        raise UsageError(f"{where} holds the negative token id {smallest}; token ids must be "
                         "0 or more")
    return int(tokens.max()) + 1


def _check_path(path: str, source: str, example: str) -> None:
    if not path:
        raise UsageError(f"data.path is empty but data.source = {source!r} needs a file: set "
                         f"data.path = {example!r}")
    require_file(path, "data.path", f"data.source = {source!r} needs a file such as {example!r}")


def _check_token_array(array, where: str) -> None:
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise UsageError(f"{where} holds a {array.ndim}-D {array.dtype} array; token ids must be "
                         "a 1-D integer array (e.g. numpy.uint16)")
    if array.size == 0:
        raise UsageError(f"{where} holds no tokens; give a non-empty 1-D integer array")


def _dataset_names(file) -> list[str]:
    import h5py

    names = []
    file.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset)
                    else None)
    return names
