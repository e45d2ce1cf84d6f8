"""Reliability: no checkpoint or export with non-finite weights, bad inputs named with file/line, nothing a user
had overwritten, concurrent cache builds, a quiet CLI. Tiny models and bundled data; seconds each."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**defaults, **kwargs})


def _data(tokenizer: str):
    from lit_unlearn.data import UnlearningDataModule

    return UnlearningDataModule(tokenizer=tokenizer, forget_split="forget01", retain_split=None, max_length=32,
                                batch_size=4)


def _naive_all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


# ------------------------------------------------------------------------------------------------
# 1. no checkpoint with non-finite weights


def test_all_finite_matches_naive_check():
    from lit_unlearn.utils.finite import all_finite, first_nonfinite

    g = torch.Generator().manual_seed(0)
    base = [torch.randn(5, 7, generator=g), torch.randn(3, generator=g).bfloat16(), torch.zeros(0),
            torch.randn(2, 2, generator=g).double(), torch.arange(4)]
    assert all_finite(base) and _naive_all_finite(base) and first_nonfinite(enumerate(base)) is None
    for bad in (float("nan"), float("inf"), -float("inf")):
        for k in (0, 1, 3):
            tensors = [t.clone() for t in base]
            tensors[k].view(-1)[1] = bad
            assert all_finite(tensors) is _naive_all_finite(tensors) is False
            name, description = first_nonfinite(enumerate(tensors))
            assert name == k and ("1 NaN" in description if bad != bad else "1 inf" in description)
    big = [torch.full((3,), 3e38)]  # large but finite: a 2-norm would overflow, the inf-norm does not
    assert all_finite(big)


class _Recorder(L.Callback):
    """The module's state after every completed training step (what a checkpoint of that step must hold)."""

    def __init__(self):
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_ga_blowup_stops_before_any_nonfinite_checkpoint(builtin_tokenizer_path, tmp_path):
    """GA: the loss of step 3 is finite, its update is not. (The blow-up is made deterministic by an
    inf in one gradient entry before the third optimizer step, which makes AdamW's update NaN — the way
    an overflowing backward pass ruins the weights after a finite loss.) Training stops with FloatingPointError
    naming the tensor; every checkpoint written is finite and last.ckpt is the state after step 2, the last
    good one."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_unlearn.objectives import GA

    class InfGradientAtStep3(GA):
        def on_before_optimizer_step(self, optimizer):
            super().on_before_optimizer_step(optimizer)
            if self.global_step == 2:
                self.model.lm_head.weight.grad[0, 0] = float("inf")

    losses = []

    class LossRecorder(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            losses.append(float(loss.detach()))

    # a small lr: the only blow-up is the injected one (at lr 1e3 the AMD EPYC's weights overflowed by step 2)
    module = InfGradientAtStep3(tokenizer=builtin_tokenizer_path, lr=1e-3)
    recorder = _Recorder()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=-1)
    with pytest.raises(FloatingPointError, match=r"non-finite after the optimizer step.*model\.lm_head\.weight"):
        _trainer(max_steps=6, enable_checkpointing=True, callbacks=[recorder, checkpoint, LossRecorder()]).fit(
            module, datamodule=_data(builtin_tokenizer_path))
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))  # the last loss was still finite
    assert not _naive_all_finite(module.model.parameters())  # the weights did blow up in memory
    files = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert files == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt"]
    for name in files:
        state = torch.load(tmp_path / name, map_location="cpu", weights_only=False)["state_dict"]
        assert _naive_all_finite(state.values()), name
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2 and max(recorder.states) == 2
    assert set(last["state_dict"]) == set(recorder.states[2])
    for key, value in recorder.states[2].items():
        assert torch.equal(last["state_dict"][key], value), key


def test_checkpoint_guard_refuses_nonfinite_state(builtin_tokenizer_path):
    from lit_unlearn.objectives import GA
    from lit_unlearn.utils.finite import NonFiniteWeightsError

    module = GA(tokenizer=builtin_tokenizer_path)
    state = {"model.a": torch.ones(3), "model.b": torch.tensor([1.0, float("nan")])}
    with pytest.raises(NonFiniteWeightsError, match=r"'model\.b' holds 1 NaN, 0 inf of 2 values.*not written"):
        module.on_save_checkpoint({"state_dict": state})


# ------------------------------------------------------------------------------------------------
# 2. export / save_pretrained refuse broken weights


@pytest.fixture()
def nan_checkpoint(builtin_tokenizer_path, tmp_path) -> Path:
    from lit_unlearn.objectives import FinetuneModule

    module = FinetuneModule(tokenizer=builtin_tokenizer_path)
    module.configure_model()
    state = module.state_dict()
    state["model.model.layers.0.mlp.up_proj.weight"][1, 2] = float("inf")
    path = tmp_path / "nan.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams), "global_step": 3}, path)
    return path


def test_export_refuses_nonfinite_weights_unless_allowed(nan_checkpoint, tmp_path, capsys):
    from lit_unlearn.export import export_main

    out = tmp_path / "hf"
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--ckpt_path", str(nan_checkpoint), "--out", str(out)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "'model.layers.0.mlp.up_proj.weight' holds 0 NaN, 1 inf" in err and "--allow_nonfinite" in err
    assert not out.exists()
    export_main(["--ckpt_path", str(nan_checkpoint), "--out", str(out), "--allow_nonfinite"])
    from safetensors.torch import load_file

    assert not torch.isfinite(load_file(out / "model.safetensors")["model.layers.0.mlp.up_proj.weight"]).all()


def test_save_pretrained_refuses_nonfinite_weights(builtin_tokenizer_path, tmp_path):
    from lit_unlearn.objectives import FinetuneModule
    from lit_unlearn.utils.finite import NonFiniteWeightsError

    module = FinetuneModule(tokenizer=builtin_tokenizer_path)
    module.configure_model()
    with torch.no_grad():
        module.model.model.norm.weight[0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"'model\.norm\.weight' holds 1 NaN"):
        module.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    module.save_pretrained(tmp_path / "out", allow_nonfinite=True)
    assert (tmp_path / "out" / "config.json").is_file()


# ------------------------------------------------------------------------------------------------
# 3. data errors name the file, the line and the problem


BAD_LINE = b'{"question": "q", "answer": oops}'
BAD_JSON_LINE = b'  "answer": }]'


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("forget.jsonl", b'{"question": "q", "answer": "a"}\n\n' + BAD_LINE + b"\n",
         rf"forget\.jsonl: line 3: not valid JSON \(Expecting value at column {BAD_LINE.index(b'oops') + 1}\)"),
        ("forget.jsonl", b'{"question": "q", "answer": "a"}\n["q", "a"]\n',
         r"forget\.jsonl: line 2: the row is a list"),
        ("forget.json", b'[{"question": "q", "answer": "a"},\n "just text"]',
         r"forget\.json: row 1 .*the row is a string"),
        ("forget.json", b'[{"question": "q",\n' + BAD_JSON_LINE,
         rf"forget\.json: line 2 column {BAD_JSON_LINE.index(b'}') + 1}: not valid JSON"),
        ("forget.jsonl", b'{"question": "q", "answer": "a"}\n{"question": "caf\xe9", "answer": "a"}\n',
         r"forget\.jsonl: line 2: not UTF-8 text \(byte 0xe9"),
        ("forget.parquet", b"PAR1 not really parquet", r"forget\.parquet: cannot be read as Parquet"),
    ],
)
def test_bad_data_files_name_file_and_line(tmp_path, name, content, match):
    from lit_unlearn.data.sources import load_rows
    from lit_unlearn.data.tokenize import DataValidationError

    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataValidationError, match=match) as info:
        load_rows(str(tmp_path), "forget")
    assert str(tmp_path / name) in str(info.value)


def test_good_local_files_still_load(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lit_unlearn.data.sources import load_rows

    rows = [{"question": "q1", "answer": "a\u2028b"}, {"question": "q2", "answer": "\u00e9"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}), "utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    assert load_rows(str(tmp_path), "a") == load_rows(str(tmp_path), "b") == load_rows(str(tmp_path), "c") == rows


# ------------------------------------------------------------------------------------------------
# 4. model and checkpoint errors say what to do


@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/model", "outputs/tofu_mini/x/target"])
def test_missing_model_folder_says_no_such_folder(name):
    from lit_unlearn.models.loading import load_causal_lm

    with pytest.raises(FileNotFoundError, match=r"model_name_or_path: no such folder"):
        load_causal_lm(name)


def test_truncated_safetensors_names_the_file(builtin_tokenizer_path, tmp_path):
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(builtin_tokenizer_path)
    load_causal_lm("builtin:tiny-llama", tok).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors' is corrupt or truncated"):
        load_causal_lm(str(tmp_path))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", b"hello"])
def test_bad_ckpt_path_is_not_a_checkpoint(tmp_path, content, capsys):
    from lit_unlearn.export import export_main
    from lit_unlearn.lightning_cli import lightning_cli
    from lit_unlearn.utils.checkpoints import NotACheckpointError, check_checkpoint_path

    ckpt = tmp_path / "bad.ckpt"
    ckpt.write_bytes(content)
    with pytest.raises(NotACheckpointError, match="not a checkpoint"):
        check_checkpoint_path(ckpt)
    with pytest.raises(SystemExit) as info:
        export_main(["--ckpt_path", str(ckpt), "--out", str(tmp_path / "out")])
    assert info.value.code != 0 and "bad.ckpt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        lightning_cli(["fit", "--config", str(ROOT / "configs/tofu_mini/unlearn.yaml"), "--ckpt_path", str(ckpt)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--ckpt_path" in err and "bad.ckpt" in err and "not a checkpoint" in err


def test_negative_numbers_after_an_option_are_values():
    from lit_unlearn.cli_support import join_negative_values
    from lit_unlearn.lightning_cli import lightning_cli

    assert join_negative_values(["--a", "-1e-3", "--b", "-2", "--c", "-x", "--d=-1", "-5"]) == [
        "--a=-1e-3", "--b=-2", "--c", "-x", "--d=-1", "-5"]
    # the value reaches the module (which then refuses it), instead of argparse reading -1e-3 as an option
    with pytest.raises(ValueError, match=r"lr must be positive, got -0\.001"):
        lightning_cli(["--config", str(ROOT / "configs/tofu_mini/unlearn.yaml"), "--model.init_args.lr", "-1e-3",
                       "--trainer.logger", "false"], run=False)


# ------------------------------------------------------------------------------------------------
# 6. nothing the user had is overwritten


def _fit_args(root: Path) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/tofu_mini/unlearn.yaml"), "--model", "GA",
            "--model.init_args.model_name_or_path", "builtin:tiny-llama", "--data.init_args.tokenizer",
            "builtin:tofu-mini", "--data.init_args.forget_split", "forget01", "--data.init_args.retain_split",
            "null", "--data.init_args.batch_size", "2", "--data.init_args.max_length", "32",
            "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.num_sanity_val_steps", "0",
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root)]


def test_second_run_keeps_the_first_config(tmp_path):
    from lit_unlearn.lightning_cli import lightning_cli

    lightning_cli(_fit_args(tmp_path) + ["--model.init_args.lr", "1e-4"])
    first = (tmp_path / "config.yaml").read_text()
    lightning_cli(_fit_args(tmp_path) + ["--model.init_args.lr", "2e-4"])
    lightning_cli(_fit_args(tmp_path) + ["--model.init_args.lr", "3e-4"])
    assert (tmp_path / "config.yaml").read_text() == first and "lr: 0.0001" in first
    assert "lr: 0.0002" in (tmp_path / "config_v2.yaml").read_text()
    assert "lr: 0.0003" in (tmp_path / "config_v3.yaml").read_text()


def test_atomic_outputs_get_normal_permissions(tmp_path):
    from lit_unlearn.utils.io import atomic_directory, atomic_write_text

    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "shared") as tmp:
            (tmp / "x").write_text("1")
        atomic_write_text(tmp_path / "file.txt", "hi")
        os.umask(0o027)
        with atomic_directory(tmp_path / "group") as tmp:
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "group").stat().st_mode) == 0o750


def test_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    from lit_unlearn.utils.io import atomic_directory

    target = tmp_path / "model"
    code = textwrap.dedent("""
        import os, sys
        from lit_unlearn.utils.io import atomic_directory
        with atomic_directory(sys.argv[1]) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 100)
            os._exit(9)  # killed in the middle of the save
    """)
    subprocess.run([sys.executable, "-c", code, str(target)], check=False, cwd=ROOT)
    leftovers = list(tmp_path.glob(".model.*.tmp"))
    assert len(leftovers) == 1 and not target.exists()
    with atomic_directory(target) as tmp:
        (tmp / "ok").write_text("1")
        assert list(tmp_path.glob(".model.*.tmp")) == [tmp]  # the stale one is gone, ours is in progress
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ------------------------------------------------------------------------------------------------
# 7. concurrent cache builds


def test_file_lock_times_out_naming_the_holder(tmp_path):
    from lit_unlearn.utils.locks import LockTimeoutError, file_lock

    lock = tmp_path / "x.lock"
    with file_lock(lock, what="building x"):
        with pytest.raises(LockTimeoutError, match=rf"x\.lock', held by pid {os.getpid()} on .*building x"):
            with file_lock(lock, timeout=0.3, verbose=False):
                pass
    with file_lock(lock, timeout=0.3):  # released
        pass


CACHE_WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import lit_unlearn.pipeline as pipeline

    marker = Path(sys.argv[1])

    def fake_finetune(config, tokenizer, save_dir, progress=True):
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.5)
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True)
        (save_dir / "lit_unlearn.json").write_text(json.dumps({"trained_by": os.getpid()}))
        return save_dir

    pipeline.finetune = fake_finetune
    Path(sys.argv[2]).touch()  # ready
    while not Path(sys.argv[3]).exists():  # start together
        time.sleep(0.01)
    path, cached = pipeline.cached_finetune("target", pipeline.FinetuneConfig(), "tok")
    print(json.dumps({"path": str(path), "cached": cached,
                      "trained_by": json.loads((path / "lit_unlearn.json").read_text())["trained_by"]}))
""")


