"""The quantization policy: what is quantized, to which dtypes, with which scheme and calibrator.

This module decides; ``plan.py``, ``calibrate.py``, ``observers.py`` and ``qdq.py`` carry the
decision out (the split of PyTorch's ``quantizer/`` from ``prepare.py``).

Scheme (linear quantization, ``x_float = (x_int - zero_point) * scale``):

* weights: int8, symmetric (zero point 0, range ``[-127, 127]``; ``[-63, 63]`` with
  ``reduce_range``), per output channel by default (per-tensor with ``per_channel=False``).
  Symmetric because onnxruntime's integer kernels take per-channel weights only with a zero
  zero-point; the level -128 is left unused so that ``-w`` and ``w`` quantize alike;
* activations: per-tensor, asymmetric, ``uint8`` (default) or ``int8``, range from calibration
  widened to include 0 so that zero padding is exact;
* Conv/Gemm bias: int32 with ``scale = x_scale * w_scale`` and zero point 0 (see ``qdq.py``).

Per-target default of the activation dtype. x86 has one 8-bit dot-product instruction family,
and it multiplies *unsigned* by *signed* bytes: ``vpmaddubsw`` on AVX2, ``vpdpbusd`` with
AVX512-VNNI / AVX-VNNI. onnxruntime's fast x86 kernels are therefore U8S8 (uint8
activations, int8 weights); int8 activations (S8S8) take slower paths, worst on AVX2 CPUs
without VNNI (onnxruntime's own quantization guide says to avoid S8S8 there). So the default
on x86-64 is ``uint8`` activations, VNNI or not (``bench/quantize_vs_ort.py`` times both).
On ARM64 the ``sdot``/``smmla`` instructions are signed: the default there is ``int8``.

``reduce_range`` (7-bit weights) exists because ``vpmaddubsw`` on AVX2 without VNNI adds two
u8*s8 products into a *saturating* int16: ``255 * 127 * 2`` overflows. It costs accuracy and
saturation needs two adjacent near-maximal products, so it stays opt-in (onnxruntime's
quantizer makes the same choice); VNNI accumulates in int32 and never saturates.

``float_stem`` keeps an image stem float: a Conv that reads a graph input with at most
``STEM_MAX_CHANNELS`` input channels per group (RGB, grayscale), and the Relu/Clip right after
it. Such a Conv has only ``C * kh * kw`` (27 for RGB 3x3) products per output, too few for
onnxruntime's QLinearConv (NHWC, per-pixel requantization) to beat its float NCHWc kernel,
which reads NCHW input directly; the int8 stem also needs the whole input image quantized and
transposed to NHWC. Measured here (``bench/quantize_vs_ort.py``): the int8 stem of
mobilenetv2_like costs about 2x the float one. Off by default: it changes what is quantized.
"""

from __future__ import annotations

import dataclasses
import platform
import typing
from pathlib import Path

from modelpress.errors import UsageError

__all__ = [
    "CALIBRATORS",
    "DEFAULT_OP_TYPES",
    "DYNAMIC_OP_TYPES",
    "MODES",
    "OP_ROLES",
    "STEM_MAX_CHANNELS",
    "WEIGHT_FORMATS",
    "QuantSpec",
    "cpu_has_vnni",
    "default_activation_dtype",
]

Mode = typing.Literal["static", "weight-only", "dynamic", "fp16", "bf16"]
MODES: tuple[str, ...] = ("static", "weight-only", "dynamic", "fp16", "bf16")
# Ops the ``dynamic`` mode rewrites (MatMul/Gemm -> DynamicQuantizeLinear + MatMulInteger). Conv
# is planned but refused: onnxruntime's ConvInteger has no fast x86 kernel (resnet_like with
# onnxruntime's own quantize_dynamic runs 5x slower than fp32, see the README), so a dynamic
# Conv would make the model slower; use ``static`` for CNNs.
DYNAMIC_OP_TYPES: frozenset[str] = frozenset({"Conv", "Gemm", "MatMul"})
CALIBRATORS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")
ACTIVATION_DTYPES: tuple[str, ...] = ("uint8", "int8")
# 4-bit weight-only formats: "ort" = onnxruntime's com.microsoft MatMulNBits/GatherBlockQuantized
# (fast 4-bit kernels), "qdq" = standard blocked DequantizeLinear (opset 21, portable).
WEIGHT_FORMATS: tuple[str, ...] = ("ort", "qdq")

