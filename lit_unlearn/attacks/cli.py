"""``lit-unlearn attack --model MODEL --attacks relearn,quantize --data SOURCE --out DIR``.

MODEL is a Hugging Face folder, a ``peft`` adapter folder (``adapter_config.json``; its base model is loaded
and the adapters merged into the attacked copies) or a Lightning checkpoint file / DeepSpeed checkpoint folder
(``.ckpt``; read with :mod:`lit_unlearn.export`). Settings come from the defaults, then ``--config FILE`` (YAML
or JSON with the sections ``attacks``, ``eval``, ``quantize``, ``relearn``), then the command-line options
(``--relearn.steps 0,5,10``, ``--quantize.schemes int8,int4`` ...). Writes ``robustness.json``,
``robustness.md`` and ``robustness.png`` to ``--out``, and adds the section to the model's evaluation report
(``--report``, or a ``report.json`` in the model folder or the folder above it).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

#: command-line option -> (section, field, type); the sections are AttackEvalConfig, QuantizeConfig, RelearnConfig
_BOOL = "bool"
OPTIONS: dict[str, tuple[str, str, Any, str]] = {
    "--eval.max_samples": ("eval", "max_samples", int, "evaluate only the first N rows of every split"),
    "--eval.max_new_tokens": ("eval", "max_new_tokens", int, "greedy generation length for ROUGE-L (default 64)"),
    "--eval.batch_size": ("eval", "batch_size", int, "evaluation batch size (default 16)"),
    "--eval.retain_report": ("eval", "retain_report", str, "the retain model's report.json (forget quality)"),
    "--eval.utility": ("eval", "utility", _BOOL, "evaluate retain/real_authors/world_facts too (default true)"),
    "--eval.mia": ("eval", "mia", _BOOL, "evaluate the holdout split for the MIA AUC (default true)"),
    "--eval.metrics": ("eval", "metrics", str, "suite (default) or forget_ma_rouge (forget MA and ROUGE-L only: cheap)"),
    "--eval.benchmark": ("eval", "benchmark", str, "tofu (default), muse, wmdp or a plugin benchmark"),
    "--quantize.schemes": ("quantize", "schemes", str, "rtn: int8,int4,int4-asym; bitsandbytes: llm.int8,nf4"),
    "--quantize.backend": ("quantize", "backend", str, "rtn (torch, any device) or bitsandbytes (CUDA)"),
    "--quantize.group_size": ("quantize", "group_size", str, "int4 group size (128), none (per channel) or auto"),
    "--relearn.steps": ("relearn", "steps", str, "checkpoints, e.g. 0,5,10,25,50"),
    "--relearn.lr": ("relearn", "lr", float, "AdamW learning rate (default 1e-5; ~5e-4 for the tiny builtin model)"),
    "--relearn.fraction": ("relearn", "fraction", float, "share of the forget rows relearned on (default 0.5)"),
    "--relearn.data_split": ("relearn", "data_split", str, "relearn on this split instead (e.g. retain90)"),
    "--relearn.data_source": ("relearn", "data_source", str, "the source of --relearn.data_split"),
    "--relearn.held_out": ("relearn", "held_out", _BOOL, "evaluate only forget rows not relearned on (default true)"),
    "--relearn.batch_size": ("relearn", "batch_size", int, "samples per relearning step (default 4)"),
    "--relearn.seed": ("relearn", "seed", int, "seed of the row choice and training (default 0)"),
    "--relearn.accelerator": ("relearn", "accelerator", str, "Lightning accelerator (default auto)"),
    "--relearn.devices": ("relearn", "devices", int, "processes of the relearning fit (> 1: DDP; default 1)"),
    "--relearn.strategy": ("relearn", "strategy", str, "Lightning strategy (default auto; ddp under torchrun)"),
}


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-unlearn attack",
        description="Robustness of an unlearned model: quantization (int8/int4) and relearning attacks on copies"
        " of it, re-evaluated on the TOFU suite; writes robustness.json/.md/.png.",
    )
    parser.add_argument("--model", required=True,
                        help="a Hugging Face folder, a peft adapter folder, or a Lightning .ckpt / DeepSpeed folder")
    parser.add_argument("--tokenizer", default=None, help="default: the model folder's (or the checkpoint's)")
    parser.add_argument("--data", default=None, help="the data source (default builtin:tofu-mini)")
    parser.add_argument("--forget_split", default=None, help="the unlearned forget split (default forget10)")
    parser.add_argument("--attacks", default=None, help="comma-separated: quantize, relearn (default both)")
    parser.add_argument("--config", default=None, help="YAML/JSON file with sections attacks, eval, quantize, relearn")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default=None, help="where to evaluate (default: cuda if available, else cpu)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--report", default=None,
                        help="the model's evaluation report.json (or its folder) to add the robustness section to;"
                             " default: a report.json in the model folder or the folder above it; 'none': do not")
    for option, (_, _, kind, text) in OPTIONS.items():
        parser.add_argument(option, default=None, type=_bool if kind == _BOOL else kind, help=text)
    return parser


def read_config(path: str) -> dict[str, Any]:
    """The mapping in a YAML/JSON config file; unknown sections are an error naming the file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config: no file {path!r}.")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        loaded = json.loads(text)
    else:
        import yaml

        loaded = yaml.safe_load(text)
    loaded = loaded or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping with sections attacks, eval, quantize, relearn.")
    unknown = sorted(set(loaded) - {"attacks", "eval", "quantize", "relearn", "model", "tokenizer", "out"})
    if unknown:
        raise ValueError(f"{path}: unknown sections {unknown}; allowed: attacks, eval, quantize, relearn, model,"
                         " tokenizer, out.")
    for section in ("eval", "quantize", "relearn"):
        if not isinstance(loaded.get(section, {}), dict):
            raise ValueError(f"{path}: section {section!r} must be a mapping of options.")
    return loaded


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``{"attacks", "eval", "quantize", "relearn"}``: defaults < ``--config`` < command-line options."""
    config = read_config(args.config) if args.config else {}
    out: dict[str, Any] = {"attacks": config.get("attacks", "quantize,relearn"),
                           "eval": dict(config.get("eval") or {}), "quantize": dict(config.get("quantize") or {}),
                           "relearn": dict(config.get("relearn") or {})}
    if args.attacks is not None:
        out["attacks"] = args.attacks
    if args.data is not None:
        out["eval"]["source"] = args.data
    if args.forget_split is not None:
        out["eval"]["forget_split"] = args.forget_split
    if args.no_progress:
        out["eval"]["progress"] = False
        out["relearn"]["progress"] = False
    for option, (section, name, _, _) in OPTIONS.items():
        value = vars(args).get(option[2:])  # argparse keeps the dot: dest "relearn.steps"
        if value is not None:
            out[section][name] = value
    return out


def load_model(path: str, tokenizer: str | None = None, workdir: str | None = None):
    """``(model, tokenizer, label)`` from a Hugging Face folder, a peft adapter folder or a checkpoint."""
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    location = Path(path)
    if not location.exists():
        raise FileNotFoundError(f"--model: {path!r} does not exist (a Hugging Face folder, a peft adapter folder,"
                                " or a Lightning .ckpt file / DeepSpeed checkpoint folder).")
    if location.is_file() or (location.is_dir() and (location / "latest").is_file()):
        from lit_unlearn.export import export_checkpoint, read_checkpoint

        _, checkpoint = read_checkpoint(location)
        merge = (checkpoint.get("hyper_parameters") or {}).get("peft") is not None
        folder = Path(workdir or tempfile.mkdtemp(prefix="lit_unlearn_attack_")) / "model"
        export_checkpoint(location, folder, tokenizer=tokenizer, merge=merge)
        location = folder
    if (location / "adapter_config.json").is_file():
        from lit_unlearn.models.adapters import require_peft

        peft = require_peft()
        adapter = json.loads((location / "adapter_config.json").read_text())
        base = adapter.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{location}/adapter_config.json names no base_model_name_or_path.")
        tok = load_tokenizer(tokenizer or (str(location) if (location / "tokenizer_config.json").is_file() else base))
        model = peft.PeftModel.from_pretrained(load_causal_lm(base, tok), str(location))
        return model, tok, f"{path} (adapters on {base})"
    tok = load_tokenizer(tokenizer or str(location))
    return load_causal_lm(str(location), tok), tok, path


def find_report(model: str, report: str | None) -> str | None:
    """The report the robustness section goes into: ``report`` (``none``: no report), else a ``report.json``
    beside the model (in its folder, or the folder above: the demo's ``runs/<run>/matched/seed<k>/model``)."""
    if report is not None:
        return None if report.lower() == "none" else report
    location = Path(model)
    folder = location if location.is_dir() else location.parent
    for candidate in (folder / "report.json", folder.parent / "report.json"):
        if candidate.is_file():
            return str(candidate)
    return None


def attack_main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from lit_unlearn.attacks.evaluation import AttackEvalConfig
    from lit_unlearn.attacks.relearn import RelearnConfig
    from lit_unlearn.attacks.suite import QuantizeConfig, _coerce_attacks, run_attacks

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_from_args(args)
        attacks = _coerce_attacks(settings["attacks"])
        eval_config = AttackEvalConfig.coerce(settings["eval"])  # option errors before the model is loaded
        quantize = QuantizeConfig.coerce(settings["quantize"])
        relearn = RelearnConfig.coerce(settings["relearn"])
        report = find_report(args.model, args.report)
        if report is not None:
            from lit_unlearn.attacks.report import resolve_report

            report = str(resolve_report(report))  # a bad report path fails before the model is loaded
        with tempfile.TemporaryDirectory(prefix="lit_unlearn_attack_") as workdir:
            model, tokenizer, label = load_model(args.model, args.tokenizer, workdir)
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = model.to(device)
            section = run_attacks(model, tokenizer, attacks, eval_config, quantize, relearn, out_dir=args.out,
                                  model_label=label, report=report)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as err:
        print(f"lit-unlearn attack: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"lit-unlearn attack: wrote {section['files']['md']} (and robustness.json, robustness.png)")
    if report is not None:
        print(f"lit-unlearn attack: added the robustness section to {report} and its report.md")
    return section