def test_concurrent_cached_finetune_trains_once(tmp_path):
    env = {**os.environ, "LIT_UNLEARN_HOME": str(tmp_path / "home"), "PYTHONWARNINGS": "ignore"}
    marker, go = tmp_path / "trained", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CACHE_WORKER, str(marker), str(tmp_path / f"ready{i}"),
                               str(go)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    import time

    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    trainers = marker.read_text().split()
    assert len(trainers) == 1  # trained once
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["path"] == results[1]["path"]
    assert all(str(r["trained_by"]) == trainers[0] for r in results)
    waiter = outs[[r["cached"] for r in results].index(True)][1]
    assert "waiting for" in waiter and ".lock" in waiter


# ------------------------------------------------------------------------------------------------
# 8. no "args and command line" warning


def test_cli_does_not_warn_about_args_and_command_line(monkeypatch):
    from lit_unlearn.lightning_cli import lightning_cli

    args = ["--config", str(ROOT / "configs/tofu_mini/unlearn.yaml"), "--trainer.logger", "false"]
    monkeypatch.setattr(sys, "argv", ["lit-unlearn", *args])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = lightning_cli(args, run=False)
    assert not [w for w in caught if "args and command line" in str(w.message)]
    assert sys.argv == ["lit-unlearn", *args]  # left as it was
    assert cli.model.lr == 0.0005