# What each quantizable op type does with quantized tensors (how plan.py treats it):
# "compute"    weights quantized offline, activations Q/DQ'd: onnxruntime fuses
#              DQ -> op -> Q into QLinearConv / QGemm / QLinearMatMul (MatMulIntegerToFloat
#              when the output stays float);
# "activation" Relu/Clip right after a quantized op are absorbed by the Q that follows them
#              (onnxruntime's Relu/ClipQuantFusion: a uint8 range starting at 0 clamps alike);
# "shared"     data movement: the output reuses the input's scale and zero point, so
#              onnxruntime runs the op on the integers directly (its DropQDQ rules);
# "requant"    arithmetic with an integer kernel and its own output range (QLinearAdd,
#              QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat, QLinearMul).
OP_ROLES: dict[str, str] = {
    "Conv": "compute",
    "Gemm": "compute",
    "MatMul": "compute",
    "Relu": "activation",
    "Clip": "activation",
    "MaxPool": "shared",
    "Reshape": "shared",
    "Flatten": "shared",
    "Transpose": "shared",
    "Squeeze": "shared",
    "Unsqueeze": "shared",
    "Add": "requant",
    "Mul": "requant",
    "GlobalAveragePool": "requant",
    "AveragePool": "requant",
    "Concat": "requant",
}
# Mul is known but off by default: in transformers it scales by constants (GELU, attention)
# where a quantized Mul adds error and no speed.
DEFAULT_OP_TYPES: frozenset[str] = frozenset(OP_ROLES) - {"Mul"}
# ``float_stem``: the most input channels per group of a Conv on a graph input kept float.
STEM_MAX_CHANNELS = 4


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has an x86 VNNI extension (AVX512-VNNI, AVX-VNNI or AMX-INT8).

    Args:
        cpuinfo: Text of ``/proc/cpuinfo`` (read from the host when None; False off Linux).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def default_activation_dtype(machine: str | None = None) -> str:
    """``uint8`` on x86-64 (U8S8 kernels, see the module docstring), ``int8`` elsewhere."""
    machine = (machine or platform.machine()).lower()
    return "uint8" if machine in ("x86_64", "amd64", "i686", "x86") else "int8"


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """What to quantize and how.

    Attributes:
        mode: ``static`` (weights and activations, needs calibration data) or
            ``weight-only`` (weights int8 + DequantizeLinear, activations stay float: a
            smaller model, not a faster one).
        activation_dtype: ``uint8`` or ``int8`` activations (default per CPU, see above).
        weight_dtype: Only ``int8`` (``bits=4`` selects 4-bit weights).
        per_channel: One scale per output channel of Conv/Gemm/MatMul weights.
        symmetric_weights: Zero-point-0 weights; asymmetric weights exist for ``bits=4`` only.
        reduce_range: 7-bit weights (``[-63, 63]``), for AVX2 CPUs without VNNI.
        calibrator: How activation ranges come from calibration data: ``minmax``,
            ``percentile``, ``entropy`` (KL divergence) or ``mse``.
        percentile: The percentile of the ``percentile`` calibrator (two-tailed).
        histogram_bins: Bins of the streaming histogram (all calibrators but minmax).
        op_types: The op types to quantize (keys of ``OP_ROLES``).
        exclude_nodes: Node names kept in float.
        fp16_target: ``cpu`` (fp16 mode: convert only ops onnxruntime's CPU provider runs in
            float16 natively, probed on this machine) or ``any`` (every op not on the block
            list, for providers with float16 kernels such as CUDA; onnxruntime's CPU
            provider still runs it, with its own Casts around ops it lacks).
        bits: Weight bits: 8 (every mode) or 4 (weight-only: block-wise MatMul/Gemm weights
            and Gather tables, see ``int4.py``).
        block_size: Elements per 4-bit block (a power of 2, >= 16).
        weight_format: 4-bit format: ``ort`` (MatMulNBits / GatherBlockQuantized) or ``qdq``
            (blocked DequantizeLinear, opset 21).
        weight_algorithm: How 4-bit levels are chosen: ``rtn`` (round to nearest, no data,
            bit-exact with onnxruntime's quantizer) or ``gptq`` (error-compensating rounding
            from calibration data, ``gptq.py``; same format, better accuracy).
        accuracy_level: MatMulNBits' ``accuracy_level`` (``ort`` format): 0 leaves it unset
            (float activations, onnxruntime's default), 4 lets onnxruntime quantize the
            activations to int8 per block at run time (faster on CPUs with VNNI, a little less
            accurate; what onnxruntime itself picks when it fuses the ``qdq`` format).
        bias_correction: Static mode: subtract from each Conv/Gemm bias the mean shift its
            weight rounding causes on the calibration data (``bias_correction.py``).
        variance_correction: With ``bias_correction``: also rescale each output channel's
            weights so that its variance matches the float one (per-channel weights only).
        quantize_embeddings: Dynamic mode: also store constant Gather (embedding) tables as
            int8 per row, dequantizing only the rows looked up (``dynamic.py``); False keeps
            them float32.
        float_stem: Static mode: keep an image stem (a Conv on a graph input with at most
            ``STEM_MAX_CHANNELS`` input channels per group, and its Relu/Clip) float; see the
            module docstring.
    """

    mode: Mode = "static"
    activation_dtype: str = dataclasses.field(default_factory=default_activation_dtype)
    weight_dtype: str = "int8"
    per_channel: bool = True
    symmetric_weights: bool = True
    reduce_range: bool = False
    calibrator: str = "minmax"
    percentile: float = 99.999
    histogram_bins: int = 2048
    op_types: frozenset[str] = DEFAULT_OP_TYPES
    exclude_nodes: frozenset[str] = frozenset()
    fp16_target: str = "cpu"
    bits: int = 8
    block_size: int = 32
    weight_format: str = "ort"
    weight_algorithm: str = "rtn"
    accuracy_level: int = 0
    bias_correction: bool = False
    variance_correction: bool = False
    quantize_embeddings: bool = True
    float_stem: bool = False

    def __post_init__(self) -> None:
        """Reject unknown or unsupported settings with a message that lists the choices."""
        _choose("mode", self.mode, MODES)
        _choose("activation dtype", self.activation_dtype, ACTIVATION_DTYPES)
        _choose("weight dtype", self.weight_dtype, ("int8",))
        _choose("calibrator", self.calibrator, CALIBRATORS)
        _choose("fp16 target", self.fp16_target, ("cpu", "any"))
        if self.mode == "bf16" and self.fp16_target != "cpu":
            raise UsageError(
                "bf16 converts weight storage only (onnxruntime's CPU provider has no bfloat16 "
                "arithmetic kernels, so bfloat16 compute could not be checked here); drop --fp16-target"
            )
        _check_bits(self)
        if self.variance_correction and not self.bias_correction:
            raise UsageError("variance correction comes with bias correction: add --bias-correction")
        if self.bias_correction and self.mode != "static":
            raise UsageError(
                f"bias correction needs calibration data: use --mode static, not --mode {self.mode}"
            )
        if self.float_stem and self.mode != "static":
            raise UsageError(f"float_stem applies to --mode static, not --mode {self.mode}")
        if not self.symmetric_weights and self.bits != 4:
            raise UsageError(
                "asymmetric weights are not implemented for 8 bits; use symmetric weights (the default)"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"percentile {self.percentile} must be in (50, 100], e.g. 99.999")
        if self.histogram_bins < 256:
            raise UsageError(f"histogram_bins {self.histogram_bins} must be >= 256 (one per 8-bit level)")
        unknown = sorted(set(self.op_types) - set(OP_ROLES))
        if unknown:
            raise UsageError(
                f"cannot quantize op type(s) {', '.join(unknown)}; known: {', '.join(sorted(OP_ROLES))}"
            )
        object.__setattr__(self, "op_types", frozenset(self.op_types))
        object.__setattr__(self, "exclude_nodes", frozenset(self.exclude_nodes))

    @property
    def weight_qmax(self) -> int:
        """Largest weight level: 127, or 63 with ``reduce_range``."""
        return 63 if self.reduce_range else 127

    def role(self, op_type: str) -> str | None:
        """The role of ``op_type`` under this spec (see ``OP_ROLES``), None when not quantized.

        In weight-only and dynamic mode only compute ops (their weights) are quantized.
        """
        if op_type not in self.op_types:
            return None
        role = OP_ROLES[op_type]
        if self.mode in ("weight-only", "dynamic") and role != "compute":
            return None
        return role

    def to_json(self) -> dict[str, object]:
        """The settings as JSON values (sets sorted)."""
        data = dataclasses.asdict(self)
        data["op_types"] = sorted(self.op_types)
        data["exclude_nodes"] = sorted(self.exclude_nodes)
        return data


