"""Knowledge distillation (torch): the digits CNN teaches a 16x smaller MLP, as ONNX and as torch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelpress.errors import UsageError
from tests.compress._digits import one_torch_thread, trained_digits  # noqa: F401 (an autouse fixture)
from tests.compress._digits import run as _run

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.torch

from modelpress.compress.distill import DistillReport, distill  # noqa: E402 (after the importorskip)

FACTORY = "distill_factories"
# The defaults (lr 1e-3, 10 epochs = 200 steps on 1257 digits) leave a 2k-parameter MLP
# undertrained; this budget converges in well under a second on one thread.
TRAINING = {"temperature": 4.0, "alpha": 0.7, "epochs": 20, "lr": 1e-2}

_STUDENT = """

def student():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(root, split): factory module, train/ and eval/ .npz folders, x_test.npy, teacher.onnx."""
    docstring = "Factories for test_distill.py: the trained digits CNN (teacher) and a small MLP (student)."
    setup = trained_digits(
        tmp_path_factory, "distill", FACTORY, docstring, "teacher", _STUDENT, "teacher.onnx"
    )
    with setup as (root, split):
        (root / "eval").mkdir()
        np.savez(root / "eval" / "digits.npz", image=split.x_test, labels=split.y_test)
        yield root, split


def _factories():
    import distill_factories  # on sys.path through the digits fixture

    return distill_factories


def _logits(model, x_path, tmp_path):
    out = tmp_path / "logits.npy"
    result = _run("run", model, "--input", x_path, "-o", out)
    assert result.exit_code == 0, result.output
    return np.load(out)


def test_onnx_teacher_cli_json_export_runs_and_matches_the_torch_student(digits, tmp_path):
    root, split = digits
    out = tmp_path / "student.onnx"
    options = [f"--{key}={value}" for key, value in TRAINING.items()]
    result = _run(
        "distill", "--teacher", root / "teacher.onnx", "--student", f"{FACTORY}:student",
        "--data", root / "train", "--eval", root / "eval", "-o", out, *options, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["teacher_kind"] == "onnx" and report["eval_on_training"] is False
    assert (report["train_samples"], report["eval_samples"]) == (len(split.x_train), len(split.x_test))
    assert report["student_parameters"] * 4 < report["teacher_parameters"]
    assert [e["epoch"] for e in report["history"]] == list(range(1, TRAINING["epochs"] + 1))
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]
    assert report["student_accuracy"] >= 0.90 and report["agreement"] >= 0.90
    assert report["teacher_accuracy"] > 0.95 and report["notes"] == []
    assert all(check["ok"] for check in report["export"]["checks"]) and report["export"]["checks"]
    # The same seed and thread count retrain the same student in the library: the .onnx that
    # `modelpress run` executes matches it, and its held-out figures are the reported ones.
    student = _factories().student()
    distill(root / "teacher.onnx", student, split.x_train, split.y_train, **TRAINING)
    with torch.no_grad():
        expected = student.eval()(torch.from_numpy(split.x_test)).numpy()
    logits = _logits(out, root / "x_test.npy", tmp_path)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    teacher_logits = _logits(root / "teacher.onnx", root / "x_test.npy", tmp_path)
    assert np.mean(logits.argmax(1) == split.y_test) == pytest.approx(report["student_accuracy"])
    assert np.mean(logits.argmax(1) == teacher_logits.argmax(1)) == pytest.approx(report["agreement"])


def test_torch_teacher_distils_and_the_label_only_baseline_is_measured(digits):
    _, split = digits
    factories = _factories()
    teacher = factories.teacher()
    runs: dict[str, DistillReport] = {}
    for name, alpha in (("distilled", TRAINING["alpha"]), ("labels only", 0.0)):
        runs[name] = distill(
            teacher,
            factories.student(),
            split.x_train,
            split.y_train,
            **{**TRAINING, "alpha": alpha},
            eval_inputs=split.x_test,
            eval_labels=split.y_test,
        )
    distilled, baseline = runs["distilled"], runs["labels only"]
    assert distilled.teacher_kind == "torch" and distilled.teacher_parameters == 38_282
    assert distilled.student_parameters == 2_410 and distilled.student_weight_bytes == 4 * 2_410
    assert distilled.student_accuracy is not None and distilled.student_accuracy >= 0.90
    assert distilled.agreement >= 0.90 and distilled.teacher_accuracy == baseline.teacher_accuracy
    print(
        f"\nteacher {distilled.teacher_parameters} params, {distilled.teacher_accuracy:.2%}; student "
        f"{distilled.student_parameters} params, {TRAINING['epochs']} epochs: distilled "
        f"{distilled.student_accuracy:.2%} (agreement {distilled.agreement:.2%}, {distilled.seconds:.2f} s) vs "
        f"labels only {baseline.student_accuracy:.2%} (agreement {baseline.agreement:.2%}, "
        f"{baseline.seconds:.2f} s)"
    )


def test_torch_teacher_cli_prints_the_table(digits, tmp_path):
    root, _ = digits
    out = tmp_path / "student.onnx"
    result = _run(
        "distill", "--teacher", f"{FACTORY}:teacher", "--student", f"{FACTORY}:student",
        "--data", root / "train", "-o", out, "--epochs", 2,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "distill: T 4, alpha 0.7, 2 epochs" in text and "teacher (torch)" in text
    assert "38,282" in text and "2,410" in text and "training data (no --eval)" in text
    assert "export verified against torch" in text and "written:" in text and out.exists()


def test_without_labels_alpha_is_one_and_the_figures_are_flagged_as_training_data(digits):
    _, split = digits
    factories = _factories()
    report = distill(factories.teacher(), factories.student(), split.x_train, epochs=1)
    assert report.alpha == 1.0 and report.notes == [
        "no labels: alpha 0.7 -> 1 (the student learns the teacher's targets only)"
    ]
    assert report.eval_on_training and report.eval_samples == len(split.x_train)
    assert report.teacher_accuracy is None and report.student_accuracy is None
    assert 0.0 <= report.agreement <= 1.0 and len(report.history) == 1


def test_the_same_seed_gives_the_same_student_and_the_teacher_is_untouched(digits):
    _, split = digits
    factories = _factories()
    teacher = factories.teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    states = []
    for _ in range(2):
        student = factories.student()
        distill(teacher, student, split.x_train, split.y_train, epochs=2, seed=3)
        states.append(student.state_dict())
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name
    assert all(torch.equal(value, teacher.state_dict()[k]) for k, value in before.items())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": 0.0}, "temperature 0.0 must be a positive number"),
        ({"alpha": 1.5}, "alpha 1.5 must be in [0, 1]"),
        ({"epochs": 0}, "epochs 0 must be an integer >= 1"),
        ({"eval_labels": np.zeros(3, np.int64)}, "eval_labels given without eval_inputs"),
    ],
)
def test_bad_options_raise_usage_errors(digits, options, message):
    _, split = digits
    factories = _factories()
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        distill(factories.teacher(), factories.student(), split.x_train, split.y_train, **options)


def test_a_student_with_other_classes_is_refused(digits):
    _, split = digits
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.raises(UsageError, match=r"must return logits \[1, 10\]"):
        distill(_factories().teacher(), student, split.x_train, split.y_train)


@pytest.mark.parametrize(
    ("case", "exit_code", "message"),
    [
        ("onnx student", 2, "the student is trained, so it must be a torch module"),
        ("no --data", 2, "Missing option '--data'"),
        ("missing folder", 9, "does not exist"),
        ("bad temperature", 2, "temperature -1.0 must be a positive number"),
        ("bad alpha", 2, "alpha 2.0 must be in [0, 1]"),
        ("teacher not found", 3, "no such file"),
    ],
)
def test_cli_errors_exit_with_their_code_and_write_nothing(digits, tmp_path, case, exit_code, message):
    root, _ = digits
    teacher, student = [root / "teacher.onnx"], [f"{FACTORY}:student"]
    data, extra = ["--data", root / "train"], []
    if case == "onnx student":
        student = [root / "teacher.onnx"]
    elif case == "no --data":
        data = []
    elif case == "missing folder":
        data = ["--data", tmp_path / "nope"]
    elif case == "bad temperature":
        extra = ["--temperature", -1]
    elif case == "bad alpha":
        extra = ["--alpha", 2]
    else:
        teacher = [tmp_path / "nope.onnx"]
    out = tmp_path / "student.onnx"
    result = _run("distill", "--teacher", *teacher, "--student", *student, *data, "-o", out, *extra)
    assert result.exit_code == exit_code, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists() and list(tmp_path.iterdir()) == []