# ------------------------------------------------------------------------------------------------
# 5. forget quality against the wrong retain model


def _fake_reports(tmp_path, retain_meta: dict, n_forget: int = 12):
    from test_report import META, fake_results

    from lit_unlearn.evaluation.report import finalize_report, write_report

    retain = finalize_report(fake_results(seed=1, n_forget=n_forget), {**META, "source": "builtin:tofu-mini",
                                                                         **retain_meta})
    write_report(retain, tmp_path / "retain", plots=False)
    return fake_results(seed=2), {**META, "source": "builtin:tofu-mini"}, tmp_path / "retain" / "report.json"


@pytest.mark.parametrize(
    "retain_meta,n_forget,what",
    [
        ({"data_version": "tofu-gen-0/other"}, 12, "data version"),
        ({"source": "/data/my_tofu"}, 12, "data source"),
        ({}, 10, "Forget samples differ"),
    ],
)
def test_retain_report_of_other_data_makes_forget_quality_unavailable(tmp_path, retain_meta, n_forget, what):
    from lit_unlearn.evaluation.report import RetainReportMismatch, finalize_report

    results, meta, retain_path = _fake_reports(tmp_path, retain_meta, n_forget)
    report = finalize_report(results, meta, retain_path)
    fq = report["forget_quality"]
    assert fq["available"] is False and fq["value"] is None and fq["mismatch"] is True
    assert what in fq["reason"] and str(retain_path) in fq["reason"]
    assert all(entry["privleak"] is None for entry in report["mia"].values())  # no privleak against it either
    with pytest.raises(RetainReportMismatch, match=what):
        finalize_report(results, meta, retain_path, strict=True)
    # the same data gives a value: the KS p-value of the two truth-ratio samples (scipy)
    from scipy.stats import ks_2samp

    same, _, same_path = _fake_reports(tmp_path / "same", {}, 12)
    fq_same = finalize_report(same, meta, same_path, strict=True)["forget_quality"]
    retain_tr = json.loads(same_path.read_text())["splits"]["forget"]["per_sample"]["truth_ratio"]
    ours = same["splits"]["forget"]["per_sample"]["truth_ratio"]
    keys = sorted(ours)
    expected = ks_2samp([ours[k] for k in keys], [retain_tr[str(k)] for k in keys]).pvalue
    assert fq_same["available"] and fq_same["value"] == pytest.approx(expected, rel=1e-9)


