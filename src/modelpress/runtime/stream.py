"""Many inputs through one session: batching, and a prefetching loader that overlaps I/O with inference.

``run_stream`` reads samples from an iterator, groups them into batches of ``batch`` rows,
pre-processes each batch, runs it, post-processes it and yields the results batch by batch.
Reading and pre-processing happen in a background thread up to ``prefetch`` batches ahead, so
they overlap inference (the brief's point that accelerators spend half their time waiting
for data): onnxruntime releases the GIL while it computes, as do numpy and Pillow in most of
their work.

A sample is a mapping from input name to a value with a leading row axis (an array of one or
more rows) or to a list (e.g. encoded images, one per row). Rows are taken in order and split
exactly at batch boundaries, so the outputs line up with the inputs row for row.

Hand-written because no library in our dependencies does this: ``torch.utils.data.DataLoader``
would make torch a run-time dependency of inference, and onnxruntime has no loader.
"""

from __future__ import annotations

import collections.abc
import os
import queue
import threading
import typing

import numpy as np

from modelpress.errors import UsageError
from modelpress.runtime.run import load_array

__all__ = ["IMAGE_SUFFIXES", "concatenate_outputs", "iter_batches", "prefetch", "read_samples", "run_stream"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

T = typing.TypeVar("T")
Sample = collections.abc.Mapping[str, typing.Any]
Batch = dict[str, typing.Any]
_DONE = object()


def prefetch(items: collections.abc.Iterable[T], depth: int = 2) -> collections.abc.Iterator[T]:
    """Yield ``items``, produced by a background thread that stays up to ``depth`` items ahead.

    An exception raised while producing is re-raised here, at the item where it happened.
    Closing the generator early (``break``) stops the producer after its current item.

    Raises:
        UsageError: ``depth`` < 1.
    """
    if depth < 1:
        raise UsageError(f"prefetch depth {depth} must be >= 1")
    slots: queue.Queue[typing.Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((_DONE, None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            slots.put((_DONE, e))

    worker = threading.Thread(target=produce, name="modelpress-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def iter_batches(samples: collections.abc.Iterable[Sample], batch: int) -> collections.abc.Iterator[Batch]:
    """Regroup samples of any row counts into batches of exactly ``batch`` rows (the last may be short).

    Raises:
        UsageError: ``batch`` < 1, samples with different input names, or a sample whose inputs
            have different row counts.
    """
    if batch < 1:
        raise UsageError(f"batch size {batch} must be >= 1")
    pending: dict[str, list[typing.Any]] = {}
    names: list[str] | None = None
    rows = 0
    for index, sample in enumerate(samples):
        if names is None:
            names = list(sample)
        elif sorted(sample) != sorted(names):
            raise UsageError(f"sample {index} has inputs {sorted(sample)}, the first had {sorted(names)}")
        counts = {name: _rows(value) for name, value in sample.items()}
        if len(set(counts.values())) != 1:
            raise UsageError(f"sample {index}: its inputs have different row counts {counts}")
        count = next(iter(counts.values()))
        offset = 0
        while offset < count:
            take = min(batch - rows, count - offset)
            for name, value in sample.items():
                pending.setdefault(name, []).append(value[offset : offset + take])
            rows += take
            offset += take
            if rows == batch:
                yield _join(pending)
                pending, rows = {}, 0
    if rows:
        yield _join(pending)


def run_stream(
    samples: collections.abc.Iterable[Sample],
    infer: collections.abc.Callable[[Batch], collections.abc.Mapping[str, typing.Any]],
    *,
    batch: int = 32,
    prefetch_batches: int = 2,
    preprocess: collections.abc.Callable[[Batch], Batch] | None = None,
    postprocess: collections.abc.Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    on_batch: collections.abc.Callable[[int], None] | None = None,
) -> collections.abc.Iterator[dict[str, np.ndarray]]:
    """Run every sample through ``infer`` in batches; yields each batch's (post-processed) outputs.

    Args:
        samples: Raw samples (see the module docstring).
        infer: Runs one pre-processed batch, e.g. ``lambda feeds: run_session(session, feeds)``.
        batch: Rows per batch.
        prefetch_batches: Batches read and pre-processed ahead, in a background thread; 0 reads
            each batch only when it is needed (no thread).
        preprocess: Applied to each batch in the loader thread (a package's pipeline).
        postprocess: Applied to each batch's outputs.
        on_batch: Called with the row count of every batch done (progress).
    """
    prepared: collections.abc.Iterable[Batch] = iter_batches(samples, batch)
    if preprocess is not None:
        prepared = map(preprocess, prepared)
    if prefetch_batches > 0:
        prepared = prefetch(prepared, prefetch_batches)
    for feeds in prepared:
        outputs = {name: np.asarray(value) for name, value in infer(feeds).items()}
        if postprocess is not None:
            outputs = postprocess(outputs)
        if on_batch is not None:
            on_batch(_rows(next(iter(feeds.values()))) if feeds else 0)
        yield outputs


def concatenate_outputs(batches: collections.abc.Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join the per-batch outputs of ``run_stream`` along rows.

    Raises:
        UsageError: an output without a row axis (a scalar) cannot be joined across batches.
    """
    parts: dict[str, list[np.ndarray]] = {}
    for outputs in batches:
        for name, value in outputs.items():
            array = np.asarray(value)
            if array.ndim == 0:
                raise UsageError(f"output '{name}' is a scalar: it has no rows to join across batches")
            parts.setdefault(name, []).append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def read_samples(
    folder: str | os.PathLike[str],
    names: collections.abc.Sequence[str],
    *,
    ranks: collections.abc.Mapping[str, int | None] | None = None,
    image_inputs: collections.abc.Collection[str] = (),
) -> collections.abc.Iterator[Sample]:
    """The samples of an input folder, one per file, in file-name order (read lazily).

    * ``NAME.npz`` / any ``.npz``: one array per input name (rows along the first axis);
    * ``.npy``: the rows of the model's only input (a single sample without its batch axis,
      one dim short of the input's rank, gets one);
    * images (``.png``, ``.jpg`` ...): the encoded bytes, for the one input whose pipeline
      starts with ``decode_image``.

    Other files (and hidden ones) are skipped. Arrays are read without pickle.

    Raises:
        UsageError: the folder is missing or holds no usable file, a ``.npy`` for a model with
            several inputs, an image without an image input, or a ``.npz`` missing an input.
    """
    from pathlib import Path

    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--input-dir {root}: no such folder")
    files = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    usable = [f for f in files if f.suffix.lower() in {".npy", ".npz"} | IMAGE_SUFFIXES]
    if not usable:
        raise UsageError(f"--input-dir {root}: no .npy, .npz or image file in it")
    ranks = ranks or {}
    for file in usable:
        suffix = file.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            if len(image_inputs) != 1:
                raise UsageError(
                    f"{file}: an image, but {'no input' if not image_inputs else 'several inputs'} of this "
                    "model decode images (a package whose pipeline starts with decode_image takes images)"
                )
            yield {next(iter(image_inputs)): [file.read_bytes()]}
        elif suffix == ".npy":
            if len(names) != 1:
                raise UsageError(
                    f"{file}: a .npy holds one input, the model has {len(names)} ({', '.join(names)}); "
                    "give one .npz per sample with an array per input name"
                )
            array = load_array(file)
            rank = ranks.get(names[0])
            yield {names[0]: array[None] if rank is not None and array.ndim == rank - 1 else array}
        else:
            yield _npz_sample(file, names)


def _npz_sample(file: typing.Any, names: collections.abc.Sequence[str]) -> Sample:
    try:
        with np.load(file, allow_pickle=False) as data:
            missing = [name for name in names if name not in data.files]
            if missing:
                raise UsageError(
                    f"{file}: no array for input(s) {', '.join(missing)}; it holds {', '.join(data.files)}"
                )
            return {name: data[name] for name in names}
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(
            f"{file}: not a readable .npz ({e}); save with numpy.savez, no Python objects"
        ) from e


def _rows(value: typing.Any) -> int:
    if isinstance(value, list | tuple):
        return len(value)
    array = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if array.ndim == 0:
        raise UsageError("a sample input is a scalar: give arrays with a leading row axis")
    return int(array.shape[0])


def _join(pending: dict[str, list[typing.Any]]) -> Batch:
    joined: Batch = {}
    for name, parts in pending.items():
        if isinstance(parts[0], list | tuple):
            joined[name] = [item for part in parts for item in part]
        else:
            joined[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return joined
