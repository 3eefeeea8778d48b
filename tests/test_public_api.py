"""The public names of the IR, runtime and error modules are pinned (STYLE.md §6)."""

from __future__ import annotations

import importlib

import pytest

from modelpress import errors

PUBLIC_API = {
    "modelpress.errors": [
        "CalibrationError",
        "CompressionError",
        "ConversionError",
        "InvalidModelError",
        "ModelLoadError",
        "ModelSaveError",
        "ModelpressError",
        "NumericMismatchError",
        "PackageError",
        "PassError",
        "PostconditionError",
        "PreconditionError",
        "ProtectionError",
        "UsageError",
    ],
    "modelpress.ir.io": [
        "MAX_TENSOR_BYTES",
        "PROTOBUF_LIMIT_BYTES",
        "check_model",
        "from_text",
        "load",
        "save",
        "tensor_nbytes",
        "to_bytes",
    ],
    "modelpress.ir.verify": ["verify"],
    "modelpress.ir.stats": ["ModelStats", "ValueSummary", "count_nodes", "model_stats", "op_histogram"],
    "modelpress.runtime.feeds": ["DEFAULT_DIM", "MAX_FEED_ELEMENTS", "input_specs", "random_feeds"],
    "modelpress.runtime.compare": ["Comparison", "OutputDiff", "compare_models", "float_errors", "run_model"],
    "modelpress.runtime.session": [
        "LEVELS",
        "PROVIDER_PREFERENCE",
        "OptLevel",
        "choose_providers",
        "create_session",
        "run_session",
    ],
    "modelpress.runtime.stream": [
        "IMAGE_SUFFIXES",
        "concatenate_outputs",
        "iter_batches",
        "prefetch",
        "read_samples",
        "run_stream",
    ],
    "modelpress.deploy": [
        "BenchSettings",
        "DeployReport",
        "Recipe",
        "StageResult",
        "deploy",
        "load_recipe",
        "parse_recipe",
    ],
    "modelpress.channels": ["ChannelGroup", "find_channel_groups"],
    "modelpress.compress": [
        "CompressReport",
        "DistillReport",
        "FinetuneReport",
        "GroupPrune",
        "LayerPrune",
        "PruneReport",
        "SharedWeights",
        "StructuredReport",
        "TensorRecord",
        "compress_file",
        "compress_model",
        "decompress_file",
        "deep_compress_module",
        "distill",
        "distill_to_onnx",
        "is_compressed",
        "load_compressed",
        "load_compressed_model",
        "prune_channels",
        "prune_channels_file",
        "prune_file",
        "prune_model",
        "retrain_and_compress",
        "share_weights",
    ],
    "modelpress.compress.mpz": [
        "FORMAT_VERSION",
        "MAGIC",
        "decode_compressed",
        "decompress_file",
        "is_compressed",
        "load_compressed",
        "load_compressed_model",
    ],
    "modelpress.compress.structured": [
        "DEFAULT_MIN_CHANNELS",
        "GroupPrune",
        "StructuredReport",
        "prune_channels",
        "prune_channels_file",
    ],
    "modelpress.compress.finetune": [
        "EpochProgress",
        "FinetuneLayer",
        "FinetunePhase",
        "FinetuneReport",
        "deep_compress_module",
    ],
    "modelpress.plan": [
        "GPUS",
        "Gpu",
        "GpuPlan",
        "ModelCost",
        "NodeCost",
        "PlanReport",
        "RooflineParams",
        "UnknownNode",
        "model_cost",
        "plan_model",
    ],
    "modelpress.quantize": ["OutputError", "QuantSpec", "QuantizeReport", "quantize_file", "quantize_model"],
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_all_is_pinned_and_every_name_exists(module_name):
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(PUBLIC_API[module_name])
    for name in module.__all__:
        assert hasattr(module, name), name


def test_every_error_is_a_modelpress_error_with_its_exit_code():
    codes = {
        errors.UsageError: 2,
        errors.ModelLoadError: 3,
        errors.ModelSaveError: 3,
        errors.InvalidModelError: 3,
        errors.PreconditionError: 4,
        errors.PostconditionError: 5,
        errors.PassError: 5,
        errors.NumericMismatchError: 6,
        errors.ProtectionError: 7,
        errors.ConversionError: 8,
        errors.CalibrationError: 9,
        errors.PackageError: 10,
        errors.CompressionError: 11,
    }
    for cls, code in codes.items():
        assert issubclass(cls, errors.ModelpressError)
        assert cls.exit_code == code
    assert errors.ModelpressError.exit_code == 1


def test_pass_error_names_the_pass_and_its_history():
    error = errors.PassError("boom", pass_name="fold-constants", history=("a", "b"))
    assert str(error) == "pass 'fold-constants' failed: boom (after passes: a, b)"
    assert (error.pass_name, error.history) == ("fold-constants", ("a", "b"))
    assert str(errors.PassError("boom", pass_name="x")) == "pass 'x' failed: boom"