def test_validate_warns_on_console_and_strict_fails_early(builtin_tokenizer_path, tmp_path):
    from lit_unlearn.data import TOFUDataModule
    from lit_unlearn.evaluation.report import RetainReportMismatch
    from lit_unlearn.objectives import FinetuneModule

    def run(retain_report=None, strict=False):
        data = TOFUDataModule(tokenizer=builtin_tokenizer_path, splits=["forget01"], max_length=32,
                              eval_splits={"forget": "forget01_perturbed"}, eval_max_samples=3, eval_batch_size=3)
        module = FinetuneModule(tokenizer=builtin_tokenizer_path, eval_config={
            "generation": False, "el_splits": [], "retain_report": retain_report, "plots": False,
            "report_dir": str(tmp_path / ("retain" if retain_report is None else "run"))})
        module.strict_evaluation = strict
        _trainer().validate(module, datamodule=data)
        return module.last_report

    first = run()
    assert first["forget_quality"]["available"] is False  # no retain report given
    retain_path = tmp_path / "retain" / "report.json"
    assert run(retain_path)["forget_quality"]["available"] is True  # the same data: computed
    saved = json.loads(retain_path.read_text())
    saved["metadata"]["data_version"] = "tofu-gen-0/old"
    retain_path.write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match=r"Forget quality is unavailable: the retain report .* data version"):
        report = run(retain_path)
    assert report["forget_quality"]["available"] is False
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())["forget_quality"]
    assert on_disk["available"] is False and "data version" in on_disk["reason"]
    with pytest.raises(RetainReportMismatch, match="data version"):
        run(retain_path, strict=True)