def _check_bits(spec: QuantSpec) -> None:
    """``bits=4`` is block-wise weight-only (``quantize/int4.py``); ``block_size`` and format apply to it."""
    if spec.bits not in (8, 4):
        raise UsageError(f"bits {spec.bits} is not supported; choose 8 or 4")
    _choose("weight format", spec.weight_format, WEIGHT_FORMATS)
    _choose("weight algorithm", spec.weight_algorithm, ("rtn", "gptq"))
    if spec.accuracy_level not in (0, 1, 2, 3, 4):
        raise UsageError(f"accuracy level {spec.accuracy_level} must be 0 (unset), 1, 2, 3 or 4")
    if spec.accuracy_level and (spec.bits != 4 or spec.weight_format != "ort"):
        raise UsageError("--accuracy-level sets MatMulNBits' compute type: use it with --bits 4 --format ort")
    if spec.weight_algorithm == "gptq" and spec.bits != 4:
        raise UsageError("--algorithm gptq chooses 4-bit levels: use it with --mode weight-only --bits 4")
    if spec.bits == 4 and spec.mode != "weight-only":
        raise UsageError(
            f"4-bit weights are weight-only (activations stay float): use --mode weight-only --bits 4, "
            f"not --mode {spec.mode}"
        )
    size = spec.block_size
    if size < 16 or size & (size - 1):
        raise UsageError(
            f"block size {size} must be a power of 2 and >= 16 (MatMulNBits' rule), e.g. 32, 64 or 128"
        )


def _choose(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {what} '{value}'; choose one of: {', '.join(choices)}")
