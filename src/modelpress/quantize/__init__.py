"""Post-training quantization: static int8 QDQ (streaming calibration), weight-only int8, dynamic int8, fp16.

Policy lives in ``spec.py`` (``QuantSpec``); the mechanism in ``plan.py`` (what gets Q/DQ),
``observers.py`` (streaming range observers), ``calibrate.py`` (running the model on data),
``data.py`` (``--calib DIR`` files), ``qdq.py`` (the QDQ rewrite), ``dynamic.py`` (dynamic int8),
``int4.py`` / ``blockwise.py`` / ``gptq.py`` (4-bit block-wise weights),
``float16.py`` (fp16 conversion and Cast tidying) and ``workflow.py``.
"""

from modelpress.quantize.report import OutputError, QuantizeReport
from modelpress.quantize.spec import QuantSpec
from modelpress.quantize.workflow import quantize_file, quantize_model

__all__ = ["OutputError", "QuantSpec", "QuantizeReport", "quantize_file", "quantize_model"]