# ------------------------------------------------------------------------------------------------
# 1 (distributed). every rank stops together when one rank's weights (or ZeRO-3 shard) blow up


def worker_nonfinite_on_one_rank(cfg: dict) -> None:
    """2 processes; after optimizer step 2 only rank 1's local values of one parameter become inf. Every
    rank must raise (rank 0 through the all-reduced flag); each writes what it raised to ``rank<r>.json``."""
    from lit_unlearn.objectives import GA
    from lit_unlearn.utils.finite import local_values
    from test_distributed import make_strategy

    class BlowsUpOnRank1(GA):
        def check_parameters_finite(self, when):
            if self.global_step == 2 and self.trainer.global_rank == 1 and when.startswith("after"):
                with torch.no_grad():
                    local_values(self.model.lm_head.weight).view(-1)[0] = float("inf")
            super().check_parameters_finite(when)

    L.seed_everything(0, verbose=False)
    module = BlowsUpOnRank1(cfg["model"], tokenizer=cfg["model"], lr=1e-3)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=make_strategy(cfg["strategy"]), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        max_steps=5, num_sanity_val_steps=0, limit_val_batches=0)
    from lit_unlearn.data import UnlearningDataModule

    data = UnlearningDataModule(tokenizer=cfg["model"], forget_split="forget01", retain_split=None, max_length=32,
                                batch_size=2)
    result = {"raised": None, "step": None}
    try:
        trainer.fit(module, datamodule=data)
    except FloatingPointError as err:
        result = {"raised": str(err), "step": trainer.global_step}
    Path(cfg["out"], f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


WORKERS = {"nonfinite": worker_nonfinite_on_one_rank}


@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_every_rank_stops_when_one_rank_blows_up(strategy, builtin_tokenizer_path, tmp_path):
    from test_distributed import HERE, launch, make_tiny_model

    model = make_tiny_model(tmp_path / "tiny", builtin_tokenizer_path)
    launch(HERE, {"worker": "test_reliability:nonfinite", "strategy": strategy, "model": model,
                  "out": str(tmp_path)}, nproc=2, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["raised"] and r["step"] == 2 for r in ranks), ranks
    assert "'model.lm_head.weight' holds 0 NaN, 1 inf" in ranks[1]["raised"]
    assert "held by another rank" in ranks[0]["raised"]


def test_cli_strict_flag_reaches_the_module():
    from lit_unlearn.lightning_cli import lightning_cli

    base = ["--config", str(ROOT / "configs/tofu_mini/unlearn.yaml"), "--trainer.logger", "false"]
    assert lightning_cli(base + ["--strict", "true"], run=False).model.strict_evaluation is True
    assert lightning_cli(base, run=False).model.strict_evaluation is False
